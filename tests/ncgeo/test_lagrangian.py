"""The torch objective of the Gram and the rigorous Lagrangian bound (issue 13 items 2 and 4)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

import ncgeo.certify.lagrangian as lagrangian
from ncgeo.certify import dual_certificate, solve_full, solve_orbit, solve_reduced
from ncgeo.certify.dual import candidate_value
from ncgeo.certify.gram_objective import gram_excess, reduced_excess
from ncgeo.certify.lagrangian import reduced_bound, smallest_eigenvalue
from ncgeo.geometry import orthogonal_frame, simplex_etf
from ncgeo.problem import UFMProblem
from ncgeo.ufm import ufm_objective


def _unit_rows(rows, d, rng, nonnegative=False):
    H = rng.standard_normal((rows, d))
    if nonnegative:
        H = np.abs(H)
    return H / np.linalg.norm(H, axis=1, keepdims=True)


def _naive_loss(H, y, W, n_w, tau, batches, anchors):
    """Independent float64 loop over anchors of docs/theory.md section 2 (P = 0 anchors give 0)."""
    total = 0.0
    k = W.shape[1]
    for B in batches:
        for i in B:
            same = [j for j in B if j != i and y[j] == y[i]]
            P = len(same) + n_w
            if P <= 0:
                continue
            D = sum(np.exp(H[i] @ H[j] / tau) for j in B if j != i) + n_w * np.exp(H[i] @ W / tau).sum()
            pos = sum(H[i] @ H[j] / tau for j in same) + n_w * H[i] @ W[:, y[i]] / tau
            total += np.log(D) - pos / P
        if anchors and n_w > 0:
            for c in range(k):
                members = [j for j in B if y[j] == c]
                P = len(members) + n_w - 1
                if P <= 0:
                    continue
                D = (sum(np.exp(W[:, c] @ H[j] / tau) for j in B) + (n_w - 1) * np.exp(W[:, c] @ W[:, c] / tau)
                     + n_w * sum(np.exp(W[:, c] @ W[:, c2] / tau) for c2 in range(k) if c2 != c))
                pos = sum(W[:, c] @ H[j] / tau for j in members) + (n_w - 1) * W[:, c] @ W[:, c] / tau
                total += n_w * (np.log(D) - pos / P)
    return total


@pytest.mark.parametrize("anchors", [False, True])
@pytest.mark.parametrize("n_w", [0.0, 1.0, 1.5, 100.0, 1e6])
def test_gram_objective_equals_the_loss(anchors, n_w):
    """Against an independent loop, with batches where a class is absent (P = n_w - 1 in (0, 1))."""
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 1])
    H = _unit_rows(9, 4, rng)
    W = simplex_etf(3, 4)
    batches = [np.arange(9), np.array([0, 3, 5, 8]), np.array([1, 2, 4])]
    V = np.concatenate([H.T, W], axis=1) if n_w > 0 else H.T
    for tau in (0.05, 1.0):
        value = gram_excess(torch.tensor(V.T @ V), y, batches, n_w, tau, anchors)
        expected = _naive_loss(H, y, W, n_w, tau, batches, anchors)
        assert value.floor + float(value.excess) == pytest.approx(expected, rel=1e-12)
        problem = UFMProblem.from_labels(y, W, n_w, tau, batches=batches, prototypes_as_anchors=anchors)
        assert value.floor == pytest.approx(problem.floor(), rel=1e-14, abs=1e-14)
        assert float(value.excess) >= 0


@pytest.mark.parametrize("anchors", [False, True])
def test_grouped_objective_equals_the_sample_objective(anchors):
    """Groups of identical rows (a = 1) give the loss of the expanded samples."""
    rng = np.random.default_rng(1)
    W = simplex_etf(3, 3)
    reps = _unit_rows(4, 3, rng)
    labels = np.array([0, 1, 1, 2])
    counts = np.array([3.0, 2.0, 1.0, 4.0])
    F = np.concatenate([reps.T * np.sqrt(counts), W], axis=1)
    grouped = reduced_excess(torch.tensor(F.T @ F), counts, labels, 2.0, 0.3, anchors)
    H = np.repeat(reps, counts.astype(int), axis=0)
    y = np.repeat(labels, counts.astype(int))
    expected = float(ufm_objective(torch.tensor(H), torch.tensor(y), torch.tensor(W), 2.0, 0.3, [np.arange(len(y))],
                                   anchors))
    assert grouped.floor + float(grouped.excess) == pytest.approx(expected, rel=1e-12)


def test_excess_is_accurate_at_huge_n_w():
    """The excess is computed without cancellation against the floor (n_w = 1e9)."""
    W = simplex_etf(4, 4)
    problem = UFMProblem.from_sizes([3] * 4, W, 1e9, 0.1)
    y = problem.sample_labels()
    value = reduced_excess(torch.tensor(np.block([[3 * W.T @ W, np.sqrt(3) * W.T @ W],
                                                  [np.sqrt(3) * W.T @ W, W.T @ W]])), [3.0] * 4, np.arange(4),
                           1e9, 0.1)
    # the CE limit of ETF collapse: -log softmax with logits 1/tau and -1/(3 tau), per sample
    ce = np.log1p(3 * np.exp(-(1 + 1 / 3) / 0.1))
    assert float(value.excess) == pytest.approx(12 * ce, rel=1e-6)  # O(|B| / n_w) away from the limit
    assert candidate_value(problem, W[:, y].T, y) == pytest.approx(value.floor + float(value.excess), rel=1e-15)


def _problems():
    rng = np.random.default_rng(7)
    out = []
    for n_w in (0.0, 1.5, 100.0, 1e6):
        for tau in (0.05, 0.1, 1.0):
            for nonnegative in (False, True):
                sizes = rng.integers(1, 4, size=3).tolist()
                W = orthogonal_frame(3) if nonnegative else simplex_etf(3, 3)
                anchors = bool(n_w >= 1 and rng.random() < 0.5)
                out.append(UFMProblem.from_sizes(sizes, W, n_w, tau, nonnegative=nonnegative,
                                                 prototypes_as_anchors=anchors))
    return out


@pytest.mark.parametrize("problem", _problems(), ids=repr)
def test_dual_bound_never_exceeds_a_feasible_loss(problem):
    """At random points, the bound lies below the loss of random feasible points and of its own point."""
    rng = np.random.default_rng(3)
    y = problem.sample_labels()
    losses = [candidate_value(problem, _unit_rows(len(y), 3, rng, problem.nonnegative), y) for _ in range(20)]
    for _ in range(3):
        H = _unit_rows(len(y), 3, rng, problem.nonnegative)
        result = dual_certificate(problem, H)
        assert result.lower_bound <= result.upper_bound
        assert result.lower_bound <= min(losses)
    # at the optimum (collapse onto the prototypes is optimal for large n_w) still below every feasible loss
    optimum = dual_certificate(problem, problem.prototypes[:, y].T)
    assert optimum.lower_bound <= min(losses + [optimum.upper_bound])


@pytest.mark.parametrize("problem", _problems()[::5], ids=repr)
def test_reduced_bound_at_random_relaxation_points(problem):
    """The grouped bound at a random PSD reduced matrix (any point) is below feasible losses."""
    rng = np.random.default_rng(5)
    y = problem.sample_labels()
    k = problem.num_classes
    kp = k if problem.n_w > 0 else 0
    F = rng.standard_normal((k + kp, k + kp))
    R = F @ F.T
    if kp:
        R[k:, k:] = problem.prototype_gram
    bound = reduced_bound(problem, R)
    losses = [candidate_value(problem, _unit_rows(len(y), 3, rng, problem.nonnegative), y) for _ in range(20)]
    assert bound.lower <= min(losses)


@pytest.mark.parametrize("solve", [solve_reduced, solve_orbit])
@pytest.mark.parametrize("n_w,tau", [(0.0, 0.1), (100.0, 0.1), (1e6, 1.0)])
def test_relaxation_bound_is_rigorous_and_tight(solve, n_w, tau):
    """Each method reports the Lagrangian bound: below feasible losses, within 1e-7 of the excess
    of the realised optimum (so the verdicts hold), and close to the solver's own value."""
    problem = UFMProblem.from_sizes([6, 6, 2, 2], simplex_etf(4, 4), n_w, tau)
    result = solve(problem)
    assert result.certified, result.reason
    bound = result.solution["bound"]
    assert result.gap <= 1e-7 * result.excess + 1e-12 * problem.num_anchors()
    assert abs(result.lower_bound - bound["solver_value"]) <= 1e-4 * result.excess
    rng = np.random.default_rng(0)
    y = problem.sample_labels()
    for _ in range(10):
        assert result.lower_bound <= candidate_value(problem, _unit_rows(len(y), 4, rng), y)


def test_full_relaxation_bound_is_rigorous():
    y = np.array([0, 0, 1, 1, 2])
    problem = UFMProblem.from_labels(y, simplex_etf(3, 3), 2.0, 0.5, batches=[np.array([0, 1, 2]), np.array([2, 3, 4])])
    result = solve_full(problem)
    assert np.isfinite(result.lower_bound) and result.solution["bound"]["failure"] is None
    assert result.lower_bound <= result.upper_bound
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert result.lower_bound <= candidate_value(problem, _unit_rows(5, 3, rng), y)


def test_lanczos_is_verified_or_replaced():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((60, 60))
    A = A + A.T
    exact = np.linalg.eigvalsh(A)[0]
    value, how, failure = smallest_eigenvalue(A, dense_max=10)
    assert failure is None and value <= exact + 1e-12 and value >= exact - 1e-6
    assert how.startswith("lanczos, verified") or how.startswith("dense")


def test_failing_lanczos_is_a_result(monkeypatch):
    def broken(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", broken)
    rng = np.random.default_rng(2)
    A = rng.standard_normal((40, 40))
    A = A + A.T
    value, how, failure = smallest_eigenvalue(A, dense_max=10)
    assert failure is None and how.startswith("dense (ARPACK failed") and value == pytest.approx(np.linalg.eigvalsh(A)[0])
    value, how, failure = smallest_eigenvalue(A, dense_max=10, dense_limit=20)
    assert np.isnan(value) and "eigenvalue not verified" in failure
    # through a certificate: not certified with the reason, no exception
    monkeypatch.setattr(lagrangian, "DENSE_LIMIT", 5)
    original = lagrangian.lagrangian_bound

    def small_dense(*args, **kwargs):
        kwargs.update(dense_max=2, dense_limit=5)
        return original(*args, **kwargs)

    monkeypatch.setattr(lagrangian, "lagrangian_bound", small_dense)
    W = simplex_etf(4, 4)
    problem = UFMProblem.from_sizes([2] * 4, W, 2.0, 0.5)
    result = dual_certificate(problem, W[:, problem.sample_labels()].T)
    assert not result.certified and "eigenvalue not verified" in result.reason


@pytest.mark.parametrize("use_symmetry", [True, False])
def test_ce_limit_bound_is_rigorous(use_symmetry):
    """The CE-limit lower bound is the Lagrangian bound: below the CE of random unit means."""
    from ncgeo.certify import certify_ce_limit
    from ncgeo.geometry import random_prototypes

    rng = np.random.default_rng(4)
    for W, tau in ((simplex_etf(5, 5), 0.1), (random_prototypes(6, 4, seed=0), 0.2)):
        result = certify_ce_limit(W, tau, use_symmetry=use_symmetry)
        assert result.certified, result.reason
        assert np.isfinite(result.lower_bound) and result.lower_bound <= result.value
        k = W.shape[1]
        for _ in range(50):
            H = _unit_rows(k, W.shape[0], rng)
            logits = H @ W / tau
            ce = (np.log(np.exp(logits).sum(1)) - np.diag(logits)).sum()
            assert result.lower_bound <= ce


def test_a_nearly_singular_prototype_gram_keeps_the_bound_below_feasible_losses():
    """G_W with an eigenvalue 2e-10 (a prototype tilted by 2e-5 out of R^3): that direction used to be
    treated as carrying no mass, and the bound at the best point restricted to R^3 rose 1.8e-10 above a
    feasible loss (found by the review of 2026-12-06). Now it stays below every loss found."""
    from ncgeo.certify import collapsed_certificate
    from ncgeo.certify.reduced import polish_means

    rng = np.random.default_rng(3)
    k, sizes, n_w, tau = 4, np.array([5.0] * 4), 1.0, 0.3
    W3 = rng.normal(size=(3, k))
    W3 /= np.linalg.norm(W3, axis=0)
    W = np.vstack([W3, np.zeros((1, k))])
    W[3, 0] = 2e-5
    W /= np.linalg.norm(W, axis=0)
    problem = UFMProblem.from_sizes(sizes, W, n_w, tau)
    assert np.linalg.eigvalsh(problem.prototype_gram).min() < 1e-9
    best = min(polish_means(start, sizes, W, n_w, tau, False, False)[1]
               for start in [W] + [rng.normal(size=(4, k)) for _ in range(3)])
    restricted = min((polish_means(start, sizes, W3, n_w, tau, False, False) for start in
                      [W3] + [rng.normal(size=(3, k)) for _ in range(3)]), key=lambda out: out[1])[0]
    cert = collapsed_certificate(problem, np.vstack([restricted, np.zeros((1, k))]))
    assert cert.lower_bound <= best
