"""The result of every certificate: a frozen dataclass with bounds, gap and verdict.

What "certified" means (docs/theory.md section 5.1): every anchor's loss is at least ``log P_a``
whatever the geometry, so ``F = sum over anchors of log P_a`` (:meth:`ncgeo.problem.UFMProblem.floor`)
is a floor of the objective, and a gap is judged against the **excess** ``U - F``, never against
``U``:

.. math::

    \\text{certified} \\iff U - L \\le \\mathrm{rtol}\\,(U - F) + \\mathrm{atol}\\, A ,

``U`` the loss of a feasible point, ``L`` a lower bound, ``A`` the number of anchors
(:meth:`~ncgeo.problem.UFMProblem.num_anchors`), ``rtol = 1e-6`` and ``atol = 1e-12`` by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .._io import jsonable

__all__ = ["CertificateResult", "DEFAULT_RTOL", "DEFAULT_ATOL", "check_rtol", "check_atol"]

#: Accepted gap relative to the excess ``U - F`` (default of every method).
DEFAULT_RTOL = 1e-6
#: Accepted gap per anchor on top of ``rtol * (U - F)`` (round-off of the loss itself).
DEFAULT_ATOL = 1e-12


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_rtol(rtol: float) -> float:
    """``rtol`` as a float in the open interval (0, 1), else ``ValueError``/``TypeError`` naming it."""
    rtol = _real("rtol", rtol)
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1) (the accepted gap relative to the excess), got {rtol!r}")
    return rtol


def check_atol(atol: float) -> float:
    """``atol`` as a finite float ``>= 0`` (accepted gap per anchor), else ``ValueError``/``TypeError``."""
    atol = _real("atol", atol)
    if not (math.isfinite(atol) and atol >= 0.0):
        raise ValueError(f"atol must be a finite number >= 0 (the accepted gap per anchor), got {atol!r}")
    return atol


@dataclass(frozen=True)
class CertificateResult:
    r"""Outcome of a global-optimality certificate (docs/theory.md sections 5 and 5.1).

    All objective values are on the scale of :func:`ncgeo.ufm.ufm_objective` (and of
    ``UFMResult.loss``): the loss summed over batches and over anchors.

    Attributes
    ----------
    lower_bound : float
        A lower bound on the UFM optimum; ``-inf`` when none could be computed.
    upper_bound : float
        The objective at a feasible point (the candidate's loss, or the loss of the
        realised relaxation optimum); ``inf`` when no feasible point is known.
    gap : float
        ``upper_bound - lower_bound`` (absolute).
    relative_gap : float
        ``gap / (upper_bound - floor)``: the gap relative to the excess (``inf`` when the
        excess is not positive and the gap is).
    floor : float
        ``F``, the sum over anchors of ``log P_a``: no feasible point has a lower loss.
    excess : float
        ``upper_bound - floor``: the part of the loss that depends on the geometry.
    tolerance : float
        The accepted gap ``rtol * excess + atol * anchors``.
    rank : int or None
        Numerical rank of the relaxation's optimum (or of the candidate's Gram).
    dim : int or None
        Embedding dimension ``d``; the optimum is realisable when ``rank <= dim``.
    realisable : bool or None
        Whether the relaxation's optimum is attained by unit embeddings in ``R^d``.
    method : str
        ``"reduced"``, ``"orbit"``, ``"full"``, ``"dual"``, ``"closed-form"`` or ``"none"``:
        the method that gave the bound (the one the user named, when named).
    solver_status : str
        Status of the conic solver (``"optimal"``, ``"infeasible"``, ``"missing solver"``,
        ``"time limit"``...) or ``"n/a"`` for methods without one.
    seconds : float
        Wall time of the certificate.
    certified : bool
        True when ``gap <= tolerance`` and the bound is valid for the problem asked.
    reason : str
        One sentence explaining the verdict.
    attempts : tuple of dict
        Every method tried, in order: ``{"method", "status", "lower_bound", "seconds", "reason"}``
        (``method="auto"`` tries several; a named method gives one entry).
    solution : dict
        Method-specific optional output (e.g. ``a``, ``b``, ``p`` of the reduced program,
        ``lambda_min``), arrays as numpy.
    """

    lower_bound: float
    upper_bound: float
    gap: float
    relative_gap: float
    floor: float
    excess: float
    tolerance: float
    rank: int | None
    dim: int | None
    realisable: bool | None
    method: str
    solver_status: str
    seconds: float
    certified: bool
    reason: str
    attempts: tuple = ()
    solution: dict = field(default_factory=dict, compare=False)

    def to_dict(self, include_solution: bool = False) -> dict[str, Any]:
        """Strict-JSON-ready dictionary (arrays as lists, non-finite numbers such as a missing
        bound's ``-inf`` as ``None``; the solution only if asked)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "solution"}
        out["attempts"] = [dict(a) for a in self.attempts]
        if include_solution:
            out["solution"] = dict(self.solution)
        return jsonable(out)

    def verdict(self) -> str:
        """One line, e.g. ``certified global optimum: gap 3.0e-09 <= accepted 4.1e-08, relative gap 7.3e-08 of
        the excess (reduced SDP, 0.03 s)``."""
        label = {"reduced": "reduced SDP", "orbit": "orbit-reduced SDP", "full": "full SDP",
                 "dual": "dual certificate", "closed-form": "closed form"}.get(self.method, self.method)
        return verdict_line(self.certified, self.gap, self.reason, label, self.seconds, self.relative_gap,
                            self.tolerance)

    def attempt(self) -> dict[str, Any]:
        """This result as one entry of an ``attempts`` list."""
        return {"method": self.method, "status": self.solver_status, "lower_bound": self.lower_bound,
                "seconds": self.seconds, "certified": self.certified, "reason": self.reason}


def verdict_line(certified: bool, gap: float, reason: str, label: str, seconds: float,
                 relative_gap: float | None = None, tolerance: float | None = None) -> str:
    """The one-line verdict of every certificate result (``label``: what gave the bound; ``tolerance``
    the accepted gap ``rtol * excess + atol * anchors``, ``relative_gap`` the gap over the excess)."""
    if certified:
        accepted = "" if tolerance is None else f" <= accepted {tolerance:.1e}"
        relative = "" if relative_gap is None else f", relative gap {max(relative_gap, 0.0):.1e} of the excess"
        loose = ("; within the absolute tolerance only: the excess is at round-off level, see the geometry verdict"
                 if "within the absolute tolerance only" in reason else "")
        return (f"certified global optimum: gap {max(gap, 0.0):.1e}{accepted}{relative}{loose} "
                f"({label}, {seconds:.2f} s)")
    return f"not certified: {reason} ({label}, {seconds:.2f} s)"


def contradicts(lower: float, upper: float, floor: float = 0.0) -> bool:
    """True when a relaxation's "lower bound" lies above a feasible loss ``upper`` by more than
    round-off (``1e-9`` absolute or ``1e-7`` of the excess ``upper - floor``): the conic solver was
    inaccurate, and that bound must not be used."""
    return lower > upper + max(1e-9, 1e-7 * abs(upper - floor))


def make_result(lower: float | None, upper: float | None, *, floor: float, anchors: float, method: str,
                status: str, seconds: float, rtol: float, atol: float = DEFAULT_ATOL, rank: int | None = None,
                dim: int | None = None, realisable: bool | None = None, failure: str | None = None,
                solution: dict | None = None, attempts=()) -> CertificateResult:
    """Assemble a :class:`CertificateResult` and decide the verdict (module docstring).

    ``floor`` and ``anchors`` are the problem's ``F`` and ``A``. ``failure`` (a reason) forces
    ``certified=False``; otherwise the verdict is ``gap <= rtol (U - F) + atol A`` and, when known,
    ``realisable``. ``attempts`` (dicts, see :meth:`CertificateResult.attempt`) are kept as given.
    """
    rtol, atol = check_rtol(rtol), check_atol(atol)
    floor, anchors = float(floor), float(anchors)
    lower = float(lower) if lower is not None else -math.inf
    upper = float(upper) if upper is not None else math.inf
    gap = upper - lower if math.isfinite(lower) and math.isfinite(upper) else math.inf
    excess = upper - floor
    tolerance = rtol * max(excess, 0.0) + atol * anchors if math.isfinite(excess) else math.inf
    if not math.isfinite(gap):
        relative = math.inf
    elif excess > 0:
        relative = gap / excess
    else:
        relative = 0.0 if gap <= 0 else math.inf
    if failure is not None:
        certified, reason = False, failure
    elif not math.isfinite(gap):
        certified, reason = False, "no finite bound"
    elif method != "dual" and contradicts(lower, upper, floor):
        certified, reason = False, (f"upper bound {upper:.10g} is below the lower bound {lower:.10g}: "
                                    "the solver was inaccurate")
    elif method == "dual" and gap < -max(1e-9, 1e-9 * abs(excess)):  # exact up to round-off
        certified, reason = False, (f"upper bound {upper:.10g} is below the dual lower bound {lower:.10g}: it is "
                                    "not the candidate's loss")
    elif realisable is False:
        certified, reason = False, f"relaxation optimum has rank {rank} > d = {dim} (not realisable)"
    elif gap <= tolerance:
        certified, reason = True, (f"gap {max(gap, 0.0):.1e} <= rtol * excess + atol * anchors = {tolerance:.1e} "
                                   f"(relative gap {max(relative, 0.0):.1e})")
        if rtol * max(excess, 0.0) < atol * anchors:  # e.g. tau = 0.02: every collapse is at the floor
            reason += (f"; within the absolute tolerance only: the excess {excess:.1e} is at round-off level, "
                       "where distinct geometries have equal losses (see the geometry verdict)")
    else:
        certified, reason = False, (f"relative gap {relative:.1e} > rtol {rtol:.0e} "
                                    f"(gap {gap:.1e} > accepted {tolerance:.1e}, excess {excess:.3g})")
    return CertificateResult(lower, upper, gap, relative, floor, excess, tolerance, rank, dim, realisable, method,
                             status, float(seconds), certified, reason, tuple(dict(a) for a in attempts),
                             dict(solution or {}))
