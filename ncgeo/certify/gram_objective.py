r"""The one definition of the UFM objective as a function of the Gram of ``[H, W]`` (torch, float64).

Every certificate (the dual certificate, the rigorous Lagrangian bounds of the relaxations,
the geometry certificate and their tests) evaluates the loss and its gradient through this
module; the cvxpy expressions of the relaxations and the closed forms are the only other
forms of the objective, and the tests compare them with this one.

Grouped form. The samples are given as ``m`` groups; group ``u`` has weight (number of
samples) ``w_u > 0`` (a real number for the reduced program), label ``y_u``, and its members
have cosine ``a_u`` with each other. With ``X`` the ``(m + k_p)``-square cosine Gram of one
representative per group and the ``k_p`` prototypes (``k_p = k`` when ``n_w > 0``, else 0),
the loss of an anchor of group ``u`` (docs/theory.md section 2) is written on the excess over its
floor ``log P_u`` (docs/theory.md section 5.1):

.. math::

    \ell_u - \log P_u = \log \sum_j \frac{c_{uj}}{P_u} e^{t_{uj}}, \qquad
    t_{uj} = s_{uj} - \bar s_u, \quad \bar s_u = \frac{1}{P_u}\sum_{j \text{ positive}} c_{uj} s_{uj},

over the columns ``j``: the group itself (count ``(w_u - 1)_+``, logit ``s = a_u / tau``),
the other groups ``v`` (count ``w_v``, ``s = X_uv / tau``) and the prototypes (count ``n_w``,
``s = X_{u, P_c} / tau``); positives are the same-label columns and the own prototype,
``P_u = sum of their counts``. Since the positive weights ``c/P`` sum to one and
``sum_pos c t = 0``, the argument is ``1 + sum_pos (c/P) expm1(t) + sum_neg (c/P) e^t``, which
is evaluated with ``log1p`` (no cancellation against the floor, even at ``n_w = 1e9``).
A prototype-anchor copy of ``w_c`` (weight ``n_w``) has the columns: groups (count ``w_v``,
``X_{P_c, v}``), the other prototypes (count ``n_w``) and its own (count ``n_w - 1``); its
positives are the groups of class ``c`` and its own copies. Anchors with ``P = 0``
contribute 0. The objective is ``floor + excess`` with ``floor = sum_anchors weight * log P``.

Two parametrisations feed this form:

* :func:`reduced_excess`: the scaled reduced matrix ``R`` of docs/theory.md section 5b (``R_uv =
  sqrt(w_u w_v) X_uv``, ``R_uu = 1 + (w_u - 1) a_u``, ``R_{u,P} = sqrt(w_u) X_{u,P}``,
  ``R_PP = G_W``): classes of the reduced program, or groups of identical rows of a
  candidate (``a_u = 1``); any ``N`` costs ``O((m + k)^2)``.
* :func:`gram_excess`: the sample Gram ``G`` (``(N + k_p)`` square) and a list of batches
  (each anchor's batch is gathered from ``G``; samples are groups of weight 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ObjectiveValue", "grouped_excess", "reduced_excess", "gram_excess", "reduced_gradient",
           "gram_gradient"]

#: Rows whose largest shifted logit ``t`` is above this use the plain log-sum-exp form.
_LOG1P_MAX = 50.0


@dataclass(frozen=True)
class ObjectiveValue:
    """``excess`` (torch scalar, differentiable), ``floor`` (float, constant) and ``scale``
    (float: sum over anchors of weight * (|mean positive logit| + |log P| + 2 max_j |s_j|), the size of the terms whose rounding the excess and its gradient carry;
    used for floating-point margins)."""

    excess: torch.Tensor
    floor: float
    scale: float


def _rows_excess(S: torch.Tensor, C: torch.Tensor, positive: torch.Tensor):
    """Per-row ``log(sum_j C e^{S} / P) - mean positive logit`` and ``P`` (module docstring).

    ``S`` (r, q) logits (finite), ``C`` (r, q) counts ``>= 0``, ``positive`` (r, q) bool."""
    Cp = C * positive
    P = Cp.sum(1)
    has = P > 0
    safeP = torch.where(has, P, torch.ones_like(P))
    ref = (Cp * S).sum(1) / safeP
    t = S - ref[:, None]
    frac = C / safeP[:, None]
    top = torch.where(C > 0, t, torch.full_like(t, -math.inf)).amax(1).detach()
    small = top <= _LOG1P_MAX
    tc = torch.clamp(t, max=_LOG1P_MAX)
    z = (frac * torch.where(positive, torch.expm1(tc), torch.exp(tc))).sum(1)
    gentle = torch.log1p(z)
    shift = torch.where(small | ~has, torch.zeros_like(top), top)
    shifted = torch.where(C > 0, t - shift[:, None], torch.full_like(t, -math.inf))
    steep = shift + torch.log((frac * torch.exp(shifted)).sum(1).clamp_min(1e-300))
    value = torch.where(small, gentle, steep)
    value = torch.where(has, value, torch.zeros_like(value))
    spread = 2 * torch.where(C > 0, S.abs(), torch.zeros_like(S)).amax(1)
    scale = torch.where(has, ref.abs() + torch.log(safeP).abs() + spread, torch.zeros_like(ref)).detach()
    return value, P, has, scale


def grouped_excess(X: torch.Tensor, a: torch.Tensor, weights: torch.Tensor, labels: np.ndarray, n_w: float,
                   tau: float, prototypes_as_anchors: bool = False) -> ObjectiveValue:
    r"""Excess and floor of one batch in grouped form (module docstring).

    Parameters
    ----------
    X : (m + k_p, m + k_p) float64 tensor
        Cosines of the group representatives (first ``m``) and prototypes (last ``k_p``).
    a : (m,) float64 tensor
        Within-group cosines (unused where ``w_u <= 1``).
    weights : (m,) float64 tensor
        Group weights ``w_u > 0``.
    labels : (m,) int array
        Group labels, in ``[0, k_p)`` when ``k_p > 0``.
    n_w, tau : float
    prototypes_as_anchors : bool
    """
    m = len(labels)
    kp = X.shape[0] - m
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    dtype = X.dtype
    eye = torch.eye(m, dtype=torch.bool)
    within = torch.clamp(weights - 1.0, min=0.0)
    a_used = torch.where(within > 0, a, torch.zeros_like(a))
    S = torch.where(eye, a_used[:, None].expand(m, m), X[:m, :m]) / tau
    C = torch.where(eye, torch.diag(within), weights[None, :].expand(m, m))
    positive = y[:, None] == y[None, :]
    if kp:
        S = torch.cat([S, X[:m, m:] / tau], dim=1)
        C = torch.cat([C, torch.full((m, kp), float(n_w), dtype=dtype)], dim=1)
        positive = torch.cat([positive, y[:, None] == torch.arange(kp)[None, :]], dim=1)
    value, P, has, scale = _rows_excess(S, C, positive)
    excess = (weights * value).sum()
    floor = float((weights * torch.where(has, torch.log(torch.where(has, P, torch.ones_like(P))),
                                         torch.zeros_like(P))).sum())
    total_scale = float((weights * scale).sum().detach())
    if prototypes_as_anchors and kp and n_w > 0:
        Sp = X[m:, :] / tau  # (k, m + k)
        own = float(n_w) - 1.0
        Cp = torch.cat([weights[None, :].expand(kp, m),
                        torch.where(torch.eye(kp, dtype=torch.bool), torch.full((kp, kp), own, dtype=dtype),
                                    torch.full((kp, kp), float(n_w), dtype=dtype))], dim=1)
        pos_p = torch.cat([torch.arange(kp)[:, None] == y[None, :], torch.eye(kp, dtype=torch.bool)], dim=1)
        value_p, P_p, has_p, scale_p = _rows_excess(Sp, Cp, pos_p)
        excess = excess + n_w * value_p.sum()
        floor += float(n_w * torch.where(has_p, torch.log(torch.where(has_p, P_p, torch.ones_like(P_p))),
                                         torch.zeros_like(P_p)).sum())
        total_scale += float(n_w * scale_p.sum().detach())
    return ObjectiveValue(excess, floor, total_scale)


def _reduced_to_cosines(R: torch.Tensor, weights: torch.Tensor):
    m = len(weights)
    s = torch.sqrt(weights)
    scale = torch.cat([1.0 / s, torch.ones(R.shape[0] - m, dtype=R.dtype)])
    X = R * scale[:, None] * scale[None, :]
    within = weights - 1.0
    a = torch.where(within > 0, (torch.diagonal(R)[:m] - 1.0) / torch.where(within > 0, within,
                                                                            torch.ones_like(within)),
                    torch.zeros_like(within))
    return X, a


def reduced_excess(R: torch.Tensor, weights, labels: np.ndarray, n_w: float, tau: float,
                   prototypes_as_anchors: bool = False) -> ObjectiveValue:
    """Full-batch objective of the scaled reduced matrix ``R`` (module docstring)."""
    w = torch.as_tensor(np.array(weights, dtype=np.float64))
    X, a = _reduced_to_cosines(R, w)
    return grouped_excess(X, a, w, labels, n_w, tau, prototypes_as_anchors)


def gram_excess(G: torch.Tensor, labels: np.ndarray, batches, n_w: float, tau: float,
                prototypes_as_anchors: bool = False) -> ObjectiveValue:
    """Objective of the sample Gram ``G`` (``(N + k_p)`` square) summed over ``batches``."""
    N = len(labels)
    kp = G.shape[0] - N
    excess = G.new_zeros(())
    floor = scale = 0.0
    for B in batches:
        B = np.asarray(B, dtype=np.int64)
        index = torch.as_tensor(np.concatenate([B, N + np.arange(kp)]))
        X = G[index][:, index]
        ones = torch.ones(len(B), dtype=G.dtype)
        part = grouped_excess(X, ones, ones, np.asarray(labels)[B], n_w, tau, prototypes_as_anchors)
        excess = excess + part.excess
        floor += part.floor
        scale += part.scale
    return ObjectiveValue(excess, floor, scale)


def _value_and_gradient(function, Z: np.ndarray):
    Zt = torch.tensor(np.asarray(Z, dtype=np.float64), requires_grad=True)
    value = function(Zt)
    (grad,) = torch.autograd.grad(value.excess, Zt)
    g = grad.numpy()
    return float(value.excess.detach()), value.floor, value.scale, (g + g.T) / 2


def reduced_gradient(R: np.ndarray, weights, labels, n_w: float, tau: float, prototypes_as_anchors: bool = False):
    """``(excess, floor, scale, g)`` at a numeric ``R``; ``g`` the symmetrised gradient of the
    excess (equal to the loss's) with respect to the entries of ``R``, so that the directional
    derivative along a symmetric ``D`` is ``<g, D>``."""
    return _value_and_gradient(lambda Z: reduced_excess(Z, weights, labels, n_w, tau, prototypes_as_anchors), R)


def gram_gradient(G: np.ndarray, labels, batches, n_w: float, tau: float, prototypes_as_anchors: bool = False):
    """As :func:`reduced_gradient` for the sample Gram and batches of :func:`gram_excess`."""
    return _value_and_gradient(lambda Z: gram_excess(Z, labels, batches, n_w, tau, prototypes_as_anchors), G)
