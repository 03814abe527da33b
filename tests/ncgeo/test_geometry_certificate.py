"""Certify the geometry, not only the loss (issue 13 item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncgeo.certify import dual_certificate, solve_orbit
from ncgeo.certify.dual import _grouped_matrix, candidate_value
from ncgeo.certify.face import NOT_PINNED, PINNED, geometry_certificate, geometry_verdict
from ncgeo.certify.gram_objective import reduced_excess
from ncgeo.certify.lagrangian import reduced_bound
from ncgeo.geometry import simplex_etf
from ncgeo.problem import UFMProblem


@pytest.mark.parametrize("n_w", [0.0, 10.0, 1e6])
def test_etf_optimum_is_pinned(n_w):
    W = simplex_etf(5, 5)
    problem = UFMProblem.from_sizes([4] * 5, W, n_w, 0.5)
    result = dual_certificate(problem, W[:, problem.sample_labels()].T)
    geometry = result.solution["geometry"]
    assert result.certified and geometry["pinned"] and geometry["verdict"] == PINNED
    assert geometry["margin"] > 0 and geometry["leave_bound"] <= result.gap / geometry["margin"] + 1e-15
    if n_w > 0:  # the prototype block fixes the Gram of the means: a zero-dimensional face
        assert geometry["face_dimension"] == 0
    else:  # rotations are free, the Gram inside the face is fixed by strict convexity
        assert geometry["face_dimension"] > 0 and geometry["curvature"] > 0
    assert geometry_verdict(result).startswith(PINNED)


def test_non_unique_optimal_face_is_not_pinned():
    """Two batches of one class each: the loss never sees the cosine between the classes, so every
    collapsed configuration is optimal (a face of positive dimension along which the loss is flat)."""
    y = np.array([0, 0, 0, 1, 1, 1])
    problem = UFMProblem.from_labels(y, None, 0.0, 0.5, batches=[np.array([0, 1, 2]), np.array([3, 4, 5])],
                                     num_classes=2, dim=3)
    for angle in (0.5, 2.0):
        H = np.array([[1.0, 0, 0]] * 3 + [[np.cos(angle), np.sin(angle), 0]] * 3)
        result = dual_certificate(problem, H)
        geometry = result.solution["geometry"]
        assert result.certified and not geometry["pinned"] and geometry["verdict"] == NOT_PINNED
        assert geometry["face_dimension"] > 0 and abs(geometry["curvature"]) < 1e-12
        assert geometry_verdict(result).startswith(NOT_PINNED)


def test_not_certified_loss_has_no_geometry_verdict():
    W = simplex_etf(3, 3)
    problem = UFMProblem.from_sizes([2] * 3, W, 1.0, 0.5)
    H = np.random.default_rng(0).standard_normal((6, 3))
    result = dual_certificate(problem, H / np.linalg.norm(H, axis=1, keepdims=True))
    assert not result.certified and geometry_verdict(result).startswith("geometry not certified")


def test_step_imbalance_at_n_w_0_margin_bounds_points_within_the_gap():
    """The n_w = 0 step-imbalance example of the issue (5 x 100 + 5 x 10, tau = 0.1): certified and
    pinned (by strict convexity, with small curvature: the ill-conditioning behind a Gram 0.52 away at
    a 3e-5 relative loss gap); the margin inequality f(Z) - L >= margin * tr(P Z P) holds at
    perturbed feasible points."""
    problem = UFMProblem.from_sizes([100] * 5 + [10] * 5, None, 0.0, 0.1, dim=10)
    result = solve_orbit(problem)
    assert result.certified, result.reason
    geometry = result.solution["geometry"]
    assert geometry["pinned"] and geometry["margin"] > 0 and 0 < geometry["curvature"] < 1e-3
    means = result.solution["means"]
    weights = problem.class_sizes
    labels = np.arange(10)
    R = _grouped_matrix(means.T, weights, None)
    bound = reduced_bound(problem, R)
    eig, vec = np.linalg.eigh(bound.S)
    upper = vec[:, eig > geometry["null_threshold"]]
    P = upper @ upper.T
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1e-2, 1e-1):
        M = means + scale * rng.standard_normal(means.shape)
        M /= np.linalg.norm(M, axis=0, keepdims=True)
        Z = _grouped_matrix(M.T, weights, None)
        f = float(reduced_excess(torch.tensor(Z), weights, labels, 0.0, 0.1).excess) + bound.floor
        assert f - bound.lower >= geometry["margin"] * np.trace(P @ Z @ P) * (1 - 1e-9) - 1e-12
        # a feasible candidate within its own gap leaves the face by at most gap / margin
        candidate = dual_certificate(problem, M[:, problem.sample_labels()].T)
        assert candidate.upper_bound == pytest.approx(candidate_value(problem, M[:, problem.sample_labels()].T,
                                                                      problem.sample_labels()), rel=1e-12)
        assert np.trace(P @ Z @ P) <= (candidate.upper_bound - bound.lower) / geometry["margin"] * (1 + 1e-9)


def test_indefinite_dual_matrix_gives_no_geometry():
    W = simplex_etf(3, 3)
    problem = UFMProblem.from_sizes([2] * 3, W, 1.0, 0.5)
    rng = np.random.default_rng(1)
    H = rng.standard_normal((6, 3))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    y = problem.sample_labels()
    R = _grouped_matrix(H, np.ones(6), W)
    bound = reduced_bound(problem, R, np.ones(6), y)
    geometry = geometry_certificate(bound, R, gap=1.0)
    assert not geometry["pinned"] and "not positive semidefinite" in geometry["reason"]
