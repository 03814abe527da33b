"""Relaxations: reduced == full SDP, orbit == reduced, closed forms, solver agreement."""

from __future__ import annotations

import numpy as np
import pytest

from ncgeo import UFMProblem
from ncgeo.certify import certify, certify_result, realise_and_certify, solve_full, solve_orbit, solve_reduced
from ncgeo.certify._common import candidate_loss
from ncgeo.certify.full import full_objective
from ncgeo.certify.reduced import reduced_objective
from ncgeo.classes import labels_from_sizes
from ncgeo.closed_form import closed_form_loss
from ncgeo.geometry import orthogonal_frame, simplex_etf
from ncgeo.ufm import make_batches, scheme_problem, solve_ufm

REL = 1e-6

# (sizes, prototypes, n_w, nonnegative, prototypes_as_anchors)
CASES = [
    ([4, 4, 4], "etf", 2.0, False, False),
    ([6, 3, 1], "etf", 2.0, False, True),
    ([5, 5, 2], None, 0.0, False, False),
    ([4, 4, 4], "of", 2.0, True, False),
    ([6, 3, 1], "of", 1.0, True, True),
    ([5, 2, 2], None, 0.0, True, False),
]


def _protos(name, k):
    return None if name is None else simplex_etf(k, k) if name == "etf" else orthogonal_frame(k)


def _rel(a, b):
    return abs(a - b) / abs(b)


def P(sizes, W=None, n_w=0.0, tau=0.1, **kwargs):
    """A full-batch problem (``dim`` defaults to the prototypes' rows, else k)."""
    return UFMProblem.from_sizes(sizes, W, n_w, tau, **kwargs)


def _rel_excess(a, b, floor):
    """Relative difference on the excess over the floor (docs/theory.md section 5.1)."""
    return abs(a - b) / abs(b - floor)


@pytest.mark.parametrize("sizes, protos, n_w, nonneg, anchors", CASES)
def test_reduced_equals_full_sdp(sizes, protos, n_w, nonneg, anchors):
    k = len(sizes)
    W = _protos(protos, k)
    problem = P(sizes, W, n_w, 0.5, nonnegative=nonneg, prototypes_as_anchors=anchors, dim=k)
    reduced, full = solve_reduced(problem), solve_full(problem)
    assert reduced.solver_status == "optimal" and full.solver_status == "optimal"
    assert _rel_excess(reduced.lower_bound, full.lower_bound, problem.floor()) <= 1e-5
    assert reduced.certified and full.certified


@pytest.mark.parametrize("sizes", [[5] * 6, [10, 10, 10, 2, 2, 2], [1, 1, 4, 4, 2.5, 2.5]])
@pytest.mark.parametrize("protos, nonneg, anchors", [("etf", False, False), ("etf", False, True),
                                                     ("of", True, False), (None, False, False), (None, True, False)])
def test_orbit_equals_reduced(sizes, protos, nonneg, anchors):
    k = len(sizes)
    W = _protos(protos, k)
    n_w = 0.0 if W is None else 3.0
    problem = P(sizes, W, n_w, 0.5, nonnegative=nonneg, prototypes_as_anchors=anchors, dim=k)
    reduced, orbit = solve_reduced(problem), solve_orbit(problem)
    assert _rel_excess(reduced.lower_bound, orbit.lower_bound, problem.floor()) <= 1e-5
    if nonneg and W is None and min(sizes) <= 1:
        # singletons without positives leave the optimum non-unique; its factor need not be
        # non-negative, which the result must say rather than certify
        assert orbit.certified or "non-negative" in orbit.reason
    else:
        assert orbit.certified, orbit.reason


def test_orbit_refuses_non_invariant_gram():
    W = simplex_etf(4, 4)
    W = W[:, [0, 1, 2, 3]].copy()
    W[:, 3] = W[:, 0]  # two equal prototypes in one size group: not permutation invariant
    with pytest.raises(ValueError, match="not invariant"):
        solve_orbit(P([3, 3, 3, 3], W, 1.0, 0.5))


@pytest.mark.parametrize("n_w", [0.0, 2.0])
def test_labels_beyond_the_prototypes_are_refused(n_w):
    W = simplex_etf(3, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        UFMProblem.from_labels([0, 1, 2, 3], W, n_w, 0.5)


def test_a_candidate_of_the_wrong_shape_is_refused():
    W = simplex_etf(3, 3)
    with pytest.raises(ValueError, match=r"H must have shape \(3, 3\)"):
        certify(P([1, 1, 1], W, 2.0, 0.5), W.T[[0, 1, 2, 2]], method="dual")


@pytest.mark.parametrize("name, value, error", [
    ("rtol", -1.0, ValueError), ("rtol", 0.0, ValueError), ("rtol", 1.0, ValueError),
    ("rtol", float("nan"), ValueError), ("rtol", True, TypeError), ("rtol", "1e-6", TypeError),
    ("atol", -1e-12, ValueError), ("atol", float("inf"), ValueError), ("atol", "0", TypeError)])
def test_rtol_and_atol_are_checked_by_every_certificate(name, value, error):
    from ncgeo.certify import certify_closed_form, dual_certificate

    W = simplex_etf(3, 3)
    H = W.T[[0, 1, 2]]
    problem = P([1, 1, 1], W, 2.0, 0.5)
    for call in (lambda: certify(problem, H, **{name: value}),
                 lambda: dual_certificate(problem, H, **{name: value}),
                 lambda: realise_and_certify(problem, **{name: value}),
                 lambda: solve_reduced(problem, **{name: value}),
                 lambda: solve_orbit(problem, **{name: value}),
                 lambda: solve_full(problem, **{name: value}),
                 lambda: certify_closed_form(problem, **{name: value})):
        with pytest.raises(error, match=name):
            call()


def test_orbit_large_k_is_fast():
    k = 1000
    sizes = [100] * (k // 2) + [10] * (k - k // 2)
    result = solve_orbit(P(sizes, simplex_etf(k, k), 1000.0, 0.1))
    assert result.certified, result.reason
    assert result.seconds < 5


def test_objectives_match_the_loss():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    H = rng.standard_normal((9, 4))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    W = simplex_etf(3, 4)
    G = np.block([[H @ H.T, H @ W], [W.T @ H.T, W.T @ W]])
    batches = [np.array([0, 3, 5, 1]), np.array([2, 4, 6, 7, 8])]
    for n_w, anchors in [(0.0, False), (2.5, False), (2.5, True), (1.0, True)]:
        Gk = G if n_w > 0 else G[:9, :9]
        for b in (None, batches):
            bl = b if b is not None else [np.arange(9)]
            objective = full_objective(y, 3, W.T @ W, n_w, 0.3, bl, anchors)
            loss = candidate_loss(H, y, W if n_w else None, n_w, 0.3, bl, anchors)
            assert objective.value(Gk) == pytest.approx(loss, rel=1e-12)
            # the rows hold the excess over the floor, which is the problem's floor (docs/theory.md 5.1)
            floor = UFMProblem.from_labels(y, W, n_w, 0.3, batches=b, prototypes_as_anchors=anchors).floor()
            assert objective.floor == pytest.approx(floor, rel=1e-13, abs=1e-13)
            assert objective.excess(Gk) == pytest.approx(loss - floor, rel=1e-9)
    sizes = np.bincount(y).astype(float)
    s = np.sqrt(sizes)
    R = np.block([[(W.T @ W) * np.outer(s, s), (W.T @ W) * s[:, None]], [((W.T @ W) * s[:, None]).T, W.T @ W]])
    for anchors in (False, True):
        objective = reduced_objective(sizes, W.T @ W, 2.0, 0.3, anchors)
        assert objective.value(R) == pytest.approx(candidate_loss(W[:, y].T, y, W, 2.0, 0.3, None, anchors), rel=1e-12)
        assert objective.floor == pytest.approx(P(sizes, W, 2.0, 0.3, prototypes_as_anchors=anchors).floor(),
                                                rel=1e-13)


@pytest.mark.parametrize("kwargs", [
    dict(class_sizes=[10, 10, 2, 2], tau=0.5),
    dict(class_sizes=[6, 6, 6, 2], prototypes=simplex_etf(4, 4), n_w=5.0, tau=0.3),
    dict(class_sizes=[8, 8, 2, 2], prototypes=orthogonal_frame(4), n_w=3.0, tau=0.5, nonnegative=True),
    dict(class_sizes=[5, 5, 5, 5], tau=0.5, nonnegative=True, dim=4),
    dict(class_sizes=[5, 5, 5, 5], prototypes=simplex_etf(4, 4), n_w=10.0, tau=0.2),
])
def test_solver_output_is_certified_and_matches_reduced(kwargs):
    result = solve_ufm(UFMProblem.from_sizes(**kwargs))
    k = len(kwargs["class_sizes"])
    problem = P(kwargs["class_sizes"], kwargs.get("prototypes"), kwargs.get("n_w", 0.0), kwargs["tau"],
                nonnegative=kwargs.get("nonnegative", False), dim=result.H.shape[1])
    reduced = solve_reduced(problem)
    assert _rel_excess(reduced.lower_bound, result.loss, problem.floor()) <= 1e-5
    closed = result.closed_form()
    for method in ("auto", "reduced", "dual"):
        cert = certify_result(result, method=method)
        if closed is not None:
            assert cert.solution["closed_form"]["value"] == pytest.approx(cert.upper_bound, rel=1e-9)
        assert cert.certified, (method, cert.reason)
        assert cert.relative_gap <= REL
    # the reduced optimum's similarities are the solver's geometry
    means = result.metrics.gram_means if hasattr(result.metrics, "gram_means") else None
    y = result.labels
    M = np.stack([result.H[y == c].mean(0) for c in range(k)], axis=1)
    M /= np.linalg.norm(M, axis=0)
    b = reduced.solution["b"]
    off = ~np.eye(k, dtype=bool)
    assert np.allclose((M.T @ M)[off], b[off], atol=2e-3)
    if result.W is not None:
        assert np.allclose(M.T @ result.W, reduced.solution["p"], atol=2e-3)
    assert means is None or np.allclose(np.asarray(means)[off], b[off], atol=2e-3)


def test_full_sdp_certifies_minibatch_solution():
    sizes = [3, 3, 3]
    result = solve_ufm(scheme_problem(sizes, orthogonal_frame(3), 0.0, 0.5, scheme="bind", batch_size=3, nonnegative=True, dim=3))
    cert = certify_result(result, method="full")
    assert cert.method == "full" and cert.certified, cert.reason
    assert certify_result(result, method="dual").certified


def test_random_point_not_certified():
    H = np.random.default_rng(1).standard_normal((15, 3))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    for method in ("auto", "reduced", "dual", "full"):
        cert = certify(P([5, 5, 5], simplex_etf(3, 3), 2.0, 0.5), H, method=method)
        assert not cert.certified and cert.relative_gap > 1e-3
        assert cert.method == method or method == "auto"  # a named method is the one reported


@pytest.mark.parametrize("geometry, nonneg", [("etf", False), ("of", True)])
@pytest.mark.parametrize("n_w", [0.0, 10.0])
def test_closed_forms_match_relaxation(geometry, nonneg, n_w):
    k, n, tau = 4, 6, 0.2
    W = simplex_etf(k, k) if geometry == "etf" else orthogonal_frame(k)
    problem = P([n] * k, W, n_w, tau, nonnegative=nonneg, dim=k)
    reduced = solve_orbit(problem)
    assert _rel_excess(reduced.lower_bound, closed_form_loss(k, n, n_w, tau, geometry), problem.floor()) <= REL


def test_real_weights_and_singletons():
    W = simplex_etf(4, 8)  # d = 8 >= 2k: every relaxation optimum is realisable
    result = solve_reduced(P([12.8, 12.8, 1.0, 0.6], W, 10.0, 0.1))
    assert result.solver_status == "optimal" and np.isfinite(result.lower_bound), result.reason
    assert result.lower_bound <= result.upper_bound
    assert np.all(result.solution["a"][2:] == 1.0)  # no within-class pairs
    # n_c = 1 and n_w = 0: the singleton anchors have no positive and contribute 0
    problem = P([1, 1, 3], None, 0.0, 0.5, dim=3)
    plain, full = solve_reduced(problem), solve_full(problem)
    assert _rel_excess(plain.lower_bound, full.lower_bound, problem.floor()) <= 1e-5


def test_realise_and_certify_large_n():
    H, y, cert = realise_and_certify(P([500] * 6, simplex_etf(6, 6), 100.0, 0.1))
    assert cert.certified, cert.reason
    assert H.shape == (3000, 6) and cert.solution["dual_lower_bound"] <= cert.upper_bound
    assert cert.upper_bound == pytest.approx(candidate_loss(H, y, simplex_etf(6, 6), 100.0, 0.1), rel=1e-9)


def test_realise_and_certify_refuses_a_collapse_that_is_not_optimal():
    """500 vs 50 per class, n_w = 100: the best collapse (gradient 4e-14) is 2.6e-2 above the
    relaxation's bound, 0.73 of its excess; a random-start solve of the same UFM reaches 7.5e-5
    below it (measured 2026-12-06), so it is not the optimum; the first release certified it."""
    H, y, cert = realise_and_certify(P([500] * 3 + [50] * 3, simplex_etf(6, 6), 100.0, 0.1))
    assert not cert.certified and cert.relative_gap > 0.1, cert.reason
    assert cert.lower_bound <= cert.upper_bound


def test_realise_and_certify_discards_an_inaccurate_relaxation_bound(monkeypatch):
    """A relaxation bound above the realised (feasible) loss is wrong and must give way to the
    dual bound. N = 55,000 (10^4 vs 10^3 per class) did this with Clarabel 0.11: its orbit
    bound lay 8e-6 (relative) above the loss, and the point was reported not certified."""
    import dataclasses

    import ncgeo.certify.auto as auto

    sizes, W = [10000] * 5 + [1000] * 5, simplex_etf(10, 10)
    H, y, cert = realise_and_certify(P(sizes, W, 10.0, 0.1))
    assert cert.certified, cert.reason
    assert H.shape == (55000, 10) and abs(cert.relative_gap) < 1e-6
    # the dual bound is used exactly when the relaxation's was discarded, and then says why
    assert (cert.method == "dual") == ("relaxation_discarded" in cert.solution)
    real = auto.solve_orbit  # the same case at a small size, the inaccuracy made certain
    monkeypatch.setattr(auto, "solve_orbit", lambda *a, **kw: dataclasses.replace(
        real(*a, **kw), lower_bound=real(*a, **kw).lower_bound + 1.0))
    H, y, cert = realise_and_certify(P([20] * 3, simplex_etf(3, 3), 10.0, 0.1))
    assert cert.certified and cert.method == "dual", cert.reason
    assert cert.lower_bound == cert.solution["dual_lower_bound"] < cert.solution["relaxation_lower_bound"] - 0.5
    assert "conic solver was inaccurate" in cert.solution["relaxation_discarded"]
    # an inaccurate solve can also look uncollapsed (numpy 2.5 at N = 55,000): the collapsed optimum,
    # polished from the prototypes, is then judged by the dual bound alone
    uncollapsed = lambda *a, **kw: dataclasses.replace(  # noqa: E731
        real(*a, **kw), upper_bound=np.inf, solution={}, reason="relaxation optimum not collapsed")
    monkeypatch.setattr(auto, "solve_orbit", uncollapsed)
    H, y, cert = realise_and_certify(P([20] * 3, simplex_etf(3, 3), 10.0, 0.1))
    assert cert.certified and cert.method == "dual" and H.shape == (60, 3), cert.reason
    assert "relaxation optimum not collapsed" in cert.solution["relaxation_discarded"]
    assert cert.upper_bound == pytest.approx(candidate_loss(H, y, simplex_etf(3, 3), 10.0, 0.1), rel=1e-9)


@pytest.mark.parametrize("prototypes, n_w", [(orthogonal_frame(3), 3.0), (None, 0.0)])
def test_full_ufm_plus_bound_is_the_loss_of_a_nonnegative_point(prototypes, n_w):
    """UFM+: a doubly non-negative relaxation optimum of rank <= d need not factor as H H^T with
    H >= 0 in d dimensions, so its value is an upper bound only through such an H."""
    from ncgeo.certify._common import realise_nonnegative

    y = labels_from_sizes([4, 4, 2])
    cert = solve_full(P([4, 4, 2], prototypes, n_w, 0.5, nonnegative=True, dim=3))
    H = cert.solution["H"]
    assert H.shape == (10, 3) and H.min() >= 0 and np.allclose(np.linalg.norm(H, axis=1), 1)
    assert cert.upper_bound == pytest.approx(candidate_loss(H, y, prototypes, n_w, 0.5), rel=1e-9)
    assert cert.certified, cert.reason  # OF collapse: the realisation attains the bound
    # the fit itself: a completely positive Gram in 3 dimensions is recovered
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(size=(6, 3)))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    fitted = realise_nonnegative(X @ X.T, 6, None, 3)
    assert fitted.min() >= 0 and np.abs(fitted @ fitted.T - X @ X.T).max() < 1e-6


def test_partition_batches_helper_roundtrip():
    y = labels_from_sizes([4, 4])
    batches = make_batches(y, "partition", 4, seed=0)
    result = solve_full(UFMProblem.from_labels(y, None, 0.0, 0.5, batches=batches, dim=2))
    assert np.isfinite(result.lower_bound)


@pytest.mark.parametrize("geometry, nonneg, n_w, anchors", [("etf", False, 0.0, False), ("etf", False, 10.0, False),
                                                            ("of", True, 10.0, False), ("etf", False, 3.0, True)])
def test_closed_form_certificate(geometry, nonneg, n_w, anchors):
    from ncgeo.certify import certify_closed_form
    from ncgeo.ufm import scheme_problem, solve_ufm

    k, n, tau = 4, 5, 0.3
    W = simplex_etf(k, k) if geometry == "etf" else orthogonal_frame(k)
    cert = certify_closed_form(P([n] * k, W, n_w, tau, nonnegative=nonneg, prototypes_as_anchors=anchors))
    assert cert.method == "closed-form" and cert.certified, cert.reason
    assert cert.solution["geometry"] == geometry
    assert cert.upper_bound == pytest.approx(closed_form_loss(k, n, n_w, tau, geometry, prototypes_as_anchors=anchors))
    # the torch solver reaches the same value
    solved = solve_ufm(scheme_problem([n] * k, W, n_w, tau, nonnegative=nonneg, prototypes_as_anchors=anchors))
    assert _rel(solved.loss, cert.upper_bound) <= 1e-8


def test_closed_form_certificate_refuses_other_setups():
    from ncgeo.certify import certify_closed_form

    imbalanced = certify_closed_form(P([5, 5, 1, 1], simplex_etf(4, 4), 10.0, 0.3))
    assert not imbalanced.certified and "no closed form" in imbalanced.reason
    too_small = certify_closed_form(P([5] * 4, None, 0.0, 0.3, dim=2))  # an ETF of 4 points needs d >= 3
    assert not too_small.certified and "rank 3 > d = 2" in too_small.reason, too_small.reason


def test_invalid_inputs_of_the_certificates_are_value_or_type_errors():
    """Each of these raised IndexError, AttributeError or OverflowError, or was certified."""
    from ncgeo.certify import certify_ce_limit, certify_closed_form
    from ncgeo.closed_form import closed_form_for_setup

    W, y = simplex_etf(3, 3), labels_from_sizes([2, 2, 2])
    cases = [
        (lambda: certify_ce_limit(None, 0.1, prototype_gram=[[1, 2], [2, 1]]), "positive semidefinite"),
        (lambda: P([2, 2, 2], 2 * W, 10.0, 0.1), "unit diagonal"),
        (lambda: solve_full(y), "problem must be an ncgeo.UFMProblem"),
        (lambda: certify(P([2, 2, 2], W, 10.0, 0.1), W.T), r"H must have shape \(6, 3\)"),
        (lambda: realise_and_certify(P([2.5, 2, 2], W, 10.0, 0.1)), "integer class sizes"),
        (lambda: solve_reduced(UFMProblem.from_labels(y, W, 10.0, 0.1, batches=[[0, 1, 2], [3, 4, 5]])),
         "problem must be full batch"),
        (lambda: solve_orbit(P([2, 0, 2], W, 10.0, 0.1)), "samples in every class"),
        (lambda: certify_result("solution.npz"), "for a file use certify_result"),
        (lambda: closed_form_for_setup([3, 3, 3], None, -1, 0.1), "n_w must be >= 0"),
        (lambda: certify_closed_form([2, 2, 2]), "problem must be an ncgeo.UFMProblem"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            call()
    assert certify_closed_form(P([2, 2, 2], W.tolist(), 10.0, 0.1)).certified  # a list of columns is fine


def test_reduced_ufm_plus_with_signed_prototypes_reports_its_best_nonnegative_point():
    """UFM+ with a simplex ETF: the reduced (doubly non-negative) relaxation cannot express h >= 0 in the
    prototypes' coordinates and is not tight; the upper bound is the loss of the best non-negative collapsed
    point found (relaxation realisation and random starts), never of an infeasible one, and the reason says so."""
    import torch

    from ncgeo.certify.reduced import SIGNED_UFM_PLUS_STARTS
    from ncgeo.closed_form import collapsed_loss

    W = simplex_etf(4, 4)
    sizes = [12, 12, 3, 3]
    cert = solve_reduced(P(sizes, W, 5.0, 0.2, nonnegative=True, dim=4))
    means = cert.solution["means"]
    assert not cert.certified and means.min() >= 0 and np.allclose(np.linalg.norm(means, axis=0), 1.0)
    value = float(collapsed_loss(torch.as_tensor(means), sizes, torch.as_tensor(W), 5.0, 0.2))
    assert cert.upper_bound == pytest.approx(value, rel=1e-12) and cert.lower_bound <= cert.upper_bound
    assert f"best of {1 + SIGNED_UFM_PLUS_STARTS} non-negative collapsed starts" in cert.reason
    assert "prototypes have negative entries" in cert.reason
    # no random non-negative collapse beats it
    rng = np.random.default_rng(1)
    for _ in range(200):
        M = np.abs(rng.normal(size=(4, 4)))
        M /= np.linalg.norm(M, axis=0)
        assert float(collapsed_loss(torch.as_tensor(M), sizes, torch.as_tensor(W), 5.0, 0.2)) >= cert.upper_bound


def test_reduced_relaxation_optimum_that_is_not_collapsed_is_named_in_the_reason():
    """Imbalance, n_w = 10, tau = 0.1 (the deep tests' tiny run): the relaxation's optimum spreads each class
    (a_c ~ 0.9998 < 1; confirmed by the torch solver in d = 80, which ends below the best collapse), so the
    collapsed point is not certified and the reason says why instead of a bare gap."""
    W = simplex_etf(4, 16)
    cert = solve_reduced(P([24, 24, 12, 12], W, 10.0, 0.1, dim=16))
    assert not cert.certified and "the relaxation's optimum is not collapsed" in cert.reason
    assert cert.solution["a"].max() < 1 - 1e-6


def test_certify_says_why_ufm_plus_with_signed_prototypes_is_not_certified():
    """ncgeo solve --relu with ETF prototypes: the solver's point is reported not certified, and the reason
    says that no certificate is expected for this set-up (not only a bare gap)."""
    from ncgeo.certify import certify

    problem = P([5] * 4, simplex_etf(4, 4), 10.0, 0.1, nonnegative=True)
    solved = solve_ufm(problem, options=dict(restarts=2))
    cert = certify(problem, solved.H)
    assert not cert.certified and "no certificate is expected" in cert.reason
    plain = certify(P([5] * 4, orthogonal_frame(4), 10.0, 0.1, nonnegative=True),
                    np.repeat(np.eye(4), 5, axis=0))
    assert plain.certified and "no certificate is expected" not in plain.reason
