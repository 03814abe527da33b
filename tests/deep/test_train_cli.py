"""`ncgeo deep train` as a user sees it: a start line, progress on stderr (the run folder alone on
stdout), a refused --max-test-samples below one per class, and one line on SIGTERM/Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ["--dataset", "mnist", "--device", "cpu", "--width", "2", "--batch-size", "16", "--protos", "10",
           "--eval-batch-size", "32", "--seed", "1"]


def test_start_line_and_progress_go_to_stderr(tiny_mnist, tmp_path):
    from cli import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["deep", "train", *OPTIONS, "--epochs", "2", "--log-every", "2",
                                       "--data-root", str(tiny_mnist), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"  # stdout: the run folder only
    lines = result.stderr.splitlines()
    assert lines[0] == ("training resnet18 (width 2, signed features, d = 16) on mnist: 60 training images in 10 "
                        "classes, 30 test images; device cpu; 3 steps of 16 images per epoch, 2 epochs; "
                        f"run folder {out}")
    for epoch in (0, 1, 2):  # every evaluation counts the 60 + 30 images
        assert any(line.startswith(f"evaluating epoch {epoch}: 100% 90/90 [") for line in lines), lines
    for epoch in (1, 2):
        done = [line for line in lines if line.startswith(f"epoch {epoch}/2: 100% 3/3 [")]
        assert done and re.search(r"loss \d+\.\d+, speed \d+ img/s, lr [\d.e-]+\]$", done[-1]), lines
        assert any(line.startswith(f"epoch {epoch}: loss ") for line in lines)
    quiet = CliRunner().invoke(main, ["deep", "train", *OPTIONS, "--epochs", "1", "--no-progress",
                                      "--data-root", str(tiny_mnist), "--out", str(tmp_path / "quiet")])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == f"{tmp_path / 'quiet'}\n"


def test_max_test_samples_below_one_per_class_is_refused(tiny_mnist, tmp_path):
    from cli import main

    result = CliRunner().invoke(main, ["deep", "train", *OPTIONS, "--epochs", "1", "--max-test-samples", "5",
                                       "--data-root", str(tiny_mnist), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("Error: --max-test-samples must be at least one per class (k = 10): "
                                     "the test set stays balanced, got 5")
    assert not (tmp_path / "run").exists()
    kept = CliRunner().invoke(main, ["deep", "train", *OPTIONS, "--epochs", "1", "--max-test-samples", "10",
                                     "--no-progress", "--data-root", str(tiny_mnist), "--out", str(tmp_path / "ok")])
    assert kept.exit_code == 0, kept.output
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["test_class_counts"] == [1] * 10


@pytest.mark.skipif(os.name != "posix", reason="signals")
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 1)])
def test_an_interrupted_run_says_how_to_continue(tiny_mnist, tmp_path, signum, status):
    from deep.checkpoint import load_checkpoint

    out = tmp_path / "run"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "deep", "train", *OPTIONS, "--epochs", "10000",
                                "--data-root", str(tiny_mnist), "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        seen = []
        for line in process.stderr:  # the bar of epoch 2 starts after epoch 1's checkpoint is written
            seen.append(line)
            if line.startswith("epoch 2/10000:"):
                break
        else:
            pytest.fail("no second epoch: " + "".join(seen))
        process.send_signal(signum)
        rest, stdout = process.stderr.read(), process.stdout.read()
        code = process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert code == status and stdout == "", (code, rest)
    match = re.search(r"^interrupted after epoch (\d+); continue with --resume$", rest, re.MULTILINE)
    assert match and "Traceback" not in rest, rest
    assert load_checkpoint(out / "checkpoint.pt", map_location="cpu")["epoch"] == int(match.group(1)) >= 1
