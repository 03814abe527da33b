r"""The rigorous Lagrangian lower bound of every certificate (docs/theory.md sections 5c and 5.1).

The relaxations and the dual certificate all have the form

.. math::

    \min_Z f(Z) \quad\text{s.t.}\quad Z \succeq 0,\; lo_u \le Z_{uu} \le hi_u \;(u < m),\;
    Z_{PP} = G_W,\; Z_{ij} \ge 0 \;((i, j) \in \mathcal{N}),

with ``Z`` the sample Gram (``lo = hi = 1``), the reduced ``R`` of docs/theory.md 5b
(``hi_u = w_u``: ``a_u <= 1``; ``lo_u = 0``, or ``1`` for UFM+, ``lo = hi = w_u`` when
``w_u <= 1``) or the grouped Gram of a candidate's distinct rows. For convex ``f``, any
point ``Z0`` with gradient ``g`` (:mod:`ncgeo.certify.gram_objective`), any ``y`` (``m``),
symmetric ``Lambda`` and ``N >= 0`` on ``\mathcal{N}``, with
``S = g - N - Diag(y) - (0 (+) Lambda)`` and every feasible ``Z``:

.. math::

    f(Z) \ge f(Z_0) - \langle g, Z_0\rangle + \sum_u \min(y_u lo_u, y_u hi_u)
            + \langle \Lambda, G_W\rangle + T \min(0, \lambda_{\min}(S)),

``T = sum_u hi_u + tr G_W >= tr Z``. Directions ``(0, z)`` with ``G_W z = 0`` carry no mass
in a feasible ``Z``, so ``S`` is restricted to ``diag(I_m, Q)`` (``Q`` an orthonormal basis of
the range of ``G_W``) and ``Lambda = Q Lambda_Q Q^T``. Eigen-directions of ``G_W`` with
eigenvalues ``0 < t_v <= 1e-10`` of the largest (a nearly singular ``G_W``) do carry mass: their part of
``<S, Z>`` is bounded below separately (:func:`_dropped_directions`). The bound is computed on the excess
(the floor is added back as a constant) and less the floating-point margin of
:func:`floating_point_margin` (``n`` the order of ``S``, ``scale`` the magnitude of the terms of
the excess), which covers the rounding of the objective and its gradient, of the inner
products and of the eigenvalue.

Multipliers. From stationarity ``S Z0 = 0`` (``y_u = (g' Z0)_uu / Z0_uu``,
``Lambda G_W = (g' Z0)_PP``) and, when the conic dual matrix ``S_dual`` of ``Z >= 0`` is
given, from ``S = S_dual`` (``y = diag(g' - S_dual)``, ``Lambda_Q = Q^T (g' - S_dual)_PP Q``);
both are valid, the larger bound is reported. ``N_ij = max(g_ij, 0)`` on the constrained
entries where ``Z0_ij <= zero_tol``.

Eigenvalue. ``scipy.linalg.eigh`` up to ``dense_max`` rows; beyond, Lanczos (``eigsh``)
whose value ``theta`` counts only once a Cholesky factorisation of ``S - (theta - delta) I``
proves ``lambda_min >= theta - delta``; otherwise the dense ``eigh`` (up to ``DENSE_LIMIT``
rows), else no bound: "eigenvalue not verified". An ARPACK failure is such a result, never
an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

__all__ = ["LagrangianBound", "lagrangian_bound", "reduced_bound", "gram_bound", "relaxation_lower",
           "smallest_eigenvalue", "prototype_range", "floating_point_margin"]

#: Largest matrix whose smallest eigenvalue is computed densely when Lanczos fails.
DENSE_LIMIT = 6000
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class LagrangianBound:
    """A rigorous lower bound (module docstring).

    ``lower`` (full loss scale: ``floor + excess_lower``) and ``excess_lower`` are None when
    no bound could be computed (``failure`` says why). ``S`` is the restricted dual matrix,
    ``basis`` the ``diag(I_m, Q)`` it lives on (``n x (m + r)``), ``y`` and ``Lambda_Q`` the
    multipliers used, ``lo``/``hi`` the diagonal bounds, ``objective`` (``Z -> excess``, torch) when
    known; ``info`` a JSON-ready summary."""

    lower: float | None
    excess_lower: float | None
    floor: float
    point_excess: float
    lambda_min: float
    margin: float
    trace_bound: float
    eigenvalue: str
    failure: str | None
    S: np.ndarray = field(repr=False)
    basis: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    Lambda_Q: np.ndarray = field(repr=False)
    multipliers: str = "stationarity"
    lo: np.ndarray = field(default=None, repr=False)
    hi: np.ndarray = field(default=None, repr=False)
    objective: object = field(default=None, repr=False, compare=False)

    @property
    def info(self) -> dict:
        return {"excess_lower": self.excess_lower, "floor": self.floor, "point_excess": self.point_excess,
                "lambda_min": self.lambda_min, "margin": self.margin, "trace_bound": self.trace_bound,
                "eigenvalue": self.eigenvalue, "multipliers": self.multipliers, "failure": self.failure}


def smallest_eigenvalue(A: np.ndarray, dense_max: int = 3000, dense_limit: int = DENSE_LIMIT):
    """``(value, how, failure)``: a verified lower bound on ``lambda_min(A)`` (symmetric ``A``).

    ``value`` is exact to round-off (dense ``eigh``) or ``theta - delta`` with the Lanczos
    estimate ``theta`` verified by a Cholesky factorisation of ``A - (theta - delta) I``;
    ``failure`` (a reason, ``value`` NaN) when neither is possible."""
    A = (A + A.T) / 2
    n = A.shape[0]
    if n == 0:
        return math.inf, "empty", None
    if n <= dense_max:
        return float(scipy.linalg.eigh(A, eigvals_only=True, subset_by_index=[0, 0])[0]), "dense", None
    norm = float(np.linalg.norm(A))
    why = ""
    try:
        theta = float(scipy.sparse.linalg.eigsh(A, k=1, which="SA", tol=1e-10,
                                                return_eigenvectors=False)[0])
        delta = max(1e-9 * norm, 8 * n * _EPS * norm)
        try:
            scipy.linalg.cholesky(A - (theta - delta) * np.eye(n), lower=True, check_finite=True)
            return theta - delta, "lanczos, verified by Cholesky", None
        except np.linalg.LinAlgError:
            why = "the Lanczos value was not verified by Cholesky"
    except (scipy.sparse.linalg.ArpackError, scipy.sparse.linalg.ArpackNoConvergence) as exc:
        why = f"ARPACK failed ({type(exc).__name__})"
    if n <= dense_limit:
        return float(scipy.linalg.eigh(A, eigvals_only=True, subset_by_index=[0, 0])[0]), f"dense ({why})", None
    return math.nan, "none", f"eigenvalue not verified: {why}, and {n} rows exceed the dense limit {dense_limit}"


def prototype_range(G_W: np.ndarray | None, tol: float = 1e-10, *, dropped: bool = False):
    """``(Q, s)``: orthonormal basis of the range of ``G_W`` and its eigenvalues above ``tol`` times the
    largest; with ``dropped`` also ``(V, t)``: the other eigenvectors and their eigenvalues (tiny but not
    zero for a nearly singular ``G_W``: a feasible ``Z`` carries that mass), 0 at round-off level."""
    if G_W is None or G_W.size == 0:
        empty = (np.zeros((0, 0)), np.zeros(0))
        return (*empty, *empty) if dropped else empty
    eig, vec = np.linalg.eigh((G_W + G_W.T) / 2)
    keep = eig > tol * max(1.0, float(eig.max()))
    if dropped:  # eigenvalues at round-off level (8 k eps of the largest) count as an exact null space
        zero = 8 * len(eig) * _EPS * max(1.0, float(eig.max()))
        return vec[:, keep], eig[keep], vec[:, ~keep], np.where(eig[~keep] > zero, eig[~keep], 0.0)
    return vec[:, keep], eig[keep]


def lagrangian_bound(Z0: np.ndarray, g: np.ndarray, point_excess: float, floor: float, scale: float, *,
                     m: int, lo: np.ndarray, hi: np.ndarray, G_W: np.ndarray | None = None,
                     sign_mask: np.ndarray | None = None, psd_dual: np.ndarray | None = None,
                     zero_tol: float = 1e-7, dense_max: int = 3000,
                     dense_limit: int = DENSE_LIMIT) -> LagrangianBound:
    r"""The bound of the module docstring at ``Z0`` (``n x n``, ``n = m + k_p``).

    Parameters
    ----------
    Z0 : (n, n) array
        The point (solver output or candidate), feasible or not: the bound holds anyway.
    g : (n, n) array
        Symmetrised gradient of the objective at ``Z0``.
    point_excess, floor, scale : float
        ``f(Z0) - floor``, the floor and the magnitude of the excess's terms
        (:class:`ncgeo.certify.gram_objective.ObjectiveValue`).
    m : int
        Rows with a diagonal constraint ``lo <= Z_uu <= hi`` (the last ``n - m`` are prototypes).
    lo, hi : (m,) arrays
    G_W : (k_p, k_p) array, optional
        The fixed prototype block (``n - m`` rows), None when ``n == m``.
    sign_mask : (n, n) bool array, optional
        Entries constrained ``Z_ij >= 0`` (UFM+).
    psd_dual : (n, n) array, optional
        The conic dual matrix of ``Z >= 0`` on the objective's scale (a second set of multipliers).
    zero_tol : float
        Sign-constrained entries of ``Z0`` at or below this carry non-negativity multipliers.
    dense_max, dense_limit : int
        See :func:`smallest_eigenvalue`.
    """
    Z0 = np.asarray(Z0, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    n = Z0.shape[0]
    kp = n - m
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    Q, s, V, t = prototype_range(G_W if kp else None, dropped=True)
    trace_bound = float(hi.sum() + (np.trace(G_W) if kp else 0.0))
    g_inner = float(np.sum(g * Z0))
    Nn = np.zeros_like(g)
    if sign_mask is not None:
        Nn = np.where(sign_mask & (Z0 <= zero_tol), np.maximum(g, 0.0), 0.0)
    gp = g - Nn
    basis = np.zeros((n, m + Q.shape[1]))
    basis[:m, :m] = np.eye(m)
    basis[m:, m:] = Q
    candidates = [("stationarity", _stationarity_multipliers(gp, Z0, m, Q, s))]
    if psd_dual is not None:
        D = gp - np.asarray(psd_dual, dtype=np.float64)
        D = (D + D.T) / 2
        candidates.append(("conic dual", (np.diag(D)[:m].copy(), Q.T @ D[m:, m:] @ Q)))
    best = None
    for name, (y, Lq) in candidates:
        Lq = (Lq + Lq.T) / 2
        S = _restricted(gp, m, Q)
        S[:m, :m] -= np.diag(y)
        S[m:, m:] -= Lq
        lam, how, failure = smallest_eigenvalue(S, dense_max, dense_limit)
        diag_term = float(np.minimum(y * lo, y * hi).sum())
        lambda_term = float(np.sum(Lq * np.diag(s))) if kp else 0.0
        leak = _dropped_directions(gp, m, Q, V, t, trace_bound)
        margin = floating_point_margin(n, scale, point_excess, float(np.sum(np.abs(g * Z0))),
                                       float(np.abs(y) @ np.abs(hi)) + abs(lambda_term),
                                       trace_bound * float(np.linalg.norm(S)))
        if failure is not None:
            result = LagrangianBound(None, None, floor, point_excess, math.nan, margin, trace_bound, how, failure,
                                     S, basis, y, Lq, name, lo, hi)
        else:
            excess_lower = (point_excess - g_inner + diag_term + lambda_term + trace_bound * min(0.0, lam)
                            + leak - margin)
            result = LagrangianBound(floor + excess_lower, excess_lower, floor, point_excess, lam, margin,
                                     trace_bound, how, None, S, basis, y, Lq, name, lo, hi)
        if best is None or (result.excess_lower is not None
                            and (best.excess_lower is None or result.excess_lower > best.excess_lower)):
            best = result
    return best


def floating_point_margin(n: int, scale: float, excess: float, inner: float, multipliers: float,
                          eigen: float) -> float:
    """The stated margin of the module docstring: ``(2 log2 n + 16) eps (scale + |excess|)`` for the
    objective and its gradient, ``(2 log2 n + 8) eps sum|g o Z0|`` for the (pairwise) inner
    product and ``8 n eps (multiplier terms + T ||S||_F)`` for the multipliers and the eigenvalue."""
    log_n = 2 * math.log2(max(n, 2))
    return _EPS * ((log_n + 16) * (abs(scale) + abs(excess)) + (log_n + 8) * inner
                   + 8 * n * (multipliers + eigen))


def _dropped_directions(gp: np.ndarray, m: int, Q: np.ndarray, V: np.ndarray, t: np.ndarray,
                        trace_bound: float) -> float:
    """The part of ``<S, Z>`` on the eigen-directions ``V`` of ``G_W`` left out of the basis (eigenvalues
    ``t``, tiny for a nearly singular ``G_W``, 0 for an exact null space): ``Z_VV = diag(t)`` exactly and
    ``||Z_BV||_F <= sqrt(tr Z_BB tr Z_VV) <= sqrt(T sum t)`` (``Z`` PSD), so it is at least
    ``sum_v (V^T g' V)_vv t_v - 2 ||B^T g' V||_F sqrt(T sum t)``. ``Lambda`` lives on ``Q`` and adds nothing."""
    if not V.shape[1] or not np.any(t > 0):
        return 0.0
    cross = np.concatenate([gp[:m, m:] @ V, Q.T @ gp[m:, m:] @ V], axis=0)
    within = float(np.sum(np.diag(V.T @ gp[m:, m:] @ V) * t))
    return within - 2.0 * float(np.linalg.norm(cross)) * math.sqrt(trace_bound * float(t.sum()))


def _restricted(A: np.ndarray, m: int, Q: np.ndarray) -> np.ndarray:
    """``diag(I_m, Q)^T A diag(I_m, Q)`` without forming the product of the full matrices."""
    if not Q.shape[1]:
        return A[:m, :m].copy()
    top = np.concatenate([A[:m, :m], A[:m, m:] @ Q], axis=1)
    bottom = np.concatenate([Q.T @ A[m:, :m], Q.T @ A[m:, m:] @ Q], axis=1)
    return np.concatenate([top, bottom], axis=0)


def _stationarity_multipliers(gp: np.ndarray, Z0: np.ndarray, m: int, Q: np.ndarray, s: np.ndarray):
    """``y`` and ``Lambda_Q`` from ``S Z0 = 0`` (least squares on the prototype range)."""
    d = np.diag(Z0)[:m]
    diag_gz = np.einsum("ij,ji->i", gp[:m], Z0[:, :m])  # diag(g' Z0) on the sample rows, O(n^2)
    y = np.where(d > 1e-300, diag_gz / np.where(d > 1e-300, d, 1.0), np.diag(gp)[:m])
    if Q.shape[1]:
        GZ_PP = gp[m:] @ Z0[:, m:]
        Lq = (Q.T @ GZ_PP @ Q) / s[None, :]
    else:
        Lq = np.zeros((0, 0))
    return y, Lq


def _sign_mask(m: int, kp: int, nonnegative: bool, prototypes_nonnegative: bool) -> np.ndarray | None:
    """UFM+ sign constraints: sample-sample off-diagonal entries, sample-prototype entries when the
    prototypes are entrywise non-negative (``h >= 0`` then implies ``h.w >= 0``)."""
    if not nonnegative:
        return None
    mask = np.zeros((m + kp, m + kp), dtype=bool)
    mask[:m, :m] = ~np.eye(m, dtype=bool)
    if kp and prototypes_nonnegative:
        mask[:m, m:] = True
        mask[m:, :m] = True
    return mask


def _problem_parts(problem):
    """``(class weights, n_w, tau, prototype anchors, nonnegative, G_W or None, sample-prototype signs)``
    of a :class:`ncgeo.UFMProblem` or of the relaxations' ``ClassProgram``."""
    if hasattr(problem, "weights"):  # ClassProgram (ncgeo.certify._common)
        return (problem.weights, problem.n_w, problem.tau, problem.anchors, problem.nonnegative, problem.G_W,
                problem.proto_nonneg)
    use_p = problem.n_w > 0
    G_W = problem.prototype_gram if use_p else None
    proto_nonneg = bool(use_p and np.all(np.asarray(problem.prototypes) >= 0))
    return (np.asarray(problem.class_sizes, dtype=float), problem.n_w, problem.tau,
            bool(problem.prototypes_as_anchors and use_p), problem.nonnegative, G_W, proto_nonneg)


def reduced_bound(problem, R0: np.ndarray, weights=None, labels=None, *, psd_dual: np.ndarray | None = None,
                  zero_tol: float = 1e-7, dense_max: int = 3000) -> LagrangianBound:
    """The bound for a full-batch ``problem`` (:class:`ncgeo.UFMProblem` or the relaxations'
    ``ClassProgram``) at the scaled grouped matrix
    ``R0`` of :func:`ncgeo.certify.gram_objective.reduced_excess`.

    ``weights`` and ``labels`` describe the groups (default: one group per class, the reduced
    program of docs/theory.md 5b). Constraints: ``R_uu <= w_u`` (``a_u <= 1``) and ``R_uu >= 0`` (``>= 1``
    for UFM+: ``a_u >= 0``), ``R_uu = w_u`` when ``w_u <= 1``; ``T = sum_u w_u + tr G_W``.
    """
    from .gram_objective import reduced_excess, reduced_gradient

    sizes, n_w, tau, anchors, nonnegative, G_W, proto_nonneg = _problem_parts(problem)
    if weights is None:
        weights, labels = sizes, np.arange(len(sizes))
    weights = np.array(weights, dtype=float)
    m = len(weights)
    excess, floor, scale, g = reduced_gradient(R0, weights, labels, n_w, tau, anchors)
    hi = weights.copy()
    lo = np.where(weights > 1, 1.0 if nonnegative else 0.0, weights)
    mask = _sign_mask(m, R0.shape[0] - m, nonnegative, proto_nonneg)
    bound = lagrangian_bound(R0, g, excess, floor, scale, m=m, lo=lo, hi=hi, G_W=G_W if n_w > 0 else None,
                             sign_mask=mask, psd_dual=psd_dual, zero_tol=zero_tol, dense_max=dense_max)
    return replace(bound, objective=lambda Z: reduced_excess(Z, weights, labels, n_w, tau, anchors).excess)


def gram_bound(problem, G0: np.ndarray, *, psd_dual: np.ndarray | None = None, zero_tol: float = 1e-7,
               dense_max: int = 3000) -> LagrangianBound:
    """The bound for ``problem`` (any batching) at the sample Gram ``G0`` (``N + k_p`` square):
    ``diag = 1`` on the samples, ``T = N + tr G_W``."""
    from .gram_objective import gram_excess, gram_gradient

    labels = problem.sample_labels()
    batches = [np.arange(len(labels))] if problem.batches is None else list(problem.batches)
    _, _, _, _, _, G_W, proto_nonneg = _problem_parts(problem)
    m = len(labels)
    excess, floor, scale, g = gram_gradient(G0, labels, batches, problem.n_w, problem.tau,
                                            problem.prototypes_as_anchors)
    ones = np.ones(m)
    mask = _sign_mask(m, G0.shape[0] - m, problem.nonnegative, proto_nonneg)
    bound = lagrangian_bound(G0, g, excess, floor, scale, m=m, lo=ones, hi=ones, G_W=G_W, sign_mask=mask,
                             psd_dual=psd_dual, zero_tol=zero_tol, dense_max=dense_max)
    return replace(bound, objective=lambda Z: gram_excess(Z, labels, batches, problem.n_w, problem.tau,
                                                          problem.prototypes_as_anchors).excess)


def relaxation_lower(problem, point: np.ndarray, solver_value: float, *, grouped: bool = True,
                     psd_constraint=None, normaliser: float = 1.0) -> tuple[float | None, dict]:
    """The lower bound a relaxation reports: the Lagrangian bound at the solver's ``point`` (the
    reduced ``R`` when ``grouped``, else the sample Gram), with the conic dual of
    ``psd_constraint`` (a cvxpy ``>> 0`` constraint, its dual on the objective's scale after
    multiplying by ``normaliser``) as a second set of multipliers. The solver's own value is
    only a hint, kept in the returned summary as ``solver_value``. Returns ``(lower or None,
    summary)``; ``summary["failure"]`` says why when None."""
    psd_dual = None
    if psd_constraint is not None and psd_constraint.dual_value is not None:
        psd_dual = np.asarray(psd_constraint.dual_value, dtype=np.float64) * normaliser
    point = (np.asarray(point, dtype=np.float64) + np.asarray(point, dtype=np.float64).T) / 2
    if grouped:
        bound = reduced_bound(problem, point, psd_dual=psd_dual)
    else:
        bound = gram_bound(problem, point, psd_dual=psd_dual)
    return bound.lower, dict(bound.info, solver_value=float(solver_value))
