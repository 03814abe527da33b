"""Shared fixtures of the deep tests: a tiny trained run (helpers are in ``helpers.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import synthetic_images, tiny_config, write_idx


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 2-epoch SCL run (n_w = 10, step imbalance R = 2) on synthetic images."""
    from deep.train import train

    out = tmp_path_factory.mktemp("deep_runs") / "tiny"
    datasets = (synthetic_images(seed=0), synthetic_images(per_class=8, seed=1))
    return train(tiny_config(out, imbalance="step", ratio=2.0), datasets=datasets)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """Four IDX files in the MNIST format: 10 classes, 6 training and 3 test images each, 12x12."""
    root = tmp_path_factory.mktemp("tiny_mnist")
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 6), ("t10k", 3)):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 256, size=(labels.size, 12, 12))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root
