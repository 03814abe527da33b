"""Image datasets without torchvision: CIFAR-10/100 pickles, MNIST/Fashion-MNIST IDX files,
and class imbalance by subsampling (docs/theory.md sections 1 and 7).

Everything is returned as an :class:`ImageDataset`: ``uint8`` images ``(N, C, H, W)`` and
``int64`` labels ``(N,)`` as torch tensors, plus the per-channel normalisation statistics of
the dataset's training split. Move a dataset to the GPU once with :meth:`ImageDataset.to`
and keep it resident there as ``uint8`` (``deep.augment`` converts batches on the device).

A missing or corrupt file raises :class:`DataError` (a ``ValueError``) whose one-line
message names the file, where it was expected and how to obtain it.

CIFAR pickles are read with a restricted unpickler that resolves only the globals that
numpy arrays and plain containers need; anything else (``os.system``, ``eval``, arbitrary
classes) is refused before it can be called.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ncgeo._validation import check_choice, check_device, check_int
from ncgeo.classes import class_sizes

from .augment import check_normalisation

__all__ = [
    "DATASETS",
    "DEFAULT_ROOTS",
    "NORMALIZATION",
    "DataError",
    "ImageDataset",
    "channel_stats",
    "imbalanced_indices",
    "load_dataset",
    "make_imbalanced",
    "read_cifar10",
    "read_cifar100",
    "read_idx",
    "read_mnist",
]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fmnist")

#: Where :func:`load_dataset` looks when no root is given. CIFAR and MNIST roots are relative
#: to the working directory; Fashion-MNIST is where the Debian package
#: ``dataset-fashion-mnist`` installs its IDX ``.gz`` files.
DEFAULT_ROOTS: dict[str, Path] = {
    "cifar10": Path("data"),
    "cifar100": Path("data"),
    "mnist": Path("data/mnist"),
    "fmnist": Path("/usr/share/datasets/fashion-mnist"),
}

#: Per-channel mean and standard deviation (in [0, 1] pixel units) of each training split,
#: as computed by :func:`channel_stats` over all training images (population std). The test
#: split is normalised with the training statistics. Checked against the data in the tests.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fmnist": ((0.2860,), (0.3530,)),
}

_HOW_TO_OBTAIN = {
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
               "there (tar xzf), or pass --data-root",
    "cifar100": "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
                "there (tar xzf), or pass --data-root",
    "mnist": "download the four IDX .gz files of MNIST (train-images-idx3-ubyte.gz, ...; mirror "
             "https://ossci-datasets.s3.amazonaws.com/mnist/) into that folder, or pass --data-root",
    "fmnist": "install the Debian package dataset-fashion-mnist (apt-get install "
              "dataset-fashion-mnist) or download the IDX .gz files from "
              "https://github.com/zalandoresearch/fashion-mnist into that folder, or pass --data-root",
}

_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class DataError(ValueError):
    """A dataset file is missing, corrupt or unsafe; the message is one line naming the file,
    where it was expected and how to obtain it."""


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images and labels as tensors, with the normalisation statistics of the training split.

    Two datasets compare equal only when they are the same object (tensors are not compared).

    Attributes
    ----------
    images : torch.Tensor
        ``uint8`` of shape ``(N, C, H, W)``.
    labels : torch.Tensor
        ``int64`` of shape ``(N,)`` with values in ``[0, num_classes)``.
    num_classes : int
        ``k``; classes may be absent from a subset but keep their index.
    name : str
        Dataset name (``"cifar10"``, ...), with a suffix for derived subsets.
    mean, std : tuple of float
        Per-channel mean and standard deviation in [0, 1] pixel units, used by
        ``deep.augment.to_float`` as ``(x / 255 - mean) / std``.
    class_names : tuple of str
        Human-readable class names when the files provide them (may be empty).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 \
                or self.images.ndim != 4:
            raise TypeError("images must be a uint8 torch tensor of shape (N, C, H, W)")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 \
                or self.labels.shape != (self.images.shape[0],):
            raise TypeError(f"labels must be an int64 torch tensor of shape ({self.images.shape[0]},)")
        check_int("num_classes", self.num_classes, minimum=1)
        mean, std = check_normalisation(self.mean, self.std, self.images.shape[1])
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.labels.device.type == "cpu" and len(self.labels) > 0:
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got {low}..{high}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the image tensor."""
        return self.images.device

    def subset(self, indices: Any) -> "ImageDataset":
        """The samples at ``indices`` (array, tensor or sequence of ints in ``[0, N)``), in that order.

        Negative indices are refused (no wrap-around): they are a bug in the caller, not a
        request for the last samples. The range check reads the indices once (a setup step,
        not a per-batch one).
        """
        if isinstance(indices, torch.Tensor):
            index = indices.detach().reshape(-1)
            if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
                raise TypeError(f"indices must be integers, got dtype {index.dtype}")
            bounds = (int(index.min()), int(index.max())) if index.numel() else None
        else:
            array = np.asarray(indices).reshape(-1)
            if array.size == 0:
                array = array.astype(np.int64)  # [] is float64 to numpy
            if not np.issubdtype(array.dtype, np.integer):
                raise TypeError(f"indices must be integers, got dtype {array.dtype}")
            bounds = (int(array.min()), int(array.max())) if array.size else None  # exact for uint64 too
        if bounds is not None and (bounds[0] < 0 or bounds[1] >= len(self)):
            raise ValueError(f"indices must lie in [0, {len(self) - 1}], got values from {bounds[0]} to {bounds[1]}")
        if not isinstance(indices, torch.Tensor):
            index = torch.from_numpy(array.astype(np.int64))
        index = index.to(device=self.images.device, dtype=torch.int64)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "ImageDataset":
        """The same dataset with both tensors on ``device`` (kept as ``uint8`` / ``int64``).

        ``ValueError`` naming ``device`` when it is not a device name or not available here
        (:func:`ncgeo._validation.check_device`: CUDA without a CUDA build or GPU, a GPU index
        beyond the count, a backend that cannot allocate).
        """
        device = check_device("device", device)
        return replace(self, images=self.images.to(device, non_blocking=non_blocking),
                       labels=self.labels.to(device, non_blocking=non_blocking))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no pixel data): name, sizes, class counts, statistics."""
        return {"name": self.name, "num_samples": len(self), "num_classes": self.num_classes,
                "image_shape": list(self.images.shape[1:]), "class_counts": self.class_counts().tolist(),
                "mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names)}

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, ``int64`` array of length ``num_classes``."""
        return torch.bincount(self.labels, minlength=self.num_classes).cpu().numpy().astype(np.int64)


def channel_stats(images: torch.Tensor | np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population standard deviation of ``uint8`` images ``(N, C, H, W)``
    in [0, 1] units: ``mean_c = E[x_c] / 255``, ``std_c = sqrt(E[x_c^2] - E[x_c]^2) / 255``
    over all images and pixels (accumulated in float64)."""
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"images must hold at least one pixel per channel, got shape {tuple(x.shape)}")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):  # exact moments from the 256-bin histogram of each channel
        hist = torch.bincount(x[:, c].reshape(-1).cpu().to(torch.int64), minlength=256).to(torch.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = ((hist * values.square()).sum() / total - mean.square()).clamp_min(0)
        means.append(float(mean) / 255)
        stds.append(float(var.sqrt()) / 255)
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------- CIFAR pickles

def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    import _codecs  # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')
    allowed[("_codecs", "encode")] = _codecs.encode
    for module in ("builtins", "__builtin__"):
        for obj in (set, frozenset, bytearray, complex, list, dict, tuple, int, float, bool, str, bytes):
            allowed[(module, obj.__name__)] = obj
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array reconstruction and plain builtin containers."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        allowed = _RestrictedUnpickler._allowed
        assert allowed is not None
        try:
            return allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to load {self._path}: the pickle references the forbidden object "
                f"{module}.{name} (only numpy arrays and plain containers are allowed); replace "
                f"the file with a genuine copy") from None


def _load_pickle(path: Path, dataset: str) -> dict:
    how = _HOW_TO_OBTAIN[dataset]
    if not path.is_file():
        raise DataError(f"{dataset} file {path} not found (expected in {path.parent}); {how}")
    try:
        with open(path, "rb") as handle:
            obj = _RestrictedUnpickler(handle, path).load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{dataset} file {path} is corrupt ({type(exc).__name__}: {exc}); "
                        f"replace it: {how}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{dataset} file {path} is corrupt (expected a dict, got "
                        f"{type(obj).__name__}); replace it: {how}")
    return obj


def _entry(batch: dict, key: str, path: Path, dataset: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{dataset} file {path} is corrupt (no {key!r} entry); replace it: "
                    f"{_HOW_TO_OBTAIN[dataset]}")


def _cifar_folder(root: str | Path, dataset: str) -> Path:
    root = Path(root)
    folder = _CIFAR_FOLDERS[dataset]
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or (root / ("batches.meta" if dataset == "cifar10" else "meta")).exists():
        return root
    raise DataError(f"{dataset} folder {root / folder} not found (expected {folder}/ in {root} or "
                    f"{root} to be that folder); {_HOW_TO_OBTAIN[dataset]}")


def _cifar_arrays(paths: Sequence[Path], label_key: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _load_pickle(path, dataset)
        data = np.asarray(_entry(batch, "data", path, dataset))
        y = np.asarray(_entry(batch, label_key, path, dataset))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or y.shape != (data.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{dataset} file {path} is corrupt (data {data.dtype}{data.shape}, "
                            f"{label_key} {y.dtype}{y.shape}; expected uint8 (n, 3072) and n "
                            f"integer labels); replace it: {_HOW_TO_OBTAIN[dataset]}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _names(meta_path: Path, key: str, dataset: str) -> tuple[str, ...]:
    if not meta_path.is_file():
        return ()
    names = _entry(_load_pickle(meta_path, dataset), key, meta_path, dataset)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _dataset(name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
             class_names: tuple[str, ...], source: Path) -> ImageDataset:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name} labels in {source} lie outside [0, {num_classes - 1}]; replace "
                        f"the files: {_HOW_TO_OBTAIN[name.split('-')[0]]}")
    mean, std = NORMALIZATION[name.split("-")[0]]
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels),
                        num_classes, name, mean, std, class_names)


def read_cifar10(root: str | Path, train: bool = True) -> ImageDataset:
    """CIFAR-10 from the ``cifar-10-batches-py`` pickle folder (``root`` is that folder or its
    parent): ``data_batch_1..5`` (train) or ``test_batch``; images ``(N, 3, 32, 32)`` uint8
    (each pickle row is 1024 red, then green, then blue values in row-major order)."""
    folder = _cifar_folder(root, "cifar10")
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = _cifar_arrays([folder / f for f in files], "labels", "cifar10")
    names = _names(folder / "batches.meta", "label_names", "cifar10")
    return _dataset("cifar10", images, labels, 10, names, folder)


def read_cifar100(root: str | Path, train: bool = True,
                  label_mode: Literal["fine", "coarse"] = "fine") -> ImageDataset:
    """CIFAR-100 from the ``cifar-100-python`` pickle folder (``train`` / ``test`` files);
    ``label_mode="fine"`` gives 100 classes, ``"coarse"`` the 20 superclasses."""
    check_choice("label_mode", label_mode, ("fine", "coarse"))
    folder = _cifar_folder(root, "cifar100")
    images, labels = _cifar_arrays([folder / ("train" if train else "test")],
                                   f"{label_mode}_labels", "cifar100")
    names = _names(folder / "meta", f"{label_mode}_label_names", "cifar100")
    name = "cifar100" if label_mode == "fine" else "cifar100-coarse"
    return _dataset(name, images, labels, 100 if label_mode == "fine" else 20, names, folder)


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path, how_to_obtain: str = "replace it with a genuine copy") -> np.ndarray:
    """Read an IDX file (``.gz`` or uncompressed): magic ``0x00 0x00 <dtype code> <ndim>``,
    ``ndim`` big-endian uint32 dimensions, then the big-endian data. Returns a native-endian
    numpy array of that shape. Raises :class:`DataError` naming the file when it is missing,
    truncated or has a bad magic number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} not found (expected in {path.parent}); {how_to_obtain}")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream
        raise DataError(f"IDX file {path} is corrupt ({exc}); {how_to_obtain}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"IDX file {path} has a bad magic number {raw[:4].hex() or 'none'} "
                        f"(expected 0000<type><ndim>); {how_to_obtain}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated in its header; {how_to_obtain}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes, expected {expected} "
                        f"for shape {shape}; {how_to_obtain}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str, dataset: str) -> Path:
    candidates = [root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"]
    for folder in candidates:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"{dataset} file {stem}.gz not found (expected in {root}); {_HOW_TO_OBTAIN[dataset]}")


def read_mnist(root: str | Path, train: bool = True, fashion: bool = False) -> ImageDataset:
    """MNIST or Fashion-MNIST from the four IDX files (``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``) in ``root`` (or its ``raw/``,
    ``MNIST/raw/``, ``FashionMNIST/raw/`` subfolder); images ``(N, 1, 28, 28)`` uint8."""
    dataset = "fmnist" if fashion else "mnist"
    root = Path(root)
    prefix = "train" if train else "t10k"
    image_path = _find_idx(root, f"{prefix}-images-idx3-ubyte", dataset)
    label_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte", dataset)
    how = f"replace it: {_HOW_TO_OBTAIN[dataset]}"
    images, labels = read_idx(image_path, how), read_idx(label_path, how)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{dataset} file {image_path} holds {images.dtype} of shape {images.shape}, "
                        f"expected uint8 (n, rows, cols); {how}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{dataset} file {label_path} holds {labels.shape[0] if labels.ndim else 0} "
                        f"labels for {images.shape[0]} images in {image_path}; {how}")
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot") if fashion else tuple(str(i) for i in range(10))
    return _dataset(dataset, images[:, None], labels.astype(np.int64), 10, names, label_path)


def load_dataset(name: str, root: str | Path | None = None, train: bool = True) -> ImageDataset:
    """Load ``name`` in :data:`DATASETS` from ``root`` (default :data:`DEFAULT_ROOTS`)."""
    check_choice("name", name, DATASETS)
    root = DEFAULT_ROOTS[name] if root is None else Path(root)
    if name == "cifar10":
        return read_cifar10(root, train)
    if name == "cifar100":
        return read_cifar100(root, train)
    return read_mnist(root, train, fashion=name == "fmnist")


# --------------------------------------------------------------------------- imbalance

def imbalanced_indices(labels: Any, imbalance: Literal["none", "step", "exp"] = "none",
                       ratio: float = 1.0, seed: int = 0, num_classes: int | None = None,
                       n: int | None = None) -> np.ndarray:
    r"""Indices of a class-imbalanced subsample (docs/theory.md section 1).

    Class ``c`` keeps ``ncgeo.classes.class_sizes(k, n, imbalance, ratio)[c]`` of its samples,
    drawn without replacement with ``numpy.random.default_rng(seed)``; ``n`` (the majority
    size) defaults to the size of the smallest class in ``labels``, so every class has enough
    samples. With ``imbalance="none"`` and ``n=None`` every sample is kept (the dataset's own
    proportions). ``step`` makes the first ``floor(k/2)`` classes the majority.

    Returns
    -------
    numpy.ndarray
        Sorted ``int64`` indices into ``labels`` (original order preserved).
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TypeError("labels must be a 1-D array of integer class indices")
    check_choice("imbalance", imbalance, ("none", "step", "exp"))
    check_int("seed", seed, minimum=0)
    if len(y) and (y.min() < 0 or y.max() > np.iinfo(np.int64).max):  # compared in y's own dtype (uint64)
        raise ValueError(f"labels must be class indices in [0, 2**63 - 1], got values from {y.min()} to {y.max()}")
    y = y.astype(np.int64, copy=False)
    if num_classes is None:
        k = int(y.max()) + 1 if len(y) else 1
    else:
        k = check_int("num_classes", num_classes, minimum=1)
    if len(y) and y.max() >= k:
        raise ValueError(f"labels must lie in [0, {k - 1}], got {y.min()}..{y.max()}")
    if imbalance == "none" and n is None:
        return np.arange(len(y), dtype=np.int64)
    # counts of the classes present only: a bincount up to the largest label allocates k numbers,
    # and k comes from the data (a stray label 10**12 is a 7 TiB array)
    present, present_counts = np.unique(y, return_counts=True)
    if len(present) < k:
        gaps = np.flatnonzero(present != np.arange(len(present)))
        missing = int(gaps[0]) if len(gaps) else len(present)
        raise ValueError(f"class {missing} has no samples; cannot subsample it")
    counts = present_counts  # every class 0..k-1 is present: present == arange(k)
    n = int(counts.min()) if n is None else check_int("n", n, minimum=1)
    sizes = class_sizes(k, n, imbalance, ratio)
    for c, size in enumerate(sizes):
        if size > counts[c]:
            raise ValueError(f"class {c} has {counts[c]} samples, fewer than the {size} requested (n = {n})")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == c), size=size, replace=False) for c, size in enumerate(sizes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def make_imbalanced(dataset: ImageDataset, imbalance: Literal["none", "step", "exp"] = "none",
                    ratio: float = 1.0, seed: int = 0, n: int | None = None) -> ImageDataset:
    """``dataset.subset(imbalanced_indices(dataset.labels, ...))``; normalisation statistics are
    kept (those of the full training split)."""
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset must be an ImageDataset, got {type(dataset).__name__}")
    index = imbalanced_indices(dataset.labels, imbalance, ratio, seed, dataset.num_classes, n)
    if len(index) == len(dataset):
        return dataset
    return dataset.subset(index)
