"""ncgeo: neural-collapse geometry of supervised-contrastive learning with fixed prototypes.

Submodules: :mod:`ncgeo.geometry` (prototype constructors, target Grams),
:mod:`ncgeo.losses` (SCL with prototypes, fixed-classifier CE), :mod:`ncgeo.metrics`
(NC metrics, Gram distances), :mod:`ncgeo.ufm` (the UFM solver), :mod:`ncgeo.closed_form`
(collapsed-configuration loss, ETF/OF closed forms) and :mod:`ncgeo.testing` (assertion helpers).
"""

from . import geometry, losses, metrics, testing
from .geometry import (
    etf_gram,
    load_prototypes,
    orthogonal_frame,
    orthogonal_frame_gram,
    prototypes_from_gram,
    random_prototypes,
    simplex_etf,
    spherical_code,
    named_prototypes,
)
from .losses import fixed_classifier_cross_entropy, scl_prototype_loss
from .metrics import geometry_metrics, gram_distance
from . import closed_form, ufm  # noqa: E402  (after metrics: ufm builds on it)
from .problem import UFMProblem
from .ufm import solve_ufm

__version__ = "0.1.0"

__all__ = [
    "geometry",
    "losses",
    "metrics",
    "testing",
    "etf_gram",
    "orthogonal_frame_gram",
    "simplex_etf",
    "orthogonal_frame",
    "random_prototypes",
    "prototypes_from_gram",
    "load_prototypes",
    "spherical_code",
    "named_prototypes",
    "scl_prototype_loss",
    "fixed_classifier_cross_entropy",
    "geometry_metrics",
    "gram_distance",
    "closed_form",
    "ufm",
    "solve_ufm",
    "UFMProblem",
]
