"""Unconstrained-features model (UFM, UFM+) of SCL with prototypes (docs/theory.md section 3).

* :func:`make_batches`, :func:`ufm_objective`: batching schemes and the objective they define;
* :func:`solve_ufm`: a :class:`ncgeo.UFMProblem` solved by Riemannian L-BFGS (streamed in row
  blocks beyond memory), in the class space (the collapsed path, any N) or by reshuffled Adam
  epochs, returning a :class:`UFMResult`;
* :func:`load_npz`: read a solution written by :meth:`UFMResult.save_npz`.
"""

from .batching import BATCHING_SCHEMES, make_batches, scheme_problem, ufm_objective
from .optimiser import riemannian_lbfgs, stationarity_residual
from .result import SavedSolution, UFMResult, load_npz
from .solver import solve_ufm
from .streaming import streamed_loss_and_grad

__all__ = [
    "BATCHING_SCHEMES",
    "make_batches",
    "scheme_problem",
    "streamed_loss_and_grad",
    "ufm_objective",
    "solve_ufm",
    "UFMResult",
    "SavedSolution",
    "load_npz",
    "riemannian_lbfgs",
    "stationarity_residual",
]
