"""UFMProblem: validation, derived quantities and the floor F = sum of log P_a (docs/theory.md section 5.1)."""

import numpy as np
import pytest
import torch

from ncgeo.geometry import simplex_etf
from ncgeo.problem import UFMProblem, check_problem
from ncgeo.ufm import make_batches, ufm_objective


def _naive_floor(labels, batches, k, n_w, anchors):
    """Count the positives of every anchor one by one."""
    total = 0.0
    for B in batches:
        yb = labels[B]
        for i in range(len(B)):
            P = int(np.sum(yb == yb[i])) - 1 + n_w
            if P > 0:
                total += np.log(P)
        if anchors and n_w > 0:
            for c in range(k):
                P = int(np.sum(yb == c)) + n_w - 1
                if P > 0:
                    total += n_w * np.log(P)
    return total


@pytest.mark.parametrize("n_w", [0.0, 1.0, 1.5, 100.0, 1e6])
@pytest.mark.parametrize("anchors", [False, True])
@pytest.mark.parametrize("scheme", ["full", "partition"])
def test_floor_equals_naive_count_and_bounds_the_loss(n_w, anchors, scheme):
    sizes = [5, 3, 1, 2]
    labels = np.repeat(np.arange(4), sizes)
    batches = make_batches(labels, scheme, batch_size=4, seed=1) if scheme != "full" else None
    W = simplex_etf(4, 4)
    problem = UFMProblem.from_labels(labels, W, n_w, 0.3, batches=batches, prototypes_as_anchors=anchors)
    blist = [np.arange(len(labels))] if batches is None else batches
    assert problem.floor() == pytest.approx(_naive_floor(labels, blist, 4, n_w, anchors), rel=1e-12, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        H = torch.nn.functional.normalize(torch.randn(len(labels), 4, generator=g, dtype=torch.float64), dim=1)
        loss = float(ufm_objective(H, labels, W, n_w, 0.3, blist, anchors))
        assert loss >= problem.floor() - 1e-9 * max(1.0, abs(loss))


def test_real_weights_and_validation():
    p = UFMProblem.from_sizes([12.8, 12.8, 1.3], simplex_etf(3, 3), n_w=100, tau=0.1)
    assert not p.integral and p.full_batch and p.num_classes == 3 and p.dim == 3
    expected = 2 * 12.8 * np.log(11.8 + 100) + 1.3 * np.log(0.3 + 100)
    assert p.floor() == pytest.approx(expected, rel=1e-14)
    with pytest.raises(ValueError, match="no samples"):
        p.sample_labels()
    with pytest.raises(ValueError, match="prototypes are required"):
        UFMProblem.from_sizes([3, 3], None, n_w=1.0)
    with pytest.raises(ValueError, match="n_w must be 0 or >= 1"):
        UFMProblem.from_sizes([3, 3], simplex_etf(2, 2), n_w=0.5, prototypes_as_anchors=True)
    with pytest.raises(ValueError, match="dim must equal"):
        UFMProblem.from_sizes([3, 3], simplex_etf(2, 2), n_w=1.0, dim=5)
    with pytest.raises(ValueError, match="tau"):
        UFMProblem.from_sizes([3, 3], tau=0.0)
    with pytest.raises(TypeError, match="nonnegative"):
        UFMProblem.from_sizes([3, 3], nonnegative="no")
    with pytest.raises(TypeError, match="problem must be"):
        check_problem([3, 3])


def test_frozen_readonly_and_full_batch_normalised():
    labels = np.array([0, 0, 1, 1])
    p = UFMProblem.from_labels(labels, batches=[np.arange(4)])
    assert p.batches is None and p.full_batch
    with pytest.raises(Exception):
        p.tau = 1.0
    with pytest.raises(ValueError):
        p.class_sizes[0] = 3
    q = p.replace(tau=0.5)
    assert q.tau == 0.5 and p.tau == 0.1
    assert "UFMProblem(k=2" in repr(q)


def test_closed_form_for_problem_matches_the_setup_function():
    from ncgeo.closed_form import closed_form_for_problem, closed_form_for_setup
    from ncgeo.geometry import orthogonal_frame

    W = simplex_etf(4, 4)
    p = UFMProblem.from_sizes([5] * 4, W, 100.0, 0.2)
    assert closed_form_for_problem(p) == closed_form_for_setup([5] * 4, W, 100.0, 0.2)
    assert closed_form_for_problem(p)[1] == "etf"
    plus = UFMProblem.from_sizes([3] * 4, orthogonal_frame(4, 4), 2.0, 0.5, nonnegative=True)
    assert closed_form_for_problem(plus)[1] == "of"
    assert closed_form_for_problem(UFMProblem.from_sizes([5, 5, 5, 2], W, 100.0, 0.2)) is None
    assert closed_form_for_problem(UFMProblem.from_sizes([5.5] * 4, W, 100.0, 0.2)) is None
    labels = np.repeat(np.arange(4), 2)
    assert closed_form_for_problem(UFMProblem.from_labels(labels, W, 1.0, batches=[np.arange(4), np.arange(4, 8)])) is None
    assert closed_form_for_problem(UFMProblem.from_sizes([5] * 4, tau=0.2)) == closed_form_for_setup([5] * 4, None, 0.0, 0.2)
    with pytest.raises(TypeError, match="problem must be"):
        closed_form_for_problem([5] * 4)
