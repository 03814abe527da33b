"""Class sizes: balanced, step and exponential (long-tail) imbalance (docs/theory.md section 1)."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from ._validation import check_choice, check_int, check_real

__all__ = ["class_sizes", "check_class_sizes", "labels_from_sizes", "MAX_CLASSES"]

#: Largest number of classes (a k x k prototype Gram beyond it needs terabytes).
MAX_CLASSES = 1_000_000
#: Largest total of :func:`labels_from_sizes` (8 GB of labels).
MAX_SAMPLES = 1_000_000_000


def check_class_sizes(class_sizes, min_classes: int = 1) -> list[int]:
    """``class_sizes`` as a list of integers ``>= 1``, at least ``min_classes`` of them
    (``TypeError`` for a non-sequence or a non-integer entry, ``ValueError`` otherwise)."""
    if class_sizes is None or isinstance(class_sizes, (str, bytes)) or not hasattr(class_sizes, "__len__"):
        raise TypeError(f"class_sizes must be a sequence of integers, got {type(class_sizes).__name__}")
    sizes = [check_int(f"class_sizes[{c}]", s, minimum=1) for c, s in enumerate(class_sizes)]
    if len(sizes) < min_classes:
        raise ValueError(f"class_sizes must describe at least {min_classes} classes, got {len(sizes)}")
    return sizes


def class_sizes(num_classes: int, n: int, imbalance: Literal["none", "step", "exp"] = "none",
                ratio: float = 1.0) -> list[int]:
    r"""Number of samples per class.

    * ``"none"``: ``n`` for every class.
    * ``"step"``: the first ``floor(k/2)`` classes have ``n``, the rest ``floor(n/R)``.
    * ``"exp"`` (long tail): ``n_c = floor(n R^{-c/(k-1)})``.

    ``ratio`` ``R >= 1`` is the imbalance ratio; a class is never given fewer than one
    sample (a ``ValueError`` says so when ``n / R < 1``).
    """
    k = check_int("num_classes", num_classes, minimum=1, maximum=MAX_CLASSES)
    n = check_int("n", n, minimum=1)
    check_choice("imbalance", imbalance, ("none", "step", "exp"))
    R = check_real("ratio", ratio)
    if R < 1:
        raise ValueError(f"ratio must be >= 1 (majority / minority size), got {R}")
    if imbalance == "none":
        sizes = [n] * k
    elif imbalance == "step":
        sizes = [n] * (k // 2) + [int(np.floor(n / R))] * (k - k // 2)
    else:
        sizes = [n] if k == 1 else [int(np.floor(n * R ** (-c / (k - 1)) + 1e-9)) for c in range(k)]
    if min(sizes) < 1:
        raise ValueError(f"ratio {R} leaves a class with no samples at n = {n}; need n / ratio >= 1")
    return sizes


def labels_from_sizes(sizes: Sequence[int]) -> np.ndarray:
    """Labels ``[0]*n_0 + [1]*n_1 + ...`` as an int64 array."""
    sizes = [check_int(f"sizes[{i}]", s, minimum=0) for i, s in enumerate(sizes)]
    if sum(sizes) > MAX_SAMPLES:
        raise ValueError(f"sizes add up to {sum(sizes):,} samples, more than {MAX_SAMPLES:,}")
    return np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
