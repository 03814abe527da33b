r"""Dual (Burer-Monteiro style) certificate from a candidate solution (THEORY.md sections 5c, 5.1).

At a candidate ``H`` the Gram of ``[H, W]`` is the point ``Z0`` of the rigorous Lagrangian bound
of :mod:`ncgeo.certify.lagrangian`; the objective and its gradient come from the one torch
definition (:mod:`ncgeo.certify.gram_objective`), multipliers from stationarity. For every
feasible ``G``

.. math::

    f(G) \ge f(Z_0) - \langle g, Z_0\rangle + \sum_u \min(y_u lo_u, y_u hi_u) + \langle\Lambda, G_W\rangle
             + T \min(0, \lambda_{\min}(S)) - \text{margin},

a lower bound on the UFM optimum that needs one smallest-eigenvalue computation and no SDP
solve; it is valid at any candidate (``<S, Z0>`` is not assumed to vanish).

* Full batch: samples whose rows coincide (exactly, or after snapping classes whose rows all
  lie within ``snap_tol`` of their normalised class mean) form groups; the bound is that of
  the grouped relaxation (:func:`ncgeo.certify.lagrangian.reduced_bound`: group weight
  ``w_u``, ``a_u = 1``, ``a_u <= 1``), whose optimum equals the full relaxation's (a symmetric
  optimum exists). A collapsed candidate of any ``N`` costs ``O(k^3)``. The bound is computed at
  the snapped point (valid whatever point it is computed at); the upper bound is the
  candidate's own loss.
* Other batchings: the sample Gram (``N + k`` square), dense up to ``MAX_DENSE_GROUPS`` rows.
* Beyond ``MAX_DENSE_GROUPS`` distinct rows the result is "not certified" with that reason.

UFM+ (``problem.nonnegative``): the non-negativity multipliers ``N_ij = max(g_ij, 0)`` on the
sign-constrained entries where ``G*_ij <= zero_tol`` (sample-prototype entries only when
``W >= 0``), plus ``a_u >= 0``. This certifies optima of the doubly non-negative relaxation whose
zero pattern carries the active constraints (e.g. OF collapse with non-negative OF
prototypes); it cannot certify a UFM+ candidate whose optimality relies on ``h >= 0`` in ways
the Gram's sign pattern does not show.
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import candidate_loss, problem_candidate
from ._program import Timer, matrix_rank
from .face import geometry_certificate
from .gram_objective import reduced_excess
from .lagrangian import gram_bound, reduced_bound
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult, make_result

__all__ = ["dual_certificate", "candidate_value"]

#: Above this many distinct rows the dense dual matrix is refused (memory).
MAX_DENSE_GROUPS = 6000


def _groups(H: np.ndarray, y: np.ndarray, snap_tol: float):
    """Group identical rows of a class (after snapping tight classes to their normalised mean):
    ``(snapped H, first index, counts, whether snapping moved a row)``."""
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
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    return H, first, counts.astype(float), snapped


def _grouped_matrix(Hg: np.ndarray, counts: np.ndarray, W: np.ndarray | None) -> np.ndarray:
    """The scaled grouped matrix ``R = F^T F``, ``F = [sqrt(w_u) h_u, W]`` (``a_u = 1``)."""
    F = Hg.T * np.sqrt(counts)[None, :]
    if W is not None:
        F = np.concatenate([F, W], axis=1)
    return F.T @ F


def candidate_value(problem, H: np.ndarray, labels: np.ndarray) -> float:
    """The objective of a feasible candidate of ``problem`` (float64): over its distinct rows for
    the full batch (``O(m^2)`` for ``m`` distinct rows, so a collapsed ``N = 10^5`` costs what
    ``N = k`` does), else :func:`ncgeo.ufm.ufm_objective` over the batches."""
    W = np.asarray(problem.prototypes, dtype=float) if problem.n_w > 0 else None
    if problem.full_batch:
        _, first, counts, _ = _groups(H, labels, 0.0)
        if len(counts) <= MAX_DENSE_GROUPS:
            value = reduced_excess(torch.as_tensor(_grouped_matrix(H[first], counts, W)), counts, labels[first],
                                   problem.n_w, problem.tau, problem.prototypes_as_anchors)
            return float(value.excess) + value.floor
    batches = None if problem.full_batch else list(problem.batches)
    return candidate_loss(H, labels, W, problem.n_w, problem.tau, batches, problem.prototypes_as_anchors)


def dual_certificate(problem, H, *, upper_bound: float | None = None, rtol: float = DEFAULT_RTOL,
                     atol: float = DEFAULT_ATOL, snap_tol: float = 1e-6, zero_tol: float = 1e-7,
                     dense_max: int = 3000) -> CertificateResult:
    r"""Certify a candidate ``H`` of ``problem`` with the dual bound of the module docstring.

    Parameters
    ----------
    problem : ncgeo.UFMProblem
    H : (N, d) array
        Candidate embeddings (unit rows; non-negative for UFM+), samples in the problem's order;
        rows within 1e-5 of the constraints are projected onto them (``ValueError`` beyond), and
        ``upper_bound`` is then recomputed at the projected point.
    upper_bound : float, optional
        The candidate's objective if already known (e.g. ``UFMResult.loss``); computed otherwise.
    rtol, atol : float
        Accepted gap ``rtol * excess + atol * anchors`` (THEORY.md 5.1).
    snap_tol : float
        Classes whose rows all lie within this max-abs distance of their normalised mean are
        grouped at that mean for the bound (0 disables).
    zero_tol : float
        Entries of ``G*`` at or below this value carry non-negativity multipliers (UFM+).
    dense_max : int
        Largest eigenproblem solved densely; beyond, Lanczos verified by Cholesky.

    Returns
    -------
    CertificateResult
        method ``"dual"``; ``solution`` holds ``bound`` (the Lagrangian bound's summary:
        ``lambda_min``, ``margin``, ``eigenvalue``, ``excess_lower``...), ``groups`` (number of
        distinct rows) and ``geometry`` (:func:`ncgeo.certify.face.geometry_certificate`).
    """
    timer = Timer()
    H0, y, upper_bound = problem_candidate(problem, H, upper_bound)
    use_p = problem.n_w > 0
    W = np.asarray(problem.prototypes, dtype=float) if use_p else None
    d = H0.shape[1]
    common = dict(floor=problem.floor(), anchors=problem.num_anchors(), method="dual", status="n/a",
                  rtol=rtol, atol=atol, dim=d)
    if problem.full_batch:
        Hs, first, counts, snapped = _groups(H0, y, snap_tol)
        if len(counts) > MAX_DENSE_GROUPS:
            return _too_large(len(counts), problem, H0, y, upper_bound, timer, common)
        Hg, yg = Hs[first], y[first]
        Z0 = _grouped_matrix(Hg, counts, W)
        bound = reduced_bound(problem, Z0, counts, yg, zero_tol=zero_tol, dense_max=dense_max)
        if upper_bound is None:  # exact groups: the grouped value is the candidate's loss
            upper_bound = (bound.floor + bound.point_excess) if not snapped else candidate_value(problem, H0, y)
        groups = len(counts)
        rank = matrix_rank(Z0 / np.sqrt(np.outer(np.diag(Z0), np.diag(Z0))), rtol=1e-6)
    else:
        if upper_bound is None:
            upper_bound = candidate_value(problem, H0, y)
        if len(y) > MAX_DENSE_GROUPS:
            return _too_large(len(y), problem, H0, y, upper_bound, timer, common)
        V = H0.T if W is None else np.concatenate([H0.T, W], axis=1)
        Z0 = V.T @ V
        bound = gram_bound(problem, Z0, zero_tol=zero_tol, dense_max=dense_max)
        groups = len(y)
        rank = matrix_rank(Z0, rtol=1e-6)
    solution = {"bound": bound.info, "lambda_min": bound.lambda_min, "groups": groups,
                "bound_point_loss": bound.floor + bound.point_excess}
    if bound.lower is not None:
        solution["geometry"] = geometry_certificate(bound, Z0, gap=upper_bound - bound.lower)
    return make_result(bound.lower, upper_bound, seconds=timer(), rank=rank, realisable=True, failure=bound.failure,
                       solution=solution, **common)


def _too_large(rows: int, problem, H, y, upper, timer, common) -> CertificateResult:
    if upper is None:
        upper = candidate_value(problem, H, y)
    return make_result(None, upper, seconds=timer(), solution={}, **common,
                       failure=f"{rows} distinct rows exceed the dense limit {MAX_DENSE_GROUPS} "
                               "(use a collapsed candidate or a reduced SDP)")
