"""Unconstrained-features model (UFM, UFM+) of SCL with prototypes (THEORY.md section 3).

* :func:`make_batches`, :func:`ufm_objective`: batching schemes and the objective they define;
* :func:`solve_ufm`: Riemannian L-BFGS (or reshuffled Adam epochs) on the product of
  (non-negative) spheres, returning a :class:`UFMResult`;
* :func:`load_npz`: read a solution written by :meth:`UFMResult.save_npz`.
"""

from .batching import BATCHING_SCHEMES, make_batches, ufm_objective
from .optimiser import riemannian_lbfgs, stationarity_residual
from .result import SavedSolution, UFMResult, load_npz
from .solver import solve_ufm

__all__ = [
    "BATCHING_SCHEMES",
    "make_batches",
    "ufm_objective",
    "solve_ufm",
    "UFMResult",
    "SavedSolution",
    "load_npz",
    "riemannian_lbfgs",
    "stationarity_residual",
]
