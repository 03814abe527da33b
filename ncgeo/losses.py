r"""Supervised-contrastive loss with fixed class prototypes, and its many-prototype limit.

Conventions used throughout ncgeo:

* ``embeddings`` ``H`` has shape ``(B, d)``: one row per sample, rows unit-norm.
* ``prototypes`` ``W`` has shape ``(d, k)``: one unit column per class.
* ``labels`` ``y`` has shape ``(B,)`` with integer values in ``[0, k)``.
* ``n_w`` is the multiplicity of every prototype in the batch, a real ``>= 0``.

The prototype copies are identical, so they are never materialised: they enter the
denominator as the logits ``h_i.w_c / tau + log(n_w)`` and the positive sum with weight
``n_w``. The cost of a call is ``O(B (B + k) d)`` whatever ``n_w`` is.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ._validation import (
    as_float_tensor,
    as_label_tensor,
    check_choice,
    check_nonnegative,
    check_positive, check_tau)

__all__ = [
    "scl_prototype_loss",
    "fixed_classifier_cross_entropy",
    "materialise_prototypes",
    "supcon_loss_materialised",
]

Reduction = Literal["sum", "mean", "none"]


def _prepare(embeddings, labels, prototypes, tau, validate, normalize):
    """Validate and convert the common inputs; returns ``H, y, W, k, tau``."""
    tau = check_tau(tau)
    H = as_float_tensor("embeddings", embeddings, ndim=2, check_finite=validate)
    if normalize:
        H = F.normalize(H, dim=1)
    W = None
    k = None
    if prototypes is not None:
        W = as_float_tensor("prototypes", prototypes, ndim=2, check_finite=validate)
        if W.shape[0] != H.shape[1]:
            raise ValueError(
                f"prototypes must have shape (d, k) with d = {H.shape[1]} (the embedding "
                f"dimension), got {tuple(W.shape)}"
            )
        W = W.to(device=H.device, dtype=H.dtype)
        k = W.shape[1]
    y = as_label_tensor("labels", labels, H.shape[0], k, device=H.device, check_range=validate)
    return H, y, W, k, tau


def _reduce(per_anchor_sum: torch.Tensor, count: float, reduction: str) -> torch.Tensor:
    return per_anchor_sum if reduction == "sum" else per_anchor_sum / count


def scl_prototype_loss(
    embeddings,
    labels,
    prototypes=None,
    n_w: float = 0.0,
    tau: float = 0.1,
    *,
    prototypes_as_anchors: bool = False,
    reduction: Reduction = "sum",
    loss_scale: float = 1.0,
    normalize: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    r"""Supervised-contrastive loss of one batch with ``n_w`` copies of every prototype.

    For a batch ``B`` with ``n_w`` copies of each prototype ``w_c``, the loss of the
    sample anchor ``i`` is (docs/theory.md section 2)

    .. math::

        P_i &= \#\{j \in B, j \ne i, y_j = y_i\} + n_w \\
        D_i &= \sum_{j \in B, j \ne i} e^{h_i \cdot h_j / \tau}
               + n_w \sum_c e^{h_i \cdot w_c / \tau} \\
        \ell_i &= \log D_i - \frac{1}{P_i}\Big[\sum_{j \in B, j \ne i, y_j = y_i}
               \frac{h_i \cdot h_j}{\tau} + n_w \frac{h_i \cdot w_{y_i}}{\tau}\Big]

    With ``prototypes_as_anchors=True`` every one of the ``k n_w`` prototype copies is
    an anchor as well. A copy of ``w_c`` contrasts with all samples of the batch, the
    ``n_w`` copies of each other prototype and the other ``n_w - 1`` copies of its own;
    its positives are the same-class samples and those ``n_w - 1`` copies:

    .. math::

        P_c &= m_c + (n_w - 1), \qquad m_c = \#\{j \in B: y_j = c\} \\
        D_c &= \sum_{j \in B} e^{w_c \cdot h_j / \tau}
               + n_w \sum_{c' \ne c} e^{w_c \cdot w_{c'} / \tau}
               + (n_w - 1) e^{w_c \cdot w_c / \tau} \\
        \ell_c &= \log D_c - \frac{1}{P_c}\Big[\sum_{j: y_j = c}
               \frac{w_c \cdot h_j}{\tau} + (n_w - 1) \frac{w_c \cdot w_c}{\tau}\Big]

    and the batch loss gains ``n_w * sum_c l_c``. This variant needs ``n_w = 0`` or
    ``n_w >= 1`` (a copy count below one has no meaning here).

    An anchor with ``P = 0`` contributes 0 and is still counted by ``reduction="mean"``.
    The multiplicity enters as the additive log-weight ``log(n_w)`` of the prototype
    logits, and every log-sum-exp subtracts its row maximum, so the loss is finite for
    ``tau = 0.01`` and ``n_w = 1e9`` in float32.

    Parameters
    ----------
    embeddings : (B, d) tensor or array
        Sample embeddings, one per row, expected unit-norm (see ``normalize``).
    labels : (B,) integer tensor or array
        Class of each row, in ``[0, k)``.
    prototypes : (d, k) tensor or array, optional
        Fixed class prototypes, one unit column per class. Required when ``n_w > 0``.
    n_w : float
        Multiplicity of each prototype in the batch (real, ``>= 0``; 0 is plain SCL).
    tau : float
        Temperature, ``> 0``.
    prototypes_as_anchors : bool
        Also use the prototype copies as anchors (default: only samples are anchors).
    reduction : {"sum", "mean", "none"}
        ``"sum"`` (default) over anchors, ``"mean"`` over the ``B (+ k n_w)`` anchors,
        or ``"none"``: the ``(B,)`` vector of sample-anchor losses (not allowed with
        ``prototypes_as_anchors``).
    loss_scale : float
        Explicit multiplicative factor (default 1: no hidden factor). The public SupCon
        code multiplies by ``temperature / base_temperature``; pass that ratio here to
        reproduce it.
    normalize : bool
        L2-normalise the rows of ``embeddings`` first (default False: they are used as given).
    validate : bool
        Check finiteness and label range (one host synchronisation); shapes and
        parameters are always checked.

    Returns
    -------
    torch.Tensor
        Scalar loss (or ``(B,)`` for ``reduction="none"``) in the dtype and on the
        device of ``embeddings``, differentiable with respect to it.
    """
    n_w = check_nonnegative("n_w", n_w)
    check_choice("reduction", reduction, ("sum", "mean", "none"))
    loss_scale = check_positive("loss_scale", loss_scale)
    H, y, W, k, tau = _prepare(embeddings, labels, prototypes, tau, validate, normalize)
    if n_w > 0 and W is None:
        raise ValueError("prototypes are required when n_w > 0")
    if prototypes_as_anchors and 0 < n_w < 1:
        raise ValueError(f"n_w must be 0 or >= 1 when prototypes_as_anchors is set, got {n_w}")
    if prototypes_as_anchors and reduction == "none":
        raise ValueError('reduction="none" returns sample anchors only; it cannot be combined '
                         "with prototypes_as_anchors")
    batch = H.shape[0]
    use_protos = n_w > 0

    per_anchor = sample_anchor_losses(H, H, y, y, torch.eye(batch, dtype=torch.bool, device=H.device),
                                      W if use_protos else None, n_w, tau)
    if reduction == "none":
        return per_anchor * loss_scale

    total = per_anchor.sum()
    anchors = float(batch)
    if prototypes_as_anchors and use_protos:
        total = total + n_w * _prototype_anchor_losses(H, y, W, k, n_w, tau).sum()
        anchors += k * n_w
    return _reduce(total, max(anchors, 1.0), reduction) * loss_scale


def sample_anchor_losses(rows: torch.Tensor, batch: torch.Tensor, row_labels: torch.Tensor,
                         batch_labels: torch.Tensor, self_mask: torch.Tensor, W: torch.Tensor | None,
                         n_w: float, tau: float) -> torch.Tensor:
    r"""Losses ``l_i`` (docs/theory.md section 2) of the anchors ``rows`` (b, d) against the batch
    ``batch`` (B, d) plus ``n_w`` copies of every prototype, shape ``(b,)``.

    ``self_mask`` (b, B) marks each anchor's own column (excluded from ``D_i`` and the positives);
    ``W`` is None when ``n_w = 0``. The whole batch's loss takes ``rows = batch`` and the identity
    mask; a row block (the streamed loss of :mod:`ncgeo.ufm.streaming`) takes a slice. Anchors without
    positives contribute 0 (and a finite log-sum-exp, for autograd).
    """
    dtype, device = batch.dtype, batch.device
    same = (row_labels[:, None] == batch_labels[None, :]) & ~self_mask
    sim = (rows @ batch.T) / tau
    logits = sim.masked_fill(self_mask, float("-inf"))
    positive_count = same.sum(dim=1).to(dtype)
    positive_sum = (sim * same).sum(dim=1)
    zero = torch.zeros((), dtype=dtype, device=device)
    if W is not None and n_w > 0:
        proto_sim = (rows @ W) / tau  # (b, k)
        logits = torch.cat([logits, proto_sim + math.log(n_w)], dim=1)
        own = proto_sim.gather(1, row_labels[:, None]).squeeze(1)
        # (positive_sum + n_w own) / (positive_count + n_w), written so that an anchor whose only
        # positives are the copies gets exactly ``own``, however small n_w (P_i = n_w > 0 even when
        # positive_count + n_w rounds to 0 in the dtype)
        denominator = (positive_count + n_w).clamp_min(torch.finfo(dtype).tiny)
        positive_term = own + (positive_sum - positive_count * own) / denominator
        has_positive = torch.ones(rows.shape[0], dtype=torch.bool, device=device)
    else:
        positive_term = positive_sum / positive_count.clamp_min(1.0)
        has_positive = positive_count > 0
    logits = torch.where(has_positive[:, None], logits, zero)
    return torch.where(has_positive, torch.logsumexp(logits, dim=1) - positive_term, zero)


def _prototype_anchor_losses(H, y, W, k, n_w, tau):
    """Loss of one copy of each prototype used as anchor, shape ``(k,)``."""
    sample_sim = (W.T @ H.T) / tau  # (k, B)
    proto_sim = (W.T @ W) / tau  # (k, k)
    own_copies = n_w - 1.0
    diag = torch.eye(k, dtype=torch.bool, device=H.device)
    proto_logits = proto_sim + math.log(n_w)
    if own_copies > 0:
        proto_logits = torch.where(diag, proto_sim + math.log(own_copies), proto_logits)
    else:
        proto_logits = proto_logits.masked_fill(diag, float("-inf"))
    logits = torch.cat([sample_sim, proto_logits], dim=1)
    member = F.one_hot(y, k).T.to(H.dtype)  # (k, B)
    count = member.sum(dim=1) + own_copies
    positive = (sample_sim * member).sum(dim=1) + own_copies * torch.diagonal(proto_sim)
    has_positive = count > 0  # P = m_c + n_w - 1 may lie in (0, 1): divide by P itself
    safe_count = torch.where(has_positive, count, torch.ones((), dtype=H.dtype, device=H.device))
    value = torch.logsumexp(logits, dim=1) - positive / safe_count
    return torch.where(has_positive, value, torch.zeros((), dtype=H.dtype, device=H.device))


def fixed_classifier_cross_entropy(
    embeddings,
    labels,
    prototypes,
    tau: float = 0.1,
    *,
    reduction: Reduction = "sum",
    normalize: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    r"""Cross-entropy with the fixed classifier ``W``, no bias and logit scale ``1/tau``.

    .. math::

        \mathrm{CE}_i = -\log \frac{e^{h_i \cdot w_{y_i} / \tau}}{\sum_c e^{h_i \cdot w_c / \tau}}

    This is the ``n_w -> infinity`` limit of :func:`scl_prototype_loss` minus
    ``log(n_w)`` per sample anchor (docs/theory.md section 4), for unit-norm ``h_i``.

    Parameters
    ----------
    embeddings : (B, d) tensor or array
        Features, one per row (unit-norm; or set ``normalize=True``).
    labels : (B,) integer tensor or array
        Classes in ``[0, k)``.
    prototypes : (d, k) tensor or array
        Fixed classifier, one column per class.
    tau : float
        Temperature (logit scale ``1/tau``), ``> 0``.
    reduction : {"sum", "mean", "none"}
        Sum (default), mean over samples, or the ``(B,)`` vector.
    normalize, validate : bool
        As in :func:`scl_prototype_loss`.
    """
    check_choice("reduction", reduction, ("sum", "mean", "none"))
    if prototypes is None:
        raise ValueError("prototypes are required (shape (d, k))")
    H, y, W, k, tau = _prepare(embeddings, labels, prototypes, tau, validate, normalize)
    logits = (H @ W) / tau
    per_sample = torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None]).squeeze(1)
    if reduction == "none":
        return per_sample
    return _reduce(per_sample.sum(), max(H.shape[0], 1), reduction)


def materialise_prototypes(embeddings, labels, prototypes, n_w: int, *, validate: bool = True):
    """Append ``n_w`` explicit copies of every prototype to a batch.

    Returns ``(features, labels, is_prototype)`` with ``B + k n_w`` rows; the reference
    construction that :func:`scl_prototype_loss` avoids. ``n_w`` must be an integer.
    ``validate=False`` skips the value checks (finiteness, label range), which read values
    back from the device, as in :func:`scl_prototype_loss`.
    """
    if (isinstance(n_w, bool) or not isinstance(n_w, (int, float, np.integer, np.floating)) or not math.isfinite(n_w)
            or int(n_w) != n_w or n_w < 0):
        raise ValueError(f"n_w must be a non-negative integer to materialise copies, got {n_w!r}")
    n_w = int(n_w)
    H = as_float_tensor("embeddings", embeddings, ndim=2, check_finite=validate)
    W = as_float_tensor("prototypes", prototypes, ndim=2, check_finite=validate).to(device=H.device, dtype=H.dtype)
    if W.shape[0] != H.shape[1]:
        raise ValueError(f"prototypes must have shape (d, k) with d = {H.shape[1]} (the embedding dimension), "
                         f"got {tuple(W.shape)}")
    k = W.shape[1]
    y = as_label_tensor("labels", labels, H.shape[0], k, device=H.device, check_range=validate)
    copies = W.T.repeat(n_w, 1)
    copy_labels = torch.arange(k, device=H.device).repeat(n_w)
    features = torch.cat([H, copies], dim=0)
    all_labels = torch.cat([y, copy_labels])
    is_prototype = torch.cat([torch.zeros(H.shape[0], dtype=torch.bool, device=H.device),
                              torch.ones(copies.shape[0], dtype=torch.bool, device=H.device)])
    return features, all_labels, is_prototype


def supcon_loss_materialised(features, labels, tau: float, anchor_mask=None, *,
                             validate: bool = True) -> torch.Tensor:
    r"""Plain supervised-contrastive loss on an explicit batch, summed over anchors.

    ``l_i = log sum_{j != i} e^{f_i.f_j/tau} - mean_{j != i, y_j = y_i} f_i.f_j/tau``;
    anchors without positives contribute 0. ``anchor_mask`` selects the anchors
    (default: all rows). Cost ``O(B'^2 d)`` for ``B'`` rows: the slow reference that
    :func:`scl_prototype_loss` must equal once the prototype copies are appended with
    :func:`materialise_prototypes`. ``validate=False`` skips the value checks (finiteness,
    label range), which read values back from the device.
    """
    tau = check_tau(tau)
    Fm = as_float_tensor("features", features, ndim=2, check_finite=validate)
    y = as_label_tensor("labels", labels, Fm.shape[0], None, device=Fm.device, check_range=validate)
    rows = Fm.shape[0]
    eye = torch.eye(rows, dtype=torch.bool, device=Fm.device)
    sim = (Fm @ Fm.T) / tau
    same = (y[:, None] == y[None, :]) & ~eye
    count = same.sum(dim=1).to(Fm.dtype)
    log_denominator = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1)
    value = log_denominator - (sim * same).sum(dim=1) / count.clamp_min(1.0)
    value = torch.where(count > 0, value, torch.zeros((), dtype=Fm.dtype, device=Fm.device))
    if anchor_mask is not None:  # a select, not a boolean index: no read-back of the mask
        mask = torch.as_tensor(anchor_mask, device=Fm.device, dtype=torch.bool)
        if mask.shape != (rows,):
            raise ValueError(f"anchor_mask must have shape ({rows},), got {tuple(mask.shape)}")
        value = torch.where(mask, value, torch.zeros((), dtype=Fm.dtype, device=Fm.device))
    return value.sum()
