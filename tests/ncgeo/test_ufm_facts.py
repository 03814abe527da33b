"""docs/theory.md section 3, facts 1-5, reproduced by the UFM solver from random starts."""

from __future__ import annotations

import numpy as np
import pytest

from ncgeo.classes import class_sizes
from ncgeo.geometry import simplex_etf
from ncgeo.metrics import class_means
from ncgeo.testing import (
    assert_aligned_with_prototypes,
    assert_collapsed,
    assert_orthogonal_frame,
    assert_simplex_etf,
)
from ncgeo.ufm import scheme_problem, solve_ufm


def test_fact1_balanced_plain_scl_collapses_to_simplex_etf():
    result = solve_ufm(scheme_problem([6] * 4, None, 0, 0.1, dim=3), options=dict(init="random", seed=1))
    assert result.grad_norm <= 1e-9
    assert_collapsed(result.H, result.labels, atol=1e-6)
    assert_simplex_etf(result.H, result.labels, atol=1e-6)
    assert result.loss == pytest.approx(result.closed_form()[0], rel=1e-10)


def test_fact2_ufm_plus_step_imbalance_collapses_to_orthogonal_frame():
    sizes = class_sizes(4, 20, "step", 10)  # [20, 20, 2, 2]
    result = solve_ufm(scheme_problem(sizes, None, 0, 0.1, nonnegative=True), options=dict(init="random", seed=0))
    assert result.grad_norm <= 1e-9
    assert_collapsed(result.H, result.labels, atol=1e-6)
    assert_orthogonal_frame(result.H, result.labels, atol=1e-6)


def test_fact3_plain_scl_under_imbalance_is_not_an_etf():
    result = solve_ufm(scheme_problem([10, 10, 2, 2], None, 0, 0.5), options=dict(init="random", seed=0))
    assert result.grad_norm <= 1e-9
    assert_collapsed(result.H, result.labels, atol=1e-6)
    with pytest.raises(AssertionError, match="not a simplex ETF"):
        assert_simplex_etf(result.H, result.labels, atol=1e-2)
    M, _ = class_means(result.H, result.labels)
    cos = (M / np.linalg.norm(M, axis=0)).T @ (M / np.linalg.norm(M, axis=0))
    # minority means (classes 2, 3) are much closer to each other than majority means (0, 1)
    assert cos[2, 3] > cos[0, 1] + 0.3


def test_fact4_binding_reaches_the_orthogonal_frame_random_batches_do_not():
    sizes, batch = [4] * 4, 4
    bound = solve_ufm(scheme_problem(sizes, None, 0.0, 0.1, scheme="bind", batch_size=batch, seed=0, nonnegative=True), options=dict(seed=0, init="random"))
    assert bound.grad_norm <= 1e-9
    assert_collapsed(bound.H, bound.labels, atol=1e-6)
    assert_orthogonal_frame(bound.H, bound.labels, atol=1e-6)
    loose = solve_ufm(scheme_problem(sizes, None, 0.0, 0.1, scheme="partition", batch_size=batch, seed=0, nonnegative=True), options=dict(seed=0, init="random"))
    assert loose.grad_norm <= 1e-9  # a stationary point of the random-batch objective ...
    assert loose.metrics.delta_of > 0.1  # ... that is not the OF
    with pytest.raises(AssertionError):
        assert_orthogonal_frame(loose.H, loose.labels, atol=1e-2)


def test_fact5_prototypes_engineer_the_geometry_under_imbalance():
    sizes = class_sizes(4, 10, "step", 10)  # [10, 10, 1, 1]
    W = simplex_etf(4, 4)
    deltas = []
    for n_w in (0, 1, 10, 100, 1000):
        # default start (full batch: the reduced k-direction problem, then the full polish)
        result = solve_ufm(scheme_problem(sizes, W, n_w, 0.05), options=dict(seed=0))
        assert result.grad_norm <= 1e-9
        deltas.append(result.metrics.delta_prototypes)
    assert all(later < earlier for earlier, later in zip(deltas, deltas[1:])), deltas
    assert deltas[-1] < 1e-3
    assert_aligned_with_prototypes(result.H, result.labels, W, atol=1e-3)
    # a random start ends at a point at least as high: the landscape is exponentially flat
    # (e^{-(1 + 1/3)/tau}) along the singleton classes, so it may stop there with a tiny gradient
    random_start = solve_ufm(scheme_problem(sizes, W, 1000, 0.05), options=dict(init="random", seed=0))
    assert random_start.loss >= result.loss - 1e-12 * abs(result.loss)
