"""Helpers shared by the deep tests (imported as ``helpers``; tests/deep is on ``sys.path``):
synthetic images and a tiny run configuration, IDX files, run-folder copies and monkeypatches."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
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


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """``array`` in the IDX format (big-endian; ``code`` 0x08 is uint8, 0x0B int16, ... 0x0E float64)."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped ``uint8`` IDX file, as MNIST ships them."""
    with gzip.open(path, "wb") as handle:
        handle.write(idx_bytes(array.astype(np.uint8)))


def copy_run(tiny_run, tmp_path, name="run"):
    """A copy of the run folder ``tiny_run`` under ``tmp_path``, without its prediction."""
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    (run / "prediction.json").unlink(missing_ok=True)
    return run


def refuse_to_solve(monkeypatch):
    """Make every UFM/CE-limit solve fail the test."""
    import ncgeo.certify

    def refuse(*args, **kwargs):
        raise AssertionError("solved although the result cannot be written")

    monkeypatch.setattr(ncgeo.certify, "solve_reduced", refuse)
    monkeypatch.setattr(ncgeo.certify, "certify_ce_limit", refuse)


def pretend_read_only(monkeypatch, folder):
    """``os.access`` reports ``folder`` read-only (the tests may run as root, for whom chmod changes nothing)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(path) == os.path.abspath(folder) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
