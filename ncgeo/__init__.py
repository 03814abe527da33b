"""ncgeo: neural-collapse geometry of supervised-contrastive learning with fixed prototypes.

Submodules: :mod:`ncgeo.geometry` (prototype constructors, target Grams),
:mod:`ncgeo.losses` (SCL with prototypes, fixed-classifier CE), :mod:`ncgeo.metrics`
(NC metrics, Gram distances), :mod:`ncgeo.ufm` (the UFM solver), :mod:`ncgeo.closed_form`
(collapsed-configuration loss, ETF/OF closed forms) and :mod:`ncgeo.testing` (assertion helpers).
"""

import importlib

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

#: Where each public name lives: imported on first use (PEP 562), so that ``import ncgeo._click`` (the
#: command line's helpers) or ``ncgeo.__version__`` does not load torch.
_NAMES = {
    "etf_gram": "geometry", "orthogonal_frame_gram": "geometry", "simplex_etf": "geometry",
    "orthogonal_frame": "geometry", "random_prototypes": "geometry", "prototypes_from_gram": "geometry",
    "load_prototypes": "geometry", "spherical_code": "geometry", "named_prototypes": "geometry",
    "scl_prototype_loss": "losses", "fixed_classifier_cross_entropy": "losses",
    "geometry_metrics": "metrics", "gram_distance": "metrics", "solve_ufm": "ufm", "UFMProblem": "problem",
}
_SUBMODULES = ("geometry", "losses", "metrics", "testing", "closed_form", "ufm", "problem", "certify",
               "classes", "statistics", "plotting", "progress")


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
