r"""The symmetry-reduced ``2k x 2k`` relaxation for full-batch problems (docs/theory.md section 5b).

Full batch, any class sizes (real-valued weights allowed), any ``n_w``, UFM or UFM+.
Within a class the relaxation is invariant under permutations of the samples, so a
symmetric optimum exists, described by ``a_c`` (similarity of two samples of class c),
``b_cc'`` (a sample of c with a sample of c') and ``p_cc'`` (a sample of c with the
prototype w_c'). With ``D = diag(sqrt(n_c))`` the Gram of ``[H, W]`` is PSD iff ``a_c <= 1``
and

.. math::

    R = \begin{pmatrix} \mathrm{diag}(1 + (n_c - 1) a_c) + \mathrm{offdiag}(\sqrt{n_c n_{c'}} b_{cc'}) & D P \\
                        (D P)^T & G_W \end{pmatrix} \succeq 0 .

The program's variable is ``R`` itself; the loss (sum over anchors; divided by
``N = sum_c n_c`` inside the conic solver only) is

.. math::

    \sum_c n_c \Big[\log\Big((n_c-1) e^{a_c/\tau} + \sum_{c' \ne c} n_{c'} e^{b_{cc'}/\tau}
    + n_w \sum_{c'} e^{p_{cc'}/\tau}\Big) - \frac{(n_c - 1) a_c + n_w p_{cc}}{\tau P_c}\Big],
    \quad P_c = (n_c - 1) + n_w ,

with the counts as additive log-weights. Real weights: the within-class count is
``(n_c - 1)_+``; a class with ``n_c <= 1`` has no within-class positive and its ``a_c`` is
fixed to 1 (its mean is a unit vector). Anchors with ``P_c = 0`` contribute 0.
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import UFMProblem
from ._common import SIGNED_UFM_PLUS_NOTE, ClassProgram, class_program, signed_ufm_plus, tolerance_of
from ._program import (LogSumExpObjective, Timer, block_and_sign_constraints, check_solver_args,
                       matrix_rank)
from .face import geometry_certificate
from .lagrangian import reduced_bound, relaxation_lower
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult, make_result

__all__ = ["solve_reduced", "reduced_objective", "realise_collapse", "polish_means"]


def reduced_objective(weights: np.ndarray, G_W: np.ndarray | None, n_w: float, tau: float,
                      prototypes_as_anchors: bool = False) -> LogSumExpObjective:
    """The reduced objective as a :class:`LogSumExpObjective` over ``R`` (``k + k_p`` square), each
    anchor's row written as ``log(D / P)`` (its floor ``log P`` in ``obj.floor``)."""
    k = len(weights)
    kp = k if n_w > 0 else 0
    obj = LogSumExpObjective(k + kp, weights.sum())
    obj.n_w, obj.tau, obj.anchors = n_w, tau, prototypes_as_anchors
    within = np.maximum(weights - 1.0, 0.0)
    count = within + n_w
    logw = np.log(weights)
    for c in range(k):
        if count[c] <= 0:
            continue
        others = np.array([c2 for c2 in range(k) if c2 != c], dtype=int)
        i = [np.full(len(others), c)]
        j = [others]
        coef = [1.0 / (np.sqrt(weights[c] * weights[others]) * tau)]
        off = [logw[others]]
        if within[c] > 0:
            i.append([c]); j.append([c])
            coef.append([1.0 / (within[c] * tau)])
            off.append([-1.0 / (within[c] * tau) + math.log(within[c])])
            obj.add_linear([c], [c], weights[c] / (tau * count[c]))
            obj.constant -= weights[c] / (tau * count[c])
        if kp:
            i.append(np.full(k, c)); j.append(k + np.arange(k))
            coef.append(np.full(k, 1.0 / (math.sqrt(weights[c]) * tau)))
            off.append(np.full(k, math.log(n_w)))
            obj.add_linear([c], [k + c], weights[c] * n_w / (math.sqrt(weights[c]) * tau * count[c]))
        obj.add_rows([weights[c]], [np.concatenate(i)], [np.concatenate(j)],
                     [np.concatenate(coef)], [np.concatenate(off)], floor=[math.log(count[c])])
    if prototypes_as_anchors and kp:
        own = n_w - 1.0
        for c in range(k):
            P = weights[c] + own
            if P <= 0:
                continue
            protos = [c2 for c2 in range(k) if c2 != c or own > 0]
            logc = [math.log(n_w) if c2 != c else math.log(own) for c2 in protos]
            i = np.concatenate([np.arange(k), np.zeros(len(protos), int)])
            j = np.concatenate([np.full(k, k + c), np.zeros(len(protos), int)])
            coef = np.concatenate([1.0 / (np.sqrt(weights) * tau), np.zeros(len(protos))])
            off = np.concatenate([logw, G_W[c, protos] / tau + np.array(logc)])
            obj.add_rows([n_w], [i], [j], [coef], [off], floor=[math.log(P)])
            obj.add_linear([c], [k + c], n_w * math.sqrt(weights[c]) / (tau * P))
            obj.constant += n_w * own * G_W[c, c] / (tau * P)
    return obj


def _similarities(R: np.ndarray, weights: np.ndarray, kp: int):
    k = len(weights)
    s = np.sqrt(weights)
    a = np.where(weights > 1, (np.diag(R)[:k] - 1.0) / np.maximum(weights - 1.0, 1e-300), 1.0)
    b = R[:k, :k] / np.outer(s, s)
    np.fill_diagonal(b, a)
    p = R[:k, k:] / s[:, None] if kp else np.zeros((k, 0))
    return a, b, p


def realise_collapse(R: np.ndarray, weights: np.ndarray, W: np.ndarray | None, dim: int | None,
                     tol: float = 1e-5, nonnegative: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    r"""Class means ``(d, k)`` (and prototypes) of a collapsed reduced optimum (``a_c = 1``).

    Factorises ``R = F^T F`` (eigendecomposition, eigenvalues below ``tol`` times the largest
    dropped), takes the class means ``F[:, :k] / sqrt(n_c)`` and prototypes ``F[:, k:]``,
    and rotates them onto the given prototypes ``W`` (orthogonal Procrustes) so that the
    means live in the same ``R^d``; without ``W`` the factor's prototypes are returned.
    When ``rank R > d`` the best rank-``d`` approximation is used (the caller evaluates
    the exact loss of the result, so a poor approximation only widens the gap).
    Columns are normalised to unit length. Without ``W`` and with ``nonnegative``, an
    orthogonal optimum (UFM+ OF) is realised by the standard basis.
    """
    k = len(weights)
    eig, vec = np.linalg.eigh((R + R.T) / 2)
    d = W.shape[0] if W is not None else (dim if dim is not None else R.shape[0])
    keep = np.zeros(len(eig), bool)
    keep[np.argsort(eig)[::-1][:d]] = True  # best rank-d approximation
    keep &= eig > tol * max(1.0, eig.max())
    F = (vec[:, keep] * np.sqrt(eig[keep])).T  # (r, n), r <= d
    means = F[:, :k] / np.sqrt(weights)
    r = F.shape[0]
    if W is not None and R.shape[0] > k:
        U, _, Vt = np.linalg.svd(W @ F[:, k:].T, full_matrices=False)  # (d, r)
        means = (U @ Vt) @ means
        protos = W
    else:
        gram = means.T @ means
        if nonnegative and R.shape[0] == k and np.abs(gram - np.diag(np.diag(gram))).max() < 1e-4 and d >= k:
            return np.eye(d, k), None
        means = np.vstack([means, np.zeros((d - r, k))])
        protos = np.vstack([F[:, k:], np.zeros((d - r, R.shape[0] - k))]) if R.shape[0] > k else None
        if protos is not None:
            protos = protos / np.linalg.norm(protos, axis=0, keepdims=True)
    return means / np.linalg.norm(means, axis=0, keepdims=True), protos


#: Classes with a_c >= 1 - COLLAPSE_TOL are snapped to collapse before realisation; the
#: exact loss of the snapped point is the upper bound, so the gap decides (the loss is very
#: flat in a_c when n_w is large, and interior-point solutions stop short of a_c = 1).
COLLAPSE_TOL = 0.05


def finish_relaxation(Rv: np.ndarray, program: ClassProgram, objective, *, method: str, lower: float,
                      status: str, seconds, tolerance: dict, solution: dict) -> CertificateResult:
    """Rank, realisation and upper bound of a reduced optimum ``R``; the verdict.

    Classes with ``a_c >= 1 - COLLAPSE_TOL`` are snapped to collapse (``a_c = 1``); the collapsed
    configuration is realised (:func:`realise_collapse`) and its exact loss is the upper
    bound, so a wrong snap can only widen the gap, never certify falsely. The realised means are
    refined by :func:`polish_means` first. ``tolerance`` holds the
    ``floor``, ``anchors``, ``rtol`` and ``atol`` of :func:`~ncgeo.certify.result.make_result`.

    UFM+ with prototypes that have negative entries: the relaxation cannot express ``h >= 0`` in the
    prototypes' coordinates and is not tight, so every class is snapped, and the upper bound is the best
    collapsed loss over the (non-negative) realisation and :data:`SIGNED_UFM_PLUS_STARTS` random
    non-negative starts (``solution["means"]``); it is reported, not certified. An uncertified result
    whose relaxation optimum is not collapsed (``a_c < 1``) says so in its reason.
    """
    weights, W, G_W, d, nonnegative = program.weights, program.W, program.G_W, program.dim, program.nonnegative
    k = len(weights)
    kp = Rv.shape[0] - k
    a, b, p = _similarities(Rv, weights, kp)
    solution.update(a=a, b=b, p=p, R=Rv, weights=weights)
    collapsed = a >= 1 - COLLAPSE_TOL
    signed_plus = signed_ufm_plus(program)
    if signed_plus:  # the relaxation is not tight: its optimum's spread says nothing of the UFM+ optimum,
        collapsed[:] = True  # whose best collapsed non-negative point is searched for the upper bound
    Rc = Rv.copy()
    Rc[np.flatnonzero(collapsed), np.flatnonzero(collapsed)] = weights[collapsed]
    scale = np.concatenate([1.0 / np.sqrt(weights), np.ones(kp)])
    rank = matrix_rank(Rc * np.outer(scale, scale)) + int(np.sum(np.ceil(weights[~collapsed]) - 1))
    realisable = None if d is None else rank <= d
    common = dict(method=method, status=status, rank=rank, dim=d, solution=solution, **tolerance)
    if not np.all(collapsed):
        # UFM+: the non-collapsed relaxation optimum is realised by no constructed non-negative
        # point (complete positivity unchecked), so its value bounds nothing from above
        failure = ("UFM+ relaxation optimum not collapsed: no non-negative realisation is constructed "
                   "(complete positivity unchecked)") if nonnegative else None
        return make_result(lower, objective.value(_clip_psd(Rc)), seconds=seconds(), realisable=realisable,
                           failure=failure, **common)
    means, protos = realise_collapse(Rc, weights, W, d, nonnegative=nonnegative)
    raw_min = float(means.min())
    if nonnegative:  # the upper bound must be the loss of a feasible (non-negative) point
        means = _nonnegative_unit(means)
    upper = objective.value(_collapsed_R(means, weights, protos, G_W, kp))
    if W is not None or kp == 0:
        # interior-point optima are accurate in value, less so in the point: refine the
        # realised means on the collapsed loss, whose value is then an upper bound
        # UFM+ with signed prototypes: the relaxation is not tight, its realisation is only one start
        means, upper = best_polished([means] + (random_nonnegative_starts(means.shape) if signed_plus else []),
                                     program, objective, means, upper)
    realised = _collapsed_R(means, weights, protos if protos is not None else W, G_W, kp)
    solution["means"] = means
    # A2 hook: the Lagrangian bound at the realised (polished) point is rigorous too and tight when that
    # point is optimal (the conic solver's point is accurate to ~1e-6 only); the larger bound is reported
    realised_bound = reduced_bound(program, realised)
    if realised_bound.lower is not None and realised_bound.lower > lower:
        lower = realised_bound.lower
        solution["bound"] = dict(realised_bound.info, point="realised optimum",
                                 solver_value=solution.get("bound", {}).get("solver_value"))
    if realised_bound.lower is not None:
        solution["geometry"] = geometry_certificate(realised_bound, realised, gap=upper - lower)
    if upper - lower <= tolerance["rtol"] * max(upper - tolerance["floor"], 0.0) + \
            tolerance["atol"] * tolerance["anchors"]:
        # the realisation attains the bound: report its rank (extra relaxation rank is numerical)
        rank = matrix_rank(realised * np.outer(scale, scale))
        common["rank"] = rank
        realisable = None if d is None else rank <= d
    result = make_result(lower, upper, seconds=seconds(), realisable=realisable, **common)
    if result.certified:
        return result
    notes = []
    spread = a < 1 - 1e-6
    if np.any(spread):
        notes.append(f"the relaxation's optimum is not collapsed (a_c = {float(a.min()):.6g} < 1 for class(es) "
                     f"{np.flatnonzero(spread).tolist()}: spreading a class's samples lowers the loss); only its "
                     "collapsed neighbour is realised")
    if nonnegative and raw_min < -1e-6 and not signed_plus:
        notes.append(f"the realised optimum is not entrywise non-negative (smallest entry {raw_min:.3g}): the "
                     "upper bound is the loss of its clipped, polished non-negative neighbour")
    if signed_plus:
        notes.append(f"the upper bound is the best of {1 + SIGNED_UFM_PLUS_STARTS} non-negative collapsed starts; "
                     + SIGNED_UFM_PLUS_NOTE)
    if not notes:
        return result
    return make_result(lower, upper, seconds=seconds(), realisable=realisable,
                       failure=f"{result.reason}; " + "; ".join(notes), **common)


#: Random non-negative starts (besides the relaxation's realisation) of the collapsed polish for UFM+ with
#: prototypes that have negative entries, whose relaxation is not tight (the best loss is the upper bound).
SIGNED_UFM_PLUS_STARTS = 8


def random_nonnegative_starts(shape: tuple[int, int], count: int = SIGNED_UFM_PLUS_STARTS) -> list[np.ndarray]:
    """``count`` seeded random non-negative class means of ``shape`` ``(d, k)`` (columns normalised later)."""
    rng = np.random.default_rng(0)
    return [np.abs(rng.normal(size=shape)) for _ in range(count)]


def best_polished(starts, program: ClassProgram, objective, means=None, upper: float = math.inf):
    """The lowest of ``(means, upper)`` and :func:`polish_means` from each start: ``(means, loss)``."""
    W = program.W if program.n_w > 0 else None
    for start in starts:
        polished, value = polish_means(start, program.weights, W, objective.n_w, objective.tau,
                                       program.nonnegative, objective.anchors)
        if value < upper:
            means, upper = polished, value
    return means, upper


def _nonnegative_unit(means: np.ndarray) -> np.ndarray:
    """Columns clipped at 0 and normalised (a column clipped to 0 takes its absolute values)."""
    clipped = np.clip(means, 0.0, None)
    dead = np.linalg.norm(clipped, axis=0) == 0
    clipped[:, dead] = np.abs(means[:, dead])
    return clipped / np.linalg.norm(clipped, axis=0, keepdims=True)


def solve_reduced(problem: UFMProblem, *, solver: str = "CLARABEL", time_limit: float | None = None,
                  fallback: bool = True, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                  verbose: bool = False) -> CertificateResult:
    r"""Solve the reduced ``2k x 2k`` relaxation of a full-batch UFM (module docstring).

    Parameters
    ----------
    problem : UFMProblem
        Full batch, every class with a positive (possibly real) size ``n_c``. UFM+
        (``problem.nonnegative``) adds ``a, b >= 0`` and, when the prototypes are entrywise
        non-negative, ``p >= 0``: the doubly non-negative relaxation. The realisability test
        uses ``problem.dim``.
    solver : {"CLARABEL", "SCS"}
        Conic solver; on failure the other one is tried when ``fallback``.
    time_limit : float, optional
        Seconds per solver attempt.
    rtol, atol : float
        Certified when ``gap <= rtol * (U - F) + atol * A`` (:mod:`ncgeo.certify.result`).
    verbose : bool
        The conic solver's log.

    Returns
    -------
    CertificateResult
        ``lower_bound``: the relaxation optimum; ``upper_bound``: the loss of the realised
        collapsed optimum (when ``a_c = 1`` and ``rank R <= d``) or the relaxation value at
        the returned ``R``; ``solution``: ``a`` (k,), ``b`` (k, k), ``p`` (k, k), ``R``,
        ``weights``, and ``means`` (d, k) when realised. A failed solve is
        ``certified=False`` with the reason (``method="reduced"``).
    """
    import cvxpy as cp

    timer = Timer()
    check_solver_args(solver, time_limit)  # before the program is built
    tolerance = tolerance_of(problem, rtol, atol)
    program = class_program(problem, "reduced")
    weights, k = program.weights, program.k
    kp = k if program.n_w > 0 else 0
    objective = reduced_objective(weights, program.G_W, program.n_w, program.tau, program.anchors)
    objective.scale_to(reference_R(program))  # the solver sees the excess at order one
    R = cp.Variable((k + kp, k + kp), symmetric=True)
    diag = cp.diag(R)[:k]
    many = weights > 1
    constraints = [R >> 0]
    if np.any(many):
        constraints.append(diag[np.flatnonzero(many)] <= weights[many])
        if program.nonnegative:
            constraints.append(diag[np.flatnonzero(many)] >= 1)
    if np.any(~many):
        constraints.append(diag[np.flatnonzero(~many)] == weights[~many])
    constraints += block_and_sign_constraints(R, k, kp, program.G_W, program.proto_nonneg, program.nonnegative)
    cvx_problem, used, status, failure = objective.solve(R, constraints, solver, time_limit=time_limit,
                                                         fallback=fallback, verbose=verbose, psd_size=k + kp,
                                                         tight=not signed_ufm_plus(program))
    if failure is not None:
        means, upper, solution = None, None, {}
        if signed_ufm_plus(program):
            # UFM+ with signed prototypes: the relaxation is not tight anyway; report the best
            # non-negative collapsed point of the random starts
            means, upper = best_polished(random_nonnegative_starts((program.W.shape[0], k)), program, objective)
            solution = {"means": means}
        return make_result(None, upper, method="reduced", status=status, seconds=timer(), dim=program.dim,
                           failure=f"reduced SDP failed ({failure})", solution=solution, **tolerance)
    # the rigorous Lagrangian bound at the solver's point (A2 hook; the solver's value is a hint)
    lower, bound_info = relaxation_lower(problem, np.asarray(R.value),
                                         objective.floor + float(cvx_problem.value) * objective.normaliser,
                                         psd_constraint=constraints[0], normaliser=objective.normaliser)
    if lower is None:
        return make_result(None, None, method="reduced", status=status, seconds=timer(), dim=program.dim,
                           failure=f"not certified: {bound_info['failure']}", solution={"bound": bound_info},
                           **tolerance)
    return finish_relaxation(np.asarray(R.value), program, objective, method="reduced", lower=lower,
                             status=status, seconds=timer, tolerance=tolerance,
                             solution={"solver": used, "bound": bound_info})


def reference_means(program: ClassProgram) -> np.ndarray:
    """Unit class means ``(r, k)`` of a feasible collapse: onto the prototypes, else a simplex ETF."""
    if program.W is not None:
        return program.W
    from ..geometry import simplex_etf

    return simplex_etf(program.k, program.k) if program.k > 1 else np.ones((1, 1))


def reference_R(program: ClassProgram) -> np.ndarray:
    """``R`` of the collapse :func:`reference_means` (a feasible point, scale of the excess)."""
    kp = program.k if program.W is not None else 0
    return _collapsed_R(reference_means(program), program.weights, program.W, program.G_W, kp)


def _clip_psd(R: np.ndarray) -> np.ndarray:
    eig, vec = np.linalg.eigh((R + R.T) / 2)
    return (vec * np.maximum(eig, 0)) @ vec.T


def _collapsed_R(means: np.ndarray, weights: np.ndarray, W, G_W, kp: int) -> np.ndarray:
    """``R`` of the collapsed configuration with the given unit class means."""
    s = np.sqrt(weights)
    top = (means.T @ means) * np.outer(s, s)
    if not kp:
        return top
    cross = (means.T @ W) * s[:, None] if W is not None else np.zeros((len(s), kp))
    return np.block([[top, cross], [cross.T, G_W]])


def polish_means(means: np.ndarray, weights: np.ndarray, W, n_w: float, tau: float, nonnegative: bool,
                 anchors: bool) -> tuple[np.ndarray, float]:
    """Refine class means ``(d, k)`` with :func:`ncgeo.ufm.collapsed.minimise_collapsed`
    on the collapsed loss (:func:`ncgeo.closed_form.collapsed_loss`, real class weights
    allowed); returns ``(means, loss)``."""
    import torch

    from ..ufm.collapsed import minimise_collapsed

    start = np.array(means, dtype=np.float64)
    if nonnegative:
        start = _nonnegative_unit(start)
    x0 = torch.as_tensor(start).T.contiguous()
    x0 = x0 / x0.norm(dim=1, keepdim=True)
    out = minimise_collapsed(x0, weights.tolist(), None if W is None else torch.tensor(np.asarray(W, dtype=np.float64)), n_w, tau,
                             nonnegative=nonnegative, prototypes_as_anchors=anchors, grad_tol=1e-12,
                             max_iterations=500)
    return out.x.detach().numpy().T.copy(), float(out.value)
