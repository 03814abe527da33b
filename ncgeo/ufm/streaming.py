r"""The full-batch UFM objective and its gradient in row blocks, for ``N x N`` beyond memory.

:func:`streamed_loss_and_grad` computes exactly what :func:`ncgeo.losses.scl_prototype_loss`
computes on the whole batch (sum over anchors, docs/theory.md section 2),

.. math::

    F(H) = \sum_{i=1}^{N} \Big( \log D_i - \frac{1}{P_i}\Big[\sum_{j \ne i,\, y_j = y_i}
           \frac{h_i \cdot h_j}{\tau} + n_w \frac{h_i \cdot w_{y_i}}{\tau}\Big] \Big)
           \;[+\; n_w \textstyle\sum_c \ell_c \text{ with prototypes as anchors}],

and its Euclidean gradient with respect to ``H``, but never holds more than ``b x (N + k)``
similarities: the anchors are taken ``b`` rows at a time (a chunked log-sum-exp, each row's
maximum subtracted as in the dense loss), and the gradient of every block is accumulated
into one ``(N, d)`` array. Memory is ``O(N d + b (N + k))`` instead of ``O(N^2)``; time is the
dense ``O(N^2 d)``. The prototype anchors' terms are ``k x N`` and are computed whole, by
the dense loss's own helper. :func:`block_rows` chooses ``b`` from the free memory
(``MemAvailable`` on Linux, :func:`torch.cuda.mem_get_info` on a GPU).
"""

from __future__ import annotations

import os

import torch

from ..losses import _prototype_anchor_losses, sample_anchor_losses

__all__ = ["streamed_loss_and_grad", "block_rows", "available_memory", "BLOCK_ARRAYS", "MAX_BLOCK_BYTES"]

#: Most bytes one block may use (larger blocks make the products no faster).
MAX_BLOCK_BYTES = 2**30
#: Arrays of ``b x (N + k)`` numbers one block holds at once (similarities, logits, their
#: exponentials in the backward pass, the positive mask, the gradient of the logits).
BLOCK_ARRAYS = 6


def available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now (``MemAvailable`` of ``/proc/meminfo`` on Linux,
    :func:`torch.cuda.mem_get_info` on CUDA), ``None`` if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def block_rows(num_samples: int, num_classes: int, dtype: torch.dtype, device: torch.device,
               fraction: float = 0.25) -> int:
    """Anchors per block: ``BLOCK_ARRAYS`` arrays of ``b x (N + k)`` numbers in ``fraction`` of
    the free memory and at most ``MAX_BLOCK_BYTES``; at least 1 and at most ``N`` (``N`` when the
    free memory is unknown: the dense batch)."""
    free = available_memory(device)
    if free is None:
        return num_samples
    per_row = BLOCK_ARRAYS * (num_samples + num_classes) * (torch.finfo(dtype).bits // 8)
    return max(1, min(num_samples, int(min(fraction * free, MAX_BLOCK_BYTES) // per_row)))


def _anchor_block(X: torch.Tensor, y: torch.Tensor, start: int, stop: int, W: torch.Tensor | None,
                  n_w: float, tau: float) -> torch.Tensor:
    """Sum of the sample-anchor losses of rows ``start:stop`` against the whole batch ``X``
    (the formula and the numerics of :func:`ncgeo.losses.scl_prototype_loss`)."""
    b = stop - start
    columns = torch.arange(start, stop, device=X.device)
    self_mask = torch.zeros(b, X.shape[0], dtype=torch.bool, device=X.device)
    self_mask[torch.arange(b, device=X.device), columns] = True
    per_anchor = sample_anchor_losses(X[start:stop], X, y[start:stop], y, self_mask, W, n_w, tau)
    return per_anchor.sum()


def streamed_loss_and_grad(H: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor | None,
                           n_w: float, tau: float, *, prototypes_as_anchors: bool = False,
                           block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch objective (sum over anchors) and its gradient, ``block`` anchors at a time.

    Parameters
    ----------
    H : (N, d) tensor
        Unit embeddings (float64 for results equal to the dense ones to round-off).
    labels : (N,) int64 tensor on the device of ``H``
    prototypes : (d, k) tensor or None
        Required when ``n_w > 0``.
    n_w, tau : float
    prototypes_as_anchors : bool
    block : int, optional
        Anchors per block (default :func:`block_rows`).

    Returns
    -------
    (value, grad)
        A 0-d tensor and the ``(N, d)`` Euclidean gradient, both detached.
    """
    N = H.shape[0]
    if n_w > 0 and prototypes is None:
        raise ValueError("prototypes are required when n_w > 0")
    W = prototypes if n_w > 0 else None
    k = 0 if W is None else W.shape[1]
    if block is None:
        block = block_rows(N, k, H.dtype, H.device)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an integer >= 1, got {block!r}")
    X = H.detach().requires_grad_(True)
    total = torch.zeros((), dtype=H.dtype, device=H.device)
    grad = torch.zeros_like(H)
    for start in range(0, N, block):
        value = _anchor_block(X, labels, start, min(N, start + block), W, n_w, tau)
        (g,) = torch.autograd.grad(value, X)
        grad += g
        total += value.detach()
        del g, value
    if prototypes_as_anchors and n_w > 0:
        value = n_w * _prototype_anchor_losses(X, labels, W, k, n_w, tau).sum()
        (g,) = torch.autograd.grad(value, X)
        grad += g
        total += value.detach()
    return total, grad
