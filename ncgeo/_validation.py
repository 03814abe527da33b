"""Argument checks shared by the public functions of ncgeo.

Every check raises ``ValueError`` or ``TypeError`` whose message names the
argument and says what was expected, so that the CLI can print it as one line.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__: list[str] = []


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float after checking that it is finite and > 0."""
    value = check_real(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """Return ``value`` as a float after checking that it is finite and >= 0."""
    value = check_real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def check_real(name: str, value: Any) -> float:
    """Return ``value`` as a finite float (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
            value = value.item()
        elif (isinstance(value, np.ndarray) and value.ndim == 0
              and (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating))):
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


#: Smallest temperature accepted. Logits ``h.h'/tau`` (``|h.h'| <= 1``) carry round-off of
#: order ``eps/tau``: 1e-10 in float64 at 1e-6, but 1e-2 at 1e-14, and at 1e-17 the loss is 0.
MIN_TAU = 1e-6


def check_tau(value: Any, name: str = "tau") -> float:
    """Return the temperature as a float after checking ``MIN_TAU <= tau < inf``."""
    tau = check_positive(name, value)
    if tau < MIN_TAU:
        raise ValueError(f"{name} must be >= {MIN_TAU:g} (below it the loss is lost in round-off), got {tau!r}")
    return tau


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` as a bool; ``TypeError`` for anything but a bool (``"no"`` is truthy)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` (a Python or numpy integer, not a bool) as an int after checking its
    type and its bounds ``minimum <= value <= maximum`` (each optional)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value}")
    return value


def check_rank(rank: Any, world_size: Any, prefix: str = "") -> tuple[int, int]:
    """``(rank, world_size)`` as ints with ``0 <= rank < world_size`` (a process's place among
    ``world_size`` processes); ``prefix`` starts the names in the messages (``"shard "``)."""
    world_size = check_int(f"{prefix}world_size", world_size, minimum=1)
    rank = check_int(f"{prefix}rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"{prefix}rank must be < world_size = {world_size}, got {rank}")
    return rank, world_size


def check_device(name: str, value: Any) -> torch.device:
    """Return ``value`` as a ``torch.device`` on which tensors can be made here.

    Accepts a ``torch.device``, a string such as ``"cpu"`` or ``"cuda:0"``, or an
    accelerator index (int). ``TypeError`` for another type; ``ValueError`` naming
    ``name`` for an unknown device, CUDA when it is not available, a CUDA index beyond
    the devices present, or another backend that cannot allocate here.
    """
    if isinstance(value, bool) or not isinstance(value, (str, torch.device, int, np.integer)):
        raise TypeError(f"{name} must be a torch device such as 'cpu' or 'cuda', got {type(value).__name__}")
    try:
        device = torch.device(int(value) if isinstance(value, np.integer) else value)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda', got {value!r} "
                         f"({_first_sentence(exc)})") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {value!r} was requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {value!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
    if device.type not in ("cpu", "cuda"):  # a CUDA probe would open a context on GPU 0 in every process
        try:  # other backends (mps, xpu, ...) are only usable where they are present
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as exc:
            raise ValueError(f"{name} {value!r} cannot be used on this machine "
                             f"({_first_sentence(exc)})") from exc
    return device


def _first_sentence(exc: BaseException, limit: int = 300) -> str:
    """The first sentence of an exception's message on one line (torch's can run to pages)."""
    text = " ".join(str(exc).split())
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def as_real_array(name: str, value: Any, ndim: int | None = None) -> np.ndarray:
    """``np.asarray(value)`` after checking it is real and numeric (no copy, no cast).

    Used where a large array must be converted chunk by chunk rather than at once.
    """
    try:
        array = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise TypeError(f"{name} must be real, got a complex array")
    _check_ndim(name, array.shape, ndim)
    return array


def _check_ndim(name: str, shape: tuple, ndim: int | None) -> None:
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {tuple(shape)}")


def as_float_tensor(name: str, value: Any, ndim: int, check_finite: bool = True) -> torch.Tensor:
    """Convert numpy/torch/sequence input to a floating torch tensor of ``ndim`` dims.

    Torch tensors keep their dtype and device (and autograd graph); numpy arrays
    and sequences become float64 CPU tensors.
    """
    if isinstance(value, torch.Tensor):
        tensor = value
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    else:
        tensor = torch.as_tensor(as_real_array(name, value).astype(np.float64))
    _check_ndim(name, tuple(tensor.shape), ndim)
    if check_finite and not bool(torch.isfinite(tensor.detach()).all()):
        raise ValueError(f"{name} must contain only finite values")
    return tensor


def as_label_tensor(name: str, value: Any, length: int, num_classes: int | None,
                    device: torch.device | None = None, check_range: bool = True) -> torch.Tensor:
    """Convert labels to an int64 tensor of shape ``(length,)`` with values in ``[0, num_classes)``."""
    if isinstance(value, torch.Tensor):
        labels = value
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
        labels = labels.to(torch.int64)
    else:
        array = np.asarray(value)
        if array.size == 0 and array.dtype == np.float64:
            array = array.astype(np.int64)
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name} must hold integer class indices, got dtype {array.dtype}")
        labels = torch.as_tensor(array.astype(np.int64))
    if labels.ndim != 1 or labels.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(labels.shape)}")
    if device is not None:
        labels = labels.to(device)
    if check_range and length > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
            raise ValueError(f"{name} must lie in {bound}, got values from {low} to {high}")
    return labels


def as_float_array(name: str, value: Any, ndim: int | None = None) -> np.ndarray:
    """Convert numpy/torch/sequence input to a finite float64 numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.to(torch.float64) if value.is_floating_point() else value).numpy()
    array = as_real_array(name, value, ndim).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite values")
    return array
