"""Named test set-ups of the certificate tests: ``(sizes, prototypes, n_w, tau, nonnegative, anchors)``
rows turned into :class:`ncgeo.UFMProblem` objects (one builder for every test file)."""

from __future__ import annotations

import numpy as np

from ncgeo import UFMProblem
from ncgeo.geometry import orthogonal_frame, simplex_etf


def problem_from_setup(sizes, protos, n_w: float, tau: float, nonnegative: bool, anchors: bool) -> UFMProblem:
    """``protos`` is None (plain SCL, d = k), ``"etf"``, ``"of"`` or ``"random"`` (a seeded orthogonal
    basis, without orbit symmetry); the prototypes live in R^k."""
    k = len(sizes)
    if protos is None:
        return UFMProblem.from_sizes(sizes, tau=tau, dim=k, nonnegative=nonnegative)
    if protos == "random":
        W = np.linalg.qr(np.random.default_rng(1).normal(size=(k, k)))[0]
    else:
        W = simplex_etf(k, k) if protos == "etf" else orthogonal_frame(k, k)
    return UFMProblem.from_sizes(sizes, W, n_w, tau, nonnegative=nonnegative, prototypes_as_anchors=anchors)
