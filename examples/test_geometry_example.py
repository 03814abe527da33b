"""Check a learnt geometry in your own tests with ``ncgeo.testing``.

    python -m pytest -q examples/test_geometry_example.py

The ``assert_*`` helpers work like ``numpy.testing``: they return None or raise an
``AssertionError`` that gives the measured distance, the tolerance and the worst class or
pair of classes. Here the "learnt" embeddings come from the UFM solver (replace them by your
network's features): with balanced classes, plain SCL collapses to a simplex ETF (Graf et al.
2021), UFM+ (non-negative features) to an orthogonal frame (Kini et al. 2023), and with
many ETF prototypes the class means align with the prototypes (docs/theory.md section 3).
"""

from __future__ import annotations

import numpy as np
import pytest

from ncgeo import UFMProblem
from ncgeo.geometry import simplex_etf
from ncgeo.testing import (assert_aligned_with_prototypes, assert_collapsed, assert_gram_close,
                           assert_orthogonal_frame, assert_simplex_etf)
from ncgeo.ufm import solve_ufm


def test_plain_scl_collapses_to_a_simplex_etf():
    result = solve_ufm(UFMProblem.from_sizes([5] * 4, None, 0.0, 0.5, dim=4))
    assert_collapsed(result.H, result.labels, atol=1e-5)
    assert_simplex_etf(result.H, result.labels, atol=1e-6)  # centred class means


def test_ufm_plus_reaches_an_orthogonal_frame():
    result = solve_ufm(UFMProblem.from_sizes([5] * 4, None, 0.0, 0.5, dim=4, nonnegative=True))
    assert_orthogonal_frame(result.H, result.labels, atol=1e-6)  # uncentred class means


def test_etf_prototypes_pull_the_class_means_onto_themselves():
    W = simplex_etf(4, 4, rotate=True, seed=1)
    result = solve_ufm(UFMProblem.from_sizes([8, 8, 2, 2], W, 100.0, 0.1))
    assert_aligned_with_prototypes(result.H, result.labels, W, atol=1e-3)
    means = np.stack([result.H[result.labels == c].mean(axis=0) for c in range(4)], axis=1)
    means /= np.linalg.norm(means, axis=0)
    assert_gram_close(means.T @ means, W.T @ W, atol=0.05)


def test_a_wrong_geometry_is_reported():
    rng = np.random.default_rng(0)
    H = rng.standard_normal((20, 4))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 5)
    with pytest.raises(AssertionError, match="not collapsed"):
        assert_collapsed(H, labels, atol=1e-3)
