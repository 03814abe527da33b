"""Full-batch training (--batch-size full), Adam, --augment none and the arch-dependent defaults."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import synthetic_images

from deep.checkpoint import load_checkpoint, read_jsonl
from deep.config import TrainConfig
from deep.launch import check_batch_split, config_arguments
from deep.predict import load_run, check_predictable
from deep.train import train


def _datasets():
    return synthetic_images(seed=0), synthetic_images(per_class=8, seed=1)


def _config(out, **changes):
    values = dict(dataset="mnist", arch="mlp", width=16, batch_size="full", epochs=6, protos=10.0, out=str(out),
                  device="cpu", progress=False, seed=2, eval_every=3)
    values.update(changes)
    return TrainConfig(**values)


def test_defaults_follow_the_architecture():
    resnet, mlp, cnn = TrainConfig(), TrainConfig(arch="mlp"), TrainConfig(arch="cnn")
    assert (resnet.optimizer, resnet.lr, resnet.weight_decay, resnet.width, resnet.augment, resnet.schedule,
            resnet.depth, resnet.views) == ("sgd", 0.1, 5e-4, 64, "crop-flip", "multistep", None, 2)
    assert (mlp.optimizer, mlp.lr, mlp.weight_decay, mlp.width, mlp.depth, mlp.augment, mlp.schedule,
            mlp.views) == ("adam", 1e-3, 0.0, 512, 3, "none", "constant", 1)
    assert (cnn.width, cnn.depth) == (32, 2)
    assert TrainConfig(arch="mlp", lr=0.01, optimizer="sgd").lr == 0.01  # explicit options win
    full = TrainConfig(arch="mlp", batch_size="full", epochs=2000)
    assert full.full_batch and full.eval_every == 100 and TrainConfig(batch_size="64").batch_size == 64
    with pytest.raises(ValueError, match="--depth"):
        TrainConfig(depth=3)
    with pytest.raises(ValueError, match="--feature"):
        TrainConfig(arch="mlp", feature="mlp")
    assert TrainConfig(arch="cnn", feature="abs").feature == "abs"  # |z|: small networks only
    with pytest.raises(ValueError, match="--feature abs"):
        TrainConfig(feature="abs")
    with pytest.raises(ValueError, match="--batch-size"):
        TrainConfig(batch_size="half")
    with pytest.raises(ValueError, match="--nproc"):
        check_batch_split(full, 2)
    assert TrainConfig.from_dict(full.to_dict()) == full
    assert "--batch-size" in config_arguments(full) and "full" in config_arguments(full)


def test_full_batch_run_is_one_step_per_epoch_and_resumes_bit_identically(tmp_path):
    straight = train(_config(tmp_path / "straight"), datasets=_datasets())
    facts = json.loads((straight / "run.json").read_text())
    assert facts["full_batch"] and facts["steps_per_epoch"] == 1 and facts["views"] == 1
    assert facts["samples_per_batch"] == 96  # the whole training set, one view each
    assert [line["epoch"] for line in read_jsonl(straight / "metrics.jsonl")] == [0, 3, 6]
    # the checkpoint is written at the evaluations only: stopping after 4 epochs keeps epoch 4 (last of the call)
    resumed = tmp_path / "resumed"
    train(_config(resumed), datasets=_datasets(), stop_after=4)
    assert load_checkpoint(resumed / "checkpoint.pt")["epoch"] == 4
    assert "exp_avg" in next(iter(load_checkpoint(resumed / "checkpoint.pt")["optimizer"]["state"].values()))
    train(_config(resumed, resume=True), datasets=_datasets())
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert read_jsonl(straight / "metrics.jsonl") == read_jsonl(resumed / "metrics.jsonl")
    # deep predict's default for a full-batch run of single views is the exact model (training counts)
    assert check_predictable(load_run(straight), write=False) == "dataset"


def test_full_batch_with_two_augmented_views_predicts_with_the_batch_counts(tmp_path):
    run = train(_config(tmp_path / "views", arch="cnn", augment="crop-flip", epochs=2, eval_every=1, width=4),
                datasets=_datasets())
    facts = json.loads((run / "run.json").read_text())
    assert facts["samples_per_batch"] == 192 and facts["views"] == 2
    assert check_predictable(load_run(run), write=False) == "batch"
