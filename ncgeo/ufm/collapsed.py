"""The collapsed problem: the UFM (docs/theory.md section 3) restricted to within-class collapse,
``h_i = m_{y_i}``, i.e. :func:`ncgeo.closed_form.collapsed_loss` minimised over the k unit
class directions, by Riemannian L-BFGS on the product of (non-negative) spheres.

The solver starts from its optimum (``init="collapsed"``) and the certificates polish
realised class means with it; both call :func:`minimise_collapsed`. :func:`solve_collapsed` is
the solver's collapsed path (``method="collapsed"``): relaxation, polish and certificate in the
class space, for any ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..closed_form import collapsed_loss
from .optimiser import OptimiserOutput, riemannian_lbfgs, stationarity_residual

__all__ = ["minimise_collapsed", "solve_collapsed", "certify_collapsed", "CollapsedSolution"]


def minimise_collapsed(rows: torch.Tensor, class_sizes: Sequence[float], prototypes, n_w: float, tau: float, *,
                       nonnegative: bool, prototypes_as_anchors: bool, grad_tol: float,
                       max_iterations: int, single_thread: bool = False) -> OptimiserOutput:
    """Minimise the collapsed loss from the unit class directions ``rows`` ``(k, d)``.

    ``prototypes`` is a ``(d, k')`` tensor or ``None``; ``class_sizes`` may be real (the
    collapsed loss takes log-weights). ``single_thread`` runs with one torch thread: the
    kernels are k x k, where more threads only cost synchronisation. Returns the
    :func:`ncgeo.ufm.riemannian_lbfgs` result, whose ``x`` holds the optimum's rows.
    """
    def objective(x):
        x = x.detach().requires_grad_(True)
        value = collapsed_loss(x.T, class_sizes, prototypes, n_w, tau, prototypes_as_anchors=prototypes_as_anchors)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad

    threads = torch.get_num_threads()
    if single_thread:
        torch.set_num_threads(1)
    try:
        return riemannian_lbfgs(objective, rows, nonnegative=nonnegative, grad_tol=grad_tol,
                                max_iterations=max_iterations)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the collapsed path

#: Without orbit symmetry, the ``2k x 2k`` reduced program is solved only up to this many classes
#: (its cost grows like k^6: 45 s at k = 50).
REDUCED_PATH_MAX_K = 20


@dataclass(frozen=True)
class CollapsedSolution:
    """Output of :func:`solve_collapsed`: class means, loss, optimiser facts, certificate."""

    means: np.ndarray  # (d, k) unit columns
    loss: float
    grad_norm: float
    iterations: int
    history: list
    reason: str
    relaxation: str
    certificate: Any
    certificate_note: str


def _relaxation(problem, solver_options: dict):
    """The orbit program when the prototype Gram allows it, else the reduced one for small k;
    ``(name, CertificateResult or None)``. Only the public :mod:`ncgeo.certify` entry points."""
    from ..certify import solve_orbit, solve_reduced

    distinct = len(np.unique(problem.class_sizes))
    if distinct == problem.num_classes and problem.num_classes > REDUCED_PATH_MAX_K:
        return "none", None  # one orbit per class: the orbit program is the 2k x 2k one
    try:
        return "orbit", solve_orbit(problem, **solver_options)
    except ValueError:  # the prototype Gram is not invariant under permutations of equal-size classes
        pass
    if problem.num_classes <= REDUCED_PATH_MAX_K:
        return "reduced", solve_reduced(problem, **solver_options)
    return "none", None


def _start_rows(problem, relaxed, generator: torch.Generator) -> torch.Tensor:
    """``(k, d)`` unit rows: the relaxation's realised means, else the prototypes, else a simplex
    ETF (or random rows when ``d < k - 1``); non-negative for UFM+."""
    k, d = problem.num_classes, problem.dim
    means = None if relaxed is None else relaxed.solution.get("means")
    if means is not None and np.shape(means) == (d, k):
        start = np.array(means, dtype=np.float64).T
    elif problem.prototypes is not None and problem.n_w > 0:
        start = np.array(problem.prototypes, dtype=np.float64).T
    elif d >= k - 1:
        from ..geometry import simplex_etf

        start = simplex_etf(k, d).T
    else:
        start = torch.randn(k, d, generator=generator, dtype=torch.float64).numpy()
    if problem.nonnegative:
        clipped = np.clip(start, 0.0, None)
        dead = np.linalg.norm(clipped, axis=1) == 0
        clipped[dead] = np.abs(start[dead])
        start = clipped
    x = torch.as_tensor(start)
    return x / x.norm(dim=1, keepdim=True)


def certify_collapsed(problem, means: np.ndarray, relaxed, relaxation: str, rtol: float, atol: float):
    """Certify the collapsed candidate ``h_i = m_{y_i}`` (the ONE place that does it).

    The dual certificate from the class means and counts (:func:`ncgeo.certify.collapsed_certificate`:
    ``O(k^2 d + k^3)``, the orbit structure for large ``k``; no ``N x d`` ``H``, whatever ``N``).
    When it does not certify, the class-space relaxation's rigorous lower bound (a bound on the
    UFM optimum, so on any candidate) is tried against the candidate's loss, unless it lies above
    that loss (an inaccurate conic solve) or below the dual bound. Returns
    ``(CertificateResult, note)``.
    """
    from ..certify import collapsed_certificate
    from ..certify.result import contradicts, make_result

    dual = collapsed_certificate(problem, means, rtol=rtol, atol=atol)
    loss = dual.upper_bound  # the means' loss, as the certificate computes it
    note = (f"dual certificate on the k = {problem.num_classes} class means "
            f"({dual.solution.get('structure', 'dense')} structure)")
    if dual.certified or relaxed is None or not np.isfinite(relaxed.lower_bound):
        return dual, note
    lower = relaxed.lower_bound
    if contradicts(lower, loss, dual.floor) or (np.isfinite(dual.lower_bound) and lower <= dual.lower_bound):
        return dual, note
    result = make_result(lower, loss, floor=dual.floor, anchors=problem.num_anchors(), method=relaxation,
                         status=relaxed.solver_status, seconds=dual.seconds + relaxed.seconds, dim=problem.dim,
                         rtol=rtol, atol=atol, solution=dict(relaxed.solution, dual_lower_bound=dual.lower_bound),
                         attempts=[dual.attempt(), relaxed.attempt()])
    return result, f"the {relaxation} relaxation's rigorous bound (the dual one is lower: {dual.reason})"


def solve_collapsed(problem, *, grad_tol: float = 1e-10, max_iterations: int = 5000, seed: int = 0,
                    certify: bool = True, solver: str = "CLARABEL", rtol: float | None = None,
                    atol: float | None = None, single_thread: bool = True) -> CollapsedSolution:
    r"""The full-batch UFM solved in the class space; nothing of size ``N x N`` or ``N x d`` is formed.

    1. The orbit program (when the prototype Gram is invariant under permutations of
       equal-size classes) or, for ``k <= REDUCED_PATH_MAX_K``, the reduced ``2k x 2k`` one
       (:func:`ncgeo.certify.solve_orbit`, :func:`ncgeo.certify.solve_reduced`).
    2. Its realised collapsed optimum (else the prototypes, else a simplex ETF) polished on the
       collapsed loss :math:`\sum_c n_c \ell_c(M)` (:func:`minimise_collapsed`) to ``grad_tol``.
    3. :func:`certify_collapsed`. The collapsed point is stationary for the full problem
       (the objective is symmetric within a class) but can be a saddle, which the certificate
       then reports.

    ``grad_norm`` is the Frobenius norm of the full objective's Riemannian gradient (UFM+: KKT
    residual) at ``H = M[:, y]^T``: every sample of class ``c`` carries ``1/n_c`` of the
    collapsed gradient of ``m_c``, so it is ``sqrt(sum_c |r_c|^2 / n_c)``.
    """
    from ..certify import DEFAULT_ATOL, DEFAULT_RTOL

    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    sizes = problem.class_sizes
    W_t = None if problem.prototypes is None or problem.n_w == 0 else torch.tensor(np.array(problem.prototypes))
    name, relaxed = _relaxation(problem, {"solver": solver, "rtol": rtol, "atol": atol})
    x0 = _start_rows(problem, relaxed, torch.Generator().manual_seed(seed))
    out = minimise_collapsed(x0, sizes.tolist(), W_t, problem.n_w, problem.tau, nonnegative=problem.nonnegative,
                             prototypes_as_anchors=problem.prototypes_as_anchors, grad_tol=grad_tol,
                             max_iterations=max_iterations, single_thread=single_thread)
    x = out.x.detach().requires_grad_(True)
    value = collapsed_loss(x.T, sizes.tolist(), W_t, problem.n_w, problem.tau,
                           prototypes_as_anchors=problem.prototypes_as_anchors)
    (grad,) = torch.autograd.grad(value, x)
    residual = stationarity_residual(x.detach(), grad, problem.nonnegative)
    grad_norm = float(torch.sqrt(((residual ** 2).sum(dim=1) / torch.tensor(np.array(sizes))).sum()))
    means = x.detach().numpy().T.copy()
    loss = float(value.detach())
    certificate, note = (None, "not certified: certification was switched off")
    if certify:
        certificate, note = certify_collapsed(problem, means, relaxed, name, rtol, atol)
        if certificate is not None and not certificate.certified:
            note += ("; the collapsed point is stationary but may be a saddle (collapse need not be optimal, "
                     "e.g. under exp imbalance with prototypes): try method 'lbfgs' from random starts")
    return CollapsedSolution(means=means, loss=loss, grad_norm=grad_norm, iterations=out.iterations,
                             history=list(out.history), reason=out.reason, relaxation=name,
                             certificate=certificate, certificate_note=note)
