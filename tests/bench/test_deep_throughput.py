"""bench/deep_throughput.py and bench/gpu_check.sh on the CPU.

The GPU check runs once, in a session lent a GPU, with minutes of device time: these tests
keep both scripts working in CI (the FLOP count against a closed form, the JSON they write,
explicit options winning over --quick, the whole gpu_check.sh logic in its --cpu-smoke mode).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def load_bench():
    spec = importlib.util.spec_from_file_location("deep_throughput", ROOT / "bench" / "deep_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet18_macs(width: int, size: int, channels: int) -> int:
    """Closed-form multiply-accumulates of the CIFAR-stem ResNet-18 (no linear head)."""
    def conv(c_in, c_out, kernel, side):
        return side * side * c_out * c_in * kernel * kernel

    total = conv(channels, width, 3, size)                   # 3x3 stem, stride 1, no max-pool
    c, side = width, size
    for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
        out_side = side if stage == 0 else (side - 1) // 2 + 1  # 3x3 stride 2, padding 1: ceil(side / 2)
        total += conv(c, c_out, 3, out_side) + conv(c_out, c_out, 3, out_side)    # block 1
        if stage > 0:
            total += conv(c, c_out, 1, out_side)             # 1x1 projection shortcut
        total += 2 * conv(c_out, c_out, 3, out_side)         # block 2
        c, side = c_out, out_side
    return total


@pytest.mark.parametrize("width, size, channels", [(64, 32, 3), (8, 28, 1), (4, 16, 3)])
def test_mac_count_matches_the_closed_form(width, size, channels):
    import torch

    from deep.models import build_model

    bench = load_bench()
    model = build_model("resnet18", channels, width)
    macs = bench.count_macs_per_sample(model, (channels, size, size), torch.device("cpu"))
    assert macs == resnet18_macs(width, size, channels)
    if (width, size, channels) == (64, 32, 3):
        assert macs == 555_417_600  # the 0.56 GMAC usually quoted for CIFAR ResNet-18


def test_quick_run_writes_consistent_json_and_explicit_options_win(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "deep_throughput.py"), "--quick", "--device", "cpu",
                           "--workers", "0", "--batch-size", "6", "--steps", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["batch_size"] == 6 and result["steps"] == 2 and result["width"] == 4  # --quick for the rest
    assert result["image_shape"] == [3, 16, 16] and result["classes"] == 10 and result["n_w"] == 10
    # the closed form at --quick's sizes; 2 views x (forward + 2 backward) x 2 FLOPs per MAC
    assert result["macs_per_sample"] == resnet18_macs(4, 16, 3)
    assert result["training_flops_per_image"] == 12 * resnet18_macs(4, 16, 3)
    for name in ("ncgeo", "reference"):
        assert result[name]["images_per_second"] > 0
        assert result[name]["tflops"] == pytest.approx(
            result[name]["images_per_second"] * result["training_flops_per_image"] / 1e12)
    assert result["ratio"] == pytest.approx(result["ncgeo"]["images_per_second"]
                                            / result["reference"]["images_per_second"])
    assert result["reference"]["materialised_rows"] == 112  # 2 views x 6 images + 10 classes x 10 copies
    assert "ratio:" in done.stdout and "images/s" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file() or shutil.which("bash") is None
                    or shutil.which("timeout") is None, reason="needs Fashion-MNIST, bash and timeout")
def test_gpu_check_script_logic_in_cpu_smoke_mode(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("OUT", None)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke", "--data-root", str(FMNIST),
                           "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == {"throughput": "0", "throughput_compiled": "skipped", "throughput_b512": "0",
                                 "fmnist_nw0": "0", "fmnist_nw100": "0", "gpu_tests": "0"}
    targets = summary["targets"]
    assert targets["best_ratio"] == pytest.approx(targets["best_ncgeo_images_per_second"]
                                                  / targets["reference_images_per_second"])
    assert summary["throughput_b512"]["batch_size"] == 32  # the smoke's explicit size, not --quick's
    for n_w in (0, 100):
        run = summary["runs"][f"fmnist_nw{n_w}"]
        assert run["n_w"] == n_w and run["epochs"] == 1 and set(run["delta_prototypes_by_epoch"]) == {"0", "1"}
        assert 0 <= run["train_delta_prototypes"] <= 2 and 0 <= run["test_ncc_accuracy"] <= 1
        assert (out / f"fmnist_nw{n_w}_metrics.jsonl").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["gpu_check.log", "summary.json", "throughput.json", "throughput_b512.json",
         "fmnist_nw0_metrics.jsonl", "fmnist_nw100_metrics.jsonl"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ncgeo_gpu_check.")]  # checkpoints removed


def test_a_failing_pipeline_keeps_what_was_measured(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "deep_throughput.py"), "--quick", "--device", "cpu",
                           "--workers", "-1", "--steps", "1", "--json", str(out)],  # the reference's DataLoader refuses
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "reference: FAILED (ValueError: num_workers" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert result["ncgeo"]["images_per_second"] > 0 and "ratio" not in result
    assert result["reference_error"].startswith("ValueError: num_workers")
    assert [p.name for p in tmp_path.iterdir()] == ["throughput.json"]  # no temporary file left
