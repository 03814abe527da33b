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
time limit) is retried with the other solver and then replaced by the dual certificate;
every outcome is a :class:`CertificateResult`, never an exception from the solver.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import as_float_array, check_bool, check_choice
from ..classes import check_class_sizes
from ..ufm.batching import check_batches
from ._common import candidate_inputs, candidate_loss, check_dim, check_loss_args
from ._program import Timer, check_solver_args
from .dual import MAX_DENSE_GROUPS, dual_certificate, full_batch_loss
from .full import solve_full
from .orbit import orbit_invariant, size_groups, solve_orbit
from .reduced import solve_reduced
from .result import DEFAULT_RTOL, CertificateResult, check_rtol, contradicts, make_result

__all__ = ["certify", "certify_result", "realise_and_certify", "check_method", "METHODS"]

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


def _orbit_applies(weights: np.ndarray, W, n_w: float) -> bool:
    groups = size_groups(weights)
    if len(groups) == len(weights):
        return False
    return orbit_invariant(W.T @ W if (n_w > 0 and W is not None) else None, groups) is not None


def check_method(method: str, class_sizes, prototypes, n_w: float, full_batch: bool) -> None:
    """What ``method`` needs of a set-up, checked before any solve (``ValueError`` otherwise):
    ``reduced`` and ``orbit`` a full batch and samples in every class; ``orbit`` with
    prototypes also a prototype Gram invariant under permutations of equal-size classes."""
    check_choice("method", method, METHODS)
    if method not in ("reduced", "orbit"):
        return
    if not full_batch:
        raise ValueError(f"method {method!r} needs the full batch; use 'auto', 'full' or 'dual' for other batchings")
    sizes = np.asarray(class_sizes, dtype=float)
    if np.any(sizes == 0):
        raise ValueError(f"method {method!r} needs every class to have samples")
    W = None if prototypes is None else np.asarray(prototypes, dtype=float)
    if method == "orbit" and n_w > 0 and W is not None and orbit_invariant(W.T @ W, size_groups(sizes)) is None:
        raise ValueError("method 'orbit' needs prototypes whose Gram is invariant under permutations of equal-size "
                         "classes (etf, of); use 'auto' or 'reduced'")


def _combine(method_result: CertificateResult, upper: float, rtol: float, timer,
             extra_reason: str = "") -> CertificateResult:
    """Use a relaxation's lower bound against the candidate's loss."""
    r = method_result
    solution = dict(r.solution)
    solution["relaxation_upper_bound"] = r.upper_bound
    out = make_result(r.lower_bound, upper, method=r.method, status=r.solver_status, seconds=timer(),
                      rtol=rtol, rank=r.rank, dim=r.dim, realisable=None, solution=solution)
    if extra_reason and not out.certified:
        out = make_result(r.lower_bound, upper, method=r.method, status=r.solver_status, seconds=timer(),
                          rtol=rtol, rank=r.rank, dim=r.dim, realisable=None, solution=solution,
                          failure=f"{out.reason}; {extra_reason}")
    return out


def certify(H, labels, prototypes=None, n_w: float = 0.0, tau: float = 0.1, *, batches=None,
            nonnegative: bool = False, prototypes_as_anchors: bool = False, method: str = "auto",
            upper_bound: float | None = None, solver: str = "CLARABEL",
            time_limit: float | None = None, rtol: float = DEFAULT_RTOL) -> CertificateResult:
    r"""Certify that a candidate is a global minimiser of the UFM (UFM+) objective.

    The upper bound is the candidate's objective (:func:`ncgeo.ufm.ufm_objective`, sum over
    batches and anchors; pass ``upper_bound`` when known); the lower bound comes from a
    relaxation (:func:`~ncgeo.certify.solve_orbit`, :func:`~ncgeo.certify.solve_reduced`,
    :func:`~ncgeo.certify.solve_full`) or from :func:`~ncgeo.certify.dual_certificate`.
    The candidate is certified when ``(upper - lower) / |upper| <= rtol``.

    Parameters
    ----------
    H : (N, d) array
        Candidate unit embeddings (non-negative for UFM+); rows within 1e-5 of the
        constraints are projected onto them (``ValueError`` beyond) and the upper bound is
        then recomputed at the projected point.
    labels : (N,) int array
    prototypes : (d, k) array, optional
    n_w, tau : float
    batches : list of int arrays, optional
        The objective's batches (default one full batch).
    nonnegative, prototypes_as_anchors : bool
    method : {"auto", "reduced", "orbit", "full", "dual"}
        ``reduced`` and ``orbit`` need the full batch; ``orbit`` an invariant prototype Gram.
    upper_bound : float, optional
    solver : {"CLARABEL", "SCS"}
    time_limit : float, optional
        Seconds per conic-solver attempt.
    rtol : float

    Returns
    -------
    CertificateResult
        ``solution["attempts"]`` lists the reasons of the methods tried before the one
        reported.
    """
    timer = Timer()
    check_solver_args(solver, time_limit)
    rtol = check_rtol(rtol)
    H, y, W, n_w, tau, upper_bound = candidate_inputs(H, labels, prototypes, n_w, tau, nonnegative,
                                                      prototypes_as_anchors, upper_bound)
    N, d = H.shape
    k = W.shape[1] if W is not None else int(y.max()) + 1
    batch_list = check_batches(batches, N)
    full_batch = len(batch_list) == 1 and np.array_equal(np.sort(batch_list[0]), np.arange(N))
    sizes = np.bincount(y, minlength=k).astype(float)
    check_method(method, sizes, W, n_w, full_batch)  # before the candidate's loss is computed
    if upper_bound is None:  # over the distinct rows when the batch is full: a collapsed N = 10^5 is cheap
        upper_bound = (full_batch_loss(H, y, W, n_w, tau, prototypes_as_anchors) if full_batch else
                       candidate_loss(H, y, W if n_w > 0 else None, n_w, tau, batch_list, prototypes_as_anchors))
    common = dict(nonnegative=nonnegative, prototypes_as_anchors=prototypes_as_anchors, solver=solver,
                  time_limit=time_limit, rtol=rtol)
    plan: list[str]
    if method != "auto":
        plan = [method]
    elif full_batch and np.all(sizes > 0):
        # the dual bound costs O(k^3) on a collapsed candidate: try it first
        cheap_dual = N <= DUAL_FIRST_MAX or _is_collapsed(H, y, 1e-6)
        relaxation = ["orbit"] if _orbit_applies(sizes, W, n_w) else \
            ["reduced"] if k <= REDUCED_MAX_K else []
        plan = (["dual"] + relaxation) if cheap_dual else (relaxation + ["dual"])
    else:
        plan = ["dual"] + (["full"] if N + k <= FULL_MAX else [])
    if plan[-1] != "dual" and "dual" not in plan:
        plan.append("dual")  # the fallback of every conic program
    attempts: list[str] = []
    best: CertificateResult | None = None
    for name in plan:
        if name == "dual":
            if N > MAX_DENSE_GROUPS and not full_batch:
                attempts.append("dual: too many samples for the dense dual certificate")
                continue
            result = dual_certificate(H, y, W if n_w > 0 else None, n_w, tau, batches=batch_list,
                                      nonnegative=nonnegative, prototypes_as_anchors=prototypes_as_anchors,
                                      upper_bound=upper_bound, rtol=rtol)
        else:
            proto = W if n_w > 0 else None
            if name == "orbit":
                relaxed = solve_orbit(sizes, proto, n_w, tau, dim=d, **common)
            elif name == "reduced":
                relaxed = solve_reduced(sizes, proto, n_w, tau, dim=d, **common)
            else:
                relaxed = solve_full(y, proto, n_w, tau, batches=batch_list, num_classes=k, dim=d, **common)
            if not math.isfinite(relaxed.lower_bound):
                attempts.append(f"{name}: {relaxed.reason}")
                continue
            result = _combine(relaxed, upper_bound, rtol, timer)
        # a "lower bound" above the candidate's (feasible) loss comes from an inaccurate solve
        if not contradicts(result.lower_bound, upper_bound) and (best is None or result.lower_bound > best.lower_bound):
            best = result
        if result.certified:
            best = result
            break
        attempts.append(f"{name}: {result.reason}")
    if best is None:
        return make_result(None, upper_bound, method=plan[-1], status="failed", seconds=timer(), rtol=rtol,
                           dim=d, failure="; ".join(attempts), solution={"attempts": attempts})
    solution = dict(best.solution)
    solution["attempts"] = attempts
    failure = None if best.certified else "; ".join(attempts) if attempts else None
    return make_result(best.lower_bound, best.upper_bound, method=best.method, status=best.solver_status,
                       seconds=timer(), rtol=rtol, rank=best.rank, dim=best.dim, realisable=None,
                       solution=solution, failure=failure)


def certify_result(result, method: str = "auto", *, solver: str = "CLARABEL",
                   time_limit: float | None = None, rtol: float = DEFAULT_RTOL) -> CertificateResult:
    """Certify a :class:`ncgeo.ufm.UFMResult` or :class:`ncgeo.ufm.SavedSolution`.

    Reads ``n_w``, ``tau``, ``nonnegative``, ``prototypes_as_anchors``, ``batching`` and
    ``dtype`` from ``result.settings`` and the batches from ``result.batches``; the
    candidate's loss is the upper bound for a float64 solve and recomputed in float64
    otherwise. A reshuffled
    (``"shuffle"``) solve has no fixed objective and is reported as not certified.
    """
    if not all(hasattr(result, name) for name in ("settings", "H", "labels")):
        raise TypeError(f"result must be a UFMResult or SavedSolution (from solve_ufm or ncgeo.ufm.load_npz), "
                        f"got {type(result).__name__}; for a file use certify_result(load_npz(path)) or "
                        "`ncgeo certify FILE`")
    settings = result.settings
    missing = [key for key in ("n_w", "tau") if key not in settings]
    if missing:
        raise ValueError(f"settings lack {', '.join(missing)}")
    if settings.get("batching", "full") == "shuffle":
        return make_result(None, getattr(result, "loss", None), method="none", status="n/a", seconds=0.0,
                           rtol=rtol, dim=result.H.shape[1],
                           failure="reshuffled batches have no fixed objective to certify")
    batches = result.batches if settings.get("batching", "full") != "full" else None
    if settings.get("batching", "full") != "full" and batches is None:
        raise ValueError(f"settings say batching {settings['batching']!r} but the solution holds no batches "
                         "(batch_indices/batch_offsets): the objective to certify is unknown")
    labels = result.labels
    # a float32 solve's loss is accurate to ~1e-7 only: the upper bound is recomputed in float64
    upper = getattr(result, "loss", None) if settings.get("dtype", "float64") == "float64" else None
    certificate = certify(result.H, labels, result.W, settings["n_w"], settings["tau"], batches=batches,
                   nonnegative=check_bool("settings['nonnegative']", settings.get("nonnegative", False)),
                   prototypes_as_anchors=check_bool("settings['prototypes_as_anchors']",
                                                    settings.get("prototypes_as_anchors", False)), method=method,
                   upper_bound=upper, solver=solver, time_limit=time_limit, rtol=rtol)
    closed = result.closed_form() if hasattr(result, "closed_form") else None
    if closed is not None:  # cross-check against ncgeo.closed_form (balanced ETF / OF set-ups)
        certificate.solution["closed_form"] = {"value": closed[0], "geometry": closed[1]}
    return certificate


def realise_and_certify(class_sizes, prototypes=None, n_w: float = 0.0, tau: float = 0.1, *,
                        nonnegative: bool = False, prototypes_as_anchors: bool = False,
                        dim: int | None = None, solver: str = "CLARABEL",
                        time_limit: float | None = None, rtol: float = DEFAULT_RTOL):
    r"""Solve the reduced program (orbit when it applies), realise its collapsed optimum
    ``H = M[:, y]^T`` and certify it with the dual bound as an independent check.

    Returns ``(H, labels, CertificateResult)``; the result's lower bound is the larger of
    the relaxation's and the dual bound, its upper bound the realised loss (computed on
    the ``k`` distinct rows, so ``N = 10^5`` costs the same as ``N = 10^2``). A relaxation
    bound above the realised loss (an inaccurate conic solve, as with class sizes of 10^4)
    is discarded for the dual bound alone (``method="dual"``, the reason in
    ``solution["relaxation_discarded"]``). ``H`` is None when the optimum is not collapsed
    or not realisable in ``d`` dimensions.
    """
    timer = Timer()
    rtol = check_rtol(rtol)
    sizes = check_class_sizes(class_sizes)
    n_w, tau = check_loss_args(n_w, tau, prototypes_as_anchors)
    dim = check_dim(dim)
    weights = np.asarray(sizes, float)
    W = None if prototypes is None else as_float_array("prototypes", prototypes, ndim=2)
    if W is not None and W.shape[1] != len(sizes):
        raise ValueError(f"prototypes must have shape (d, {len(sizes)}) (one column per class), got {W.shape}")
    from .orbit import EXPAND_MAX

    if _orbit_applies(weights, W, n_w) and len(sizes) <= EXPAND_MAX:
        solve = solve_orbit
    elif len(sizes) <= REDUCED_MAX_K:
        solve = solve_reduced
    else:
        raise ValueError(f"realisation needs k <= {EXPAND_MAX} classes (orbit-invariant prototypes) or "
                         f"k <= {REDUCED_MAX_K} (reduced SDP), got k = {len(sizes)}")
    relaxed = solve(weights, W if n_w > 0 else None, n_w, tau, nonnegative=nonnegative,
                    prototypes_as_anchors=prototypes_as_anchors, dim=dim, solver=solver,
                    time_limit=time_limit, rtol=rtol)
    means = relaxed.solution.get("means")
    upper = relaxed.upper_bound
    uncollapsed = means is None or upper == math.inf
    if uncollapsed:
        # the relaxation's optimum looks uncollapsed, which an inaccurate solve (class sizes of
        # 10^4) can also produce: try the collapsed optimum itself, from the prototypes, with the
        # dual bound as the judge
        d = W.shape[0] if W is not None else dim
        if d is None or d < len(sizes) - 1 or (W is None and n_w > 0):
            return None, None, relaxed
        from ..geometry import simplex_etf
        from .reduced import polish_means

        start = W if (W is not None and n_w > 0) else simplex_etf(len(sizes), d)
        means, upper = polish_means(start, weights, W if n_w > 0 else None, n_w, tau, nonnegative,
                                    prototypes_as_anchors)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    H = means[:, labels].T
    dual = dual_certificate(H, labels, W if n_w > 0 else None, n_w, tau, nonnegative=nonnegative,
                            prototypes_as_anchors=prototypes_as_anchors, upper_bound=upper, rtol=rtol)
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
    if contradicts(relaxed.lower_bound, upper):  # an inaccurate conic solve (large class weights)
        lower, method = dual.lower_bound, "dual"
        solution["relaxation_discarded"] = (f"the {relaxed.method} bound {relaxed.lower_bound:.10g} lies above the "
                                            f"realised loss {upper:.10g}: the conic solver was inaccurate")
    result = make_result(lower, upper, method=method, status=relaxed.solver_status,
                         seconds=timer(), rtol=rtol, rank=dual.rank if uncollapsed else relaxed.rank,
                         dim=relaxed.dim, realisable=True, solution=solution)
    return H, labels, result

