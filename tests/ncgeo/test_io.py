"""ncgeo._io: atomic writes, SIGTERM as a clean exit, stale temporary files."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ncgeo._io import atomic_write, atomic_write_bytes, remove_stale_temporaries


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"

    def failing(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"second" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with pytest.raises(ValueError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x", b"")


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    """`timeout`, `kill` and schedulers send SIGTERM: the CLIs turn it into SystemExit(143), so
    the write in progress removes its temporary file (it used to stay, e.g. a 90 MB checkpoint)."""
    script = (
        "import os, signal\n"
        "from ncgeo._io import atomic_write, exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        "def write(handle):\n"
        "    handle.write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "atomic_write(os.path.join(os.environ['TARGET'], 'result.npz'), write)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TARGET": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed_by_age(tmp_path):
    old, young, other = tmp_path / ".tmp-1-a.json", tmp_path / ".tmp-2-b.json", tmp_path / "c.json"
    for path in (old, young, other):
        path.write_text("{}")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert remove_stale_temporaries(tmp_path, older_than=600) == [old.name]
    assert remove_stale_temporaries(tmp_path) == [young.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
    assert remove_stale_temporaries(tmp_path / "nowhere") == []


def test_jsonable_is_strict_at_every_depth():
    import json

    import numpy as np
    import torch

    from ncgeo._io import jsonable

    value = {1: np.array([[1.0, np.nan], [np.inf, -2.5]]), "t": torch.tensor([np.nan, 3.0]),
             "s": (np.float32(np.nan), np.int64(4), np.bool_(True)), "x": [float("-inf"), "text", None]}
    out = jsonable(value)
    assert out == {"1": [[1.0, None], [None, -2.5]], "t": [None, 3.0], "s": [None, 4, True],
                   "x": [None, "text", None]}
    json.dumps(out, allow_nan=False)  # strict JSON
    loose = jsonable(value, strict=False)
    assert np.isnan(loose["1"][0][1]) and loose["1"][1][0] == float("inf")
    assert type(loose["s"][1]) is int and type(loose["s"][2]) is bool


def test_failed_ce_limit_result_is_strict_json():
    import json

    import numpy as np

    from ncgeo.certify.ce_limit import CELimitResult

    nan = np.full((3, 3), np.nan)
    failed = CELimitResult(nan, np.full(3, np.nan), float("nan"), nan, None, "solver_error", 0.1, False,
                           "CE-limit program failed (test)")
    out = failed.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["p"] == [[None] * 3] * 3 and out["value"] is None and out["certified"] is False
