r"""Dual (Burer-Monteiro style) certificate from a candidate solution (docs/theory.md sections 5c, 5.1).

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

from .._validation import as_float_array, check_choice
from ..problem import check_problem
from ._common import candidate_loss, feasible_candidate, problem_candidate
from ._program import Timer, matrix_rank
from .face import geometry_certificate
from .gram_objective import reduced_excess
from .lagrangian import gram_bound, reduced_bound
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult, make_result

__all__ = ["dual_certificate", "collapsed_certificate", "candidate_value"]

#: Above this many distinct rows the dense dual matrix is refused (memory).
MAX_DENSE_GROUPS = 6000
#: :func:`collapsed_certificate` with ``structure="auto"``: above this many classes the orbit
#: structure is used when it applies (below, the dense ``2k`` square bound, which also gives the
#: geometry verdict; at k = 1000 it takes seconds where the orbit one takes milliseconds).
ORBIT_ABOVE_K = 256


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


def dual_certificate(problem, H, *, rtol: float = DEFAULT_RTOL,
                     atol: float = DEFAULT_ATOL, snap_tol: float = 1e-6, zero_tol: float = 1e-7,
                     dense_max: int = 3000) -> CertificateResult:
    r"""Certify a candidate ``H`` of ``problem`` with the dual bound of the module docstring.

    Parameters
    ----------
    problem : ncgeo.UFMProblem
    H : (N, d) array
        Candidate embeddings (unit rows; non-negative for UFM+), samples in the problem's order;
        rows within 1e-5 of the constraints are projected onto them (``ValueError`` beyond). The
        upper bound is the (projected) candidate's objective, always computed here in float64: a
        certificate never rests on a loss the caller states.
    rtol, atol : float
        Accepted gap ``rtol * excess + atol * anchors`` (docs/theory.md 5.1).
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
    H0, y = problem_candidate(problem, H)
    use_p = problem.n_w > 0
    W = np.asarray(problem.prototypes, dtype=float) if use_p else None
    d = H0.shape[1]
    common = dict(floor=problem.floor(), anchors=problem.num_anchors(), method="dual", status="n/a",
                  rtol=rtol, atol=atol, dim=d)
    if problem.full_batch:
        Hs, first, counts, snapped = _groups(H0, y, snap_tol)
        if len(counts) > MAX_DENSE_GROUPS:
            return _too_large(len(counts), problem, H0, y, None, timer, common)
        # the grouped value is the candidate's loss unless rows were snapped onto their class mean
        upper_bound = candidate_value(problem, H0, y) if snapped else None
        return _grouped_result(problem, Hs[first], counts, y[first], upper_bound, timer, common, zero_tol=zero_tol,
                               dense_max=dense_max)
    upper_bound = candidate_value(problem, H0, y)
    if len(y) > MAX_DENSE_GROUPS:
        return _too_large(len(y), problem, H0, y, upper_bound, timer, common)
    V = H0.T if W is None else np.concatenate([H0.T, W], axis=1)
    Z0 = V.T @ V
    bound = gram_bound(problem, Z0, zero_tol=zero_tol, dense_max=dense_max)
    return _finish(bound, Z0, upper_bound, len(y), matrix_rank(Z0, rtol=1e-6), timer, common)


def _finish(bound, Z0, upper_bound: float, groups: int, rank: int, timer, common: dict,
            geometry: bool = True, extra: dict | None = None) -> CertificateResult:
    """The dual certificate's result from a :class:`~ncgeo.certify.lagrangian.LagrangianBound` (or the
    orbit bound's summary ``info`` when ``geometry`` is False: no dual matrix to examine)."""
    info = bound.info if geometry else {key: bound[key] for key in _INFO_KEYS}
    lower = bound.lower if geometry else bound["lower"]
    lambda_min = info["lambda_min"]
    solution = {"bound": info, "lambda_min": lambda_min, "groups": groups,
                "bound_point_loss": info["floor"] + info["point_excess"], **(extra or {})}
    if geometry and lower is not None:
        solution["geometry"] = geometry_certificate(bound, Z0, gap=upper_bound - lower)
    return make_result(lower, upper_bound, seconds=timer(), rank=rank, realisable=True, failure=info["failure"],
                       solution=solution, **common)


def _grouped_result(problem, Hg: np.ndarray, counts: np.ndarray, yg: np.ndarray, upper_bound: float | None,
                    timer, common: dict, *, zero_tol: float, dense_max: int) -> CertificateResult:
    """The bound of the grouped relaxation at the distinct rows ``Hg`` (weights ``counts``, classes
    ``yg``): :func:`~ncgeo.certify.lagrangian.reduced_bound` on the ``(m + k_p)`` square matrix."""
    W = np.asarray(problem.prototypes, dtype=float) if problem.n_w > 0 else None
    Z0 = _grouped_matrix(Hg, counts, W)
    bound = reduced_bound(problem, Z0, counts, yg, zero_tol=zero_tol, dense_max=dense_max)
    if upper_bound is None:  # exact groups: the grouped value is the candidate's loss
        upper_bound = bound.floor + bound.point_excess
    rank = matrix_rank(Z0 / np.sqrt(np.outer(np.diag(Z0), np.diag(Z0))), rtol=1e-6)
    return _finish(bound, Z0, upper_bound, len(counts), rank, timer, common)


_INFO_KEYS = ("excess_lower", "floor", "point_excess", "lambda_min", "margin", "trace_bound", "eigenvalue",
              "multipliers", "failure")


def collapsed_certificate(problem, means, *, rtol: float = DEFAULT_RTOL,
                          atol: float = DEFAULT_ATOL, structure: str = "auto", zero_tol: float = 1e-7,
                          dense_max: int = 3000) -> CertificateResult:
    r"""The dual certificate of the collapsed candidate ``h_i = m_{y_i}`` of a full-batch ``problem``,
    from its ``k`` class means and the problem's class counts: no ``N x d`` ``H`` is formed, so
    ``N = 10^6`` costs what ``N = k`` does.

    It is :func:`dual_certificate` on ``H = means[:, y]^T`` (whose distinct rows are the means,
    weighted by the class counts ``n_c``): the Lagrangian bound of the grouped relaxation at
    ``R0 = F^T F``, ``F = [sqrt(n_c) m_c, W]`` (:func:`ncgeo.certify.lagrangian.reduced_bound`,
    ``O(k^2 d + k^3)``), or, with ``structure="orbit"``, the same bound in the orbit structure
    (:func:`ncgeo.certify.orbit_bound.orbit_bound`, ``O(k^2 d)`` to form the means' Gram, then
    ``O(m^3)`` for ``m`` size groups) at the orbit average of ``R0`` (each entry type replaced by
    its mean over the classes of its groups: a feasible point, equal to ``R0`` when the candidate
    is orbit-symmetric; the bound is valid at any point). The orbit form gives no dual matrix,
    so no geometry verdict.

    Parameters
    ----------
    problem : ncgeo.UFMProblem
        Full batch; classes of size 0 carry no group.
    means : (d, k) array
        Unit class means (non-negative for UFM+); columns within 1e-5 of the constraints are
        projected onto them (``ValueError`` beyond). The upper bound is their collapsed objective,
        always computed here (from ``R0``).
    rtol, atol : float
        Accepted gap ``rtol * excess + atol * anchors`` (docs/theory.md 5.1).
    structure : {"auto", "dense", "orbit"}
        ``"orbit"`` needs every class non-empty, fewer size groups than classes and a prototype Gram
        invariant under permutations of equal-size classes (``ValueError`` otherwise); ``"auto"``
        takes it when it applies and ``k > ORBIT_ABOVE_K``, else ``"dense"``.
    zero_tol, dense_max
        As :func:`dual_certificate`.

    Returns
    -------
    CertificateResult
        method ``"dual"``; ``solution`` as :func:`dual_certificate`'s plus ``structure``.
    """
    from .orbit import orbit_invariant, size_groups

    timer = Timer()
    problem = check_problem(problem)
    check_choice("structure", structure, ("auto", "dense", "orbit"))
    if not problem.full_batch:
        raise ValueError("problem must be full batch for a collapsed candidate (use dual_certificate with H)")
    k, d = problem.num_classes, problem.dim
    M = as_float_array("means", means, ndim=2)
    if M.shape != (d, k):
        raise ValueError(f"means must have shape ({d}, {k}) (dim x classes of the problem), got {M.shape}")
    rows, _ = feasible_candidate(M.T, problem.nonnegative)
    weights = np.array(problem.class_sizes, dtype=float)  # a writable copy (torch)
    present = np.flatnonzero(weights > 0)
    common = dict(floor=problem.floor(), anchors=problem.num_anchors(), method="dual", status="n/a",
                  rtol=rtol, atol=atol, dim=d)
    groups = size_groups(weights)
    use_p = problem.n_w > 0
    orbit = (len(present) == k and len(groups) < k
             and orbit_invariant(problem.prototype_gram if use_p else None, groups) is not None)
    if structure == "orbit" and not orbit:
        raise ValueError("structure 'orbit' needs non-empty classes, fewer size groups than classes and a prototype "
                         "Gram invariant under permutations of equal-size classes")
    if structure == "dense" or (structure == "auto" and (not orbit or k <= ORBIT_ABOVE_K)):
        result = _grouped_result(problem, rows[present], weights[present], present, None, timer, common,
                                 zero_tol=zero_tol, dense_max=dense_max)
        result.solution["structure"] = "dense"
        return result
    from .orbit_bound import orbit_bound

    W = np.asarray(problem.prototypes, dtype=float) if use_p else None
    R0 = _grouped_matrix(rows, weights, W)
    value = reduced_excess(torch.as_tensor(R0), weights, np.arange(k), problem.n_w, problem.tau,
                           problem.prototypes_as_anchors)
    upper_bound = float(value.excess) + value.floor
    point = _orbit_average(R0, groups, weights, 2 if use_p else 1)
    proto_nonneg = bool(use_p and problem.nonnegative and np.all(W >= 0))
    info = orbit_bound(point, problem.n_w, problem.tau, anchors=bool(problem.prototypes_as_anchors and use_p),
                       nonnegative=problem.nonnegative, proto_nonneg=proto_nonneg, zero_tol=zero_tol)
    return _finish(info, None, upper_bound, k, _orbit_rank(point), timer, common, geometry=False,
                   extra={"structure": "orbit"})


def _orbit_average(R0: np.ndarray, groups, weights: np.ndarray, sides: int):
    """The :class:`~ncgeo.certify.orbit_bound.OrbitPoint` whose entry types are the means of ``R0``'s
    entries of each type (``sides`` blocks of ``k`` rows: class means, then prototypes)."""
    from .orbit_bound import OrbitPoint

    k = len(weights)
    m = len(groups)
    E = np.zeros((k, m))
    for g, I in enumerate(groups):
        E[I, g] = 1.0
    kg = E.sum(0)
    cF = np.outer(kg, kg) - np.diag(kg)
    D = np.zeros((sides, sides, m))
    F = np.zeros((sides, sides, m, m))
    for a in range(sides):
        for b in range(sides):
            X = R0[a * k:(a + 1) * k, b * k:(b + 1) * k]
            diagonal = np.diag(X) @ E
            D[a, b] = diagonal / kg
            F[a, b] = np.where(cF > 0, (E.T @ X @ E - np.diag(diagonal)) / np.where(cF > 0, cF, 1.0), 0.0)
    ng = np.array([weights[I[0]] for I in groups])
    return OrbitPoint(D, F, kg, ng, tuple(np.asarray(I) for I in groups))


def _orbit_rank(point) -> int:
    """Numerical rank (as :func:`ncgeo.certify._program.matrix_rank` of the unit-diagonal matrix,
    ``rtol = 1e-6``) of an orbit-symmetric matrix: its all-ones block plus ``k_g - 1`` times each
    complement block."""
    from .orbit_bound import _complements, _ones

    scale = np.sqrt(np.maximum(np.stack([point.D[a, a] for a in range(point.D.shape[0])]), 1e-300))  # (s, m)
    D = point.D / (scale[:, None, :] * scale[None, :, :])
    F = point.F / (scale[:, None, :, None] * scale[None, :, None, :])
    eigs = [np.linalg.eigvalsh((_ones(D, F, point.kg) + _ones(D, F, point.kg).T) / 2)]
    counts = [np.ones(len(eigs[0]))]
    for g, C in enumerate(_complements(D, F)):
        if point.kg[g] > 1:
            eigs.append(np.linalg.eigvalsh((C + C.T) / 2))
            counts.append(np.full(len(eigs[-1]), point.kg[g] - 1))
    eig, count = np.concatenate(eigs), np.concatenate(counts)
    return int(count[eig > 1e-6 * max(1.0, float(eig.max(initial=0.0)))].sum())


def _too_large(rows: int, problem, H, y, upper, timer, common) -> CertificateResult:
    if upper is None:
        upper = candidate_value(problem, H, y)
    return make_result(None, upper, seconds=timer(), solution={}, **common,
                       failure=f"{rows} distinct rows exceed the dense limit {MAX_DENSE_GROUPS} "
                               "(use a collapsed candidate or a reduced SDP)")
