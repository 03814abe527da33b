"""Readers on tiny files written in the real formats, the restricted unpickler, imbalance."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deep.data import (
    DEFAULT_ROOTS,
    NORMALIZATION,
    DataError,
    ImageDataset,
    channel_stats,
    imbalanced_indices,
    load_dataset,
    make_imbalanced,
    read_cifar10,
    read_cifar100,
    read_idx,
    read_mnist,
)
from ncgeo.classes import class_sizes
from helpers import idx_bytes

FMNIST = DEFAULT_ROOTS["fmnist"]


def _py2_pickle(obj) -> bytes:
    """Protocol-2 opcodes as Python 2's cPickle wrote the original CIFAR files: byte strings as
    STRING opcodes (loaded as bytes), arrays through ``numpy.core.multiarray._reconstruct``."""
    out = bytearray(b"\x80\x02")

    def emit(value) -> None:
        if isinstance(value, bytes):
            out.extend(b"U" + bytes([len(value)]) + value if len(value) < 256
                       else b"T" + struct.pack("<i", len(value)) + value)
        elif isinstance(value, (int, np.integer)):
            out.extend(b"J" + struct.pack("<i", int(value)))
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                emit(item)
            out.extend(b"e")
        elif isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                emit(key)
                emit(item)
            out.extend(b"u")
        elif isinstance(value, np.ndarray):
            assert value.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01")
            out.extend(b"(" + b"".join(b"J" + struct.pack("<i", d) for d in value.shape) + b"t")
            out.extend(b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.extend(b"\x89")
            emit(value.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(value))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _write(path: Path, obj, style: str) -> None:
    data = _py2_pickle(obj) if style == "py2" else pickle.dumps(obj, protocol=int(style))
    path.write_bytes(data)


def _cifar10(root: Path, rng: np.random.Generator, style: str, per_batch: int = 3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        _write(folder / name, {b"batch_label": b"training batch", b"labels": y, b"data": data,
                               b"filenames": [b"img%d.png" % i for i in range(per_batch)]}, style)
        images[name], labels[name] = data, y
    _write(folder / "batches.meta", {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                                                      b"dog", b"frog", b"horse", b"ship", b"truck"],
                                     b"num_cases_per_batch": per_batch, b"num_vis": 3072}, style)
    return folder, images, labels


@pytest.mark.parametrize("style", ["py2", "2", "4", "5"])
def test_cifar10_round_trip(tmp_path, style):
    rng = np.random.default_rng(0)
    folder, images, labels = _cifar10(tmp_path, rng, style)
    train = read_cifar10(tmp_path, train=True)                  # parent folder
    test = read_cifar10(folder, train=False)                    # the folder itself
    expected = np.concatenate([images[f"data_batch_{i}"] for i in range(1, 6)])
    assert train.images.dtype == torch.uint8 and train.images.shape == (15, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images.numpy(), expected.reshape(15, 3, 32, 32))
    np.testing.assert_array_equal(train.labels.numpy(), sum((labels[f"data_batch_{i}"] for i in range(1, 6)), []))
    # layout: row = 1024 red (row-major 32x32), then green, then blue
    assert train.images[4, 1, 2, 5] == expected[4, 1024 + 2 * 32 + 5]
    np.testing.assert_array_equal(test.images.numpy().reshape(3, 3072), images["test_batch"])
    assert train.num_classes == 10 and train.class_names[0] == "airplane" and train.name == "cifar10"
    assert train.mean == NORMALIZATION["cifar10"][0]


@pytest.mark.parametrize("style", ["py2", "4"])
@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_round_trip(tmp_path, style, mode):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    content = {}
    for name, n in (("train", 5), ("test", 2)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [f // 5 for f in fine]
        _write(folder / name, {b"filenames": [b"x"] * n, b"batch_label": b"b", b"fine_labels": fine,
                               b"coarse_labels": coarse, b"data": data}, style)
        content[name] = (data, fine, coarse)
    _write(folder / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)],
                             b"coarse_label_names": [b"s%d" % i for i in range(20)]}, style)
    for train, name in ((True, "train"), (False, "test")):
        ds = read_cifar100(tmp_path if train else folder, train=train, label_mode=mode)
        data, fine, coarse = content[name]
        np.testing.assert_array_equal(ds.images.numpy(), data.reshape(-1, 3, 32, 32))
        np.testing.assert_array_equal(ds.labels.numpy(), fine if mode == "fine" else coarse)
        assert ds.num_classes == (100 if mode == "fine" else 20)
        assert ds.class_names[3] == ("c3" if mode == "fine" else "s3")
    assert len(load_dataset("cifar100", tmp_path, train=False)) == 2


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_forbidden_pickle_refused_and_not_executed(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "executed"
    data = np.zeros((1, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": [0]}, protocol=protocol))
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": data, b"labels": [_Evil(marker)]},
                                                       protocol=protocol))
    with pytest.raises(DataError, match=r"data_batch_3.*forbidden object (posix|nt)\.system") as info:
        read_cifar10(folder)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": data, b"labels": [eval]}, protocol=protocol))
    with pytest.raises(DataError, match=r"builtins?_*\.eval"):
        read_cifar10(folder)


def test_corrupt_pickle_and_missing_files(tmp_path):
    with pytest.raises(DataError) as info:
        read_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert "cifar-10-batches-py" in message and str(tmp_path / "nowhere") in message
    assert "cifar-10-python.tar.gz" in message and "\n" not in message
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    with pytest.raises(DataError, match=r"data_batch_1 not found \(expected in .*cifar-10-batches-py\).*tar xzf"):
        read_cifar10(tmp_path)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(b"\x80\x02}q\x00(U\x04data")  # truncated
    with pytest.raises(DataError, match=r"data_batch_1 is corrupt.*replace it"):
        read_cifar10(tmp_path)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                              b"labels": [0, 1]}))
    with pytest.raises(DataError, match="expected uint8 \\(n, 3072\\)"):
        read_cifar10(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset("fmnist", tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path) in message
    assert "dataset-fashion-mnist" in message and "\n" not in message


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C),
                                        (np.float32, 0x0D), (np.float64, 0x0E)])
def test_idx_round_trip(tmp_path, dtype, code):
    array = (np.arange(2 * 3 * 4) * 7 % 251).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / "x-idx3.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(idx_bytes(array, code))
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    raw = tmp_path / "x-idx3"
    raw.write_bytes(idx_bytes(array, code))
    np.testing.assert_array_equal(read_idx(raw), array)


def test_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((2, 2), np.uint8), 0x08)
    bad = tmp_path / "bad-magic.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(b"\x01\x00" + good[2:])
    with pytest.raises(DataError, match=r"bad-magic\.gz has a bad magic number 01000802"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(good[:-1])
    with pytest.raises(DataError, match="short holds 3 data bytes, expected 4"):
        read_idx(short)
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(good)
    with pytest.raises(DataError, match="plain.gz is corrupt"):
        read_idx(notgz)
    damaged = bytearray(gzip.compress(idx_bytes((np.arange(4000) * 7 % 251).astype(np.uint8), 0x08), mtime=0))
    damaged[24:44] = b"\xff" * 20  # valid gzip header, broken deflate stream: gzip raises zlib.error
    (tmp_path / "damaged.gz").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="damaged.gz is corrupt"):
        read_idx(tmp_path / "damaged.gz")
    with pytest.raises(DataError, match="missing.gz not found"):
        read_idx(tmp_path / "missing.gz")


def _write_mnist(root: Path, n: int, rng: np.random.Generator, layout: str = "") -> tuple:
    folder = root / layout if layout else root
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(idx_bytes(images, 0x08))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x08))  # uncompressed
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("layout", ["", "MNIST/raw"])
def test_mnist_reader(tmp_path, layout):
    content = _write_mnist(tmp_path, 7, np.random.default_rng(2), layout)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = read_mnist(tmp_path, train=train)
        assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == torch.uint8
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), content[prefix][0])
        np.testing.assert_array_equal(ds.labels.numpy(), content[prefix][1])
        assert ds.name == "mnist" and ds.mean == NORMALIZATION["mnist"][0]
    fashion = load_dataset("fmnist", tmp_path)
    assert fashion.name == "fmnist" and fashion.class_names[-1] == "Ankle boot"


def test_mnist_count_mismatch(tmp_path):
    _write_mnist(tmp_path, 4, np.random.default_rng(3))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8), 0x08))
    with pytest.raises(DataError, match="holds 3 labels for 4 images"):
        read_mnist(tmp_path)


@pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST not installed at {FMNIST} "
                    "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    train = load_dataset("fmnist")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.num_classes == 10 and list(train.class_counts()) == [6000] * 10
    mean, std = channel_stats(train.images)
    np.testing.assert_allclose(mean, NORMALIZATION["fmnist"][0], atol=1e-3)
    np.testing.assert_allclose(std, NORMALIZATION["fmnist"][1], atol=1e-3)
    test = load_dataset("fmnist", train=False)
    assert test.images.shape == (10000, 1, 28, 28)


def test_channel_stats_exact():
    images = torch.tensor([[[[0, 255]], [[51, 51]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, (0.5, 0.2))
    np.testing.assert_allclose(std, (0.5, 0.0))


@pytest.mark.parametrize("imbalance,ratio", [("step", 10), ("exp", 10), ("step", 1), ("exp", 3.5)])
def test_imbalanced_indices_counts(imbalance, ratio):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, size=900)
    index = imbalanced_indices(labels, imbalance, ratio, seed=5)
    n = np.bincount(labels).min()
    assert list(np.bincount(labels[index], minlength=6)) == class_sizes(6, n, imbalance, ratio)
    assert len(np.unique(index)) == len(index) and np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(index, imbalanced_indices(torch.as_tensor(labels), imbalance, ratio, seed=5))
    assert not np.array_equal(index, imbalanced_indices(labels, imbalance, ratio, seed=6))


def test_imbalance_options_and_errors():
    labels = np.repeat(np.arange(4), [10, 12, 9, 20])
    np.testing.assert_array_equal(imbalanced_indices(labels), np.arange(len(labels)))
    assert list(np.bincount(labels[imbalanced_indices(labels, "none", n=5)])) == [5] * 4
    assert list(np.bincount(labels[imbalanced_indices(labels, "step", 2, n=8)])) == [8, 8, 4, 4]
    with pytest.raises(ValueError, match="class 4 has no samples"):
        imbalanced_indices(labels, "step", 3, num_classes=5)
    with pytest.raises(ValueError, match="fewer than the 11 requested"):
        imbalanced_indices(labels, "step", 2, n=11)
    with pytest.raises(ValueError, match="imbalance must be one of"):
        imbalanced_indices(labels, "linear", 2)
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        imbalanced_indices(labels, "step", 0.5)


def _toy(n: int = 40, k: int = 4) -> ImageDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageDataset(images, torch.arange(n) % k, k, "toy", (0.5,), (0.25,))


def test_make_imbalanced_and_dataset_methods():
    ds = _toy()
    sub = make_imbalanced(ds, "step", 5, seed=0)
    assert list(sub.class_counts()) == [10, 10, 2, 2]
    # images travel with their labels
    np.testing.assert_array_equal(sub.images[:, 0, 0, 0].numpy() % 4, sub.labels.numpy())
    assert make_imbalanced(ds) is ds
    again = make_imbalanced(ds, "step", 5, seed=0)
    assert torch.equal(again.images, sub.images)
    picked = ds.subset([3, 1])
    assert picked.labels.tolist() == [3, 1] and picked.mean == ds.mean and len(picked) == 2
    assert torch.equal(ds.subset(torch.tensor([0, 5])).images[:, 0, 0, 0], torch.tensor([0, 5], dtype=torch.uint8))
    moved = ds.to("cpu")
    assert moved.device.type == "cpu" and torch.equal(moved.images, ds.images)
    with pytest.raises(TypeError, match="indices must be integers"):
        ds.subset(np.array([0.5]))
    description = sub.to_dict()
    assert description["num_samples"] == 24 and description["class_counts"] == [10, 10, 2, 2]
    assert description["image_shape"] == [1, 2, 2] and description["mean"] == [0.5]
    assert sub == sub and sub != again      # identity equality, no tensor comparison


def test_image_dataset_validation():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(images.float(), torch.zeros(3, dtype=torch.int64), 2, "x", (0.0,), (1.0,))
    with pytest.raises(TypeError, match="int64"):
        ImageDataset(images, torch.zeros(2, dtype=torch.int64), 2, "x", (0.0,), (1.0,))
    with pytest.raises(ValueError, match="one entry per channel"):
        ImageDataset(images, torch.zeros(3, dtype=torch.int64), 2, "x", (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        ImageDataset(images, torch.tensor([0, 1, 2]), 2, "x", (0.0,), (1.0,))


@pytest.mark.parametrize("indices", [[0, 99], [40], [-1], np.array([2, -3]), torch.tensor([0, 40]),
                                     torch.tensor([-1]), np.array([2**64 - 1], dtype=np.uint64)])
def test_subset_refuses_indices_outside_the_dataset(indices):
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 39\]"):
        _toy().subset(indices)


def test_subset_of_nothing_is_empty():
    assert len(_toy().subset([])) == 0 and len(_toy().subset(torch.tensor([], dtype=torch.int64))) == 0
    assert _toy().subset(np.array([39], dtype=np.uint8)).labels.tolist() == [3]


def test_make_imbalanced_needs_a_dataset():
    with pytest.raises(TypeError, match="dataset must be an ImageDataset, got str"):
        make_imbalanced("x")


def test_imbalance_never_allocates_up_to_the_largest_label():
    labels = np.array([0, 10**12])  # a bincount up to 10**12 is 7 TiB
    np.testing.assert_array_equal(imbalanced_indices(labels), [0, 1])
    with pytest.raises(ValueError, match="class 1 has no samples"):
        imbalanced_indices(labels, "step", 2)
    with pytest.raises(ValueError, match="class 1 has no samples"):
        imbalanced_indices(labels, "none", n=1)
    with pytest.raises(ValueError, match="class 3 has no samples"):
        imbalanced_indices(np.array([0, 1, 2, 4, 5]), "exp", 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        imbalanced_indices(labels, num_classes=10)


def test_imbalance_refuses_labels_beyond_int64():
    labels = np.array([0, 2**63], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\*\*63 - 1\]"):
        imbalanced_indices(labels)
    small = np.array([0, 1, 1, 0], dtype=np.uint64)  # unsigned labels that fit are fine
    assert list(imbalanced_indices(small, "none", n=1, seed=0).shape) == [2]


@pytest.mark.parametrize("device, match", [
    ("gpu", "device must be a torch device such as 'cpu' or 'cuda', got 'gpu'"),
    pytest.param("cuda", "device 'cuda' was requested but CUDA is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is available here")),
    ("cuda:1000", "device 'cuda:1000'"),
    (3.5, "device must be a torch device"),
])
def test_to_an_unavailable_device_is_a_value_error(device, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _toy().to(device)


def test_channel_stats_of_no_pixels_is_an_error():
    with pytest.raises(ValueError, match="at least one pixel"):
        channel_stats(torch.zeros(0, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least one pixel"):
        channel_stats(torch.zeros(2, 1, 0, 4, dtype=torch.uint8))


@pytest.mark.parametrize("mean, std, match", [
    ((float("nan"),), (1.0,), "mean must be finite"),
    ((float("inf"),), (1.0,), "mean must be finite"),
    ((0.5,), (float("inf"),), "std must be finite and > 0"),
    ((0.5,), (float("nan"),), "std must be finite and > 0"),
    ((0.5,), (0.0,), "std must be finite and > 0"),
    ((0.5,), (-1.0,), "std must be finite and > 0"),
    (("a",), (1.0,), "mean must be a sequence of numbers"),
    ((0.5,), 1.0, "std must be a sequence of numbers"),
    ((True,), (1.0,), "mean must be a sequence of numbers"),
])
def test_image_dataset_statistics_must_be_finite_numbers(mean, std, match):
    images, labels = torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)
    with pytest.raises((ValueError, TypeError), match=match):
        ImageDataset(images, labels, 2, "x", mean, std)


def test_image_dataset_statistics_are_stored_as_float_tuples():
    images, labels = torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)
    ds = ImageDataset(images, labels, 2, "x", [np.float32(0.5)], torch.tensor([0.25]))
    assert ds.mean == (0.5,) and ds.std == (0.25,) and type(ds.mean[0]) is float
