r"""Certificates of global optimality for the UFM / UFM+ of SCL with prototypes (docs/theory.md section 5).

Every function takes a :class:`ncgeo.UFMProblem` (the objective, held once) and solver settings
apart (``method``, ``solver``, ``time_limit``, ``rtol``, ``atol``):

* :func:`solve_full`: the convex relaxation over the ``(N + k)`` Gram, any batching (small N);
* :func:`solve_reduced`: the ``2k x 2k`` symmetry-reduced relaxation, full batch, any class
  sizes (real weights too), returning the optimal similarities ``a, b, p``;
* :func:`solve_orbit`: the orbit reduction by groups of equal-size classes (k = 1000 in
  well under a second);
* :func:`dual_certificate`: the eigenvalue bound from a candidate, no SDP solve;
  :func:`collapsed_certificate`: the same from a collapsed candidate's class means and the class
  counts (no ``N x d`` ``H``; the orbit structure for large ``k``);
* :func:`certify` / :func:`certify_result`: a named method, or the fastest applicable ones in
  turn (``"auto"``); :func:`realise_and_certify`: reduced optimum -> embeddings -> dual check;
* :func:`certify_closed_form`: the closed-form loss at ETF / OF collapse (balanced, full
  batch) checked against the orbit relaxation's lower bound;
* :func:`certify_ce_limit`: the many-prototype (CE) limit program of docs/theory.md section 4.

What certified means (docs/theory.md section 5.1): with ``F`` the problem's floor (sum over anchors of
``log P_a``, :meth:`ncgeo.UFMProblem.floor`) and ``A`` its number of anchors, a candidate of loss
``U`` with lower bound ``L`` is certified iff ``U - L <= rtol (U - F) + atol A`` (``rtol = 1e-6``,
``atol = 1e-12``). Every certificate returns a frozen :class:`CertificateResult`; solver failures
give ``certified=False`` with the reason, programming errors raise. Objective values are on the
scale of ``UFMResult.loss`` (sum over batches and anchors).
"""

from .auto import certify, certify_result, realise_and_certify
from ._common import signed_ufm_plus
from .ce_limit import CELimitResult, ce_geometry_pinned, certify_ce_limit
from .closed import certify_closed_form
from .dual import collapsed_certificate, dual_certificate
from .full import solve_full
from .orbit import solve_orbit
from .reduced import solve_reduced
from .result import DEFAULT_ATOL, DEFAULT_RTOL, CertificateResult

__all__ = [
    "CertificateResult",
    "CELimitResult",
    "DEFAULT_RTOL",
    "DEFAULT_ATOL",
    "certify",
    "certify_result",
    "realise_and_certify",
    "solve_full",
    "solve_reduced",
    "solve_orbit",
    "dual_certificate",
    "collapsed_certificate",
    "certify_ce_limit",
    "ce_geometry_pinned",
    "signed_ufm_plus",
    "certify_closed_form",
]
