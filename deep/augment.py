"""Batched data augmentation on tensors, on the data's own device (docs/theory.md section 7).

Random crop with zero padding and random horizontal flip, as in the SupCon training code,
but for a whole batch at once: the crop and flip of every image are one gather from the
zero-padded batch (no loop over images, no host round trip), so a training set kept on the
GPU as ``uint8`` is augmented there. Images are ``(N, C, H, W)``; any dtype.

Randomness comes only from the ``generator`` argument. Random numbers are drawn on the
generator's device and moved to the images' device; pass a generator that lives on the
images' device (``torch.Generator(device="cuda")``) to keep the step free of host
synchronisation. Draw order (fixed, so runs are reproducible): vertical offsets, horizontal
offsets, then flip decisions, each of length ``views * N`` (view-major).

These functions run in every training step, so their argument checks look only at types and
shapes (never at tensor values, which would read them back from the device): ``padding`` is
smaller than the image (a larger one only adds crops of pure zeros, and memory) and
``views <= MAX_VIEWS``; :func:`to_float` takes ``uint8`` images only.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ncgeo._validation import check_int, check_rank, check_real

__all__ = [
    "MAX_VIEWS",
    "augment_batch",
    "augment_views",
    "check_normalisation",
    "random_crop",
    "random_crop_flip",
    "random_horizontal_flip",
    "to_float",
]


#: Most augmented views of a batch in one call (SupCon uses 2, multi-crop schemes about 10); the
#: output is ``views`` times the input, so an unbounded count only ends in the allocator.
MAX_VIEWS = 64


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    return images


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _draw(kind: str, high: int, size: int, generator: torch.Generator | None,
          device: torch.device) -> torch.Tensor:
    """``size`` integers in ``[0, high)`` (``kind="int"``) or uniforms in [0, 1) (``"uniform"``),
    drawn on the generator's device and moved to ``device``."""
    where = generator.device if generator is not None else device
    if kind == "int":
        values = torch.randint(0, high, (size,), generator=generator, device=where)
    else:
        values = torch.rand((size,), generator=generator, device=where)
    return values.to(device, non_blocking=True)


def _channel_values(name: str, values) -> tuple[float, ...]:
    """``values`` (a sequence of real numbers, one per channel, or a tensor) as a tuple of floats."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers, one per channel, got {values!r}")
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of numbers, one per channel, got "
                        f"{type(values).__name__}") from None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating))
           for v in items):
        raise TypeError(f"{name} must be a sequence of numbers, one per channel, got {values!r}")
    return tuple(float(v) for v in items)


def check_normalisation(mean, std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``mean`` and ``std`` (sequences of reals or tensors) as tuples of floats:
    one entry per channel each, ``mean`` finite, ``std`` finite and > 0 (``TypeError`` /
    ``ValueError`` naming the argument otherwise)."""
    mean, std = _channel_values("mean", mean), _channel_values("std", std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std must have {channels} entries (one entry per channel), "
                         f"got {len(mean)} and {len(std)}")
    if any(not math.isfinite(m) for m in mean):
        raise ValueError(f"mean must be finite, got {mean}")
    if any(not (s > 0 and math.isfinite(s)) for s in std):
        raise ValueError(f"std must be finite and > 0, got {std}")
    return mean, std


@functools.lru_cache(maxsize=64)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 / (255 std), -mean / std)`` as ``(1, C, 1, 1)`` tensors on ``device``, made once per
    key: a host-to-device copy of fresh host numbers synchronises with the GPU (PyTorch's
    blocking copies wait for the stream), which the training step must not do. The values
    are checked by :func:`check_normalisation`."""
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(device=device, dtype=dtype).view(1, -1, 1, 1)
    shift = (-mean_t / std_t).to(device=device, dtype=dtype).view(1, -1, 1, 1)
    return scale, shift


def to_float(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
             std: Sequence[float] | torch.Tensor, *, dtype: torch.dtype = torch.float32,
             channels_last: bool = False) -> torch.Tensor:
    r"""Normalise ``uint8`` images: ``out[:, c] = (x[:, c] / 255 - mean_c) / std_c``.

    Other dtypes are refused (``TypeError``): float images are usually already in [0, 1] or
    normalised, and dividing them by 255 again would silently train on near-constant inputs.

    Computed as one fused ``addcmul`` (``x * (1 / (255 std)) - mean / std``) in ``dtype`` on the
    images' device. With ``channels_last=True`` the result uses ``torch.channels_last`` memory
    format (the conversion is done on the ``uint8`` input, the cheaper tensor). The two
    per-channel constants are put on the device once per ``(mean, std, device, dtype)`` and
    reused, so repeated calls make no host-to-device copy (no synchronisation with the GPU).
    """
    images = _check_images(images)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (pixel values 0..255), got {images.dtype}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    mean_f, std_f = check_normalisation(mean, std, images.shape[1])
    scale, shift = _affine(mean_f, std_f, images.device, dtype)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    out = torch.addcmul(shift, images.to(dtype), scale)
    if channels_last:
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    if not isinstance(shard, (tuple, list)) or len(shard) != 2:
        raise TypeError(f"shard must be a pair (rank, world_size), got {shard!r}")
    return check_rank(shard[0], shard[1], prefix="shard ")


def _draw_shard(kind: str, high: int, views: int, n: int, shard: tuple[int, int],
                generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """This rank's ``views * n`` numbers out of a draw for the global batch of ``world * n``
    images (view-major: global row ``v (world n) + rank n + i``)."""
    rank, world = shard
    values = _draw(kind, high, views * world * n, generator, device)
    if world == 1:
        return values
    return values.view(views, world, n)[:, rank].reshape(views * n)


def random_crop_flip(images: torch.Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None, views: int = 1, *,
                     shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    r"""Random crop with zero padding and (optionally) random horizontal flip, fused.

    Each output image ``v * N + i`` (``v < views``) is the ``H x W`` window at offset
    ``(a, b)``, ``a, b`` uniform in ``{0, ..., 2 padding}``, of image ``i`` zero-padded by
    ``padding`` pixels on every side, mirrored left-right with probability 1/2 when ``flip``:
    ``out[v N + i, c, r, s] = P_i[c, a + r, b + s']`` with ``s' = W - 1 - s`` if flipped else
    ``s``. One ``torch.gather`` from the flattened padded batch (the pixel index is shared by
    the channels); the result is a contiguous ``(views N, C, H, W)`` tensor of the input dtype.

    ``shard = (rank, world_size)``: the images are rank ``rank``'s part (images
    ``rank N .. rank N + N - 1``) of a global batch of ``world_size N`` images, and every rank
    draws the random numbers of the whole global batch from an identically seeded generator
    and keeps its own: the ranks' crops and flips are exactly those of one process augmenting
    the global batch (independent across ranks, and the generators stay in step).
    """
    images = _check_images(images)
    padding = check_int("padding", padding, minimum=0)
    views = check_int("views", views, minimum=1, maximum=MAX_VIEWS)
    shard = _check_shard(shard)
    _check_generator(generator)
    n, channels, height, width = images.shape
    if padding and padding >= min(height, width):
        raise ValueError(f"padding must be smaller than the image height and width (min(H, W) = "
                         f"{min(height, width)}), got {padding}")
    total, device = views * n, images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    top = _draw_shard("int", 2 * padding + 1, views, n, shard, generator, device)
    left = _draw_shard("int", 2 * padding + 1, views, n, shard, generator, device)
    rows = top[:, None] + torch.arange(height, device=device)             # (V N, H)
    cols = left[:, None] + torch.arange(width, device=device)             # (V N, W)
    if flip:
        mirrored = _draw_shard("uniform", 0, views, n, shard, generator, device) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    padded_height, padded_width = padded.shape[-2:]
    flat = padded.reshape(n, channels, padded_height * padded_width)
    if views > 1:
        flat = flat.repeat(views, 1, 1)                                   # view-major copies
    pixel = (rows[:, :, None] * padded_width + cols[:, None, :]).reshape(total, 1, height * width)
    out = torch.gather(flat, 2, pixel.expand(total, channels, height * width))
    return out.view(total, channels, height, width)


def random_crop(images: torch.Tensor, padding: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of each image from its ``padding``-pixel zero-padded version, same size as
    the input (see :func:`random_crop_flip` with ``flip=False``); ``padding=0`` is the identity."""
    return random_crop_flip(images, padding, flip=False, generator=generator)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator | None = None,
                           probability: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right (``torch.flip(x, [-1])``) independently with
    ``probability``; one uniform is drawn per image."""
    images = _check_images(images)
    _check_generator(generator)
    p = check_real("probability", probability)
    if not 0 <= p <= 1:
        raise ValueError(f"probability must lie in [0, 1], got {p}")
    mirrored = _draw("uniform", 0, images.shape[0], generator, images.device) < p
    return torch.where(mirrored.view(-1, 1, 1, 1), images.flip(-1), images)


def augment_batch(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                  std: Sequence[float] | torch.Tensor, views: int = 2, padding: int = 4,
                  generator: torch.Generator | None = None, *, flip: bool = True,
                  dtype: torch.dtype = torch.float32, channels_last: bool = False,
                  shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """``views`` independently augmented copies of a ``uint8`` batch, normalised, as one tensor
    ``(views N, C, H, W)`` ordered view-major (rows ``v N .. v N + N - 1`` are view ``v`` of
    images ``0 .. N - 1``): :func:`random_crop_flip` (with its ``shard`` for one rank's part of
    a global batch) then :func:`to_float`."""
    crops = random_crop_flip(images, padding, flip, generator, views, shard=shard)
    return to_float(crops, mean, std, dtype=dtype, channels_last=channels_last)


def augment_views(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                  std: Sequence[float] | torch.Tensor, views: int = 2, padding: int = 4,
                  generator: torch.Generator | None = None, *, flip: bool = True,
                  dtype: torch.dtype = torch.float32, channels_last: bool = False) -> list[torch.Tensor]:
    """The views of :func:`augment_batch` as a list of ``views`` tensors ``(N, C, H, W)`` (slices
    of one tensor; use :func:`augment_batch` directly to avoid a later ``torch.cat``)."""
    batch = augment_batch(images, mean, std, views, padding, generator, flip=flip, dtype=dtype,
                          channels_last=channels_last)
    return list(batch.split(images.shape[0]))
