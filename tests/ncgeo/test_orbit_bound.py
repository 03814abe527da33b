"""The orbit-structured Lagrangian bound (ncgeo.certify.orbit_bound) against the dense bound of the
expanded 2k x 2k R (ncgeo.certify.lagrangian.reduced_bound), and against feasible losses."""

import time

import numpy as np
import pytest
import torch

from ncgeo import UFMProblem
from ncgeo.certify import solve_orbit
from ncgeo.certify._common import class_program
from ncgeo.certify.gram_objective import reduced_excess, reduced_gradient
from ncgeo.certify.lagrangian import reduced_bound
from ncgeo.certify.orbit import orbit_invariant, size_groups
from ncgeo.certify.orbit_bound import expand, orbit_bound, orbit_excess, orbit_point
from ncgeo.geometry import simplex_etf
from problem_setups import problem_from_setup

STEP = [6, 6, 6, 2, 2, 2, 2]
SETUPS = {  # (sizes, prototypes, n_w, tau, nonnegative, prototypes as anchors)
    "etf n_w=0": (STEP, None, 0.0, 0.1, False, False),
    "etf n_w=1.5 anchors": (STEP, "etf", 1.5, 0.1, False, True),
    "etf n_w=100": (STEP, "etf", 100.0, 0.1, False, False),
    "etf n_w=1e6": (STEP, "etf", 1e6, 0.05, False, False),
    "etf balanced": ([5] * 6, "etf", 10.0, 0.5, False, False),
    "of n_w=100 singletons": ([4, 4, 4, 2, 1], "of", 100.0, 0.1, False, False),
    "ufm+ of n_w=1.5": (STEP, "of", 1.5, 0.1, True, False),
    "ufm+ n_w=0": ([5, 5, 5, 2, 2], None, 0.0, 0.2, True, False),
    "ufm+ of anchors": ([3, 3, 3, 3], "of", 2.0, 0.5, True, True),
}


def make_problem(name):
    return problem_from_setup(*SETUPS[name])


def group_setup(problem):
    program = class_program(problem, "orbit")
    groups = size_groups(program.weights)
    ng = np.array([program.weights[I[0]] for I in groups])
    if program.n_w > 0:
        gamma = orbit_invariant(program.G_W, groups)
        diag = np.array([program.G_W[I[0], I[0]] for I in groups])
        return program, groups, ng, diag, gamma
    return program, groups, ng, None, None


def random_point(problem, rng):
    """An orbit-symmetric R (not necessarily feasible: the bound holds at any point)."""
    program, groups, ng, diag, gamma = group_setup(problem)
    m = len(groups)
    a = np.where(ng > 1, rng.uniform(0.2, 1.0, m), 1.0)
    b = rng.uniform(-0.4, 0.4, (m, m))
    b = (b + b.T) / 2
    if program.nonnegative:
        b = np.abs(b) * (rng.uniform(size=(m, m)) < 0.5)  # some entries exactly at 0: sign multipliers
        b = np.maximum(b, b.T)
    if diag is None:
        return program, orbit_point(groups, ng, a, b)
    p = rng.uniform(0.1, 0.9, m)
    q = rng.uniform(-0.3, 0.3, (m, m))
    if program.proto_nonneg:
        q = np.abs(q) * (rng.uniform(size=(m, m)) < 0.5)
    return program, orbit_point(groups, ng, a, b, p, q, diag, gamma)


def solver_point(problem):
    result = solve_orbit(problem)
    program, groups, ng, diag, gamma = group_setup(problem)
    s = result.solution
    point = orbit_point(groups, ng, s["group_a"], s["group_b"], s.get("group_p"), s.get("group_q"), diag, gamma)
    return result, program, point


def dense_and_orbit(program, point):
    dense = reduced_bound(program, expand(point))
    orbit = orbit_bound(point, program.n_w, program.tau, anchors=program.anchors, nonnegative=program.nonnegative,
                        proto_nonneg=program.proto_nonneg)
    return dense, orbit


def assert_same_bound(dense, orbit):
    assert dense.failure is None
    scale = max(1.0, abs(dense.point_excess), abs(dense.excess_lower))
    assert abs(orbit["excess_lower"] - dense.excess_lower) <= 1e-10 * scale, (orbit["excess_lower"],
                                                                               dense.excess_lower)
    assert abs(orbit["floor"] - dense.floor) <= 1e-12 * max(1.0, abs(dense.floor))
    assert abs(orbit["lambda_min"] - dense.lambda_min) <= 1e-10 * max(1.0, np.linalg.norm(dense.S, 2))
    assert orbit["trace_bound"] == pytest.approx(dense.trace_bound, rel=1e-14)
    assert orbit["margin"] == pytest.approx(dense.margin, rel=1e-6)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_orbit_objective_and_gradient_equal_the_dense_ones(name):
    problem = make_problem(name)
    program, point = random_point(problem, np.random.default_rng(1))
    R = expand(point)
    labels = np.arange(program.k)
    dense = reduced_excess(torch.tensor(R), program.weights, labels, program.n_w, program.tau, program.anchors)
    orbit = orbit_excess(torch.tensor(point.D), torch.tensor(point.F), point.kg, point.ng, program.n_w,
                         program.tau, program.anchors)
    assert float(orbit.excess) == pytest.approx(float(dense.excess), rel=1e-13, abs=1e-13)
    assert orbit.floor == pytest.approx(dense.floor, rel=1e-14)
    assert orbit.scale == pytest.approx(dense.scale, rel=1e-13)
    # the per-entry gradient of the orbit form, expanded, is the dense symmetrised gradient
    from ncgeo.certify.orbit_bound import _gradient

    g_dense = reduced_gradient(R, program.weights, labels, program.n_w, program.tau, program.anchors)[3]
    gD, gF = _gradient(point, program.n_w, program.tau, program.anchors)[3:]
    assert np.abs(expand(point, gD, gF) - g_dense).max() <= 1e-12 * max(1.0, np.abs(g_dense).max())


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_orbit_bound_equals_the_expanded_dense_bound(name):
    problem = make_problem(name)
    result, program, point = solver_point(problem)
    assert_same_bound(*dense_and_orbit(program, point))
    rng = np.random.default_rng(7)
    for _ in range(3):
        assert_same_bound(*dense_and_orbit(*random_point(problem, rng)))


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_orbit_bound_is_never_above_a_feasible_loss(name):
    problem = make_problem(name)
    result, program, point = solver_point(problem)
    rng = np.random.default_rng(3)
    bounds = [orbit_bound(point, program.n_w, program.tau, anchors=program.anchors,
                          nonnegative=program.nonnegative, proto_nonneg=program.proto_nonneg)["lower"]]
    for _ in range(3):
        program, random = random_point(problem, rng)
        bounds.append(orbit_bound(random, program.n_w, program.tau, anchors=program.anchors,
                                  nonnegative=program.nonnegative, proto_nonneg=program.proto_nonneg)["lower"])
    # feasible points: random collapsed unit class means (non-negative for UFM+), the prototypes of the problem
    k, d = program.k, problem.dim
    losses = [result.upper_bound] if result.upper_bound is not None else []
    for _ in range(20):
        means = rng.standard_normal((d, k))
        if program.nonnegative:
            means = np.abs(means)
        means /= np.linalg.norm(means, axis=0)
        s = np.sqrt(program.weights)
        R = (means.T @ means) * np.outer(s, s)
        if program.n_w > 0:
            cross = (means.T @ program.W) * s[:, None]
            R = np.block([[R, cross], [cross.T, program.G_W]])
        value = reduced_excess(torch.tensor(R), program.weights, np.arange(k), program.n_w, program.tau,
                               program.anchors)
        losses.append(value.floor + float(value.excess))
    assert max(bounds) <= min(losses)
    assert result.lower_bound <= result.upper_bound


def test_orbit_bound_reported_by_solve_orbit_is_the_larger_rigorous_one():
    problem = make_problem("etf n_w=100")
    result, program, point = solver_point(problem)
    info = result.solution["bound"]
    assert info["point"] in ("solver point", "snapped collapse", "realised optimum")
    assert result.lower_bound >= orbit_bound(point, program.n_w, program.tau)["lower"]
    assert info["solver_value"] is not None


@pytest.mark.parametrize("k, limit", [(1000, 5.0), pytest.param(5000, 60.0, marks=pytest.mark.slow)])
def test_orbit_certifies_large_k_without_dense_matrices(k, limit):
    sizes = [100] * (k // 2) + [10] * (k - k // 2)
    problem = UFMProblem.from_sizes(sizes, simplex_etf(k, k), 1000.0, 0.1)
    start = time.perf_counter()
    result = solve_orbit(problem)
    seconds = time.perf_counter() - start
    assert result.certified, result.reason
    assert result.solution["bound"]["eigenvalue"].startswith("orbit blocks")
    assert seconds < limit
