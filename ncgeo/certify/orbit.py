r"""Orbit reduction of the full-batch relaxation by groups of equal-size classes (docs/theory.md section 5 b+).

When ``G_W`` is invariant under permutations of classes of the same size (ETF and OF are
invariant under all permutations), classes of one size group ``g`` (``k_g`` classes of
``n_g`` samples) are exchangeable and an optimum exists with one ``a_g`` (within class),
``p_g`` (own prototype), ``b_gg``, ``q_gg`` (another class / prototype of the same group) and
``b_gh``, ``q_gh`` (a class / prototype of group ``h``). Every block of ``R`` is then
``alpha I + beta J``, which has eigenvalue ``alpha + k_g beta`` on the all-ones vector and
``alpha`` on its complement, so ``R >= 0`` becomes

* one ``2m x 2m`` PSD constraint ``T`` on the all-ones components (class means and
  prototypes of the ``m`` groups):
  ``T[S_g, S_g] = 1 + (n_g - 1) a_g + (k_g - 1) n_g b_gg``,
  ``T[S_g, S_h] = sqrt(k_g k_h n_g n_h) b_gh``, ``T[S_g, P_g] = sqrt(n_g) (p_g + (k_g - 1) q_gg)``,
  ``T[S_g, P_h] = sqrt(k_g k_h n_g) q_gh``, ``T[P, P]`` the same reduction of ``G_W``;
* per group with ``k_g >= 2`` the ``2 x 2`` complement block
  ``[[1 + (n_g - 1) a_g - n_g b_gg, sqrt(n_g) (p_g - q_gg)], [., 1 - gamma_gg]] >= 0``
  (written as a rotated second-order cone);

plus ``a_g <= 1``. The program has ``O(m^2)`` variables whatever ``k`` is.
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import UFMProblem
from ._common import class_program, tolerance_of
from ._program import Timer, check_solver_args, matrix_rank, solve_problem
from .reduced import COLLAPSE_TOL, finish_relaxation, reduced_objective
from .orbit_bound import expand, orbit_bound, orbit_point
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult, make_result

__all__ = ["solve_orbit", "size_groups", "orbit_invariant"]

#: Up to this many classes the orbit optimum is expanded to the ``2k x 2k`` ``R`` and realised.
EXPAND_MAX = 64


def size_groups(weights: np.ndarray, tol: float = 1e-12) -> list[np.ndarray]:
    """Indices of the classes of each distinct size, in order of first appearance."""
    groups: list[list[int]] = []
    values: list[float] = []
    for c, w in enumerate(weights):
        for g, v in enumerate(values):
            if abs(w - v) <= tol * max(1.0, abs(v)):
                groups[g].append(c)
                break
        else:
            values.append(float(w))
            groups.append([c])
    return [np.array(g) for g in groups]


def orbit_invariant(G_W: np.ndarray | None, groups: list[np.ndarray], atol: float = 1e-9) -> np.ndarray | None:
    """The ``m x m`` matrix ``gamma`` (off-diagonal cosine per pair of groups) when ``G_W``
    is invariant under permutations within every group (diagonal constant on each group too),
    else ``None``."""
    m = len(groups)
    if G_W is None:
        return np.zeros((m, m))
    gamma = np.zeros((m, m))
    for g, I in enumerate(groups):
        if np.ptp(np.diag(G_W)[I]) > atol:
            return None
        for h, J in enumerate(groups):
            block = G_W[np.ix_(I, J)]
            if g == h:
                if len(I) < 2:
                    continue
                values = block[~np.eye(len(I), dtype=bool)]
            else:
                values = block.ravel()
            if np.ptp(values) > atol:
                return None
            gamma[g, h] = values[0]
    return gamma


def solve_orbit(problem: UFMProblem, *, solver: str = "CLARABEL", time_limit: float | None = None,
                fallback: bool = True, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                verbose: bool = False) -> CertificateResult:
    r"""Solve the orbit-reduced relaxation (module docstring); same contract as
    :func:`ncgeo.certify.solve_reduced`, whose ``a``, ``b``, ``p`` (expanded to all classes)
    it returns in ``solution`` together with the per-group values. Each anchor's log-sum-exp
    is written as ``log(D / P)`` (the floor ``F`` apart, docs/theory.md section 5.1).

    Raises
    ------
    ValueError
        If the problem is not full batch, has an empty class, or its ``G_W`` is not
        invariant under permutations of equal-size classes (use
        :func:`ncgeo.certify.solve_reduced` then).
    """
    import cvxpy as cp

    timer = Timer()
    check_solver_args(solver, time_limit)  # before the program is built
    tolerance = tolerance_of(problem, rtol, atol)
    program = class_program(problem, "orbit")
    weights, n_w, tau, k, G_W, d = (program.weights, program.n_w, program.tau, program.k, program.G_W,
                                    program.dim)
    nonnegative, proto_nonneg, prototypes_as_anchors = program.nonnegative, program.proto_nonneg, program.anchors
    groups = size_groups(weights)
    use_p = n_w > 0
    gamma = orbit_invariant(G_W if use_p else None, groups)
    if gamma is None:
        raise ValueError("the prototype Gram is not invariant under permutations of equal-size classes; "
                         "the orbit reduction does not apply (use method 'reduced')")
    m = len(groups)
    kg = np.array([len(I) for I in groups], float)
    ng = np.array([weights[I[0]] for I in groups])
    # the prototypes' own cosine: 1 up to the accepted round-off (UNIT_TOL), used as it is (W (1 + 1e-7))
    diag = np.array([G_W[I[0], I[0]] for I in groups]) if use_p else np.ones(m)
    a = cp.Variable(m)
    b = cp.Variable((m, m), symmetric=True)
    p = cp.Variable(m) if use_p else None
    q = cp.Variable((m, m)) if use_p else None
    within = np.maximum(ng - 1.0, 0.0)
    count = within + n_w
    constraints = [a <= 1]
    if np.any(ng <= 1):
        constraints.append(a[np.flatnonzero(ng <= 1)] == 1)
    S = [[None] * (2 * m) for _ in range(2 * m)]
    for g in range(m):
        S[g][g] = 1 + (ng[g] - 1) * a[g] + (kg[g] - 1) * ng[g] * b[g, g]
        for h in range(m):
            if h != g:
                S[g][h] = math.sqrt(kg[g] * kg[h] * ng[g] * ng[h]) * b[g, h]
    if use_p:
        for g in range(m):
            for h in range(m):
                if g == h:
                    S[g][m + g] = math.sqrt(ng[g]) * (p[g] + (kg[g] - 1) * q[g, g])
                else:
                    S[g][m + h] = math.sqrt(kg[g] * kg[h] * ng[g]) * q[g, h]
                S[m + h][g] = S[g][m + h]
                S[m + g][m + h] = (diag[g] + (kg[g] - 1) * gamma[g, g]) if g == h else \
                    math.sqrt(kg[g] * kg[h]) * gamma[g, h]
        T = cp.bmat([[cp.reshape(S[i][j], (1, 1), order="C") for j in range(2 * m)] for i in range(2 * m)])
    else:
        T = cp.bmat([[cp.reshape(S[i][j], (1, 1), order="C") for j in range(m)] for i in range(m)])
    constraints.append((T + T.T) / 2 >> 0)
    for g in range(m):
        if kg[g] < 2:
            continue
        x = 1 + (ng[g] - 1) * a[g] - ng[g] * b[g, g]
        if use_p:
            z = diag[g] - gamma[g, g]
            y = math.sqrt(ng[g]) * (p[g] - q[g, g])
            constraints.append(cp.square(y) <= z * x if z > 1e-12 else y == 0)
        constraints.append(x >= 0)
    if nonnegative:
        constraints += [a >= 0, b >= 0]
        if use_p and proto_nonneg:
            constraints += [p >= 0, q >= 0]

    def rows(g):
        """(expression, log-weight) pairs of a sample anchor of group g."""
        out = []
        if within[g] > 0:
            out.append((a[g], math.log(within[g])))
        if kg[g] > 1:
            out.append((b[g, g], math.log((kg[g] - 1) * ng[g])))
        out += [(b[g, h], math.log(kg[h] * ng[h])) for h in range(m) if h != g]
        if use_p:
            out.append((p[g], math.log(n_w)))
            if kg[g] > 1:
                out.append((q[g, g], math.log((kg[g] - 1) * n_w)))
            out += [(q[g, h], math.log(kg[h] * n_w)) for h in range(m) if h != g]
        return out

    N = float(weights.sum())
    total = 0
    floor_total = 0.0
    for g in range(m):
        if count[g] <= 0:
            continue
        terms = rows(g)
        floor = math.log(count[g])  # log P: the row is log(D / P) (docs/theory.md section 5.1)
        lse = cp.log_sum_exp(cp.hstack([e / tau + lw - floor for e, lw in terms]))
        positive = (within[g] * a[g] + (n_w * p[g] if use_p else 0)) / (tau * count[g])
        total = total + kg[g] * ng[g] * (lse - positive)
        floor_total += kg[g] * ng[g] * floor
    if prototypes_as_anchors and use_p:
        own = n_w - 1.0
        for g in range(m):
            P = ng[g] + own
            if P <= 0:
                continue
            terms = [(p[g], math.log(ng[g]))]
            if kg[g] > 1:
                terms.append((q[g, g], math.log((kg[g] - 1) * ng[g])))
            terms += [(q[h, g], math.log(kg[h] * ng[h])) for h in range(m) if h != g]
            consts = [gamma[g, g] / tau + math.log((kg[g] - 1) * n_w)] if kg[g] > 1 else []
            consts += [gamma[g, h] / tau + math.log(kg[h] * n_w) for h in range(m) if h != g]
            if own > 0:
                consts.append(diag[g] / tau + math.log(own))
            lse = cp.log_sum_exp(cp.hstack([e / tau + lw - math.log(P) for e, lw in terms]
                                           + [c - math.log(P) for c in consts]))
            total = total + kg[g] * n_w * (lse - (ng[g] * p[g] + own * diag[g]) / (tau * P))
            floor_total += kg[g] * n_w * math.log(P)
    cvx_problem = cp.Problem(cp.Minimize(total / N), constraints)
    used, status, failure = solve_problem(cvx_problem, solver, time_limit=time_limit,
                                          fallback=fallback, verbose=verbose)
    if failure is not None:
        return make_result(None, None, method="orbit", status=status, seconds=timer(), dim=d,
                           failure=f"orbit-reduced SDP failed ({failure})", **tolerance)
    hint = floor_total + float(cvx_problem.value) * N  # the solver's value: a hint, never reported as a bound
    av, bv = np.asarray(a.value), np.asarray(b.value)
    solution = {"groups": [I.tolist() for I in groups], "group_a": av, "group_b": bv, "solver": used}
    pv = qv = None
    if use_p:
        pv, qv = np.asarray(p.value), np.asarray(q.value)
        solution.update(group_p=pv, group_q=qv)

    def point_of(a_values):
        return orbit_point(groups, ng, a_values, bv, pv, qv, diag if use_p else None, gamma if use_p else None)

    def bound_at(point, where):
        info = orbit_bound(point, n_w, tau, anchors=prototypes_as_anchors, nonnegative=nonnegative,
                           proto_nonneg=proto_nonneg)
        return info["lower"], {key: info[key] for key in _BOUND_KEYS} | {"solver_value": hint, "point": where}

    # the rigorous Lagrangian bound at the solver's point, in the orbit structure (orbit_bound.py)
    point = point_of(av)
    lower, solution["bound"] = bound_at(point, "solver point")
    collapsed = av >= 1 - COLLAPSE_TOL
    if not np.all(av == np.where(collapsed, 1.0, av)):  # also at the snapped collapse: the larger bound
        snapped_lower, snapped_info = bound_at(point_of(np.where(collapsed, 1.0, av)), "snapped collapse")
        if math.isfinite(snapped_lower) and (not math.isfinite(lower) or snapped_lower > lower):
            lower, solution["bound"] = snapped_lower, snapped_info
    if not math.isfinite(lower):
        return make_result(None, None, method="orbit", status=status, seconds=timer(), dim=d, solution=solution,
                           failure="not certified: the orbit bound is not finite", **tolerance)
    if k <= EXPAND_MAX:
        objective = reduced_objective(weights, G_W, n_w, tau, prototypes_as_anchors)
        return finish_relaxation(expand(point), program, objective, method="orbit", lower=lower, status=status,
                                 seconds=timer, tolerance=tolerance, solution=solution)
    # large k: evaluate at the group level (snap collapsed groups to a_g = 1)
    a.value = np.where(collapsed, 1.0, av)
    upper = floor_total + float(total.value)
    Tn = np.asarray(T.value)
    Tn = (Tn + Tn.T) / 2
    scale = np.concatenate([1.0 / np.sqrt(kg * ng), 1.0 / np.sqrt(kg)])[: Tn.shape[0]]
    Tn = Tn * np.outer(scale, scale)
    rank = matrix_rank(Tn, rtol=1e-4)
    worst = float(np.linalg.eigvalsh(Tn).min())
    for g in range(m):
        if kg[g] < 2:
            continue
        x = (1 + (ng[g] - 1) * a.value[g] - ng[g] * bv[g, g]) / ng[g]
        if use_p:
            y = solution["group_p"][g] - solution["group_q"][g, g]
            C = np.array([[x, y], [y, diag[g] - gamma[g, g]]])
        else:
            C = np.array([[x]])
        worst = min(worst, float(np.linalg.eigvalsh(C).min()))
        rank += int(kg[g] - 1) * matrix_rank(C, rtol=1e-4)
    rank += int(np.sum((kg * (np.ceil(ng) - 1))[~collapsed]))
    realisable = None if d is None else rank <= d
    failure = None
    if worst < -1e-6:
        failure = f"the collapsed point is infeasible (eigenvalue {worst:.1e})"
    elif not np.all(collapsed):
        failure = "the relaxation optimum is not collapsed (a_g < 1); large-k realisation needs collapse"
    return make_result(lower, upper, method="orbit", status=status, seconds=timer(), rank=rank, dim=d,
                       realisable=realisable, solution=solution, failure=failure, **tolerance)


_BOUND_KEYS = ("excess_lower", "floor", "point_excess", "lambda_min", "margin", "trace_bound", "eigenvalue",
               "multipliers", "failure")
