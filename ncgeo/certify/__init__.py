r"""Certificates of global optimality for the UFM / UFM+ of SCL with prototypes (THEORY.md section 5).

* :func:`solve_full`: the convex relaxation over the ``(N + k)`` Gram, any batching (small N);
* :func:`solve_reduced`: the ``2k x 2k`` symmetry-reduced relaxation, full batch, any class
  sizes (real weights too), returning the optimal similarities ``a, b, p``;
* :func:`solve_orbit`: the orbit reduction by groups of equal-size classes (k = 1000 in
  well under a second);
* :func:`dual_certificate`: the eigenvalue bound from a candidate, no SDP solve;
* :func:`certify` / :func:`certify_result`: the fastest applicable method with fallbacks;
  :func:`realise_and_certify`: reduced optimum -> embeddings -> dual check;
* :func:`certify_closed_form`: the closed-form loss at ETF / OF collapse (balanced, full
  batch) checked against the orbit relaxation's lower bound;
* :func:`certify_ce_limit`: the many-prototype (CE) limit program of THEORY.md section 4.

Every certificate returns a frozen :class:`CertificateResult`; solver failures give
``certified=False`` with the reason, never an exception. Objective values are on the
scale of ``UFMResult.loss`` (sum over batches and anchors).
"""

from .auto import METHODS, certify, certify_result, check_method, realise_and_certify
from .ce_limit import CELimitResult, certify_ce_limit
from .closed import certify_closed_form
from .dual import dual_certificate
from .full import solve_full
from .orbit import solve_orbit
from .reduced import solve_reduced
from .result import DEFAULT_RTOL, CertificateResult

__all__ = [
    "CertificateResult",
    "CELimitResult",
    "DEFAULT_RTOL",
    "METHODS",
    "certify",
    "certify_result",
    "realise_and_certify",
    "check_method",
    "solve_full",
    "solve_reduced",
    "solve_orbit",
    "dual_certificate",
    "certify_ce_limit",
    "certify_closed_form",
]
