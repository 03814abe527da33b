"""`ncgeo deep train --nproc 2` end to end: torchrun, gloo on the CPU, rank 0 writing the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ["--dataset", "mnist", "--device", "cpu", "--width", "2", "--batch-size", "16", "--epochs", "1",
           "--protos", "10", "--eval-batch-size", "32", "--no-progress"]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_process_launch_writes_one_run_with_the_single_process_evaluation(tiny_mnist, tmp_path):
    from deep.config import TrainConfig
    from deep.train import train

    single = train(TrainConfig(dataset="mnist", data_root=str(tiny_mnist), device="cpu", width=2,
                               batch_size=16, epochs=1, protos=10.0, eval_batch_size=32, progress=False,
                               out=str(tmp_path / "single")))
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "cli", "deep", "train", "--nproc", "2", *OPTIONS,
                           "--data-root", str(tiny_mnist), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(str(out)) == 1  # rank 0 alone prints the run folder
    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2 and run["steps_per_epoch"] == 60 // 16
    assert (out / "checkpoint.pt").is_file() and len(records(out / "timing.jsonl")) == 1
    ddp_metrics, single_metrics = records(out / "metrics.jsonl"), records(single / "metrics.jsonl")
    assert [r["epoch"] for r in ddp_metrics] == [0, 1]
    # epoch 0 is the initial network: the sharded, gathered evaluation equals one process's
    for split in ("train", "test"):
        for key in ("delta_prototypes", "nc1", "ncc_accuracy", "nearest_prototype_accuracy", "samples"):
            assert ddp_metrics[0][split][key] == pytest.approx(single_metrics[0][split][key], rel=1e-9)
    assert np.isfinite(ddp_metrics[1]["loss"])


def test_nproc_must_divide_the_global_batch(tiny_mnist, tmp_path):
    import cli

    result = CliRunner().invoke(cli.main, ["deep", "train", "--nproc", "3", *OPTIONS,
                                           "--data-root", str(tiny_mnist), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "divisible by --nproc 3" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_nproc_from_the_config_file(tiny_mnist, tmp_path):
    import cli

    config = tmp_path / "ddp.toml"
    config.write_text("nproc = 3\n")
    result = CliRunner().invoke(cli.main, ["deep", "train", "--config", str(config), *OPTIONS,
                                           "--data-root", str(tiny_mnist), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "divisible by --nproc 3" in result.output, result.output


def test_bad_input_is_refused_before_launching_workers(tmp_path, tiny_mnist):
    from cli import main

    runner = CliRunner()
    missing = runner.invoke(main, ["deep", "train", *OPTIONS, "--nproc", "2", "--data-root", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "run")])
    assert missing.exit_code == 2, missing.output
    assert "Traceback" not in missing.output and "ChildFailedError" not in missing.output
    assert len([line for line in missing.output.splitlines() if line.strip()]) == 1
    assert "train-images-idx3-ubyte" in missing.output
    blocked = tmp_path / "file"
    blocked.write_text("x")
    result = runner.invoke(main, ["deep", "train", *OPTIONS, "--nproc", "2", "--data-root", str(tiny_mnist),
                                  "--out", str(blocked / "run")])
    assert result.exit_code == 2 and "--out" in result.output
    synced = runner.invoke(main, ["deep", "train", *OPTIONS, "--nproc", "2", "--data-root", str(tiny_mnist),
                                  "--device", "cpu", "--sync-batchnorm", "on", "--out", str(tmp_path / "run")])
    assert synced.exit_code == 2 and "--sync-batchnorm on needs CUDA devices" in synced.output, synced.output
    assert "ChildFailedError" not in synced.output  # refused by the launcher, not by every worker


def test_wait_or_terminate_passes_sigterm_on_to_its_child(tmp_path):
    """What `launch` does with torchrun, shown with a stand-in child: SIGTERM to the launcher
    (SystemExit through exit_on_sigterm) is passed on, so torchrun can stop its workers; before,
    the launcher died alone (default action) or SIGKILLed its child, orphaning the workers."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "child_stopped"
    child = ("import signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
             "print('ready', flush=True)\n"
             "time.sleep(120)\n")
    launcher = ("import subprocess, sys\n"
                "from ncgeo._io import exit_on_sigterm\n"
                "from deep.launch import wait_or_terminate\n"
                "exit_on_sigterm()\n"
                f"wait_or_terminate(subprocess.Popen([sys.executable, '-c', {child!r}]))\n")
    process = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"  # the child is up, its handler installed
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
    finally:
        process.kill()
    deadline = time.time() + 10
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists()
