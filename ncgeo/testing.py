"""Assertion helpers for neural-collapse geometry, in the style of ``numpy.testing``.

Each helper raises ``AssertionError`` whose message gives the measured distance, the
tolerance and the worst class or pair of classes, and returns ``None`` on success.
Embeddings are ``(N, d)``, labels ``(N,)``, prototypes ``(d, k)`` (numpy or torch).
"""

from __future__ import annotations

import numpy as np

from ._validation import as_float_array, check_nonnegative
from .geometry import etf_gram
from .metrics import _directions, _present_prototype_cosines, gram_distance, nan_if_undefined
from .statistics import ClassStatistics

__all__ = [
    "assert_collapsed",
    "assert_simplex_etf",
    "assert_orthogonal_frame",
    "assert_gram_close",
    "assert_aligned_with_prototypes",
]


def _means(embeddings, labels, num_classes=None):
    stats = ClassStatistics.from_embeddings(embeddings, labels, num_classes)
    present = np.flatnonzero(stats.present.cpu().numpy())
    return stats.means().cpu().numpy(), present


def _worst_pair(difference: np.ndarray, classes: np.ndarray) -> str:
    i, j = np.unravel_index(int(np.argmax(np.abs(difference))), difference.shape)
    return f"worst pair of classes ({classes[i]}, {classes[j]}): entry off by {difference[i, j]:+.3e}"


def assert_collapsed(embeddings, labels, atol: float = 1e-6) -> None:
    """Assert within-class collapse: ``max_i ||h_i - mu_{y_i}|| <= atol``."""
    atol = check_nonnegative("atol", atol)
    H = as_float_array("embeddings", embeddings, ndim=2)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    M, present = _means(H, y)
    full = np.zeros((H.shape[1], int(y.max()) + 1))
    full[:, present] = M
    spread = np.linalg.norm(H - full[:, y].T, axis=1)
    worst_class_spread = np.zeros(full.shape[1])
    np.maximum.at(worst_class_spread, y, spread)
    worst = int(np.argmax(worst_class_spread))
    measured = float(worst_class_spread[worst])
    if not measured <= atol:
        raise AssertionError(
            f"embeddings are not collapsed: max ||h_i - mu_y|| = {measured:.3e} > atol = {atol:.1e} "
            f"(worst class {worst})"
        )


def assert_gram_close(gram, target, atol: float = 1e-6) -> None:
    """Assert ``max |G - G*| <= atol`` entrywise for two ``k x k`` matrices."""
    atol = check_nonnegative("atol", atol)
    G = as_float_array("gram", gram, ndim=2)
    T = as_float_array("target", target, ndim=2)
    if G.shape != T.shape:
        raise ValueError(f"gram and target must have the same shape, got {G.shape} and {T.shape}")
    difference = G - T
    measured = float(np.max(np.abs(difference))) if difference.size else 0.0
    if not measured <= atol:
        raise AssertionError(f"Gram matrices differ: max |G - G*| = {measured:.3e} > atol = {atol:.1e}; "
                             + _worst_pair(difference, np.arange(G.shape[0])))


def _assert_mean_gram(M: np.ndarray, present: np.ndarray, target: np.ndarray, atol: float, what: str) -> None:
    unit = np.nan_to_num(_directions(M))  # a zero mean has cosine 0 with every other
    difference = unit.T @ unit - target
    # all (centred) means zero, e.g. every class at one point: Delta is undefined (NaN fails below)
    measured = nan_if_undefined(gram_distance, M, target)
    if not measured <= atol:
        raise AssertionError(f"class means are not {what}: Delta = {measured:.3e} > atol = {atol:.1e}; "
                             + _worst_pair(difference, present))


def assert_simplex_etf(embeddings, labels, atol: float = 1e-6) -> None:
    """Assert that the centred class means form a simplex ETF: ``Delta(M - mu_G, G_ETF) <= atol``."""
    atol = check_nonnegative("atol", atol)
    M, present = _means(embeddings, labels)
    if M.shape[1] < 2:
        raise ValueError("assert_simplex_etf needs at least 2 classes")
    centred = M - M.mean(axis=1, keepdims=True)
    _assert_mean_gram(centred, present, etf_gram(M.shape[1]), atol, "a simplex ETF")


def assert_orthogonal_frame(embeddings, labels, atol: float = 1e-6) -> None:
    """Assert that the uncentred class means are orthogonal: ``Delta(M, I) <= atol``."""
    atol = check_nonnegative("atol", atol)
    M, present = _means(embeddings, labels)
    _assert_mean_gram(M, present, np.eye(M.shape[1]), atol, "an orthogonal frame")


def assert_aligned_with_prototypes(embeddings, labels, prototypes, atol: float = 1e-6) -> None:
    """Assert ``1 - cos(mu_c, w_c) <= atol`` for every present class ``c``.

    A present class whose cosine is undefined (its mean ``mu_c`` or its prototype column
    ``w_c`` is zero) fails the assertion; absent classes are not judged.
    """
    atol = check_nonnegative("atol", atol)
    cos, present = _present_prototype_cosines(embeddings, labels, prototypes)
    undefined = np.flatnonzero(present & np.isnan(cos))
    if undefined.size:
        c = int(undefined[0])
        W = as_float_array("prototypes", prototypes, ndim=2)
        why = "its prototype column w_c is zero" if not np.any(W[:, c]) else "its class mean mu_c is zero"
        raise AssertionError(
            f"class means are not aligned with the prototypes: cos(mu_c, w_c) is undefined for class {c} "
            f"({why})" + (f"; also undefined for classes {undefined[1:].tolist()}" if undefined.size > 1 else "")
        )
    misalignment = np.where(present, 1.0 - cos, -np.inf)
    worst = int(np.argmax(misalignment))
    if not misalignment[worst] <= atol:
        raise AssertionError(
            f"class means are not aligned with the prototypes: max 1 - cos(mu_c, w_c) = "
            f"{misalignment[worst]:.3e} > atol = {atol:.1e} (worst class {worst})"
        )
