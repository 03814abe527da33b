r"""Dual (Burer-Monteiro style) certificate from a candidate solution (THEORY.md section 5c).

At a candidate ``G* = V^T V``, ``V = [H^T, W]`` (``d x (N + k)``), let ``g`` be the symmetrised
gradient of the (convex) loss ``f`` with respect to the Gram entries, ``lambda_i = (g G*)_ii``
the multipliers of ``diag(G) = 1`` and ``Lambda`` a free symmetric multiplier for the fixed
prototype block ``G_PP = G_W``; ``S = g - Diag(lambda) - (0 (+) Lambda) [- N]``. For every
feasible ``G`` (PSD, unit diagonal, ``G_PP = G_W``, so ``tr G = N + k``), convexity gives

.. math::

    f(G) \ge f(G^*) - \langle S, G^* \rangle - \langle N, G^* \rangle
             + (N + k) \min(0, \lambda_{\min}(S)),

a lower bound on the UFM optimum that needs one smallest-eigenvalue computation and no
SDP solve. Details of this implementation:

* ``Lambda`` is chosen from the stationarity ``Lambda W^T = g_PS H`` (least squares on the
  row space of ``W``, symmetrised). Directions ``(0, z)`` with ``W z = 0`` carry no mass in
  any feasible ``G`` (``z^T G_W z = 0``), so ``lambda_min`` is taken on the complement,
  i.e. on ``diag(I_N, Q)`` with ``Q`` an orthonormal basis of the row space of ``W``.
* ``<S, G*>`` is computed, not assumed to be 0: the bound is valid at any candidate.
* Samples whose rows coincide (exactly, or after snapping classes whose rows all lie
  within ``snap_tol`` of their normalised class mean) are grouped: ``S`` is then
  group-constant plus diagonal, and its spectrum is that of an ``(m + r)``-square matrix
  (``m`` groups) plus the scalars ``S_ii - S_ij`` on within-group zero-sum vectors. A
  collapsed candidate of any ``N`` costs ``O(k^3)``. The bound is computed at the snapped
  point and is a valid lower bound whatever point it is computed at; the upper bound is
  the candidate's own loss.
* Without grouping ``S`` is formed densely (``O(m^2)`` memory for ``m`` distinct rows, at most
  ``MAX_DENSE_GROUPS = 6000``; beyond, the result is "not certified" with that reason):
  ``scipy.linalg.eigh`` up to ``dense_max`` rows, ``scipy.sparse.linalg.eigsh`` beyond.

UFM+ (``nonnegative=True``): the bound above, without ``N``, is valid for UFM+ too (its
feasible set is smaller) but it certifies a UFM+ candidate only when that candidate is
also optimal without the non-negativity (never for an OF when the UFM optimum is an
ETF). With ``nonnegative=True`` the certificate adds the multipliers ``N >= 0`` of
``G_ij >= 0`` on the entries where ``G*_ij <= zero_tol``: ``N_ij = max(g_ij, 0)`` there,
for sample-sample entries, and for sample-prototype entries only when ``W >= 0``
entrywise (otherwise ``h.w >= 0`` is not implied by ``h >= 0``). This certifies optima
of the doubly non-negative relaxation whose zero pattern carries the active
constraints, e.g. OF collapse with non-negative OF prototypes; it cannot certify a UFM+
candidate whose optimality relies on ``h >= 0`` in ways the Gram's sign pattern does not
show (the DNN relaxation is not the completely positive cone), nor mini-batch optima
that are not stationary for the relaxation.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from scipy.special import logsumexp

from ..ufm.batching import check_batches
from ._common import candidate_inputs, candidate_loss
from ._program import Timer
from .result import CertificateResult, DEFAULT_RTOL, check_rtol, make_result

__all__ = ["dual_certificate", "full_batch_loss"]

#: Above this many rows the dense gradient matrix is refused (memory).
MAX_DENSE_GROUPS = 6000


def _batch_terms(Hb, yb, nb, W, G_W, n_w, tau, anchors):
    """Loss and per-entry gradients of one batch given as groups of identical rows.

    ``Hb`` (m, d) group rows, ``yb`` labels, ``nb`` multiplicities. Returns ``f`` (the batch
    loss, sum over anchors), ``E_ss`` (m, m): derivative of the loss of one anchor of
    group u with respect to one entry ``G_ij`` (i in u, j in v, j != i); ``E_sp`` (m, k):
    with respect to ``G_{i, w_c}``; ``E_ps`` (k, m): of the prototype anchors with respect
    to ``G_{w_c, j}``.
    """
    m = len(yb)
    k = 0 if W is None else W.shape[1]
    S = (Hb @ Hb.T) / tau
    mult = nb[None, :] - np.eye(m)
    with np.errstate(divide="ignore"):
        logw = np.where(mult > 0, np.log(np.maximum(mult, 1e-300)), -np.inf)
    same = (yb[:, None] == yb[None, :]) & (mult > 0)
    count = (same * mult).sum(1) + n_w
    logits = S + logw
    T = None
    if n_w > 0:
        T = (Hb @ W) / tau
        logits = np.concatenate([logits, T + math.log(n_w)], axis=1)
    has = count > 0
    logD = np.where(has, logsumexp(np.where(has[:, None], logits, 0.0), axis=1), 0.0)
    safe = np.where(has, count, 1.0)
    positive = (same * mult * S).sum(1)
    if n_w > 0:
        positive = positive + n_w * T[np.arange(m), yb]
    loss = np.where(has, logD - positive / safe, 0.0)
    f = float(nb @ loss)
    E_ss = np.where(mult > 0, np.exp(S - logD[:, None]) - same / safe[:, None], 0.0) / tau
    E_ss[~has] = 0.0
    E_sp = np.zeros((m, k))
    E_ps = np.zeros((k, m))
    if n_w > 0:
        own = (yb[:, None] == np.arange(k)[None, :])
        E_sp = n_w * (np.exp(T - logD[:, None]) - own / safe[:, None]) / tau
        E_sp[~has] = 0.0
        if anchors:
            own_copies = n_w - 1.0
            proto_logits = G_W / tau + math.log(n_w)
            if own_copies > 0:
                np.fill_diagonal(proto_logits, np.diag(G_W) / tau + math.log(own_copies))
            else:
                np.fill_diagonal(proto_logits, -np.inf)
            with np.errstate(divide="ignore"):
                log_n = np.log(nb)
            logits_p = np.concatenate([T.T + log_n[None, :], proto_logits], axis=1)  # (k, m + k)
            member = own.T * nb[None, :]  # (k, m)
            count_p = member.sum(1) + own_copies
            has_p = count_p > 0
            safe_p = np.where(has_p, count_p, 1.0)
            logD_p = logsumexp(logits_p, axis=1)
            pos_p = (member * T.T).sum(1) + own_copies * np.diag(G_W) / tau
            f += float(n_w * np.where(has_p, logD_p - pos_p / safe_p, 0.0).sum())
            E_ps = n_w * (np.exp(T.T - logD_p[:, None]) - own.T / safe_p[:, None]) / tau
            E_ps[~has_p] = 0.0
    return f, E_ss, E_sp, E_ps


def _groups(H, y, snap_tol):
    """Group identical rows (after snapping tight classes to their normalised mean)."""
    H = H.copy()
    snapped = False
    if snap_tol > 0:
        for c in np.unique(y):
            rows = y == c
            if np.all(H[rows] == H[rows][0]):
                continue  # already one point
            mean = H[rows].mean(0)
            mean /= max(np.linalg.norm(mean), 1e-300)
            if np.abs(H[rows] - mean).max() <= snap_tol:
                snapped |= bool(np.any(H[rows] != mean))
                H[rows] = mean
    key = np.concatenate([y[:, None].astype(float), H], axis=1)
    _, first, inverse, counts = np.unique(key, axis=0, return_index=True, return_inverse=True,
                                          return_counts=True)
    return H, first, inverse.ravel(), counts.astype(float), snapped


def full_batch_loss(H: np.ndarray, y: np.ndarray, W, n_w: float, tau: float,
                    prototypes_as_anchors: bool = False) -> float:
    """Full-batch UFM loss of a feasible candidate (sum over anchors), computed over its
    distinct rows: ``O(m^2)`` for ``m`` distinct rows, so a collapsed ``N = 10^5`` costs what
    ``N = k`` does. Above :data:`MAX_DENSE_GROUPS` distinct rows it is
    :func:`ncgeo.certify._common.candidate_loss` (``O(N^2)``)."""
    _, first, _, counts, _ = _groups(H, y, 0.0)
    use_p = n_w > 0
    if len(counts) > MAX_DENSE_GROUPS:
        return candidate_loss(H, y, W if use_p else None, n_w, tau, None, prototypes_as_anchors)
    G_W = W.T @ W if use_p else np.zeros((0, 0))
    return float(_batch_terms(H[first], y[first], counts, W if use_p else None, G_W, n_w, tau,
                              prototypes_as_anchors)[0])


def _lambda_min(K, C, M, tol_dense):
    """Smallest eigenvalue of ``[[K, C], [C^T, -M]]`` (dense or Lanczos)."""
    A = np.block([[K, C], [C.T, -M]]) if C.shape[1] else K
    A = (A + A.T) / 2
    if A.shape[0] <= tol_dense:
        return float(scipy.linalg.eigh(A, eigvals_only=True, subset_by_index=[0, 0])[0])
    value = scipy.sparse.linalg.eigsh(A, k=1, which="SA", tol=1e-10, return_eigenvectors=False)
    return float(value[0])


def dual_certificate(H, labels, prototypes=None, n_w: float = 0.0, tau: float = 0.1, *,
                     batches=None, nonnegative: bool = False, prototypes_as_anchors: bool = False,
                     upper_bound: float | None = None, snap_tol: float = 1e-6,
                     zero_tol: float = 1e-7, dense_max: int = 3000,
                     rtol: float = DEFAULT_RTOL) -> CertificateResult:
    r"""Certify a candidate ``(H, labels)`` with the dual bound of the module docstring.

    Parameters
    ----------
    H : (N, d) array
        Candidate embeddings (unit rows; non-negative for UFM+); rows within 1e-5 of the
        constraints are projected onto them (``ValueError`` beyond), and ``upper_bound``
        is then recomputed at the projected point.
    labels : (N,) int array
    prototypes : (d, k) array, optional
        Fixed prototypes (required when ``n_w > 0``).
    n_w, tau : float
    batches : list of int arrays, optional
        The batches of the objective (default: one full batch). Grouping of identical
        rows is only used for the full batch.
    nonnegative : bool
        UFM+: add the non-negativity multipliers (see the module docstring for what this
        can and cannot certify).
    prototypes_as_anchors : bool
    upper_bound : float, optional
        The candidate's objective if already known (e.g. ``UFMResult.loss``); computed
        otherwise.
    snap_tol : float
        Classes whose rows all lie within this max-abs distance of their normalised mean
        are grouped at that mean for the bound (0 disables).
    zero_tol : float
        Entries of ``G*`` at or below this value carry non-negativity multipliers (UFM+).
    dense_max : int
        Largest eigenproblem solved densely; beyond, Lanczos (``eigsh``).
    rtol : float
        Relative gap accepted as certified.

    Returns
    -------
    CertificateResult
        method ``"dual"``; ``solution`` holds ``lambda_min``, ``inner_product`` (``<S, G*>``),
        ``groups`` (number of distinct rows) and ``bound_point_loss`` (``f`` at the
        point where the bound was computed).
    """
    timer = Timer()
    rtol = check_rtol(rtol)
    H0, y, W, n_w, tau, upper_bound = candidate_inputs(H, labels, prototypes, n_w, tau, nonnegative,
                                                       prototypes_as_anchors, upper_bound)
    N, d = H0.shape
    use_p = n_w > 0
    if not use_p:
        W = None
    k = W.shape[1] if use_p else 0  # candidate_inputs checked the labels against it
    G_W = W.T @ W if use_p else np.zeros((0, 0))
    batch_list = check_batches(batches, N)
    full_batch = len(batch_list) == 1 and np.array_equal(np.sort(batch_list[0]), np.arange(N))
    if full_batch:
        Hs, first, inverse, n, snapped = _groups(H0, y, snap_tol)
        Hg, yg = Hs[first], y[first]
        if len(n) > MAX_DENSE_GROUPS:
            if upper_bound is None:
                upper_bound = candidate_loss(H0, y, W, n_w, tau, batch_list, prototypes_as_anchors)
            return _too_large(len(n), upper_bound, timer, rtol, d)
        f, E_ss, E_sp, E_ps = _batch_terms(Hg, yg, n, W, G_W, n_w, tau, prototypes_as_anchors)
        if upper_bound is None:
            # exact groups: the grouped loss is the candidate's loss (O(m^2) instead of O(N^2))
            upper_bound = f if not snapped else full_batch_loss(H0, y, W, n_w, tau, prototypes_as_anchors)
    else:
        if upper_bound is None:
            upper_bound = candidate_loss(H0, y, W, n_w, tau, batch_list, prototypes_as_anchors)
        if N > MAX_DENSE_GROUPS:
            return _too_large(N, upper_bound, timer, rtol, d)
        Hg, yg, n = H0, y, np.ones(N)
        f, E_ss, E_sp, E_ps = 0.0, np.zeros((N, N)), np.zeros((N, k)), np.zeros((k, N))
        for B in batch_list:
            fb, ess, esp, eps = _batch_terms(H0[B], y[B], np.ones(len(B)), W, G_W, n_w, tau,
                                             prototypes_as_anchors)
            f += fb
            np.add.at(E_ss, (B[:, None], B[None, :]), ess)
            np.add.at(E_sp, B, esp)
            np.add.at(E_ps.T, B, eps.T)
    m = len(n)
    g = (E_ss + E_ss.T) / 2
    g_p = (E_sp + E_ps.T) / 2  # (m, k)
    gram = Hg @ Hg.T
    cross = Hg @ W if use_p else np.zeros((m, 0))
    N_ss = np.zeros_like(g)
    N_sp = np.zeros_like(g_p)
    if nonnegative:
        N_ss = np.where(gram <= zero_tol, np.maximum(g, 0.0), 0.0)
        if use_p and np.all(W >= 0):
            N_sp = np.where(cross <= zero_tol, np.maximum(g_p, 0.0), 0.0)
    g = g - N_ss
    g_p = g_p - N_sp
    # multipliers: lambda_u = (g G*)_ii, excluding the (absent) diagonal entry
    lam = (g * gram) @ n - np.diag(g) * np.diag(gram) + (g_p * cross).sum(1)
    delta = -lam - np.diag(g)
    sq = np.sqrt(n)
    K = sq[:, None] * g * sq[None, :] + np.diag(delta)
    if use_p:
        U, sig, Qt = np.linalg.svd(W, full_matrices=False)
        r = int(np.sum(sig > 1e-10 * sig.max()))
        U, sig, Q = U[:, :r], sig[:r], Qt[:r].T  # W = U diag(sig) Q^T
        C_P = g_p.T @ (n[:, None] * Hg)  # (k, d): prototype rows of g V^T
        F = C_P @ U / sig  # Lambda Q = F
        Mq = Q.T @ F
        Mq = (Mq + Mq.T) / 2
        C = sq[:, None] * (g_p @ Q)
        inner_lambda = float(np.sum(Mq * np.diag(sig ** 2)))
    else:
        Mq = np.zeros((0, 0))
        C = np.zeros((m, 0))
        inner_lambda = 0.0
    lam_min = _lambda_min(K, C, Mq, dense_max)
    within = delta[n >= 2]
    if within.size:
        lam_min = min(lam_min, float(within.min()))
    # <g, G*> over all ordered pairs (diagonal entries absent), and the multiplier terms
    g_inner = float(n @ (g * gram) @ n - n @ (np.diag(g) * np.diag(gram)))
    g_inner += float(2 * (n[:, None] * g_p * cross).sum()) if use_p else 0.0
    S_inner = g_inner - float(n @ lam) - inner_lambda
    N_inner = float(n @ (N_ss * gram) @ n - n @ (np.diag(N_ss) * np.diag(gram)))
    N_inner += float(2 * (n[:, None] * N_sp * cross).sum()) if use_p else 0.0
    lower = f - S_inner - N_inner + (N + k) * min(0.0, lam_min)
    solution = {"lambda_min": lam_min, "inner_product": S_inner, "nonnegativity_inner": N_inner,
                "groups": m, "bound_point_loss": f}
    return make_result(lower, upper_bound, method="dual", status="n/a", seconds=timer(), rtol=rtol,
                       rank=int(np.linalg.matrix_rank(np.concatenate([Hg.T, W], axis=1) if use_p else Hg.T,
                                                      tol=1e-6)),
                       dim=d, realisable=True, solution=solution)


def _too_large(rows: int, upper: float, timer, rtol: float, d: int) -> CertificateResult:
    return make_result(None, upper, method="dual", status="n/a", seconds=timer(), rtol=rtol, dim=d,
                       failure=f"{rows} distinct rows exceed the dense limit {MAX_DENSE_GROUPS} "
                               "(use a collapsed candidate or a reduced SDP)")
