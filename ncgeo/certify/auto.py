r"""Certify a candidate with the fastest applicable method, with fallbacks.

:func:`certify` takes a candidate ``(H, labels)`` and the problem; :func:`certify_result`
takes a :class:`ncgeo.ufm.UFMResult` (or a :class:`ncgeo.ufm.SavedSolution`);
:func:`realise_and_certify` needs no candidate: it solves the reduced program for given
class sizes, realises its collapsed optimum and certifies it with the dual bound, the
fast path for ``N = 10^4 .. 10^5``.

Method choice (``method="auto"``), full batch: the dual certificate first when it is
cheap (a collapsed candidate, or ``N <= DUAL_FIRST_MAX``), then the orbit reduction when
the prototype Gram is invariant under permutations of equal-size classes and there are
fewer size groups than classes, else the reduced ``2k x 2k`` program up to
``REDUCED_MAX_K`` classes. Other batchings: the dual certificate, then the full SDP when
``N + k <= FULL_MAX``. A conic program that fails (any status but optimal, missing solver,
time limit) is retried with the other conic solver; ``auto`` then goes on to its next method,
and every method it tried is listed in the result's ``attempts`` (method, status, bound,
seconds, reason). A method the user names is the method reported: when it fails, the result is
not certified with its reason, never another method's bound. Solver failures are results;
programming errors (``TypeError``, ``IndexError``, ...) raise.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_bool, check_choice
from ..problem import UFMProblem, check_problem
from ._common import SIGNED_UFM_PLUS_NOTE, problem_candidate, signed_ufm_plus, tolerance_of
from ._program import Timer, check_solver_args
from .dual import candidate_value, collapsed_certificate, dual_certificate
from .full import solve_full
from .orbit import EXPAND_MAX, orbit_invariant, size_groups, solve_orbit
from .reduced import solve_reduced
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult, contradicts, make_result

__all__ = ["certify", "certify_result", "realise_and_certify"]

METHODS = ("auto", "reduced", "orbit", "full", "dual")
#: Largest k for which ``auto`` uses the 2k x 2k reduced program.
REDUCED_MAX_K = 60
#: Largest N + k for which ``auto`` falls back to the full SDP.
FULL_MAX = 60
#: Up to this many samples ``auto`` tries the dual certificate first even if not collapsed.
DUAL_FIRST_MAX = 2000


def _is_collapsed(H: np.ndarray, y: np.ndarray, tol: float) -> bool:
    """Every class within ``tol`` (max-abs) of its first row."""
    order = np.argsort(y, kind="stable")
    ys, Hs = y[order], H[order]
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    reference = Hs[starts][np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ys)]))]
    return bool(np.abs(Hs - reference).max() <= tol)


def _orbit_applies(problem: UFMProblem) -> bool:
    """Fewer size groups than classes and a prototype Gram invariant under permutations within them."""
    weights = np.asarray(problem.class_sizes, dtype=float)
    groups = size_groups(weights)
    if len(groups) == len(weights):
        return False
    return orbit_invariant(problem.prototype_gram if (problem.n_w > 0) else None, groups) is not None


def check_method(method: str, problem: UFMProblem) -> None:
    """What ``method`` needs of a problem, checked before any solve (``ValueError`` otherwise):
    ``reduced`` and ``orbit`` a full batch and samples in every class; ``orbit`` with
    prototypes also a prototype Gram invariant under permutations of equal-size classes.
    (Used by :func:`certify` and by ``ncgeo solve`` before it solves; not public.)"""
    check_choice("method", method, METHODS)
    problem = check_problem(problem)
    if method not in ("reduced", "orbit"):
        return
    if not problem.full_batch:
        raise ValueError(f"method {method!r} needs the full batch; use 'auto', 'full' or 'dual' for other batchings")
    sizes = np.asarray(problem.class_sizes, dtype=float)
    if np.any(sizes == 0):
        raise ValueError(f"method {method!r} needs every class to have samples")
    if method == "orbit" and problem.n_w > 0 and \
            orbit_invariant(problem.prototype_gram, size_groups(sizes)) is None:
        raise ValueError("method 'orbit' needs prototypes whose Gram is invariant under permutations of equal-size "
                         "classes (etf, of); use 'auto' or 'reduced'")


def _plan(problem: UFMProblem, H: np.ndarray, y: np.ndarray, method: str) -> list[str]:
    """The methods to try, in order (``method`` alone unless ``"auto"``)."""
    if method != "auto":
        return [method]
    N, k = len(y), problem.num_classes
    sizes = np.asarray(problem.class_sizes, dtype=float)
    if problem.full_batch and np.all(sizes > 0):
        # the dual bound costs O(k^3) on a collapsed candidate: try it first
        cheap_dual = N <= DUAL_FIRST_MAX or _is_collapsed(H, y, 1e-6)
        relaxation = ["orbit"] if _orbit_applies(problem) else ["reduced"] if k <= REDUCED_MAX_K else []
        return (["dual"] + relaxation) if cheap_dual else (relaxation + ["dual"])
    return ["dual"] + (["full"] if N + k <= FULL_MAX else [])


def _against_candidate(name: str, problem: UFMProblem, H: np.ndarray, upper: float, settings: dict,
                       tolerance: dict) -> CertificateResult:
    """One method's certificate of the candidate (loss ``upper``): the dual bound at ``H``, or a
    relaxation's lower bound against ``upper`` (its own realised point only in ``solution``)."""
    timer = Timer()
    if name == "dual":
        return dual_certificate(problem, H, rtol=tolerance["rtol"], atol=tolerance["atol"])
    solve = {"orbit": solve_orbit, "reduced": solve_reduced, "full": solve_full}[name]
    relaxed = solve(problem, rtol=tolerance["rtol"], atol=tolerance["atol"], **settings)
    # the relaxation's own optimum (rank, realised loss) is not the candidate's: kept in the solution,
    # while ``rank`` is the candidate's (a relaxation rank above d is no failure when L bounds the candidate)
    solution = dict(relaxed.solution, relaxation_upper_bound=relaxed.upper_bound, relaxation_rank=relaxed.rank)
    finite = math.isfinite(relaxed.lower_bound)
    return make_result(relaxed.lower_bound if finite else None, upper, method=name, status=relaxed.solver_status,
                       seconds=timer(), rank=_candidate_rank(problem, H), dim=relaxed.dim, solution=solution,
                       failure=None if finite else relaxed.reason, **tolerance)


def _candidate_rank(problem: UFMProblem, H: np.ndarray) -> int:
    """Numerical rank of ``[H^T, W]`` (distinct rows only): at most ``d``."""
    rows = np.unique(H, axis=0)
    V = rows.T if problem.n_w == 0 else np.concatenate([rows.T, problem.prototypes], axis=1)
    return int(np.linalg.matrix_rank(V, tol=1e-6))


def certify(problem: UFMProblem, H, *, method: str = "auto", solver: str = "CLARABEL", time_limit: float | None = None, rtol: float = DEFAULT_RTOL,
            atol: float = DEFAULT_ATOL) -> CertificateResult:
    r"""Certify that a candidate ``H`` is a global minimiser of the UFM (UFM+) ``problem``.

    The upper bound ``U`` is the candidate's objective (:func:`ncgeo.ufm.ufm_objective`, sum over
    batches and anchors), always computed here in float64 (never taken from the caller: a stated
    loss between ``L`` and the true one would certify falsely); the lower bound ``L`` comes from a
    relaxation (:func:`~ncgeo.certify.solve_orbit`, :func:`~ncgeo.certify.solve_reduced`,
    :func:`~ncgeo.certify.solve_full`) or from :func:`~ncgeo.certify.dual_certificate`.
    The candidate is certified when ``U - L <= rtol (U - F) + atol A`` (``F`` the problem's
    floor, ``A`` its number of anchors; docs/theory.md section 5.1).

    Parameters
    ----------
    problem : UFMProblem
        The objective (labels or class sizes, prototypes, ``n_w``, ``tau``, batches, UFM+,
        prototype anchors, ``dim``).
    H : (N, d) array
        Candidate unit embeddings (non-negative for UFM+), rows in the order of
        ``problem.sample_labels()``; rows within 1e-5 of the constraints are projected onto
        them (``ValueError`` beyond); the upper bound is the projected point's loss.
    method : {"auto", "reduced", "orbit", "full", "dual"}
        ``reduced`` and ``orbit`` need the full batch; ``orbit`` an invariant prototype Gram.
        A named method is the one reported: if it fails, the result is not certified with its
        reason. ``auto`` tries the applicable methods in turn (module docstring).
    solver : {"CLARABEL", "SCS"}
        Conic solver of the relaxations (the other one is its fallback).
    time_limit : float, optional
        Seconds per conic-solver attempt.
    rtol, atol : float
        Accepted gap relative to the excess ``U - F``, and per anchor.

    Returns
    -------
    CertificateResult
        ``attempts`` lists every method tried (method, status, lower bound, seconds, reason).
    """
    timer = Timer()
    check_solver_args(solver, time_limit)
    tolerance = tolerance_of(problem, rtol, atol)
    check_method(method, problem)  # before the candidate's loss is computed
    H, y = problem_candidate(problem, H)
    upper_bound = candidate_value(problem, H, y)  # over the distinct rows when the batch is full: cheap
    settings = dict(solver=solver, time_limit=time_limit)
    attempts: list[dict] = []
    best: CertificateResult | None = None
    for name in _plan(problem, H, y, method):
        result = _against_candidate(name, problem, H, upper_bound, settings, tolerance)
        attempts.append(result.attempt())
        if result.certified:
            best = result
            break
        # a "lower bound" above the candidate's (feasible) loss comes from an inaccurate solve
        usable = math.isfinite(result.lower_bound) and not contradicts(result.lower_bound, upper_bound,
                                                                        tolerance["floor"])
        if method != "auto" or (usable and (best is None or result.lower_bound > best.lower_bound)):
            best = result
    if best is None:
        return make_result(None, upper_bound, method="none", status="failed", seconds=timer(), dim=problem.dim,
                           failure="no method gave a bound: " + "; ".join(f"{a['method']}: {a['reason']}"
                                                                           for a in attempts),
                           attempts=attempts, **tolerance)
    failure = None
    if not best.certified:
        failure = best.reason if len(attempts) == 1 else "; ".join(f"{a['method']}: {a['reason']}" for a in attempts)
        if signed_ufm_plus(problem) and SIGNED_UFM_PLUS_NOTE not in failure:
            failure += "; " + SIGNED_UFM_PLUS_NOTE
    return make_result(best.lower_bound, best.upper_bound, method=best.method, status=best.solver_status,
                       seconds=timer(), rank=best.rank, dim=best.dim, realisable=None, solution=dict(best.solution),
                       failure=failure, attempts=attempts, **tolerance)


def problem_of(result) -> UFMProblem:
    """The :class:`~ncgeo.problem.UFMProblem` a :class:`ncgeo.ufm.UFMResult` or
    :class:`ncgeo.ufm.SavedSolution` solved (its ``problem`` if it has one, else rebuilt from
    ``settings``, ``labels``, ``W`` and ``batches``)."""
    problem = getattr(result, "problem", None)
    if isinstance(problem, UFMProblem):
        return problem
    settings = result.settings
    missing = [key for key in ("n_w", "tau") if key not in settings]
    if missing:
        raise ValueError(f"settings lack {', '.join(missing)}")
    batching = settings.get("batching", "full")
    batches = result.batches if batching != "full" else None
    if batching != "full" and batches is None:
        raise ValueError(f"settings say batching {batching!r} but the solution holds no batches "
                         "(batch_indices/batch_offsets): the objective to certify is unknown")
    W = None if result.W is None or np.asarray(result.W).size == 0 else np.asarray(result.W, dtype=float)
    labels = np.asarray(result.labels)
    k = W.shape[1] if W is not None else (int(labels.max()) + 1 if len(labels) else 1)
    return UFMProblem.from_labels(labels, W, settings["n_w"], settings["tau"], batches=batches, num_classes=k,
                                  nonnegative=check_bool("settings['nonnegative']", settings.get("nonnegative", False)),
                                  prototypes_as_anchors=check_bool("settings['prototypes_as_anchors']",
                                                                   settings.get("prototypes_as_anchors", False)),
                                  dim=_dim_of(result))


def _dim_of(result) -> int:
    """The embedding dimension of a result without building ``H`` (an ``N x d`` array on every access
    of a collapsed result)."""
    dim = getattr(result, "dim", None)
    return int(dim) if dim is not None else int(np.asarray(result.H).shape[1])


def certify_result(result, method: str = "auto", *, solver: str = "CLARABEL", time_limit: float | None = None,
                   rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> CertificateResult:
    """Certify a :class:`ncgeo.ufm.UFMResult` or :class:`ncgeo.ufm.SavedSolution` with :func:`certify`.

    The problem is the result's (:func:`problem_of`); the upper bound is the candidate's loss, recomputed
    in float64 by the certificate (never the solver's own value). A reshuffled (``"shuffle"``) solve has
    no fixed objective and is reported as not certified. ``method="dual"`` on a collapsed-path result
    (``class_means`` set) is :func:`~ncgeo.certify.collapsed_certificate` from the class means.
    """
    if not all(hasattr(type(result), name) or hasattr(result, name) for name in ("settings", "H", "labels")):
        raise TypeError(f"result must be a UFMResult or SavedSolution (from solve_ufm or ncgeo.ufm.load_npz), "
                        f"got {type(result).__name__}; for a file use certify_result(load_npz(path)) or "
                        "`ncgeo certify FILE`")
    settings = result.settings
    if settings.get("batching", "full") == "shuffle":
        labels = np.asarray(result.labels)
        W = None if result.W is None or np.asarray(result.W).size == 0 else result.W
        full = UFMProblem.from_labels(labels, W, settings["n_w"], settings["tau"],
                                      num_classes=W.shape[1] if W is not None else None,
                                      prototypes_as_anchors=bool(settings.get("prototypes_as_anchors", False)),
                                      dim=_dim_of(result))
        return make_result(None, getattr(result, "loss", None), method="none", status="n/a", seconds=0.0,
                           dim=_dim_of(result), failure="reshuffled batches have no fixed objective to certify",
                           **tolerance_of(full, rtol, atol))
    problem = problem_of(result)
    means = getattr(result, "class_means", None)
    if method == "dual" and means is not None:  # a collapsed-path result: the dual bound from its class means
        certificate = collapsed_certificate(problem, means, rtol=rtol, atol=atol)  # (no N x d H is formed)
    else:  # the upper bound is the candidate's loss recomputed in float64 (a float32 solve's is ~1e-7 off)
        certificate = certify(problem, result.H, method=method, solver=solver, time_limit=time_limit, rtol=rtol,
                              atol=atol)
    closed = result.closed_form() if hasattr(result, "closed_form") else None
    if closed is not None:  # cross-check against ncgeo.closed_form (balanced ETF / OF set-ups)
        certificate.solution["closed_form"] = {"value": closed[0], "geometry": closed[1]}
    return certificate


def realise_and_certify(problem: UFMProblem, *, solver: str = "CLARABEL", time_limit: float | None = None,
                        rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL):
    r"""Solve the reduced program (orbit when it applies) of a full-batch ``problem``, realise its
    collapsed optimum ``H = M[:, y]^T`` and certify it with the dual bound as an independent check.

    Returns ``(H, labels, CertificateResult)``; the result's lower bound is the larger of
    the relaxation's and the dual bound, its upper bound the realised loss (computed on
    the ``k`` distinct rows, so ``N = 10^5`` costs the same as ``N = 10^2``). A relaxation
    bound above the realised loss (an inaccurate conic solve, as with class sizes of 10^4)
    is discarded for the dual bound alone (``method="dual"``, the reason in
    ``solution["relaxation_discarded"]``). ``H`` is None when the optimum is not collapsed
    or not realisable in ``d`` dimensions. ``ValueError`` for real class sizes, batches or
    more classes than the realisation handles.
    """
    timer = Timer()
    tolerance = tolerance_of(problem, rtol, atol)
    if not problem.integral or not problem.full_batch:
        raise ValueError("problem must be full batch with integer class sizes to be realised")
    weights = np.asarray(problem.class_sizes, dtype=float)
    k, n_w, W = problem.num_classes, problem.n_w, problem.prototypes
    if _orbit_applies(problem) and k <= EXPAND_MAX:
        solve = solve_orbit
    elif k <= REDUCED_MAX_K:
        solve = solve_reduced
    else:
        raise ValueError(f"realisation needs k <= {EXPAND_MAX} classes (orbit-invariant prototypes) or "
                         f"k <= {REDUCED_MAX_K} (reduced SDP), got k = {k}")
    relaxed = solve(problem, solver=solver, time_limit=time_limit, rtol=rtol, atol=atol)
    means = relaxed.solution.get("means")
    upper = relaxed.upper_bound
    uncollapsed = means is None or upper == math.inf
    if uncollapsed:
        # the relaxation's optimum looks uncollapsed, which an inaccurate solve (class sizes of
        # 10^4) can also produce: try the collapsed optimum itself, from the prototypes, with the
        # dual bound as the judge
        d = problem.dim
        if d < k - 1:
            return None, None, relaxed
        from ..geometry import simplex_etf
        from .reduced import polish_means

        start = W if (W is not None and n_w > 0) else simplex_etf(k, d)
        means, upper = polish_means(start, weights, W if n_w > 0 else None, n_w, problem.tau, problem.nonnegative,
                                    problem.prototypes_as_anchors)
    labels = problem.sample_labels()
    H = means[:, labels].T
    dual = collapsed_certificate(problem, means, rtol=rtol, atol=atol)  # no N x d work
    upper = dual.upper_bound  # the realised means' loss, computed by the certificate
    if uncollapsed and not dual.certified:
        return None, None, relaxed
    solution = dict(relaxed.solution, means=means, dual_lower_bound=dual.lower_bound,
                    relaxation_lower_bound=relaxed.lower_bound, lambda_min=dual.solution.get("lambda_min"))
    method, lower = relaxed.method, max(relaxed.lower_bound, dual.lower_bound)
    if uncollapsed:  # the dual bound alone: it is exact where the relaxation was not
        method, lower = "dual", dual.lower_bound
        solution["relaxation_discarded"] = (f"the {relaxed.method} optimum was not realised ({relaxed.reason}); "
                                            "the collapsed optimum polished from the prototypes is judged by "
                                            "the dual bound")
    if contradicts(relaxed.lower_bound, upper, tolerance["floor"]):  # an inaccurate conic solve
        lower, method = dual.lower_bound, "dual"
        solution["relaxation_discarded"] = (f"the {relaxed.method} bound {relaxed.lower_bound:.10g} lies above the "
                                            f"realised loss {upper:.10g}: the conic solver was inaccurate")
    attempts = [relaxed.attempt(), dual.attempt()]
    result = make_result(lower, upper, method=method, status=relaxed.solver_status, seconds=timer(),
                         rank=dual.rank if uncollapsed else relaxed.rank, dim=relaxed.dim, realisable=True,
                         solution=solution, attempts=attempts, **tolerance)
    return H, labels, result
