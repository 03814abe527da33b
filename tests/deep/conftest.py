"""Shared fixtures of the deep tests: a learnable synthetic image set and a tiny trained run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deep.config import TrainConfig
from deep.data import ImageDataset

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def synthetic_images(num_classes: int = 4, per_class: int = 24, size: int = 12, seed: int = 0,
                     name: str = "synthetic") -> ImageDataset:
    """1-channel ``uint8`` images: a class-specific bright square on noise (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = rng.integers(0, 60, size=(len(labels), 1, size, size))
    half = size // 2
    for index, label in enumerate(labels):
        row, col = divmod(int(label) % 4, 2)
        images[index, 0, row * half:(row + 1) * half, col * half:(col + 1) * half] += 150 + 20 * (label // 4)
    return ImageDataset(torch.as_tensor(images.astype(np.uint8)), torch.as_tensor(labels, dtype=torch.int64),
                        num_classes, name, (0.3,), (0.3,))


def tiny_config(out, **changes) -> TrainConfig:
    """A run that trains in about a second on :func:`synthetic_images`."""
    values = dict(dataset="mnist", width=2, epochs=2, batch_size=16, lr=0.05, protos=10.0, out=str(out),
                  device="cpu", progress=False, eval_batch_size=64, seed=3)
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 2-epoch SCL run (n_w = 10, step imbalance R = 2) on synthetic images."""
    from deep.train import train

    out = tmp_path_factory.mktemp("deep_runs") / "tiny"
    datasets = (synthetic_images(seed=0), synthetic_images(per_class=8, seed=1))
    return train(tiny_config(out, imbalance="step", ratio=2.0), datasets=datasets)
