r"""The many-prototype (cross-entropy) limit as a convex program (docs/theory.md section 4).

As ``n_w -> infinity`` (only samples as anchors) the per-sample loss minus ``log n_w`` tends
to the cross-entropy with the fixed classifier ``W``, no bias and logit scale ``1/tau``. With
``p = W^T h`` each class ``y`` solves

.. math::

    \min_p \; -\frac{p_y}{\tau} + \log \sum_c e^{p_c / \tau}
    \quad\text{s.t.}\quad \begin{pmatrix} 1 & p^T \\ p & G_W \end{pmatrix} \succeq 0 .

The PSD constraint says ``p = W^T h`` with ``||h|| <= 1`` (``p`` in the range of ``G_W`` and
``p^T G_W^+ p <= 1``). This module solves that exact equivalent: a second-order-cone
program over ``h = F x``, where ``G_W = F^T F`` (``F`` is ``r x k``, ``r = rank G_W``), one unit
ball per class, all classes in one vectorised program. The norm bound is active at the
optimum (the objective decreases along ``h``'s direction), so the relaxation ``||h|| <= 1``
of the sphere is exact and the class means are unit vectors; ``G_CE = X^T X`` is the
learnt class-mean Gram. When ``G_W`` is invariant under all permutations of the classes
(ETF, OF) only class 0 is solved and the others follow by permutation.

UFM+ (``nonnegative=True``, needs ``W`` itself): ``h >= 0`` entrywise in ``R^d``, a linear
constraint on ``h``, so each class's program is still convex and exact whenever its norm bound is
active (the reason says which classes it is not: then no unit ``h >= 0`` favours the class, e.g.
random signed prototypes with ``d < k``). The solver's point is refined by an active-set Newton
polish, and the rigorous bound is taken over the Gram of ``[h, e_1, ..., e_d]`` (coordinates, where
``h >= 0`` is a sign constraint), for signed and non-negative prototypes alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from .._io import jsonable
from .._validation import as_float_array, check_tau
from ..geometry import check_gram
from ..problem import UNIT_TOL
from ._program import Timer, check_solver_args, matrix_rank, solve_problem
from .result import verdict_line

__all__ = ["CELimitResult", "certify_ce_limit", "ce_geometry_pinned", "CE_GRADIENT_TOL"]


@dataclass(frozen=True)
class CELimitResult:
    """Solution of the CE-limit program.

    Attributes
    ----------
    p : (k, k) array
        Row ``y``: the optimal ``p = W^T h_y`` of class ``y``.
    values : (k,) array
        Optimal per-class cross-entropy.
    value : float
        ``sum_y values[y]`` (the CE limit of one sample per class).
    gram : (k, k) array
        Learnt class-mean Gram ``G_CE`` (unit diagonal).
    means : (r, k) array or None
        Optimal class means: in the coordinates of ``W`` for UFM+; otherwise a factor of ``gram``
        (its frame is free; None in the symmetric case when ``k > 200``).
    solver_status, seconds, certified, reason
        As in :class:`ncgeo.certify.CertificateResult`; ``certified`` means the
        unit-norm point's value is within ``CE_RTOL * value + CE_ATOL * k`` of the rigorous bound.
    lower_bound : float
        The rigorous Lagrangian bound of the Gram relaxation at the solver's point (the conic
        solver's value is only a hint, ``extra["solver_value"]``); ``-inf`` when none could be
        computed. The upper bound is ``value``, attained by the unit-norm means. ``gap``,
        ``relative_gap`` and ``upper_bound`` are properties, as in ``CertificateResult``.
    rank, dim : int or None
        Rank of ``G_CE`` and the dimension ``d`` of the prototypes (None with a Gram only).
    """

    p: np.ndarray
    values: np.ndarray
    value: float
    gram: np.ndarray
    means: np.ndarray | None
    solver_status: str
    seconds: float
    certified: bool
    reason: str
    lower_bound: float = float("nan")
    rank: int | None = None
    dim: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def upper_bound(self) -> float:
        return self.value

    @property
    def gap(self) -> float:
        return self.value - self.lower_bound

    @property
    def relative_gap(self) -> float:
        """``gap / max(1, |value|)``: CE values approach 0 (ETF prototypes at small tau), where
        the solver's accuracy is absolute."""
        return self.gap / max(abs(self.value), 1.0)

    def verdict(self) -> str:
        """One line, as :meth:`ncgeo.certify.CertificateResult.verdict`."""
        return verdict_line(self.certified, self.gap, self.reason, "CE-limit program", self.seconds)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready dictionary (:func:`ncgeo._io.jsonable`: arrays as lists, every
        non-finite number, inside arrays too, as ``None``)."""
        return jsonable({"p": self.p, "values": self.values, "value": self.value,
                         "gram": self.gram, "solver_status": self.solver_status,
                         "seconds": self.seconds, "certified": self.certified, "reason": self.reason,
                         "lower_bound": self.lower_bound, "upper_bound": self.upper_bound, "gap": self.gap,
                         "relative_gap": self.relative_gap, "rank": self.rank, "dim": self.dim})


def _fully_symmetric(G: np.ndarray, atol: float = 1e-9) -> bool:
    off = G[~np.eye(len(G), dtype=bool)]
    return off.size == 0 or float(np.ptp(off)) <= atol


def certify_ce_limit(W=None, tau: float = 0.1, nonnegative: bool = False, *, prototype_gram=None,
                     solver: str = "CLARABEL", time_limit: float | None = None,
                     use_symmetry: bool = True) -> CELimitResult:
    r"""Solve the CE-limit program of every class (module docstring).

    Parameters
    ----------
    W : (d, k) array, optional
        Prototypes (unit columns). Required for ``nonnegative``.
    tau : float
        Temperature (logit scale ``1/tau``).
    nonnegative : bool
        UFM+: class means ``h >= 0`` in ``R^d``.
    prototype_gram : (k, k) array, optional
        ``G_W`` instead of ``W``.
    solver, time_limit
        Conic solver (``"CLARABEL"`` default, ``"SCS"``) and time limit per attempt.
    use_symmetry : bool
        Solve one class only when ``G_W`` is invariant under all class permutations.

    Returns
    -------
    CELimitResult
        Failures (solver status, missing solver, time-out) give ``certified=False`` with
        the reason and NaN arrays, never an exception.
    """
    import cvxpy as cp

    timer = Timer()
    check_solver_args(solver, time_limit)  # before the program is built
    tau = check_tau(tau)
    if W is not None:
        Wm = as_float_array("W", W, ndim=2)
        G = Wm.T @ Wm
    elif prototype_gram is not None:
        Wm = None
        G = as_float_array("prototype_gram", prototype_gram, ndim=2)
    else:
        raise ValueError("W or prototype_gram is required")
    if G.shape[0] < 1:
        raise ValueError(f"there must be at least one prototype, got a Gram of shape {G.shape}")
    G = check_gram(G, "prototype_gram" if Wm is None else "W^T W", tol=UNIT_TOL, psd=Wm is None)[0]
    if nonnegative and Wm is None:
        raise ValueError("nonnegative=True needs the prototypes W themselves, not only their Gram")
    k = G.shape[0]
    symmetric = use_symmetry and _fully_symmetric(G) and not nonnegative and k > 1
    if nonnegative:
        F = Wm
    elif not symmetric:
        eig, vec = np.linalg.eigh((G + G.T) / 2)
        keep = eig > 1e-10 * max(1.0, eig.max())
        F = (vec[:, keep] * np.sqrt(eig[keep])).T  # (r, k), F^T F = G
    if symmetric:
        # class 0 only, p = (a, b, .., b): p^T G_W^+ p <= 1 splits on the all-ones vector
        # (eigenvalue 1 + (k-1) gamma of G_W) and its complement (eigenvalue 1 - gamma)
        gamma = float(G[0, 1])
        ab = cp.Variable(2)
        a_, b_ = ab[0], ab[1]
        comp_eig, ones_eig = 1 - gamma, 1 + (k - 1) * gamma
        terms, constraints = [], []
        for eig_value, component in ((comp_eig, (a_ - b_) * np.sqrt(1 - 1 / k)),
                                     (ones_eig, (a_ + (k - 1) * b_) / np.sqrt(k))):
            if eig_value > 1e-12:
                terms.append(component / np.sqrt(eig_value))
            else:
                constraints.append(component == 0)
        constraints.append(cp.norm(cp.hstack(terms), 2) <= 1)
        objective = cp.log_sum_exp(cp.hstack([a_ / tau, b_ / tau + np.log(k - 1)])) - a_ / tau
        problem = cp.Problem(cp.Minimize(objective), constraints)
        X = None
    else:
        X = cp.Variable((F.shape[0], k), nonneg=nonnegative)
        P = F.T @ X  # (k, k): column y is p of class y
        objective = cp.sum(cp.log_sum_exp(P / tau, axis=0)) - cp.trace(P) / tau
        problem = cp.Problem(cp.Minimize(objective), [cp.norm(X, 2, axis=0) <= 1])
    used, status, failure = solve_problem(problem, solver, time_limit=time_limit)
    if failure is not None:
        nan = np.full((k, k), np.nan)
        return CELimitResult(nan, np.full(k, np.nan), float("nan"), nan, None, status,
                             timer(), False, f"CE-limit program failed ({failure})")
    if symmetric:
        # class y's optimum is the class-0 optimum with classes 0 and y swapped:
        # p = (a - b) I + b J; with G_W = (1 - g) I + g J both are diagonal on the all-ones
        # vector and its complement, so G_CE = p G_W^+ p has the eigenvalues below.
        a, b = (float(v) for v in ab.value)
        p = np.full((k, k), b)
        np.fill_diagonal(p, a)
        comp = (a - b) ** 2 / (1 - gamma) if 1 - gamma > 1e-12 else 0.0
        ones_val = 1 + (k - 1) * gamma
        ones = ((a - b) + k * b) ** 2 / ones_val if ones_val > 1e-12 else 0.0
        gram = comp * (np.eye(k) - 1.0 / k) + ones / k
        means = None
        if k <= 200:
            eig, vec = np.linalg.eigh(gram)
            means = (vec * np.sqrt(np.maximum(eig, 0))).T
    else:
        Xv = np.asarray(X.value)
        norms = np.linalg.norm(Xv, axis=0)
        p = (F.T @ Xv).T
        gram = Xv.T @ Xv
        means = Xv
    if symmetric:
        norms = np.full(k, np.sqrt(max(comp, 0.0) * (1 - 1 / k) + ones / k))  # ||h_y||^2 = G_CE[y, y]
    # the norm bound is active at the optimum: rescale the solver's h to unit length (this
    # can only lower the objective) and check that it did not raise it
    scale = 1.0 / np.maximum(norms, 1e-300)
    p = p * scale[:, None]
    gram = gram * np.outer(scale, scale)
    if means is not None:
        means = means * (scale if means.shape[1] == k else 1.0)
    values = logsumexp(p / tau, axis=1) - np.diag(p) / tau
    solver_value = float(problem.value) * (k if symmetric else 1)
    if not nonnegative:  # refine the solver's point (accurate to ~1e-7 only) before the bound
        polished, values = _polish(p, values, G, tau, symmetric)
        if not np.array_equal(polished, p):  # the means' Gram h_y.h_c = p_y G_W^+ p_c of the refined point
            p, gram = polished, polished @ np.linalg.pinv(G, rcond=1e-10, hermitian=True) @ polished.T
            if means is not None:  # means of the refined point (a factor of its Gram; the frame is free)
                eig, vec = np.linalg.eigh((gram + gram.T) / 2)
                means = (vec * np.sqrt(np.maximum(eig, 0))).T
    else:
        means, p, values = _polish_nonnegative(Wm, means, values, tau)
        gram = means.T @ means
    lower, bound_info = _rigorous_lower(p, G, tau, symmetric, W=Wm if nonnegative else None,
                                        coordinates=means if nonnegative else None)
    value = float(values.sum())
    gap = value - lower if lower is not None else math.inf
    tolerance = CE_RTOL * max(value, 0.0) + CE_ATOL * k
    certified = bool(lower is not None and gap <= tolerance)
    if lower is None:
        reason = f"no rigorous bound: {bound_info['failure']}"
    elif certified:
        reason = (f"gap {max(gap, 0.0):.1e} <= {tolerance:.1e}: the unit-norm point attains the rigorous "
                  "Lagrangian bound of the Gram relaxation")
    else:
        reason = f"gap {gap:.1e} > {tolerance:.1e} between the unit-norm point and the rigorous bound"
        inside = np.flatnonzero(norms < 1 - 1e-3)
        if len(inside):  # the ball relaxation of the sphere is not exact for these classes
            reason += (f"; the norm bound ||h|| <= 1 is not active for class(es) {inside.tolist()} (the relaxation's "
                       f"optimum has ||h|| = {float(norms[inside].min()):.3g}), so the relaxation is not exact")
    return CELimitResult(p, values, value, gram, means, status, timer(), certified, reason,
                         lower_bound=-math.inf if lower is None else lower, rank=matrix_rank(gram),
                         dim=None if Wm is None else Wm.shape[0],
                         extra={"solver": used, "symmetric": symmetric, "solver_value": solver_value,
                                "bound": bound_info})


def _polish(p: np.ndarray, values: np.ndarray, G: np.ndarray, tau: float, symmetric: bool, iterations: int = 30):
    """Riemannian Newton on the unit sphere for ``h`` with ``p = F^T h`` (``G = F^T F``), per class
    (class 0 only when ``symmetric``; the others by swapping classes 0 and y); a row is replaced
    only when its value decreases."""
    eig, vec = np.linalg.eigh((G + G.T) / 2)
    keep = eig > 1e-10 * max(1.0, eig.max())
    F = (vec[:, keep] * np.sqrt(eig[keep])).T  # (r, k)
    p, values = p.copy(), values.copy()
    k = G.shape[0]
    for y in ([0] if symmetric else range(k)):
        h = np.linalg.lstsq(F.T, p[y], rcond=None)[0]
        row = F.T @ _sphere_newton(F, h / np.linalg.norm(h), y, tau, iterations)
        value = float(logsumexp(row / tau) - row[y] / tau)
        if value < values[y]:
            if symmetric:
                for c in range(k):
                    swapped = row.copy()
                    swapped[[0, c]] = swapped[[c, 0]]
                    p[c], values[c] = swapped, value
            else:
                p[y], values[y] = row, value
    return p, values


def _sphere_newton(F: np.ndarray, h: np.ndarray, y: int, tau: float, iterations: int) -> np.ndarray:
    """Riemannian Newton for ``min_h LSE(F^T h / tau) - (F^T h)_y / tau`` on the unit sphere from ``h``."""
    k = F.shape[1]
    eye = np.eye(len(h))
    for _ in range(iterations):
        # gradient F (s - e_y) / tau, Hessian F (diag s - s s^T) F^T / tau^2, s = softmax(F^T h / tau)
        q = F.T @ h / tau
        soft = np.exp(q - logsumexp(q))
        grad = F @ (soft - (np.arange(k) == y)) / tau
        hess = (F * soft) @ F.T / tau ** 2 - np.outer(F @ soft, F @ soft) / tau ** 2
        proj = eye - np.outer(h, h)
        rgrad = proj @ grad
        if np.linalg.norm(rgrad) < 1e-15:
            break
        rhess = proj @ (hess - float(h @ grad) * eye) @ proj
        step = -np.linalg.lstsq(rhess + np.outer(h, h), rgrad, rcond=None)[0]
        h = (h + step) / np.linalg.norm(h + step)
    return h


def _polish_nonnegative(W: np.ndarray, means: np.ndarray, values: np.ndarray, tau: float,
                        zero: float = 1e-6, iterations: int = 30):
    """UFM+ refinement of the solver's unit class means ``(d, k)`` (accurate to ~1e-7 only), per class,
    by an active set: entries below ``zero`` times the largest start at 0; Riemannian Newton runs on the
    sphere of the other coordinates (:func:`_sphere_newton` with ``F = W[support]``); a coordinate whose
    Newton value turns negative leaves the support, and a zero coordinate whose gradient is negative
    (a violated KKT sign) enters it, at most ``2 d`` rounds. The refined ``h`` replaces the solver's
    when its value is not larger. Returns ``(means, p, values)``."""
    means, values = means.copy(), values.copy()
    d, k = means.shape
    for y in range(k):
        h = np.clip(means[:, y], 0.0, None)
        support = h > zero * h.max()
        for _ in range(2 * d):
            start = np.where(support, np.maximum(h, 1e-3), 0.0)[support]
            refined = _sphere_newton(W[support], start / np.linalg.norm(start), y, tau, iterations)
            if refined.min() < 0:  # leave the face: drop the negative coordinates
                support[np.flatnonzero(support)[refined < 0]] = False
                continue
            h = np.zeros(d)
            h[support] = refined
            q = W.T @ h / tau
            grad = W @ (np.exp(q - logsumexp(q)) - (np.arange(k) == y)) / tau
            outside = np.flatnonzero(~support)
            if not len(outside) or grad[outside].min() >= -1e-12:
                break
            support[outside[np.argmin(grad[outside])]] = True
        row = W.T @ h
        value = float(logsumexp(row / tau) - row[y] / tau)
        if h.min() >= 0 and np.linalg.norm(h) > 0 and value <= values[y]:
            means[:, y], values[y] = h, value
    return means, (W.T @ means).T, values


#: Accepted gap of the CE-limit certificate: ``CE_RTOL * value + CE_ATOL * k`` (the CE values are the
#: excess over the floor 0 of the limit; docs/theory.md 5.1).
CE_RTOL = 1e-6
CE_ATOL = 1e-12


def _rigorous_lower(p: np.ndarray, G: np.ndarray, tau: float, symmetric: bool,
                    W: np.ndarray | None = None, coordinates: np.ndarray | None = None):
    r"""Sum over classes of the Lagrangian bound (:mod:`ncgeo.certify.lagrangian`) of the relaxation
    ``min CE_y(Z_{0P}) s.t. Z = [[1, p^T], [p, G_W]] >= 0`` at the solver's (rescaled) ``p``.

    ``CE_y`` is the one torch objective (:func:`~ncgeo.certify.gram_objective.grouped_excess`) of one
    sample of class ``y`` with ``n_w = 1`` and no other sample: ``log sum_c e^{(Z_0c - Z_0y)/tau}``. With
    ``symmetric`` (``G_W`` invariant under all class permutations) the classes' programs are
    permutations of class 0's and its bound counts ``k`` times.

    UFM+ (any prototypes ``W``, ``d x k``): ``h >= 0`` is not a constraint on the Gram of ``[h, W]`` (for
    ``W >= 0`` it implies ``h.w >= 0``, a weaker relaxation, tight only for an orthogonal frame), so the
    bound is taken in coordinates instead, over ``Z = [[1, h^T], [h, I_d]] >= 0`` with
    ``Z_0E >= 0`` (``h >= 0``) at ``h`` = the class's column of ``coordinates`` (``d x k``); ``p = W^T h``
    is linear in ``Z``, so the objective stays convex, and ``Z >= 0`` is ``||h|| <= 1``: this relaxation
    is the CE-limit program itself, hence exact. Returns ``(lower or None, summary)``."""
    from .gram_objective import grouped_excess
    from .lagrangian import lagrangian_bound

    k = G.shape[0]
    total, worst, failure, margin = 0.0, math.inf, None, 0.0
    lifted = coordinates is not None
    n = 1 + (W.shape[0] if lifted else k)
    mask = None
    if lifted:
        mask = np.zeros((n, n), dtype=bool)
        mask[0, 1:] = mask[1:, 0] = True
    if lifted:  # Z (lifted) -> the Gram of [h, W]: M^T Z M with M = diag(1, W)
        M = torch.zeros((n, 1 + k), dtype=torch.float64)
        M[0, 0] = 1.0
        M[1:, 1:] = torch.as_tensor(np.asarray(W, dtype=np.float64))
    for y in ([0] if symmetric else range(k)):
        if lifted:
            h = np.asarray(coordinates[:, y], dtype=np.float64)
            Z0 = np.block([[np.ones((1, 1)), h[None, :]], [h[:, None], np.eye(n - 1)]])
        else:
            Z0 = np.block([[np.ones((1, 1)), p[y][None, :]], [p[y][:, None], G]])
        Zt = torch.tensor(Z0, requires_grad=True)
        value = grouped_excess(M.T @ Zt @ M if lifted else Zt, torch.ones(1, dtype=torch.float64),
                               torch.ones(1, dtype=torch.float64), np.array([y]), 1.0, tau)
        (grad,) = torch.autograd.grad(value.excess, Zt)
        g = grad.numpy()
        bound = lagrangian_bound(Z0, (g + g.T) / 2, float(value.excess.detach()), 0.0, value.scale, m=1,
                                 lo=np.ones(1), hi=np.ones(1), G_W=np.eye(n - 1) if lifted else G, sign_mask=mask)
        if bound.lower is None:
            failure = bound.failure
            break
        total += bound.lower * (k if symmetric else 1)
        worst = min(worst, bound.lambda_min)
        margin += bound.margin * (k if symmetric else 1)
    info = {"lambda_min": worst, "margin": margin, "failure": failure, "classes": 1 if symmetric else k,
            "form": "coordinates (h >= 0)" if lifted else "prototype Gram"}
    return (None if failure else total), info


#: The CE gradient at a class optimum counts as non-zero above this times ``||W||_2 / tau``.
CE_GRADIENT_TOL = 1e-6


def ce_geometry_pinned(result: CELimitResult, W: np.ndarray, tau: float, nonnegative: bool = False) -> tuple[bool, str]:
    r"""Whether the certified CE-limit optimum is unique: ``(pinned, one line)``.

    Per class ``f(h) = LSE(W^T h / tau) - w_y . h / tau`` is convex and all its minimisers over the
    convex set ``K`` (the unit ball; ball and orthant for UFM+) share one gradient ``g`` (Mangasarian
    1988). When ``g != 0`` (``(-g)_+ != 0`` for UFM+) every minimiser also minimises ``g . h`` over
    ``K``, whose minimiser ``-g / ||g||`` (``(-g)_+ / ||(-g)_+||``) is unique; the sphere's optima are
    among the ball's (the certificate: equal values), so the class means and ``G_CE`` are unique.
    ``g = W (softmax(p / tau) - e_y) / tau`` at the program's ``p``; non-zero means above
    :data:`CE_GRADIENT_TOL` ``||W||_2 / tau`` (a stated numerical decision)."""
    if not result.certified:
        return False, "geometry not certified: the CE limit is not certified"
    W = np.asarray(W, dtype=float)
    p = np.asarray(result.p, dtype=float) / tau
    pi = np.exp(p - p.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    g = W @ (pi - np.eye(W.shape[1])).T / tau  # (d, k): the gradient of each class
    if nonnegative:
        g = np.maximum(-g, 0.0)
    smallest = float(np.linalg.norm(g, axis=0).min())
    threshold = CE_GRADIENT_TOL * float(np.linalg.norm(W, 2)) / tau
    if smallest > threshold:
        return True, f"geometry certified (unique CE optimum): smallest class gradient {smallest:.2e}"
    return False, (f"loss certified, geometry not pinned: a class gradient is {smallest:.1e} <= {threshold:.1e} "
                   "(the norm constraint may be inactive)")
