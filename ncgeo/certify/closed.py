r"""Closed-form certificates at ETF / OF collapse (THEORY.md section 5, "Closed forms").

For a full batch with balanced classes (``n`` per class) the optimum of the set-ups listed in
:func:`ncgeo.closed_form.closed_form_for_setup` is a symmetric collapse whose loss has a
closed form; with ETF prototypes and every anchor at the ETF

.. math::

    \ell = \log\Big((n-1) e^{1/\tau} + n (k-1) e^{-1/((k-1)\tau)}
           + n_w \big(e^{1/\tau} + (k-1) e^{-1/((k-1)\tau)}\big)\Big) - \frac{1}{\tau}

and the analogous expression for an orthogonal frame (cross terms ``e^0``). The closed form
is the loss of a feasible point (the collapsed configuration, realisable in ``d >= k - 1``
for the ETF and ``d >= k`` for the OF): an **upper bound**. :func:`certify_closed_form`
pairs it with the lower bound of the orbit-reduced relaxation (a program with a handful of
variables for balanced classes), so the result says whether the closed form *is* the
global optimum, never just assumes it.
"""

from __future__ import annotations

from .._validation import as_float_array
from ..classes import check_class_sizes
from ..closed_form import closed_form_for_setup
from ._common import check_dim
from ._program import Timer
from .orbit import solve_orbit
from .result import DEFAULT_RTOL, CertificateResult, make_result

__all__ = ["certify_closed_form"]


def certify_closed_form(class_sizes, prototypes=None, n_w: float = 0.0, tau: float = 0.1, *,
                        nonnegative: bool = False, prototypes_as_anchors: bool = False,
                        dim: int | None = None, rtol: float = DEFAULT_RTOL) -> CertificateResult:
    r"""Certify that the ETF / OF collapse of a balanced full-batch set-up is the global optimum.

    Parameters
    ----------
    class_sizes : (k,) ints
        Samples per class; a closed form exists only when they are all equal.
    prototypes : (d, k) array, optional
        Prototypes ``W``: Gram equal to the simplex-ETF Gram (UFM), or non-negative with
        Gram ``I`` (UFM+), when ``n_w > 0``.
    n_w, tau : float
        Prototype multiplicity and temperature.
    nonnegative : bool
        UFM+ (the OF collapse) instead of UFM (the ETF collapse).
    prototypes_as_anchors : bool
        Prototype copies are anchors too (the closed form then has the prototype-anchor terms).
    dim : int, optional
        Embedding dimension ``d`` (default: rows of ``W``, else ``k``).
    rtol : float
        Relative gap accepted as certified.

    Returns
    -------
    CertificateResult
        ``method="closed-form"``; ``upper_bound`` = the closed-form loss, ``lower_bound`` = the
        orbit-reduced relaxation optimum, ``rank`` = ``k - 1`` (ETF) or ``k`` (OF), and
        ``solution`` with ``geometry`` and ``closed_form``. Set-ups without a closed form
        give ``certified=False`` with that reason (no exception).
    """
    timer = Timer()
    sizes = check_class_sizes(class_sizes)
    k = len(sizes)
    if prototypes is not None:
        prototypes = as_float_array("prototypes", prototypes, ndim=2)
    dim = check_dim(dim)
    if dim is None:
        dim = prototypes.shape[0] if prototypes is not None else k
    known = closed_form_for_setup(sizes, prototypes if n_w > 0 else None, n_w, tau, nonnegative=nonnegative,
                                  prototypes_as_anchors=prototypes_as_anchors)
    if known is None:
        return make_result(None, None, method="closed-form", status="n/a", seconds=timer(), rtol=rtol, dim=dim,
                           failure="no closed form for this set-up (needs a full batch, balanced classes and, "
                                   "with n_w > 0, ETF prototypes for UFM or non-negative OF prototypes for UFM+)")
    value, geometry = known
    rank = k - 1 if geometry == "etf" else k
    bound = solve_orbit(sizes, prototypes if n_w > 0 else None, n_w, tau, nonnegative=nonnegative,
                        prototypes_as_anchors=prototypes_as_anchors, dim=dim, rtol=rtol)
    solution = {"geometry": geometry, "closed_form": value, "relaxation": bound.reason}
    failure = None if bound.lower_bound > float("-inf") else f"no lower bound: {bound.reason}"
    return make_result(bound.lower_bound if failure is None else None, value, method="closed-form",
                       status=bound.solver_status, seconds=timer(), rtol=rtol, rank=rank, dim=dim,
                       realisable=rank <= dim, failure=failure, solution=solution)
