r"""The full convex relaxation over the ``(N + k) x (N + k)`` Gram of ``[H, W]`` (docs/theory.md section 5a).

For any batching (a list of index batches) the UFM loss depends on ``H`` only through
``G = [H, W]^T [H, W]`` and is convex in ``G``. The relaxation

.. math::

    \min_G \; \sum_{B} \sum_{i \in B} \ell_i(G) \quad \text{s.t.}\quad
    G \succeq 0,\; \mathrm{diag}(G) = 1,\; G_{PP} = G_W \;(+\; G_{SS} \ge 0,\; G_{SP} \ge 0 \text{ for UFM+})

(``G_SP >= 0`` only when the prototypes are entrywise non-negative) lower-bounds the UFM
(UFM+) optimum and equals it when ``rank G* <= d`` (and, for UFM+, ``G*`` is completely
positive). ``l_i`` is the loss of docs/theory.md section 2 written with log-weights, e.g.
``log D_i = LSE_{j in B, j != i}(G_ij / tau) (+) LSE_c(G_{i,N+c}/tau + log n_w)``. Prototype
anchors (each weighted ``n_w``) are supported. The conic solver sees the objective divided
by ``N``; the reported values are undivided (the scale of ``UFMResult.loss``). Meant for
small ``N`` (Clarabel takes 30-50 s at ``N = 100`` on 2 cores).
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import UFMProblem
from ._common import batch_list, realise_nonnegative, tolerance_of
from ._program import (LogSumExpObjective, Timer, block_and_sign_constraints, check_solver_args,
                       matrix_rank)
from .lagrangian import relaxation_lower
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult, make_result

__all__ = ["solve_full", "full_objective"]


def full_objective(labels: np.ndarray, k: int, G_W: np.ndarray | None, n_w: float, tau: float,
                   batches: list[np.ndarray], prototypes_as_anchors: bool = False) -> LogSumExpObjective:
    """The UFM objective as a :class:`LogSumExpObjective` over the ``(N + k_p)`` Gram, each anchor's
    row written as ``log(D / P)`` (its floor ``log P`` in ``obj.floor``)."""
    N = len(labels)
    kp = k if n_w > 0 else 0
    obj = LogSumExpObjective(N + kp, N)
    log_nw = math.log(n_w) if n_w > 0 else 0.0
    for B in batches:
        m = len(B)
        yb = labels[B]
        off_diag = ~np.eye(m, dtype=bool)
        same = (yb[:, None] == yb[None, :]) & off_diag
        P = same.sum(1) + n_w
        rows = np.flatnonzero(P > 0)
        if len(rows) and m + kp > 1:
            others = np.array([np.flatnonzero(off_diag[a]) for a in rows]).reshape(len(rows), m - 1)
            i = np.repeat(B[rows][:, None], m - 1 + kp, axis=1)
            j = np.concatenate([B[others], np.broadcast_to(N + np.arange(kp), (len(rows), kp))], axis=1)
            off = np.concatenate([np.zeros((len(rows), m - 1)), np.full((len(rows), kp), log_nw)], axis=1)
            obj.add_rows(np.ones(len(rows)), i, j, 1.0 / tau, off, floor=np.log(P[rows]))
            ai, aj = np.nonzero(same[rows])
            obj.add_linear(B[rows][ai], B[aj], 1.0 / (tau * P[rows][ai]))
            if kp:
                obj.add_linear(B[rows], N + yb[rows], n_w / (tau * P[rows]))
        if prototypes_as_anchors and kp:
            own = n_w - 1.0
            for c in range(k):
                members = B[yb == c]
                P_c = len(members) + own
                if P_c <= 0:
                    continue
                protos = [c2 for c2 in range(k) if c2 != c or own > 0]
                logc = np.array([log_nw if c2 != c else math.log(own) for c2 in protos])
                i = np.concatenate([np.full(m, N + c), np.zeros(len(protos), int)])
                j = np.concatenate([B, np.zeros(len(protos), int)])
                coef = np.concatenate([np.full(m, 1.0 / tau), np.zeros(len(protos))])
                off = np.concatenate([np.zeros(m), G_W[c, protos] / tau + logc])
                obj.add_rows([n_w], [i], [j], [coef], [off], floor=[math.log(P_c)])
                obj.add_linear(np.full(len(members), N + c), members, n_w / (tau * P_c))
                obj.constant += n_w * own * G_W[c, c] / (tau * P_c)
    return obj


def solve_full(problem: UFMProblem, *, solver: str = "CLARABEL", time_limit: float | None = None,
               fallback: bool = True, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
               verbose: bool = False) -> CertificateResult:
    r"""Solve the full Gram relaxation (module docstring) of a problem with any batching.

    Parameters
    ----------
    problem : UFMProblem
        Its samples (labels, or class-ordered integer sizes), batches, prototypes, ``n_w``,
        ``tau``, UFM+ (the doubly non-negative relaxation) and ``dim`` (realisability).
    solver, time_limit, fallback, rtol, atol, verbose
        As in :func:`ncgeo.certify.solve_reduced`.

    Returns
    -------
    CertificateResult
        ``lower_bound``: relaxation optimum; ``upper_bound``: the objective at the
        returned (PSD-projected) Gram; ``rank``: its numerical rank;
        ``solution["G"]``: the optimal Gram.
    """
    import cvxpy as cp

    timer = Timer()
    check_solver_args(solver, time_limit)  # before the program is built
    tolerance = tolerance_of(problem, rtol, atol)
    y = problem.sample_labels()
    N, k, n_w, tau, d = len(y), problem.num_classes, problem.n_w, problem.tau, problem.dim
    nonnegative = problem.nonnegative
    W = np.asarray(problem.prototypes, dtype=float) if n_w > 0 else None
    G_W = None if W is None else W.T @ W
    proto_nonneg = bool(nonnegative and W is not None and np.all(W >= 0))
    batches = batch_list(problem)
    kp = k if n_w > 0 else 0
    objective = full_objective(y, k, G_W, n_w, tau, batches, problem.prototypes_as_anchors)
    if not nonnegative:  # the solver sees the excess at order one (a collapse's excess as the scale)
        from ..geometry import simplex_etf

        means = W if W is not None else (simplex_etf(k, k) if k > 1 else np.ones((1, 1)))
        Z = np.concatenate([means[:, y], W], axis=1) if kp else means[:, y]
        objective.scale_to(Z.T @ Z)
    G = cp.Variable((N + kp, N + kp), symmetric=True)
    constraints = [G >> 0, cp.diag(G)[:N] == 1]
    constraints += block_and_sign_constraints(G, N, kp, G_W, proto_nonneg, nonnegative)
    cvx_problem, used, status, failure = objective.solve(G, constraints, solver, time_limit=time_limit,
                                                         fallback=fallback, verbose=verbose, psd_size=N + kp)
    if failure is not None:
        return make_result(None, None, method="full", status=status, seconds=timer(), dim=d,
                           failure=f"full SDP failed ({failure})", **tolerance)
    Gv = np.asarray(G.value)
    eig, vec = np.linalg.eigh((Gv + Gv.T) / 2)
    Gp = (vec * np.maximum(eig, 0)) @ vec.T
    scale = 1.0 / np.sqrt(np.maximum(np.diag(Gp), 1e-300))
    Gp = Gp * np.outer(scale, scale)  # unit diagonal again
    if kp:
        Gp[N:, N:] = G_W
    rank = matrix_rank(Gv)
    realisable = rank <= d
    solution = {"G": Gv, "solver": used}
    failure = None
    if nonnegative:  # the bound must be the loss of a non-negative point (complete positivity)
        H = realise_nonnegative(Gp, N, W, d)
        Gp = np.block([[H @ H.T, H @ W], [W.T @ H.T, G_W]]) if kp else H @ H.T
        solution["H"], realisable = H, True
    # the rigorous Lagrangian bound at the solver's point (A2 hook; the solver's value is a hint)
    lower, solution["bound"] = relaxation_lower(problem, Gv, objective.floor + float(cvx_problem.value) *
                                                objective.normaliser, grouped=False,
                                                psd_constraint=constraints[0], normaliser=objective.normaliser)
    if lower is None:
        failure = f"not certified: {solution['bound']['failure']}"
    return make_result(lower, objective.value(Gp), method="full", status=status, seconds=timer(), rank=rank,
                       dim=d, realisable=realisable, solution=solution, failure=failure, **tolerance)
