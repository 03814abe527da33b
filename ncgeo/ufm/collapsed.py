"""The collapsed problem: the UFM (THEORY.md section 3) restricted to within-class collapse,
``h_i = m_{y_i}``, i.e. :func:`ncgeo.closed_form.collapsed_loss` minimised over the k unit
class directions, by Riemannian L-BFGS on the product of (non-negative) spheres.

The solver starts from its optimum (``init="collapsed"``) and the certificates polish
realised class means with it; both call :func:`minimise_collapsed`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..closed_form import collapsed_loss
from .optimiser import OptimiserOutput, riemannian_lbfgs

__all__ = ["minimise_collapsed"]


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
