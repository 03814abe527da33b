"""Shared fixtures of the deep tests: a tiny trained run (helpers are in ``helpers.py``)."""

from __future__ import annotations

import pytest
from helpers import synthetic_images, tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 2-epoch SCL run (n_w = 10, step imbalance R = 2) on synthetic images."""
    from deep.train import train

    out = tmp_path_factory.mktemp("deep_runs") / "tiny"
    datasets = (synthetic_images(seed=0), synthetic_images(per_class=8, seed=1))
    return train(tiny_config(out, imbalance="step", ratio=2.0), datasets=datasets)
