"""`ncgeo certify FILE.npz` and `ncgeo solve --certify/--require-certificate`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main


def _solve(tmp_path, *extra):
    path = tmp_path / "sol.npz"
    result = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "4", "--tau", "0.5",
                                       "--save", str(path), *extra])
    return result, path


def test_solve_prints_verdict_and_certify_file(tmp_path):
    result, path = _solve(tmp_path, "--protos", "5")
    assert result.exit_code == 0, result.output
    assert "certified global optimum: gap" in result.output
    for method in ("auto", "reduced", "dual", "full"):
        out = CliRunner().invoke(main, ["certify", str(path), "--method", method, "--require-certificate"])
        assert out.exit_code == 0, out.output
        assert out.output.startswith("certified global optimum")


def test_solve_json_has_certificate(tmp_path):
    out = CliRunner().invoke(main, ["solve", "--classes", "4", "--samples", "3", "--relu", "--geometry", "of",
                                    "--protos", "2", "--json", "-", "--certify", "reduced"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    cert = data["certificate"]
    assert cert["certified"] is True and cert["method"] == "reduced"
    assert {"lower_bound", "upper_bound", "gap", "reason"} <= set(cert)
    assert abs(cert["upper_bound"] - data["loss"]) <= 1e-9 * abs(data["loss"])


def test_certify_none_and_require(tmp_path):
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "3", "--certify", "none",
                                    "--json", "-"])
    assert out.exit_code == 0 and "certificate" not in json.loads(out.output)
    # --require-certificate without a certificate fails
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "3", "--certify", "none",
                                    "--require-certificate"])
    assert out.exit_code == 1


def test_uncertified_file_exit_status(tmp_path):
    rng = np.random.default_rng(0)
    H = rng.standard_normal((9, 3))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    path = tmp_path / "random.npz"
    np.savez(path, H=H, y=np.repeat(np.arange(3), 3), W=np.zeros((3, 0)),
             settings=np.array(json.dumps({"n_w": 0.0, "tau": 0.5})))
    out = CliRunner().invoke(main, ["certify", str(path)])
    assert out.exit_code == 0 and out.output.startswith("not certified")
    out = CliRunner().invoke(main, ["certify", str(path), "--require-certificate"])
    assert out.exit_code == 1
    out = CliRunner().invoke(main, ["certify", str(path), "--json", "-"])
    assert json.loads(out.output)["certified"] is False


def test_certify_bad_file(tmp_path):
    out = CliRunner().invoke(main, ["certify", str(tmp_path / "missing.npz")])
    assert out.exit_code == 2 and "does not exist" in out.output


def test_certify_unwritable_json_is_one_line(tmp_path):
    _, path = _solve(tmp_path)
    for target in [str(path) + "/x.json"] + (["/proc/ncgeo-review.json"] if os.path.isdir("/proc") else []):
        out = CliRunner().invoke(main, ["certify", str(path), "--json", target])
        assert out.exit_code == 2 and "cannot write" in out.output and "--json" in out.output, out.output


def test_minibatch_file_without_batches_is_refused(tmp_path):
    # certifying the full-batch objective instead of the saved mini-batch one would be wrong
    _, path = _solve(tmp_path)
    data = dict(np.load(path))
    settings = json.loads(str(data["settings"]))
    settings.update(batching="bind", batch_size=2)
    data["settings"] = np.array(json.dumps(settings))
    data.pop("batch_indices", None), data.pop("batch_offsets", None)
    bad = tmp_path / "bind.npz"
    np.savez(bad, **data)
    out = CliRunner().invoke(main, ["certify", str(bad)])
    assert out.exit_code == 2 and "holds no batches" in out.output, out.output


def test_uncertified_json_is_strict_json():
    # a reshuffled solve has no bound: -inf/inf must not become the non-JSON token -Infinity
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "2", "--batching", "shuffle",
                                    "--batch-size", "2", "--max-iterations", "2", "--json", "-"])
    assert out.exit_code == 0, out.output

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    cert = json.loads(out.stdout, parse_constant=refuse)["certificate"]
    assert cert["certified"] is False and cert["lower_bound"] is None and cert["gap"] is None


@pytest.mark.parametrize("args", [
    ["--batching", "bind", "--batch-size", "2", "--certify", "reduced"],
    ["--batching", "partition", "--batch-size", "2", "--certify", "orbit"],
    ["--protos", "2", "--geometry", "random", "--certify", "orbit"],
])
def test_inapplicable_certificate_is_refused_before_the_solve(args, monkeypatch):
    import ncgeo.ufm

    def no_solve(*a, **k):
        raise AssertionError("the solve ran before the option conflict was reported")

    monkeypatch.setattr(ncgeo.ufm, "solve_ufm", no_solve)
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "3", *args])
    assert out.exit_code == 2 and "--certify" in out.output and len(out.output.splitlines()) == 1, out.output


@pytest.mark.parametrize("rtol", ["0", "1", "2.5", "-1e-6"])
def test_certify_rtol_outside_the_open_unit_interval_is_refused(tmp_path, rtol):
    out = CliRunner().invoke(main, ["certify", str(tmp_path / "any.npz"), "--rtol", rtol])
    assert out.exit_code == 2 and "--rtol" in out.output and "Traceback" not in out.output
