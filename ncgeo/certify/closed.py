r"""Closed-form certificates at ETF / OF collapse (docs/theory.md section 5, "Closed forms").

For a full batch with balanced classes (``n`` per class) the optimum of the set-ups listed in
:func:`ncgeo.closed_form.closed_form_for_problem` is a symmetric collapse whose loss has a
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


from ..closed_form import closed_form_for_problem
from ..problem import UFMProblem
from ._common import tolerance_of
from ._program import Timer, check_solver_args
from .orbit import solve_orbit
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult, make_result

__all__ = ["certify_closed_form"]


def certify_closed_form(problem: UFMProblem, *, solver: str = "CLARABEL", time_limit: float | None = None,
                        rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> CertificateResult:
    r"""Certify that the ETF / OF collapse of a balanced full-batch problem is the global optimum.

    Parameters
    ----------
    problem : UFMProblem
        A closed form exists for a full batch with equal class sizes and, when ``n_w > 0``,
        prototypes with the simplex-ETF Gram (UFM) or non-negative prototypes with Gram ``I``
        (UFM+, ``problem.nonnegative``); prototype anchors add their terms. ``problem.dim`` is
        the embedding dimension of the realisability check.
    solver, time_limit : optional
        Conic solver of the orbit relaxation and its time limit per attempt.
    rtol, atol : float
        Certified when ``gap <= rtol * (U - F) + atol * A`` (:mod:`ncgeo.certify.result`).

    Returns
    -------
    CertificateResult
        ``method="closed-form"``; ``upper_bound`` = the closed-form loss, ``lower_bound`` = the
        orbit-reduced relaxation's bound, ``rank`` = ``k - 1`` (ETF) or ``k`` (OF), and
        ``solution`` with ``geometry`` and ``closed_form``. Set-ups without a closed form
        give ``certified=False`` with that reason (no exception).
    """
    timer = Timer()
    check_solver_args(solver, time_limit)
    tolerance = tolerance_of(problem, rtol, atol)
    k, dim = problem.num_classes, problem.dim
    known = closed_form_for_problem(problem)
    if known is None:
        return make_result(None, None, method="closed-form", status="n/a", seconds=timer(), dim=dim,
                           failure="no closed form for this set-up (needs a full batch, balanced classes and, "
                                   "with n_w > 0, ETF prototypes for UFM or non-negative OF prototypes for UFM+)",
                           **tolerance)
    value, geometry = known
    rank = k - 1 if geometry == "etf" else k
    bound = solve_orbit(problem, solver=solver, time_limit=time_limit, rtol=rtol, atol=atol)
    solution = {"geometry": geometry, "closed_form": value, "relaxation": bound.reason}
    failure = None if bound.lower_bound > float("-inf") else f"no lower bound: {bound.reason}"
    return make_result(bound.lower_bound if failure is None else None, value, method="closed-form",
                       status=bound.solver_status, seconds=timer(), rank=rank, dim=dim, realisable=rank <= dim,
                       failure=failure, solution=solution, attempts=[bound.attempt()], **tolerance)
