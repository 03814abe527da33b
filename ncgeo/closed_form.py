r"""The loss of class-collapsed configurations, and its closed forms at ETF / OF collapse.

Full batch, every sample of class ``c`` equal to one unit vector ``m_c`` (within-class
collapse): the loss of docs/theory.md section 2 then depends only on the ``k`` class
directions ``M = [m_0 .. m_{k-1}]`` (``d x k``) and on the class sizes, which enter as
additive log-weights. :func:`collapsed_loss` evaluates it in ``O(k^2 d)`` for any ``N``;
:func:`closed_form_loss` is its value at the two symmetric collapses of docs/theory.md
section 5 (balanced classes, means forming a simplex ETF or an orthogonal frame, aligned
with the prototypes); :func:`closed_form_for_setup` says when a set-up's optimum is
known to be such a collapse (docs/theory.md section 3, facts 1, 2 and 5 and section 4).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch

from ._validation import (as_float_array, as_float_tensor, check_choice, check_int, check_nonnegative,
                          check_tau)
from .classes import check_class_sizes
from .geometry import etf_gram

__all__ = ["collapsed_loss", "closed_form_loss", "closed_form_for_setup", "closed_form_for_problem"]


def collapsed_loss(means, class_sizes: Sequence[float], prototypes=None, n_w: float = 0.0,
                   tau: float = 0.1, *, prototypes_as_anchors: bool = False) -> torch.Tensor:
    r"""Full-batch loss of the configuration ``h_i = m_{y_i}`` (sum over anchors).

    With ``n_c`` samples of class ``c`` all equal to the unit vector ``m_c`` and ``n_w``
    copies of every prototype, each of the ``n_c`` sample anchors of class ``c`` has

    .. math::

        \ell_c = \log\Big[(n_c - 1) e^{1/\tau} + \sum_{c' \ne c} n_{c'} e^{m_c \cdot m_{c'}/\tau}
                 + n_w \sum_{c'} e^{m_c \cdot w_{c'}/\tau}\Big]
                 - \frac{(n_c - 1)/\tau + n_w\, m_c \cdot w_c / \tau}{n_c - 1 + n_w}

    (0 when ``n_c - 1 + n_w = 0``), and the loss is ``sum_c n_c l_c``. With
    ``prototypes_as_anchors`` each of the ``n_w`` copies of ``w_c`` adds

    .. math::

        \log\Big[\sum_{c'} n_{c'} e^{w_c \cdot m_{c'}/\tau} + n_w \sum_{c' \ne c}
              e^{w_c \cdot w_{c'}/\tau} + (n_w - 1) e^{1/\tau}\Big]
        - \frac{n_c\, w_c \cdot m_c/\tau + (n_w - 1)/\tau}{n_c + n_w - 1}.

    Counts enter as log-weights, so real-valued ``class_sizes >= 1`` (e.g. expected
    per-batch counts) are allowed; a size below 1 gives the within-class term weight 0.
    Equals :func:`ncgeo.losses.scl_prototype_loss` on the expanded ``H = M[:, y]^T``.

    Parameters
    ----------
    means : (d, k) tensor or array
        Unit class directions ``m_c`` (columns); differentiable if a tensor.
    class_sizes : sequence of k reals ``>= 0``
        ``n_c``; classes of size 0 are absent.
    prototypes : (d, k) tensor or array, optional
        Prototypes ``W`` (required when ``n_w > 0``).
    n_w, tau : float
        Prototype multiplicity (``>= 0``) and temperature (``> 0``).
    prototypes_as_anchors : bool
        Also count the prototype anchors.

    Returns
    -------
    torch.Tensor
        Scalar, in the dtype and on the device of ``means``.
    """
    n_w = check_nonnegative("n_w", n_w)
    tau = check_tau(tau)
    M = as_float_tensor("means", means, ndim=2)
    k = M.shape[1]
    sizes = torch.as_tensor([check_nonnegative(f"class_sizes[{c}]", s) for c, s in enumerate(class_sizes)],
                            dtype=M.dtype, device=M.device)
    if sizes.shape[0] != k:
        raise ValueError(f"class_sizes must have k = {k} entries (one per column of means), got {sizes.shape[0]}")
    if n_w > 0 and prototypes is None:
        raise ValueError("prototypes are required when n_w > 0")
    kw = dict(dtype=M.dtype, device=M.device)
    present = sizes > 0
    log_sizes = torch.where(present, sizes.clamp_min(1e-300).log(), torch.full_like(sizes, -math.inf))
    own_others = (sizes - 1).clamp_min(0)
    log_own = torch.where(own_others > 0, own_others.clamp_min(1e-300).log(), torch.full_like(sizes, -math.inf))
    sim = (M.T @ M) / tau  # (k, k)
    eye = torch.eye(k, dtype=torch.bool, device=M.device)
    logits = torch.where(eye, log_own[:, None] + 1.0 / tau, log_sizes[None, :] + sim)
    positive = own_others / tau
    count = own_others.clone()
    W = None
    if n_w > 0:
        W = as_float_tensor("prototypes", prototypes, ndim=2).to(**kw)
        if W.shape != M.shape:
            raise ValueError(f"prototypes must have shape {tuple(M.shape)} like means, got {tuple(W.shape)}")
        proto_sim = (M.T @ W) / tau
        logits = torch.cat([logits, proto_sim + math.log(n_w)], dim=1)
        positive = positive + n_w * torch.diagonal(proto_sim)
        count = count + n_w
    has_positive = present & (count > 0)
    safe_logits = torch.where(has_positive[:, None], logits, torch.zeros((), **kw))
    per_class = torch.logsumexp(safe_logits, dim=1) - positive / count.clamp_min(1e-300)
    total = (torch.where(has_positive, per_class, torch.zeros((), **kw)) * sizes).sum()
    if prototypes_as_anchors and n_w > 0:
        if n_w < 1:
            raise ValueError(f"n_w must be 0 or >= 1 when prototypes_as_anchors is set, got {n_w}")
        total = total + n_w * _prototype_anchor_terms(M, W, sizes, log_sizes, n_w, tau).sum()
    return total


def _prototype_anchor_terms(M, W, sizes, log_sizes, n_w, tau):
    k = M.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=M.device)
    to_samples = (W.T @ M) / tau + log_sizes[None, :]
    proto_sim = (W.T @ W) / tau
    own_copies = n_w - 1.0
    own_log = math.log(own_copies) if own_copies > 0 else -math.inf
    to_protos = torch.where(eye, proto_sim + own_log, proto_sim + math.log(n_w))
    count = sizes + own_copies
    positive = sizes * torch.diagonal((W.T @ M) / tau) + own_copies * torch.diagonal(proto_sim)
    value = torch.logsumexp(torch.cat([to_samples, to_protos], dim=1), dim=1) - positive / count.clamp_min(1e-300)
    return torch.where(count > 0, value, torch.zeros((), dtype=M.dtype, device=M.device))


def closed_form_loss(num_classes: int, n: int, n_w: float, tau: float,
                     geometry: Literal["etf", "of"] = "etf", *, prototypes_as_anchors: bool = False) -> float:
    r"""Full-batch loss (sum over anchors) at collapse to an ETF or OF aligned with the prototypes.

    Balanced classes of ``n`` samples, ``k = num_classes``, class means equal to the
    prototypes, which form a simplex ETF (cosine ``g = -1/(k-1)``) or an orthogonal frame
    (``g = 0``). Every sample anchor has (docs/theory.md section 5)

    .. math::

        \ell = \log\big((n-1) e^{1/\tau} + n (k-1) e^{g/\tau}
               + n_w (e^{1/\tau} + (k-1) e^{g/\tau})\big) - 1/\tau

    and the loss is ``k n l``. With ``prototypes_as_anchors`` the ``k n_w`` prototype
    copies add ``log(n e^{1/tau} + n(k-1) e^{g/tau} + n_w (k-1) e^{g/tau} + (n_w - 1) e^{1/tau}) - 1/tau``
    each. With ``n_w = 0`` it is the plain-SCL value at an ETF / OF collapse (any
    orientation). Evaluated with log-sum-exp, so it is finite for small ``tau``.
    """
    k = check_int("num_classes", num_classes, minimum=2)
    n = check_int("n", n, minimum=1)
    n_w = check_nonnegative("n_w", n_w)
    tau = check_tau(tau)
    check_choice("geometry", geometry, ("etf", "of"))
    g = -1.0 / (k - 1) if geometry == "etf" else 0.0

    def log_sum(weights_and_logits):
        terms = [(math.log(w) + z) for w, z in weights_and_logits if w > 0]
        top = max(terms)
        return top + math.log(sum(math.exp(t - top) for t in terms))

    sample = log_sum([(n - 1, 1 / tau), (n * (k - 1), g / tau), (n_w, 1 / tau), (n_w * (k - 1), g / tau)]) - 1 / tau
    if n - 1 + n_w == 0:
        sample = 0.0
    total = k * n * sample
    if prototypes_as_anchors and n_w > 0:
        if n_w < 1:
            raise ValueError(f"n_w must be 0 or >= 1 when prototypes_as_anchors is set, got {n_w}")
        proto = log_sum([(n, 1 / tau), (n * (k - 1), g / tau), (n_w * (k - 1), g / tau),
                         (n_w - 1, 1 / tau)]) - 1 / tau
        total += k * n_w * proto
    return float(total)


def closed_form_for_setup(class_sizes: Sequence[int], prototypes, n_w: float, tau: float, *,
                          nonnegative: bool = False, batching: str = "full",
                          prototypes_as_anchors: bool = False, tol: float = 1e-9) -> tuple[float, str] | None:
    """``(value, geometry)`` when the set-up's optimum is a known symmetric collapse, else ``None``.

    Cases (full batch, balanced classes, ``d = prototypes.shape[0]``):

    * ``n_w = 0``, no ReLU, ``d >= k - 1``: simplex ETF (docs/theory.md section 3, fact 1);
    * ``n_w = 0``, UFM+ (``nonnegative``), ``d >= k``: orthogonal frame (fact 2);
    * ``n_w > 0``, no ReLU, prototype Gram = ETF Gram: ETF aligned with the prototypes;
    * ``n_w > 0``, UFM+, non-negative prototypes with Gram = identity: OF aligned with them.

    Any other set-up (imbalance, mini-batches, other prototype Grams) returns ``None``.
    The value is :func:`closed_form_loss`; ``geometry`` is ``"etf"`` or ``"of"``.
    """
    sizes = check_class_sizes(class_sizes)
    n_w, tau = check_nonnegative("n_w", n_w), check_tau(tau)
    k = len(sizes)
    W = None if prototypes is None else as_float_array("prototypes", prototypes, ndim=2)
    if W is not None and W.shape[1] != k:
        raise ValueError(f"prototypes must have shape (d, {k}) (one column per class), got {W.shape}")
    if batching != "full" or k < 2 or len(set(sizes)) != 1:
        return None
    if W is None and n_w > 0:
        return None
    d = W.shape[0] if W is not None else None
    if n_w == 0:
        geometry = "of" if nonnegative else "etf"
        if d is not None and d < (k if nonnegative else k - 1):
            return None
    else:
        gram = W.T @ W
        if nonnegative:
            if not (np.all(W >= -tol) and np.allclose(gram, np.eye(k), atol=1e-7)):
                return None
            geometry = "of"
        else:
            if not np.allclose(gram, etf_gram(k), atol=1e-7):
                return None
            geometry = "etf"
    value = closed_form_loss(k, sizes[0], n_w, tau, geometry, prototypes_as_anchors=prototypes_as_anchors)
    return value, geometry


def closed_form_for_problem(problem) -> tuple[float, str] | None:
    """:func:`closed_form_for_setup` of a :class:`ncgeo.UFMProblem`: ``(value, geometry)`` when its
    optimum is a known symmetric collapse (full batch, balanced integer classes, the cases above),
    else ``None``. Without prototypes (``n_w = 0``) the dimension is not checked here: the collapse's
    rank (``k - 1`` for the ETF, ``k`` for the OF) is compared with ``d`` by the certificate."""
    from .problem import check_problem

    problem = check_problem(problem)
    if not (problem.full_batch and problem.integral and np.all(problem.class_sizes > 0)):
        return None
    sizes = [int(s) for s in problem.class_sizes]
    W = problem.prototypes if problem.n_w > 0 else None
    return closed_form_for_setup(sizes, W, problem.n_w, problem.tau, nonnegative=problem.nonnegative,
                                 prototypes_as_anchors=problem.prototypes_as_anchors)
