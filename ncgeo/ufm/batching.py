r"""Batching schemes of the UFM and the objective they define (docs/theory.md sections 2-3).

A batching is a list of index arrays into the ``N`` samples. The UFM objective of a
batching ``{B_1, .., B_m}`` is the sum over batches of the batch loss, each batch loss
being the sum over its anchors (:func:`ncgeo.losses.scl_prototype_loss`), with ``n_w``
copies of every prototype added to every batch.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

from .._validation import as_label_tensor, check_choice, check_int
from ..losses import scl_prototype_loss

__all__ = ["make_batches", "ufm_objective", "check_batches", "scheme_problem", "BATCHING_SCHEMES"]

BATCHING_SCHEMES = ("full", "partition", "shuffle", "bind")
Scheme = Literal["full", "partition", "shuffle", "bind"]


def _labels_array(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {array.shape}")
    return as_label_tensor("labels", array, array.shape[0], None).numpy()


def _chunks(indices: np.ndarray, size: int) -> list[np.ndarray]:
    return [indices[start:start + size] for start in range(0, len(indices), size)]


def make_batches(labels, scheme: Scheme = "full", batch_size: int | None = None, seed: int = 0,
                 epoch: int = 0) -> list[np.ndarray]:
    r"""Index arrays of the batches of one epoch.

    * ``"full"``: one batch holding all ``N`` samples (``batch_size`` is ignored).
    * ``"partition"``: a **random** (not stratified) partition, fixed by ``seed``: a
      seeded permutation of ``0..N-1`` cut into consecutive batches of ``batch_size``
      (the last one holds the remainder). ``epoch`` is ignored: the same batches
      every epoch, so the objective is deterministic.
    * ``"shuffle"``: the same construction with a new permutation every epoch, drawn
      from ``(seed, epoch)``.
    * ``"bind"`` (batch binding, Kini et al. 2023): one sample per class, drawn from
      ``seed``, is bound; the other ``N - k`` samples are partitioned as in
      ``"partition"`` into batches of ``batch_size`` and the ``k`` bound samples are
      added to every batch (batches hold ``batch_size + k`` samples). Fixed across
      epochs. Every batch then contains every class and the batches share samples.

    Parameters
    ----------
    labels : (N,) integer array or tensor
        Class of every sample (``k`` is the number of distinct labels for ``"bind"``).
    scheme : {"full", "partition", "shuffle", "bind"}
        Batching scheme.
    batch_size : int, optional
        ``b >= 2``; required by every scheme but ``"full"``. ``b >= N`` gives one batch.
    seed, epoch : int
        Randomness (``numpy.random.default_rng``); ``epoch`` only matters for ``"shuffle"``.

    Returns
    -------
    list of numpy int64 arrays
        Sample indices of each batch (each array sorted).
    """
    y = _labels_array(labels)
    check_choice("batching", scheme, BATCHING_SCHEMES)
    seed = check_int("seed", seed, minimum=0)
    epoch = check_int("epoch", epoch, minimum=0)
    N = y.shape[0]
    if N == 0:
        raise ValueError("labels must hold at least one sample")
    if scheme == "full":
        return [np.arange(N, dtype=np.int64)]
    if batch_size is None:
        raise ValueError(f"batch_size is required for batching={scheme!r} (an integer >= 2)")
    batch_size = check_int("batch_size", batch_size, minimum=2)
    if scheme == "shuffle":
        rng = np.random.default_rng([seed, epoch])
        return [np.sort(b) for b in _chunks(rng.permutation(N).astype(np.int64), batch_size)]
    rng = np.random.default_rng(seed)
    if scheme == "partition":
        return [np.sort(b) for b in _chunks(rng.permutation(N).astype(np.int64), batch_size)]
    classes = np.unique(y)
    bound = np.array([rng.choice(np.flatnonzero(y == c)) for c in classes], dtype=np.int64)
    rest = np.setdiff1d(np.arange(N, dtype=np.int64), bound)
    if rest.size == 0:
        return [np.sort(bound)]
    return [np.sort(np.concatenate([bound, b])) for b in _chunks(rng.permutation(rest), batch_size)]


def check_batches(batches, N: int) -> list[np.ndarray]:
    """Batches as int64 index arrays into ``N`` samples (default one full batch); ``ValueError``
    naming the batch otherwise (negative indices would wrap, floats truncate)."""
    if batches is None:
        return [np.arange(N)]
    out = []
    for t, batch in enumerate(batches):
        b = np.asarray(batch)
        if b.ndim != 1 or not np.issubdtype(b.dtype, np.integer) or (len(b) and (b.min() < 0 or b.max() >= N)):
            raise ValueError(f"batches[{t}] must be a 1-D array of sample indices in [0, {N - 1}]")
        out.append(b.astype(np.int64))
    if not out:
        raise ValueError("batches must contain at least one batch")
    return out


def ufm_objective(H: torch.Tensor, labels, W, n_w: float, tau: float, batches: Sequence[np.ndarray],
                  prototypes_as_anchors: bool = False, *, validate: bool = True) -> torch.Tensor:
    r"""The UFM objective: sum over batches of the batch loss (sum over anchors).

    .. math::

        F(H) = \sum_{B \in \text{batches}} \sum_{i \in B} \ell_i(H_B; W, n_w, \tau)
               \;[ + n_w \sum_c \ell_c(H_B) \text{ with prototypes as anchors}]

    with ``l_i`` of docs/theory.md section 2 computed by
    :func:`ncgeo.losses.scl_prototype_loss` on ``H[B]`` (every batch gets its own
    ``n_w`` copies of each prototype). Differentiable with respect to ``H``.

    Parameters
    ----------
    H : (N, d) tensor
        Unit-norm embeddings.
    labels : (N,) integer array or tensor
    W : (d, k) tensor or array, or None (only when ``n_w = 0``)
    n_w, tau : float
    batches : sequence of index arrays
        E.g. from :func:`make_batches`.
    prototypes_as_anchors : bool
    validate : bool
        Check finiteness and label ranges in every batch (the solver turns it off
        after validating its inputs once).
    """
    if not isinstance(H, torch.Tensor):
        H = torch.as_tensor(np.asarray(H, dtype=np.float64))
    if validate:
        if H.ndim != 2:
            raise ValueError(f"H must be a 2-D (N, d) array, got shape {tuple(H.shape)}")
        labels = as_label_tensor("labels", labels, H.shape[0], None, device=H.device)
        batches = check_batches(batches, H.shape[0]) if batches is not None else None
    y = torch.as_tensor(labels, device=H.device) if not isinstance(labels, torch.Tensor) else labels.to(H.device)
    if batches is None or len(batches) == 0:
        raise ValueError("batches must hold at least one batch")
    total = None
    for index in batches:
        index_t = torch.as_tensor(np.array(index, dtype=np.int64), device=H.device)
        loss = scl_prototype_loss(H[index_t], y[index_t], W, n_w, tau,
                                  prototypes_as_anchors=prototypes_as_anchors, validate=validate)
        total = loss if total is None else total + loss
    return total


def scheme_problem(class_sizes: Sequence[int], prototypes=None, n_w: float = 0.0, tau: float = 0.1, *,
                   scheme: Scheme = "full", batch_size: int | None = None, seed: int = 0, **flags):
    """The :class:`ncgeo.UFMProblem` of a batching scheme over class-ordered samples.

    ``"full"`` and ``"shuffle"`` give the full-batch problem (reshuffled batches are a solver
    setting: ``solve_ufm(problem, "adam", options={"batch_size": b})``); ``"partition"`` and
    ``"bind"`` fix the batches of :func:`make_batches` with ``batch_size`` and ``seed``.
    ``flags``: ``nonnegative``, ``prototypes_as_anchors``, ``dim``.
    """
    from ..classes import check_class_sizes, labels_from_sizes
    from ..problem import UFMProblem

    check_choice("batching", scheme, BATCHING_SCHEMES)
    sizes = check_class_sizes(class_sizes)
    if scheme in ("full", "shuffle"):
        if scheme == "shuffle":
            make_batches(labels_from_sizes(sizes), scheme, batch_size, seed)  # checks batch_size
        return UFMProblem.from_sizes(sizes, prototypes, n_w, tau, **flags)
    labels = labels_from_sizes(sizes)
    return UFMProblem.from_labels(labels, prototypes, n_w, tau, num_classes=len(sizes),
                                  batches=make_batches(labels, scheme, batch_size, seed), **flags)
