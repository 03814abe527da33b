r"""The rigorous Lagrangian bound of the orbit relaxation in the orbit structure (docs/theory.md 5 b+, c, 5.1).

An **orbit-symmetric** matrix on the ``2k`` rows (class means then prototypes; ``k`` rows when
``n_w = 0``) of the reduced ``R`` is invariant under permutations of the classes inside each size
group (``m`` groups, ``k_g`` classes of ``n_g`` samples), applied to classes and prototypes at once.
It is held by its entry types: for every pair of sides ``(a, b)`` (0 = class, 1 = prototype)
``D[a, b, g]`` (the entries ``(c, c)`` of group ``g``) and ``F[a, b, g, h]`` (the entries ``(c, c')``,
``c`` in ``g``, ``c'`` in ``h``, ``c != c'``); ``D`` counts ``k_g`` entries, ``F`` ``k_g k_h - [g = h] k_g``.

By Schur's lemma such a matrix is, in an orthonormal basis, the direct sum of

* the ``s m x s m`` **all-ones compression** ``O`` (``s`` sides): ``O_ab[g, g] = D + (k_g - 1) F[g, g]``,
  ``O_ab[g, h] = sqrt(k_g k_h) F[g, h]``, on the vectors ``1_g / sqrt(k_g)`` of each side;
* per group with ``k_g >= 2`` the ``s x s`` **complement block** ``C_g[a, b] = D[a, b, g] - F[a, b, g, g]``,
  with multiplicity ``k_g - 1`` (the vectors of group ``g`` orthogonal to ``1_g``).

Products, traces (``tr = tr O + sum_g (k_g - 1) tr C_g``), Frobenius norms and eigenvalues are taken
component by component, so the bound of :mod:`ncgeo.certify.lagrangian` at an orbit point costs
``O(m^3)`` whatever ``k`` is. The gradient comes from the one objective of
:mod:`ncgeo.certify.gram_objective` (its row form ``_rows_excess``)
written on the entry types, differentiated by autograd: ``dF/dD[a,b,g] / k_g`` is the common partial
derivative of its entries, symmetrised over ``(a, b, g, h) <-> (b, a, h, g)``.

Floating point: the orbit objective sums ``O(m)`` columns per row where the dense one sums ``O(k)``
(counts multiplied in once), the compressions multiply each type once by ``sqrt(k_g k_h)``, and the
eigenvalues are those of blocks of order ``<= 2m``; the stated margin is
:func:`ncgeo.certify.lagrangian.floating_point_margin` with ``n = s k`` (the order of the dense
matrix), which bounds these smaller computations as it bounds the dense ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .gram_objective import ObjectiveValue, _rows_excess
from .lagrangian import floating_point_margin

__all__ = ["OrbitPoint", "orbit_point", "orbit_excess", "orbit_bound", "expand"]


@dataclass(frozen=True)
class OrbitPoint:
    """An orbit-symmetric ``R``: entry types ``D`` (s, s, m) and ``F`` (s, s, m, m) (module docstring),
    group sizes ``kg`` (classes) and ``ng`` (samples per class), ``groups`` (class indices)."""

    D: np.ndarray
    F: np.ndarray
    kg: np.ndarray
    ng: np.ndarray
    groups: tuple


def orbit_point(groups, ng, a, b, p=None, q=None, diag=None, gamma=None) -> OrbitPoint:
    """The :class:`OrbitPoint` of the orbit variables of :func:`ncgeo.certify.solve_orbit`:
    ``R_cc = 1 + (n_g - 1) a_g``, ``R_cc' = sqrt(n_g n_h) b_gh``, ``R_{c,P_c} = sqrt(n_g) p_g``,
    ``R_{c,P_c'} = sqrt(n_g) q_gh`` (sample of ``g``, prototype of ``h``), ``R_PP = G_W`` with
    diagonal ``diag`` and off-diagonal ``gamma`` (prototype types given only when ``n_w > 0``)."""
    kg = np.array([len(I) for I in groups], dtype=float)
    ng = np.asarray(ng, dtype=float)
    m = len(kg)
    s = 1 if p is None else 2
    single = kg < 2
    root = np.sqrt(ng)
    D = np.zeros((s, s, m))
    F = np.zeros((s, s, m, m))
    D[0, 0] = 1 + (ng - 1) * np.asarray(a, dtype=float)
    F[0, 0] = np.outer(root, root) * np.asarray(b, dtype=float)
    if s == 2:
        D[0, 1] = D[1, 0] = root * np.asarray(p, dtype=float)
        F[0, 1] = root[:, None] * np.asarray(q, dtype=float)
        F[1, 0] = F[0, 1].T
        D[1, 1] = np.asarray(diag, dtype=float)
        F[1, 1] = np.asarray(gamma, dtype=float)
    F[:, :, single, single] = 0.0  # no entries of that type
    return OrbitPoint(D, F, kg, ng, tuple(np.asarray(I) for I in groups))


def expand(point: OrbitPoint, D=None, F=None) -> np.ndarray:
    """The dense ``s k x s k`` matrix of entry types (``point``'s own by default); for tests and
    for the small ``k`` the realisation needs."""
    D = point.D if D is None else D
    F = point.F if F is None else F
    s = D.shape[0]
    k = int(point.kg.sum())
    group_of = np.empty(k, dtype=int)
    for g, I in enumerate(point.groups):
        group_of[I] = g
    out = np.zeros((s * k, s * k))
    idx = np.arange(k)
    for u in range(s):
        for v in range(s):
            block = F[u, v][np.ix_(group_of, group_of)].copy()
            block[idx, idx] = D[u, v][group_of]
            out[u * k:(u + 1) * k, v * k:(v + 1) * k] = block
    return out


def _counts(kg: np.ndarray):
    cF = np.outer(kg, kg) - np.diag(kg)
    return kg, cF


def _ones(D: np.ndarray, F: np.ndarray, kg: np.ndarray) -> np.ndarray:
    """The all-ones compression ``O`` (s m x s m)."""
    s, m = D.shape[0], D.shape[2]
    root = np.sqrt(np.outer(kg, kg))
    O = np.zeros((s, m, s, m))
    for u in range(s):
        for v in range(s):
            O[u, :, v, :] = np.diag(D[u, v] - np.diag(F[u, v])) + root * F[u, v]
    return O.reshape(s * m, s * m)


def _complements(D: np.ndarray, F: np.ndarray) -> np.ndarray:
    """The complement blocks ``C_g`` (m, s, s)."""
    diagF = np.diagonal(F, axis1=2, axis2=3)  # (s, s, m)
    return np.moveaxis(D - diagF, 2, 0)


def orbit_excess(D: torch.Tensor, F: torch.Tensor, kg: np.ndarray, ng: np.ndarray, n_w: float, tau: float,
                 prototypes_as_anchors: bool = False) -> ObjectiveValue:
    r"""The full-batch objective (excess and floor, :mod:`ncgeo.certify.gram_objective`) of the
    orbit-symmetric ``R`` with entry types ``D``, ``F`` (float64 tensors, module docstring).

    A sample anchor of group ``g`` (weight ``k_g n_g``) has the columns: its own class (count
    ``(n_g - 1)_+``, logit ``a_g / tau``, positive), the classes of group ``h`` (count
    ``(k_h - [h = g]) n_h``), its own prototype (``n_w``, positive) and the prototypes of group ``h``
    (``(k_h - [h = g]) n_w``); a prototype anchor of group ``g`` (weight ``k_g n_w``, with
    ``prototypes_as_anchors``): its class's samples (``n_g``, positive), the samples of group ``h``,
    its own copies (``n_w - 1``, positive) and the prototypes of group ``h``. The same sum as
    :func:`~ncgeo.certify.gram_objective.reduced_excess` of the expanded matrix, with each
    orbit's columns merged into one column of summed count.
    """
    kg_t = torch.as_tensor(np.asarray(kg, dtype=np.float64))
    ng_t = torch.as_tensor(np.asarray(ng, dtype=np.float64))
    m = len(kg)
    s = D.shape[0]
    root = torch.sqrt(ng_t)
    eye = torch.eye(m, dtype=torch.bool)
    others = kg_t[None, :] - eye.double()  # (k_h - [h = g]) per row g
    within = torch.clamp(ng_t - 1.0, min=0.0)
    a = torch.where(within > 0, (D[0, 0] - 1.0) / torch.where(within > 0, within, torch.ones_like(within)),
                    torch.zeros_like(within))
    S = [a[:, None], F[0, 0] / (root[:, None] * root[None, :])]
    C = [within[:, None], others * ng_t[None, :]]
    pos = [torch.ones(m, 1, dtype=torch.bool), torch.zeros(m, m, dtype=torch.bool)]
    if s == 2:
        S += [(D[0, 1] / root)[:, None], F[0, 1] / root[:, None]]
        C += [torch.full((m, 1), float(n_w), dtype=torch.float64), others * float(n_w)]
        pos += [torch.ones(m, 1, dtype=torch.bool), torch.zeros(m, m, dtype=torch.bool)]
    value, P, has, scale = _rows_excess(torch.cat(S, 1) / tau, torch.cat(C, 1), torch.cat(pos, 1))
    weight = kg_t * ng_t
    excess = (weight * value).sum()
    floor = float((weight * torch.where(has, torch.log(torch.where(has, P, torch.ones_like(P))),
                                        torch.zeros_like(P))).sum())
    total_scale = float((weight * scale).sum())
    if s == 2 and prototypes_as_anchors and n_w > 0:
        Sp = torch.cat([(D[1, 0] / root)[:, None], F[1, 0] / root[None, :], D[1, 1][:, None], F[1, 1]], 1)
        Cp = torch.cat([ng_t[:, None], others * ng_t[None, :], torch.full((m, 1), float(n_w) - 1.0,
                                                                          dtype=torch.float64),
                        others * float(n_w)], 1)
        pp = torch.cat([torch.ones(m, 1, dtype=torch.bool), torch.zeros(m, m, dtype=torch.bool),
                        torch.ones(m, 1, dtype=torch.bool), torch.zeros(m, m, dtype=torch.bool)], 1)
        value_p, P_p, has_p, scale_p = _rows_excess(Sp / tau, Cp, pp)
        weight_p = kg_t * float(n_w)
        excess = excess + (weight_p * value_p).sum()
        floor += float((weight_p * torch.where(has_p, torch.log(torch.where(has_p, P_p, torch.ones_like(P_p))),
                                               torch.zeros_like(P_p))).sum())
        total_scale += float((weight_p * scale_p).sum())
    return ObjectiveValue(excess, floor, total_scale)


def _gradient(point: OrbitPoint, n_w: float, tau: float, anchors: bool):
    """``(excess, floor, scale, gD, gF)``: the symmetrised per-entry gradient by types."""
    Dt = torch.tensor(point.D, requires_grad=True)
    Ft = torch.tensor(point.F, requires_grad=True)
    value = orbit_excess(Dt, Ft, point.kg, point.ng, n_w, tau, anchors)
    dD, dF = torch.autograd.grad(value.excess, (Dt, Ft))
    cD, cF = _counts(point.kg)
    pD = dD.numpy() / cD
    pF = np.where(cF > 0, dF.numpy() / np.where(cF > 0, cF, 1.0), 0.0)
    gD = (pD + pD.transpose(1, 0, 2)) / 2
    gF = (pF + pF.transpose(1, 0, 3, 2)) / 2
    return float(value.excess.detach()), value.floor, value.scale, gD, gF


def _entry_sum(D: np.ndarray, F: np.ndarray, kg: np.ndarray) -> float:
    cD, cF = _counts(kg)
    return float((D * cD).sum() + (F * cF).sum())


def orbit_bound(point: OrbitPoint, n_w: float, tau: float, *, anchors: bool = False, nonnegative: bool = False,
                proto_nonneg: bool = False, zero_tol: float = 1e-7, range_tol: float = 1e-10):
    r"""The Lagrangian bound of :func:`ncgeo.certify.lagrangian.reduced_bound` (stationarity
    multipliers) at the orbit-symmetric ``point``, computed in the orbit structure.

    Constraints as there: ``lo_c <= R_cc <= hi_c = n_c`` (``lo = 0``, ``1`` for UFM+, ``n_c`` when
    ``n_c <= 1``), ``R_PP = G_W`` (restricted to the range of ``G_W``: on ``O``'s prototype part the
    range of its ``m x m`` block, on ``C_g`` the prototype coordinate when ``G_W``'s complement value
    ``d_g - gamma_gg`` is above ``range_tol * max(1, largest eigenvalue)``), UFM+ signs on the
    class-class off-diagonal entries (and class-prototype ones with ``proto_nonneg``). With
    ``S = g - N - Diag(y) - (0 (+) Lambda)``:

    ``L = f(R0) - <g, R0> + sum_c min(y_c lo_c, y_c hi_c) + <Lambda, G_W> + T min(0, lambda_min(S)) - margin``.

    Returns
    -------
    dict
        ``lower`` (full loss scale) and the fields of :attr:`LagrangianBound.info` (``excess_lower``,
        ``floor``, ``point_excess``, ``lambda_min``, ``margin``, ``trace_bound``, ``eigenvalue``,
        ``multipliers``, ``failure``), plus ``y`` (per group), ``lambda_ones`` and ``lambda_complement``
        (the smallest eigenvalue of ``O`` and of each ``C_g``, NaN where ``k_g = 1``).
    """
    kg, ng = point.kg, point.ng
    m = len(kg)
    s = point.D.shape[0]
    excess, floor, scale, gD, gF = _gradient(point, n_w, tau, anchors)
    Z_D, Z_F = point.D, point.F
    # <g, R0> and sum |g o R0| over entries (counts times types), with g before the sign multipliers
    g_inner = _entry_sum(gD * Z_D, gF * Z_F, kg)
    inner_abs = _entry_sum(np.abs(gD * Z_D), np.abs(gF * Z_F), kg)
    if nonnegative:  # UFM+ sign multipliers N on the constrained entries at (numerically) zero
        mask = np.zeros((s, s), dtype=bool)
        mask[0, 0] = True
        if s == 2 and proto_nonneg:
            mask[0, 1] = mask[1, 0] = True
        maskD = mask.copy()
        maskD[0, 0] = False  # the diagonal R_cc is not sign-constrained
        gD = gD - np.where(maskD[:, :, None] & (Z_D <= zero_tol), np.maximum(gD, 0.0), 0.0)
        gF = gF - np.where(mask[:, :, None, None] & (Z_F <= zero_tol), np.maximum(gF, 0.0), 0.0)
    gO, gC = _ones(gD, gF, kg), _complements(gD, gF)
    ZO, ZC = _ones(Z_D, Z_F, kg), _complements(Z_D, Z_F)
    PO, PC = gO @ ZO, gC @ ZC  # (g' R0) by components
    multiple = kg > 1
    diag_prod = (np.diag(PO)[:m] + (kg - 1) * np.where(multiple, PC[:, 0, 0], 0.0)) / kg
    zdiag = Z_D[0, 0]
    y = np.where(zdiag > 1e-300, diag_prod / np.where(zdiag > 1e-300, zdiag, 1.0), gD[0, 0])
    hi = ng.copy()
    lo = np.where(ng > 1, 1.0 if nonnegative else 0.0, ng)
    trace_bound = float((kg * hi).sum() + ((kg * Z_D[1, 1]).sum() if s == 2 else 0.0))
    S1 = gO.copy()
    S1[:m, :m] -= np.diag(y)
    lambda_term = 0.0
    comp = np.array([C.copy() for C in gC])
    for g in range(m):
        comp[g][0, 0] -= y[g]
    keep_c = np.zeros(m, dtype=bool)
    if s == 2:
        G1 = ZO[m:, m:]
        eig1, vec1 = np.linalg.eigh((G1 + G1.T) / 2)
        GC = ZC[:, 1, 1]
        largest = max(float(eig1.max()), float(GC[multiple].max(initial=-math.inf)))
        threshold = range_tol * max(1.0, largest)
        keep1 = eig1 > threshold
        Q1, s1 = vec1[:, keep1], eig1[keep1]
        keep_c = multiple & (GC > threshold)
        M1 = PO[m:, m:]
        Lq1 = (Q1.T @ M1 @ Q1) / s1[None, :]
        Lq1 = (Lq1 + Lq1.T) / 2
        basis = np.zeros((2 * m, m + Q1.shape[1]))
        basis[:m, :m] = np.eye(m)
        basis[m:, m:] = Q1
        S1 = basis.T @ S1 @ basis
        S1[m:, m:] -= Lq1
        lambda_term += float(np.sum(np.diag(Lq1) * s1))
        Lc = np.where(keep_c, PC[:, 1, 1] / np.where(keep_c, GC, 1.0), 0.0)
        lambda_term += float(((kg - 1) * Lc * GC)[keep_c].sum())
        for g in range(m):
            comp[g][1, 1] -= Lc[g]
    S1 = (S1 + S1.T) / 2
    lam_ones = float(np.linalg.eigvalsh(S1).min()) if S1.size else math.inf
    lam_comp = np.full(m, math.nan)
    frob2 = float(np.sum(S1 ** 2))
    for g in np.flatnonzero(multiple):
        block = comp[g] if keep_c[g] else comp[g][:1, :1]
        block = (block + block.T) / 2
        lam_comp[g] = float(np.linalg.eigvalsh(block).min())
        frob2 += (kg[g] - 1) * float(np.sum(block ** 2))
    lam = min([lam_ones] + lam_comp[multiple].tolist())
    diag_term = float((kg * np.minimum(y * lo, y * hi)).sum())
    n = int(s * kg.sum())
    margin = floating_point_margin(n, scale, excess, inner_abs, float((kg * np.abs(y) * np.abs(hi)).sum())
                                   + abs(lambda_term), trace_bound * math.sqrt(frob2))
    excess_lower = excess - g_inner + diag_term + lambda_term + trace_bound * min(0.0, lam) - margin
    return {"lower": floor + excess_lower, "excess_lower": excess_lower, "floor": floor, "point_excess": excess,
            "lambda_min": lam, "margin": margin, "trace_bound": trace_bound,
            "eigenvalue": f"orbit blocks (one {S1.shape[0]} x {S1.shape[0]}, {int(multiple.sum())} complement)",
            "multipliers": "stationarity", "failure": None, "y": y, "lambda_ones": lam_ones,
            "lambda_complement": lam_comp}
