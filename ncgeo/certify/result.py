"""The result of every certificate: a frozen dataclass with bounds, gap and verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .._io import jsonable

__all__ = ["CertificateResult", "DEFAULT_RTOL", "check_rtol"]

#: Relative gap below which a certificate is accepted (default of every method).
DEFAULT_RTOL = 1e-6


def check_rtol(rtol: float) -> float:
    """``rtol`` as a float in the open interval (0, 1), else ``ValueError``/``TypeError`` naming it."""
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.integer, np.floating)):
        raise TypeError(f"rtol must be a real number, got {type(rtol).__name__}")
    rtol = float(rtol)
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1) (the accepted relative gap), got {rtol!r}")
    return rtol


@dataclass(frozen=True)
class CertificateResult:
    r"""Outcome of a global-optimality certificate (THEORY.md section 5).

    All objective values are on the scale of :func:`ncgeo.ufm.ufm_objective` (and of
    ``UFMResult.loss``): the loss summed over batches and over anchors.

    Attributes
    ----------
    lower_bound : float
        A lower bound on the UFM optimum (a relaxation's optimum or the dual bound);
        ``-inf`` when none could be computed.
    upper_bound : float
        The objective at a feasible point (the candidate's loss, or the loss of the
        realised relaxation optimum); ``inf`` when no feasible point is known.
    gap : float
        ``upper_bound - lower_bound`` (absolute).
    relative_gap : float
        ``gap / max(|upper_bound|, 1e-12)``.
    rank : int or None
        Numerical rank of the relaxation's optimum (or of the candidate's Gram).
    dim : int or None
        Embedding dimension ``d``; the optimum is realisable when ``rank <= dim``.
    realisable : bool or None
        Whether the relaxation's optimum is attained by unit embeddings in ``R^d``.
    method : str
        ``"reduced"``, ``"orbit"``, ``"full"``, ``"dual"``, ``"closed-form"``, ``"ce-limit"``
        or ``"none"``.
    solver_status : str
        Status of the conic solver (``"optimal"``, ``"infeasible"``, ``"missing solver"``,
        ``"time limit"``...) or ``"n/a"`` for methods without one.
    seconds : float
        Wall time of the certificate.
    certified : bool
        True when ``relative_gap <= rtol`` and the bound is valid for the problem asked.
    reason : str
        One sentence explaining the verdict.
    solution : dict
        Method-specific optional output (e.g. ``a``, ``b``, ``p`` of the reduced program,
        ``lambda_min``), arrays as numpy.
    """

    lower_bound: float
    upper_bound: float
    gap: float
    relative_gap: float
    rank: int | None
    dim: int | None
    realisable: bool | None
    method: str
    solver_status: str
    seconds: float
    certified: bool
    reason: str
    solution: dict = field(default_factory=dict, compare=False)

    def to_dict(self, include_solution: bool = False) -> dict[str, Any]:
        """Strict-JSON-ready dictionary (arrays as lists, non-finite numbers such as a missing
        bound's ``-inf`` as ``None``; the solution only if asked)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "solution"}
        if include_solution:
            out["solution"] = dict(self.solution)
        return jsonable(out)

    def verdict(self) -> str:
        """One line, e.g. ``certified global optimum: gap 3e-09 (reduced SDP, 0.03 s)``."""
        label = {"reduced": "reduced SDP", "orbit": "orbit-reduced SDP", "full": "full SDP",
                 "dual": "dual certificate", "closed-form": "closed form"}.get(self.method, self.method)
        return verdict_line(self.certified, self.gap, self.reason, label, self.seconds)


def verdict_line(certified: bool, gap: float, reason: str, label: str, seconds: float) -> str:
    """The one-line verdict of every certificate result (``label``: what gave the bound)."""
    if certified:
        return f"certified global optimum: gap {gap:.1e} ({label}, {seconds:.2f} s)"
    return f"not certified: {reason} ({label}, {seconds:.2f} s)"


def contradicts(lower: float, upper: float) -> bool:
    """True when a relaxation's "lower bound" lies above a feasible loss ``upper`` by more than
    round-off: the conic solver was inaccurate, and that bound must not be used."""
    return lower > upper + max(1e-9, 1e-7 * abs(upper))


def make_result(lower: float, upper: float, *, method: str, status: str, seconds: float,
                rtol: float, rank: int | None = None, dim: int | None = None,
                realisable: bool | None = None, failure: str | None = None,
                solution: dict | None = None) -> CertificateResult:
    """Assemble a :class:`CertificateResult` and decide the verdict.

    ``failure`` (a reason) forces ``certified=False``; otherwise the verdict is
    ``relative_gap <= rtol`` and, when known, ``realisable``.
    """
    rtol = check_rtol(rtol)
    lower = float(lower) if lower is not None else -math.inf
    upper = float(upper) if upper is not None else math.inf
    gap = upper - lower if math.isfinite(lower) and math.isfinite(upper) else math.inf
    relative = gap / max(abs(upper), 1e-12) if math.isfinite(gap) else math.inf
    if failure is not None:
        certified, reason = False, failure
    elif not math.isfinite(gap):
        certified, reason = False, "no finite bound"
    elif method != "dual" and contradicts(lower, upper):
        certified, reason = False, (f"upper bound {upper:.10g} is below the lower bound {lower:.10g}: "
                                    "the solver was inaccurate")
    elif method == "dual" and gap < -max(1e-9, 1e-9 * abs(upper)):  # exact up to round-off
        certified, reason = False, (f"upper bound {upper:.10g} is below the dual lower bound {lower:.10g}: it is "
                                    "not the candidate's loss (leave upper_bound unset to compute it)")
    elif realisable is False:
        certified, reason = False, f"relaxation optimum has rank {rank} > d = {dim} (not realisable)"
    elif relative <= rtol:
        certified, reason = True, f"relative gap {max(relative, 0.0):.1e} <= {rtol:.0e}"
    else:
        certified, reason = False, f"relative gap {relative:.1e} > {rtol:.0e}"
    return CertificateResult(lower, upper, gap, relative, rank, dim, realisable, method, status,
                             float(seconds), certified, reason, dict(solution or {}))
