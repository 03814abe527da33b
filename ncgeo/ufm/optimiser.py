r"""Riemannian L-BFGS on a product of unit spheres, optionally restricted to ``h >= 0``.

The variable ``X`` is ``(N, d)`` with unit rows. For the sphere (UFM), the Riemannian
gradient of ``f`` at ``X`` is the row-wise projection ``g_i - (g_i . x_i) x_i`` of the
Euclidean gradient ``g``; steps are retracted by renormalising the rows.

For the non-negative part of the sphere (UFM+) the iterates stay feasible by the
projection ``x <- max(x, 0) / ||max(x, 0)||``; a step that would zero a whole row is
rejected (shortened), so no row can die. Stationarity is measured by the KKT residual
of ``min f s.t. ||x_i|| = 1, x_i >= 0``: with ``lambda_i = g_i . x_i``,

.. math::

    r_{ij} = g_{ij} - \lambda_i x_{ij} \quad (x_{ij} > 0), \qquad
    r_{ij} = \min(g_{ij}, 0) \quad (x_{ij} = 0),

which is zero exactly at KKT points (multipliers ``mu_ij = g_ij >= 0`` on the zero
entries). Directions are L-BFGS directions on the free coordinates (two-metric
projection: coordinates at zero with ``g_ij > 0`` are held at zero).

The line search is Armijo backtracking; once decreases fall below the round-off of
``f``, a step is accepted when it lowers the gradient norm instead, so the gradient norm
can be driven to ``1e-9`` and below in float64 even when ``f`` itself is large.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["OptimiserOutput", "riemannian_lbfgs", "stationarity_residual", "retract"]

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class OptimiserOutput:
    """Final point, value, KKT/Riemannian gradient norm, iterations, history, stopping reason."""

    x: torch.Tensor
    value: float
    grad_norm: float
    iterations: int
    evaluations: int
    reason: str
    history: list[float] = field(default_factory=list)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=1, keepdim=True)


def stationarity_residual(x: torch.Tensor, grad: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    """Riemannian gradient (sphere) or KKT residual (non-negative sphere), shape of ``x``."""
    tangent = grad - _row_dot(grad, x) * x
    if not nonnegative:
        return tangent
    return torch.where(x > 0, tangent, grad.clamp(max=0.0))


def retract(x: torch.Tensor, nonnegative: bool) -> torch.Tensor | None:
    """Project rows back to the (non-negative) sphere; ``None`` if a row would be zero."""
    if nonnegative:
        x = x.clamp(min=0.0)
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms <= torch.finfo(x.dtype).tiny * 1e6).any()):
        return None
    return x / norms


def _free_mask(x: torch.Tensor, grad: torch.Tensor, nonnegative: bool) -> torch.Tensor | None:
    if not nonnegative:
        return None
    return (x > 0) | (grad < 0)


def _project(v: torch.Tensor, x: torch.Tensor, free: torch.Tensor | None) -> torch.Tensor:
    if free is not None:
        v = v * free
    return v - _row_dot(v, x) * x


def riemannian_lbfgs(objective: Objective, x0: torch.Tensor, *, nonnegative: bool = False,
                     grad_tol: float = 1e-9, max_iterations: int = 10_000, memory: int = 20,
                     time_limit: float | None = None,
                     callback: Callable[[int, float, float], None] | None = None) -> OptimiserOutput:
    """Minimise ``objective`` over unit rows ``x`` (and ``x >= 0`` when ``nonnegative``).

    Parameters
    ----------
    objective : callable
        ``x -> (value, euclidean_gradient)`` with ``value`` a 0-d tensor.
    x0 : (N, d) tensor
        Feasible start (unit rows; non-negative if ``nonnegative``).
    nonnegative : bool
        Restrict to the non-negative orthant (UFM+).
    grad_tol : float
        Stop when the Frobenius norm of :func:`stationarity_residual` is ``<= grad_tol``.
    max_iterations, memory : int
        Iteration cap and number of stored L-BFGS pairs.
    time_limit : float, optional
        Wall-clock seconds after which to stop.
    callback : callable, optional
        ``callback(iteration, value, grad_norm)`` after every iteration.
    """
    start = time.perf_counter()
    x = x0
    value_t, grad = objective(x)
    value = float(value_t)
    evaluations = 1
    eps = torch.finfo(x.dtype).eps
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    history = [value]
    residual = stationarity_residual(x, grad, nonnegative)
    grad_norm = float(residual.norm())
    iteration = 0
    reason = "maximum iterations reached"
    while True:
        if grad_norm <= grad_tol:
            reason = "gradient norm below tolerance"
            break
        if iteration >= max_iterations:
            break
        if time_limit is not None and time.perf_counter() - start > time_limit:
            reason = "time limit reached"
            break
        free = _free_mask(x, grad, nonnegative)
        direction_grad = _project(grad, x, free)
        direction = _two_loop(direction_grad, pairs, x, free)
        slope = float((direction * direction_grad).sum())
        if not slope < 0:
            pairs.clear()
            direction = _two_loop(direction_grad, pairs, x, free)
            slope = float((direction * direction_grad).sum())
        noise = 100 * eps * max(1.0, abs(value))
        step, accepted = 1.0, None
        for _ in range(40):
            candidate = retract(x + step * direction, nonnegative)
            if candidate is not None:
                new_value_t, new_grad = objective(candidate)
                evaluations += 1
                new_value = float(new_value_t)
                if new_value <= value + 1e-4 * step * slope:
                    accepted = candidate
                elif new_value <= value + noise:
                    new_norm = float(stationarity_residual(candidate, new_grad, nonnegative).norm())
                    if new_norm < grad_norm:
                        accepted = candidate
                if accepted is not None:
                    break
            step *= 0.5
        if accepted is None:
            if pairs:
                pairs.clear()
                continue
            reason = "line search failed (round-off level reached)"
            break
        new_free = _free_mask(accepted, new_grad, nonnegative)
        s = _project(accepted - x, accepted, new_free)
        # y = grad_R(new) - transport(grad_R(old)); transporting the Riemannian (not the
        # Euclidean) gradient keeps the curvature term -(x.g) s of the sphere
        y = _project(new_grad, accepted, new_free) - _project(_project(grad, x, None), accepted, new_free)
        sy = float((s * y).sum())
        if sy > 1e-12 * float(s.norm()) * float(y.norm()) and sy > 0:
            pairs.append((s, y, sy))
            if len(pairs) > memory:
                pairs.pop(0)
        x, value, grad = accepted, new_value, new_grad
        residual = stationarity_residual(x, grad, nonnegative)
        grad_norm = float(residual.norm())
        iteration += 1
        history.append(value)
        if callback is not None:
            callback(iteration, value, grad_norm)
    return OptimiserOutput(x=x, value=value, grad_norm=grad_norm, iterations=iteration,
                           evaluations=evaluations, reason=reason, history=history)


def _two_loop(grad: torch.Tensor, pairs, x: torch.Tensor, free) -> torch.Tensor:
    """L-BFGS direction ``-H grad`` with the stored pairs projected to the current tangent space."""
    if not pairs:
        norm = float(grad.norm())
        return -grad / max(1.0, norm)
    projected = [(_project(s, x, free), _project(y, x, free)) for s, y, _ in pairs]
    q = grad.clone()
    alphas = []
    rhos = []
    for s, y in reversed(projected):
        sy = float((s * y).sum())
        rho = 1.0 / sy if sy > 0 else 0.0
        alpha = rho * float((s * q).sum())
        q = q - alpha * y
        alphas.append(alpha)
        rhos.append(rho)
    s_last, y_last = projected[-1]
    yy = float((y_last * y_last).sum())
    gamma = float((s_last * y_last).sum()) / yy if yy > 0 else 1.0
    r = q * max(gamma, 0.0) if gamma > 0 else q
    for (s, y), alpha, rho in zip(projected, reversed(alphas), reversed(rhos)):
        beta = rho * float((y * r).sum())
        r = r + (alpha - beta) * s
    return -_project(r, x, free)
