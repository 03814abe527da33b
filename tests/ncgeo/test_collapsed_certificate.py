"""collapsed_certificate(problem, means): the dual certificate of a collapsed candidate from its
class means and the class counts (issue 16 item 2), against dual_certificate on the expanded H."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ncgeo import UFMProblem
from ncgeo.certify import collapsed_certificate, dual_certificate
from ncgeo.geometry import simplex_etf
from problem_setups import problem_from_setup
from ncgeo.ufm.collapsed import minimise_collapsed

SETUPS = {  # sizes, prototypes, n_w, tau, nonnegative, prototypes as anchors
    "step etf n_w=100": ([6, 6, 6, 2, 2, 2, 2], "etf", 100.0, 0.1, False, False),
    "balanced etf n_w=10": ([5] * 6, "etf", 10.0, 0.5, False, False),
    "plain scl n_w=0": ([4, 4, 3, 3], None, 0.0, 0.2, False, False),
    "etf anchors n_w=1.5": ([6, 6, 2, 2], "etf", 1.5, 0.1, False, True),
    "ufm+ of n_w=2": ([3, 3, 3, 3], "of", 2.0, 0.5, True, False),
    "n_w=1e6": ([8, 8, 8, 2, 2, 2], "etf", 1e6, 0.05, False, False),
    "random prototypes (no orbit symmetry)": ([5, 4, 3, 2], "random", 10.0, 0.2, False, False),
    "saddle: step 5000/500": ([5000, 5000, 500, 500], "etf", 100.0, 0.1, False, False),
}


def make_problem(name):
    return problem_from_setup(*SETUPS[name])


def collapsed_optimum(problem):
    """The collapsed loss minimised from the prototypes (or a simplex ETF): (d, k) means."""
    k = problem.num_classes
    start = problem.prototypes if problem.n_w > 0 else simplex_etf(k, problem.dim)
    if problem.nonnegative:
        start = np.eye(problem.dim, k)
    W = None if problem.n_w == 0 else torch.tensor(np.array(problem.prototypes))
    out = minimise_collapsed(torch.tensor(np.array(start).T), problem.class_sizes.tolist(), W, problem.n_w,
                             problem.tau, nonnegative=problem.nonnegative,
                             prototypes_as_anchors=problem.prototypes_as_anchors, grad_tol=1e-12, max_iterations=5000)
    return out.x.numpy().T.copy()


def relative_on_excess(a, b):
    return abs(a.solution["bound"]["excess_lower"] - b.solution["bound"]["excess_lower"]) / max(
        abs(a.upper_bound - a.floor), 1e-300)


@pytest.mark.parametrize("name", list(SETUPS))
def test_grouped_entry_equals_the_dual_certificate_on_the_expanded_H(name):
    problem = make_problem(name)
    M = collapsed_optimum(problem)
    expanded = dual_certificate(problem, M[:, problem.sample_labels()].T)
    grouped = collapsed_certificate(problem, M)
    assert grouped.solution["structure"] == "dense"  # k is small: the dense grouped bound (geometry too)
    assert relative_on_excess(grouped, expanded) <= 1e-10
    assert grouped.upper_bound == pytest.approx(expanded.upper_bound, rel=1e-13)
    assert grouped.certified == expanded.certified and grouped.rank == expanded.rank
    assert grouped.solution["geometry"]["verdict"] == expanded.solution["geometry"]["verdict"]
    if name.startswith("saddle"):  # the collapsed point is not the optimum: refused by both
        assert not grouped.certified
    elif name in ("step etf n_w=100", "balanced etf n_w=10", "plain scl n_w=0", "n_w=1e6"):
        assert grouped.certified, grouped.reason


@pytest.mark.parametrize("name", [name for name in SETUPS if "random" not in name])
def test_orbit_structure_equals_the_dense_grouped_bound(name):
    problem = make_problem(name)
    M = collapsed_optimum(problem)
    dense = collapsed_certificate(problem, M, structure="dense")
    orbit = collapsed_certificate(problem, M, structure="orbit")
    assert orbit.solution["structure"] == "orbit" and "geometry" not in orbit.solution
    # the orbit sums run in another order (counts multiplied in once): round-off of sizes ~1e4 is ~1e-10
    assert relative_on_excess(orbit, dense) <= 1e-9
    assert orbit.upper_bound == pytest.approx(dense.upper_bound, rel=1e-13)
    assert orbit.certified == dense.certified and orbit.rank == dense.rank


def test_orbit_bound_at_an_asymmetric_candidate_is_a_valid_lower_bound():
    """A candidate off the orbit symmetry: the bound is taken at its orbit average, a feasible point;
    it must stay below the optimum's loss, and the candidate is refused."""
    problem = make_problem("step etf n_w=100")
    M = collapsed_optimum(problem)
    optimum = collapsed_certificate(problem, M, structure="dense")
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1e-1):
        P = M + scale * rng.normal(size=M.shape)
        P /= np.linalg.norm(P, axis=0)
        cert = collapsed_certificate(problem, P, structure="orbit")
        assert cert.lower_bound <= optimum.upper_bound
        assert cert.upper_bound > optimum.upper_bound
        assert not cert.certified


def test_a_million_samples_cost_what_a_hundred_do():
    W = simplex_etf(100, 100)
    times = []
    for n in (1, 10_000):  # N = 100 and N = 10^6
        problem = UFMProblem.from_sizes([n] * 100, W, 100.0, 0.1)
        start = time.perf_counter()
        cert = collapsed_certificate(problem, W)  # balanced ETF: the optimum is the prototypes' collapse
        times.append(time.perf_counter() - start)
        assert cert.certified, cert.reason
    assert times[1] < 5.0 and times[1] < 10 * times[0] + 1.0


def test_many_classes_use_the_orbit_structure():
    k = 1000
    W = simplex_etf(k, k)
    problem = UFMProblem.from_sizes([100] * (k // 2) + [10] * (k // 2), W, 1000.0, 0.1)
    start = time.perf_counter()
    cert = collapsed_certificate(problem, W)  # the prototypes' collapse: feasible, not optimal here
    seconds = time.perf_counter() - start
    assert cert.solution["structure"] == "orbit" and seconds < 10.0
    assert cert.lower_bound <= cert.upper_bound


def test_arguments_are_checked():
    problem = make_problem("step etf n_w=100")
    M = collapsed_optimum(problem)
    with pytest.raises(ValueError, match=r"means must have shape \(7, 7\)"):
        collapsed_certificate(problem, M[:, :6])
    with pytest.raises(ValueError, match="unit rows"):
        collapsed_certificate(problem, 2 * M)
    with pytest.raises(ValueError, match="structure must be one of"):
        collapsed_certificate(problem, M, structure="sparse")
    with pytest.raises(ValueError, match="structure 'orbit' needs"):
        collapsed_certificate(make_problem("random prototypes (no orbit symmetry)"),
                              collapsed_optimum(make_problem("random prototypes (no orbit symmetry)")),
                              structure="orbit")
    batched = UFMProblem.from_labels(np.repeat(np.arange(3), 2), simplex_etf(3, 3), 1.0, 0.5,
                                     batches=[np.arange(3), np.arange(3, 6)])
    with pytest.raises(ValueError, match="must be full batch"):
        collapsed_certificate(batched, simplex_etf(3, 3))
    with pytest.raises(TypeError, match="upper_bound"):  # the loss is never taken from the caller
        collapsed_certificate(problem, M, upper_bound=1.0)
