"""Dual certificate, CE-limit program and failure handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ncgeo.certify._program as program
from ncgeo.certify import certify, certify_ce_limit, dual_certificate, solve_full, solve_reduced
from ncgeo.certify.result import CertificateResult
from ncgeo.problem import UFMProblem
from ncgeo.classes import labels_from_sizes
from ncgeo.geometry import etf_gram, orthogonal_frame, random_prototypes, simplex_etf
from ncgeo.ufm import make_batches, scheme_problem, solve_ufm, ufm_objective


def _unit_rows(rows, d, seed):
    H = np.random.default_rng(seed).standard_normal((rows, d))
    return H / np.linalg.norm(H, axis=1, keepdims=True)


def test_collapsed_optimum_certified_any_n():
    W = simplex_etf(10, 10)
    y = labels_from_sizes([1000] * 10)
    cert = dual_certificate(UFMProblem.from_sizes([1000] * 10, W, 1000.0, 0.1), W[:, y].T)
    assert cert.certified and cert.solution["groups"] == 10
    assert cert.seconds < 2


def test_random_point_fails_dual():
    y = labels_from_sizes([5, 5, 5, 5])
    cert = dual_certificate(UFMProblem.from_labels(y, simplex_etf(4, 4), 3.0, 0.5), _unit_rows(20, 4, 3))
    assert not cert.certified and cert.solution["lambda_min"] < 0


def test_dual_bound_is_below_relaxation():
    """At a non-optimal point the dual bound is still a valid lower bound."""
    y = labels_from_sizes([4, 4, 2])
    W = simplex_etf(3, 3)
    problem = UFMProblem.from_labels(y, W, 2.0, 0.5)
    sdp = solve_full(problem)
    for seed in range(3):
        cert = dual_certificate(problem, _unit_rows(10, 3, seed))
        assert cert.lower_bound <= sdp.lower_bound + 1e-6


def test_ufm_plus_needs_nonnegativity_multipliers():
    """OF collapse with OF prototypes: certified for UFM+ only with the G >= 0 multipliers."""
    W = orthogonal_frame(4)
    y = labels_from_sizes([5, 5, 5, 5])
    H = W[:, y].T
    assert dual_certificate(UFMProblem.from_labels(y, W, 3.0, 0.5, nonnegative=True), H).certified
    assert not dual_certificate(UFMProblem.from_labels(y, W, 3.0, 0.5), H).certified


def test_minibatch_binding_certified():
    result = solve_ufm(scheme_problem([4, 4, 4, 4], orthogonal_frame(4), 0.0, 0.5, scheme="bind", batch_size=4,
                                      nonnegative=True, dim=4))
    problem = UFMProblem.from_labels(result.labels, None, 0.0, 0.5, batches=result.batches, nonnegative=True, dim=4)
    cert = dual_certificate(problem, result.H)
    assert cert.certified, cert.reason


def test_dense_and_lanczos_agree():
    y = labels_from_sizes([6, 6, 6])
    H = _unit_rows(18, 3, 5)
    W = simplex_etf(3, 3)
    problem = UFMProblem.from_labels(y, W, 2.0, 0.5)
    dense = dual_certificate(problem, H, snap_tol=0)
    lanczos = dual_certificate(problem, H, snap_tol=0, dense_max=5)
    # the verified Lanczos value lies below the exact one by its verification shift only
    assert lanczos.solution["lambda_min"] <= dense.solution["lambda_min"] + 1e-12
    assert dense.solution["lambda_min"] == pytest.approx(lanczos.solution["lambda_min"], rel=1e-6, abs=1e-8)
    assert lanczos.solution["bound"]["eigenvalue"].startswith("lanczos, verified")


def test_ce_limit_etf_and_of():
    k, tau = 5, 0.1
    etf = certify_ce_limit(simplex_etf(k, k), tau)
    assert etf.certified and np.allclose(etf.gram, etf_gram(k), atol=1e-6)
    of = certify_ce_limit(orthogonal_frame(k), tau)  # no ReLU: the learnt means form an ETF
    assert of.certified and np.allclose(of.gram, etf_gram(k), atol=1e-6)
    of_plus = certify_ce_limit(orthogonal_frame(k), tau, nonnegative=True)
    assert of_plus.certified and np.allclose(of_plus.gram, np.eye(k), atol=1e-4)
    general = certify_ce_limit(orthogonal_frame(k), tau, use_symmetry=False)
    assert general.value == pytest.approx(of.value, rel=1e-6)
    # docs/theory.md section 4: h_y = sqrt((k-1)/k) w_y - sum_{c != y} w_c / sqrt(k(k-1)), so with
    # W = I the optimal p = W^T h_y has sqrt((k-1)/k) on the diagonal and -1/sqrt(k(k-1)) off it
    formula = np.full((k, k), -1 / np.sqrt(k * (k - 1))) + np.eye(k) * (np.sqrt((k - 1) / k) + 1 / np.sqrt(k * (k - 1)))
    assert np.abs(of.p - formula).max() < 1e-9 and np.abs(general.p - formula).max() < 1e-4
    # CE values: h = w_y for ETF prototypes
    expected = np.log(np.exp(1 / tau) + (k - 1) * np.exp(-1 / ((k - 1) * tau))) - 1 / tau
    assert etf.values == pytest.approx(np.full(k, expected), rel=1e-6)
    # like every certificate: bounds, gap, rank vs d, a verdict (docs/theory.md section 5)
    for result, rank in ((etf, k - 1), (of, k - 1), (of_plus, k), (general, k - 1)):
        assert result.upper_bound == result.value and abs(result.relative_gap) < 1e-6
        assert abs(result.lower_bound - result.value) < 1e-6 and (result.rank, result.dim) == (rank, k)
        assert result.verdict().startswith("certified global optimum: gap")
        assert {"lower_bound", "upper_bound", "gap", "rank", "dim"} <= set(result.to_dict())


def test_ce_limit_general_gram_has_unit_means():
    result = certify_ce_limit(random_prototypes(6, 4, seed=0), 0.2)
    assert result.certified and np.allclose(np.diag(result.gram), 1.0, atol=1e-9)


# ------------------------------------------------------------------ failure handling


def _etf_problem(sizes=(4, 4, 4), n_w=2.0, tau=0.5, **kwargs):
    return UFMProblem.from_sizes(list(sizes), simplex_etf(len(sizes), len(sizes)), n_w, tau, **kwargs)


def test_missing_solver_falls_back(monkeypatch):
    monkeypatch.setattr("cvxpy.installed_solvers", lambda: ["SCS"])
    result = solve_reduced(_etf_problem())
    assert result.solution["solver"] == "SCS"
    monkeypatch.setattr("cvxpy.installed_solvers", lambda: [])
    result = solve_reduced(_etf_problem())
    assert isinstance(result, CertificateResult) and not result.certified
    assert "missing solver" in result.reason


def test_missing_solver_named_method_is_not_substituted(monkeypatch):
    monkeypatch.setattr("cvxpy.installed_solvers", lambda: [])
    problem = _etf_problem()
    H = problem.prototypes[:, problem.sample_labels()].T
    named = certify(problem, H, method="reduced")
    assert not named.certified and named.method == "reduced" and "missing solver" in named.reason
    auto = certify(problem, H)  # auto lists every attempt and may use the dual bound
    assert auto.certified and auto.method == "dual"


@pytest.mark.parametrize("status", ["infeasible", "optimal_inaccurate", "unbounded"])
def test_bad_status_not_certified(monkeypatch, status):
    import cvxpy as cp

    def fake_solve(self, *args, **kwargs):
        self._status = status
        return None

    monkeypatch.setattr(cp.Problem, "solve", fake_solve)
    monkeypatch.setattr(cp.Problem, "status", property(lambda self: self._status))
    result = solve_full(UFMProblem.from_labels(labels_from_sizes([2, 2]), None, 0.0, 0.5, dim=2))
    assert not result.certified and status in result.reason


def test_time_limit_not_certified(monkeypatch):
    import cvxpy as cp

    def slow_solve(self, *args, **kwargs):
        raise cp.error.SolverError("Solver 'CLARABEL' failed: time limit reached")

    monkeypatch.setattr(cp.Problem, "solve", slow_solve)
    result = solve_reduced(UFMProblem.from_sizes([3, 3], None, 0.0, 0.5, dim=2), time_limit=0.01)
    assert not result.certified and "time limit" in result.reason


def test_real_time_limit_is_reported():
    problem = UFMProblem.from_labels(labels_from_sizes([8, 8, 8]), simplex_etf(3, 3), 2.0, 0.5)
    result = solve_full(problem, time_limit=1e-4, fallback=False)
    assert isinstance(result, CertificateResult)
    assert not result.certified and "time limit" in result.reason, result.reason


def test_rank_above_d_not_certified():
    # imbalanced plain SCL needs k - 1 = 3 dimensions; d = 2 cannot realise the relaxation
    result = solve_reduced(UFMProblem.from_sizes([10, 10, 2, 2], None, 0.0, 0.5, dim=2))
    assert not result.certified and result.rank > 2 and not result.realisable
    assert "rank 3 > d = 2" in result.reason


def test_verdict_and_to_dict():
    problem = _etf_problem((3, 3, 3))
    cert = dual_certificate(problem, problem.prototypes[:, problem.sample_labels()].T)
    assert cert.verdict().startswith("certified global optimum: gap")
    data = cert.to_dict()
    assert set(["lower_bound", "upper_bound", "gap", "certified", "method", "reason"]) <= set(data)
    import json

    json.dumps(cert.to_dict(include_solution=True))


def test_a_programming_error_in_the_solver_raises(monkeypatch):
    import cvxpy as cp

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cp.Problem, "solve", broken)
    x = cp.Variable()
    with pytest.raises(RuntimeError, match="boom"):
        program.solve_problem(cp.Problem(cp.Minimize(x), [x >= 0]), "CLARABEL")


def test_partition_dual_vs_full():
    y = labels_from_sizes([3, 3])
    batches = make_batches(y, "partition", 3, seed=0)
    problem = UFMProblem.from_labels(y, None, 0.0, 0.5, batches=batches, dim=2)
    full = solve_full(problem)
    dual = dual_certificate(problem, _unit_rows(6, 2, 0))
    assert dual.lower_bound <= full.lower_bound + 1e-6


def test_large_psd_cone_skips_clarabel(monkeypatch):
    monkeypatch.setattr(program, "CLARABEL_MAX_PSD", 4)
    result = solve_reduced(_etf_problem((3, 3, 3)), fallback=False)
    assert not result.certified and "skipped" in result.reason
    result = solve_reduced(_etf_problem((3, 3, 3)))  # falls back to SCS
    assert result.solution["solver"] == "SCS"


def test_infeasible_candidate_is_refused_not_certified():
    # rows of norm 2 have a loss below the UFM optimum: certifying them would be false
    y = np.repeat(np.arange(3), 4)
    H = simplex_etf(3, 3)[:, y].T
    problem = UFMProblem.from_labels(y, None, 0.0, 0.1, dim=3)
    for scale in (2.0, 0.5):
        for method in ("dual", "auto"):
            with pytest.raises(ValueError, match="unit rows"):
                certify(problem, scale * H, method=method)
    with pytest.raises(ValueError, match="non-negative"):
        dual_certificate(problem.replace(nonnegative=True), -np.eye(3)[y])


def test_float32_round_off_is_projected_and_upper_bound_recomputed():
    from ncgeo.certify._common import candidate_loss

    y = np.repeat(np.arange(3), 4)
    H = simplex_etf(3, 3)[:, y].T * (1 + 3e-7)  # float32-sized deviation from the sphere
    problem = UFMProblem.from_labels(y, None, 0.0, 0.1, dim=3)
    cert = certify(problem, H, method="dual")
    exact = candidate_loss(simplex_etf(3, 3)[:, y].T, y, None, 0.0, 0.1)
    assert cert.upper_bound == pytest.approx(exact, rel=1e-12) and cert.certified, cert.reason


def test_float32_solve_is_certified_against_its_float64_loss():
    import dataclasses

    from ncgeo.certify import certify_result
    from ncgeo.certify._common import candidate_loss

    result = solve_ufm(scheme_problem([4, 4, 4], orthogonal_frame(3), 0.0, 0.5, scheme="bind", batch_size=3, nonnegative=True), options=dict(dtype="float32"))
    # exact OF rows need no projection, yet their float32 loss is off by ~1e-7
    H = orthogonal_frame(3)[:, result.labels].T
    loss32 = float(ufm_objective(torch.tensor(H, dtype=torch.float32), result.labels, None, 0.0, 0.5,
                                 result.batches))
    exact = candidate_loss(H, result.labels, None, 0.0, 0.5, result.batches)
    assert loss32 != exact
    cert = certify_result(dataclasses.replace(result, embeddings=H, loss=loss32), method="dual")
    assert cert.upper_bound == pytest.approx(exact, rel=1e-13) and cert.certified, (cert.upper_bound, exact)


@pytest.mark.parametrize("n_w, anchors", [(0.0, False), (3.0, False), (4.0, True)])
def test_candidate_value_over_distinct_rows_equals_the_loss(n_w, anchors):
    from ncgeo.certify._common import candidate_loss
    from ncgeo.certify.dual import candidate_value

    rng = np.random.default_rng(1)
    W = simplex_etf(3, 4)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    H = rng.normal(size=(8, 4))
    H[1] = H[0]  # some rows repeat, others do not
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    problem = UFMProblem.from_labels(y, W, n_w, 0.5, prototypes_as_anchors=anchors)
    for X in (H, W.T[y]):
        assert candidate_value(problem, X, y) == pytest.approx(
            candidate_loss(X, y, W if n_w > 0 else None, n_w, 0.5, None, anchors), rel=1e-12)


def test_certify_prices_a_collapsed_candidate_without_the_n_squared_loss(monkeypatch):
    """certify() computed the candidate's loss over all N rows (O(N^2): N = 55,000 needed 24 GB);
    a collapsed full-batch candidate is now priced over its k distinct rows."""
    import ncgeo.certify.dual as dual
    from ncgeo.certify._common import candidate_loss

    W = simplex_etf(4, 4)
    y = np.repeat(np.arange(4), [900, 900, 100, 100])
    H = W.T[y]
    expected = candidate_loss(H, y, W, 10.0, 0.1)

    def refuse(*args, **kwargs):
        raise AssertionError("the O(N^2) loss was computed")

    monkeypatch.setattr(dual, "candidate_loss", refuse)
    cert = certify(UFMProblem.from_labels(y, W, 10.0, 0.1), H)
    assert cert.upper_bound == pytest.approx(expected, rel=1e-12)


def test_a_stated_loss_is_never_trusted():
    """The certificates compute the candidate's loss themselves: a caller's claim of it between L and the
    true loss would certify a point that is not optimal (a 20-degree rotation of the optimum here), so
    ``upper_bound`` is no argument of any certificate."""
    from ncgeo.certify import collapsed_certificate

    W = simplex_etf(3, 3)
    y = np.repeat(np.arange(3), 2)
    problem = UFMProblem.from_labels(y, W, 10.0, 0.1)
    assert certify(problem, np.repeat(W.T, 2, 0)).upper_bound == pytest.approx(14.38737564, rel=1e-8)
    theta = np.deg2rad(20)
    rotation = np.eye(3)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    M = rotation @ W
    H = np.repeat(M.T, 2, 0)
    stated = certify(problem, np.repeat(W.T, 2, 0)).lower_bound  # the optimum's value: a false claim for H
    for call in (lambda **kw: certify(problem, H, **kw), lambda **kw: dual_certificate(problem, H, **kw),
                 lambda **kw: collapsed_certificate(problem, M, **kw)):
        with pytest.raises(TypeError, match="upper_bound"):
            call(upper_bound=stated)
        result = call()
        assert not result.certified and result.upper_bound > stated + 1e-3, result.reason


def test_certificate_arguments_are_checked_before_any_work(tmp_path):
    """A truthy string ("false", "no") used to switch UFM+ on; a bad solver was silently replaced,
    and dim / time_limit / upper_bound of the wrong type failed late with generic messages."""
    from ncgeo.certify import certify_result
    from ncgeo.ufm import load_npz, scheme_problem, solve_ufm

    W = simplex_etf(3, 3)
    H, y = np.repeat(W.T, 2, 0), np.repeat(np.arange(3), 2)
    problem = UFMProblem.from_labels(y, W, 1.0, 0.1)
    cases = [
        (lambda: UFMProblem.from_labels(y, W, 1.0, 0.1, nonnegative="false"), TypeError,
         "nonnegative must be True or False"),
        (lambda: certify(problem, H, solver="FOO"), ValueError, "solver must be one of"),
        (lambda: certify(problem, H, time_limit="x"), TypeError, "time_limit must be a real number"),
        (lambda: certify(problem, H, time_limit=-1), ValueError, "time_limit must be > 0"),
        (lambda: UFMProblem.from_sizes([2, 2, 2], W, 1.0, 0.1, dim="3"), TypeError, "dim must be an integer"),
        (lambda: UFMProblem.from_sizes([2, 2, 2], None, 0.0, 0.1, dim=0), ValueError, "dim must be an integer >= 1"),
        (lambda: certify_ce_limit(W, 0.1, solver="MOSEK"), ValueError, "solver must be one of"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind, match=message):
            call()
    result = solve_ufm(scheme_problem([2, 2], None, 0.0, 0.5))
    result.save_npz(tmp_path / "sol.npz")
    with np.load(tmp_path / "sol.npz") as data:
        arrays = {name: data[name] for name in data.files}
    import json

    settings = json.loads(str(arrays["settings"]))
    arrays["settings"] = np.array(json.dumps({**settings, "nonnegative": "false"}))
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(TypeError, match=r"settings\['nonnegative'\] must be True or False, got 'false'"):
        certify_result(load_npz(tmp_path / "edited.npz"))


def test_every_method_accepts_prototypes_within_round_off_of_unit_length():
    """The reduced program checked unit length to 1e-8 while the dual took 1e-5: W (1 + 1e-7), a
    float32 round-off, was certified by one method and refused by another."""
    W = simplex_etf(3, 3)
    H, y = np.repeat(W.T, 2, 0), np.repeat(np.arange(3), 2)
    for method in ("auto", "dual", "reduced", "orbit"):
        problem = UFMProblem.from_labels(y, W * (1 + 1e-7), 1.0, 0.1)
        assert certify(problem, H, method=method).certified, method
    # between the two old rules (|w| - 1 <= 1e-6 and |w|^2 - 1 <= 1e-6): refused up front
    for scale in (1 + 6e-7, 1 + 1e-4):
        with pytest.raises(ValueError, match="unit diagonal"):
            UFMProblem.from_labels(y, W * scale, 1.0, 0.1)


@pytest.mark.parametrize("tau", [0.1, 0.2, 1.0])
def test_ce_limit_ufm_plus_with_signed_prototypes_is_certified(tau):
    """UFM+ with the sweep's simplex ETF (k = d = 10, negative entries): h >= 0 is linear in h, the
    per-class program is convex, and the bound in coordinates certifies it; independent check: scipy's
    SLSQP on the sphere's non-negative part from 10 random starts per class never ends below the
    certified value, and its best start reaches it."""
    k = 10
    W = simplex_etf(k, k)
    result = certify_ce_limit(W, tau, nonnegative=True)
    assert result.certified, result.reason
    assert result.means.min() >= 0 and np.allclose(np.linalg.norm(result.means, axis=0), 1.0)
    assert result.lower_bound <= result.value and result.to_dict()["relative_gap"] < 1e-6
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    for y in range(k):
        def ce(h, y=y):
            q = W.T @ h / tau
            return np.log(np.exp(q - q.max()).sum()) + q.max() - q[y]

        found = []
        for _ in range(10):
            start = np.abs(rng.normal(size=k))
            out = minimize(ce, start / np.linalg.norm(start), method="SLSQP", bounds=[(0, None)] * k,
                           constraints=[{"type": "eq", "fun": lambda h: h @ h - 1}],
                           options={"ftol": 1e-14, "maxiter": 500})
            h = np.clip(out.x, 0, None) / np.linalg.norm(np.clip(out.x, 0, None))
            found.append(ce(h))
        assert min(found) >= result.values[y] - 1e-9
        assert min(found) == pytest.approx(result.values[y], rel=1e-4, abs=1e-9)


def test_ce_limit_ufm_plus_inactive_norm_bound_is_not_certified():
    """Random signed prototypes in d < k: for some classes no unit h >= 0 favours them, the ball optimum
    lies inside and the relaxation is not exact: refused, and the reason says why."""
    result = certify_ce_limit(random_prototypes(7, 5, seed=1), 0.1, nonnegative=True)
    assert not result.certified and "norm bound ||h|| <= 1 is not active" in result.reason


def test_ce_geometry_pinned_says_when_the_ce_optimum_is_unique():
    """ncgeo.certify.ce_geometry_pinned: the certified CE limit of ETF (signed) and OF (UFM+) prototypes
    has a non-zero class gradient, so its class means are unique. UFM+ with the simplex ETF of R^10 is
    certified but not pinned by this (sufficient) test: class 6's prototype has one small positive
    entry, its optimum puts almost all its mass on the zero row of W, where the loss is flat and the
    ball's optimum is not unique. An uncertified result pins nothing."""
    from ncgeo.certify import ce_geometry_pinned

    for W, nonnegative in ((simplex_etf(5, 5), False), (orthogonal_frame(5), True)):
        result = certify_ce_limit(W, 0.2, nonnegative=nonnegative)
        pinned, line = ce_geometry_pinned(result, W, 0.2, nonnegative)
        assert result.certified and pinned and line.startswith("geometry certified"), line
    W = simplex_etf(10, 10)
    result = certify_ce_limit(W, 0.2, nonnegative=True)
    pinned, line = ce_geometry_pinned(result, W, 0.2, True)
    assert result.certified and not pinned and "geometry not pinned" in line
    assert result.means[9, 6] > 0.99  # the flat coordinate
    W = random_prototypes(7, 5, seed=1)
    result = certify_ce_limit(W, 0.1, nonnegative=True)
    assert ce_geometry_pinned(result, W, 0.1, True) == (False, "geometry not certified: the CE limit is not certified")


def test_ce_limit_ufm_plus_with_nonnegative_prototypes_is_certified_in_coordinates():
    """Entrywise non-negative prototypes that are not an orthogonal frame: the Gram form (h.w >= 0 only) left
    gaps of 0.2 to 240; the bound in coordinates certifies, and stays below the CE of non-negative unit means."""
    rng = np.random.default_rng(0)
    for d, k in ((6, 4), (3, 5)):
        W = np.abs(rng.normal(size=(d, k))) * (rng.random((d, k)) < 0.5) + 1e-3
        W /= np.linalg.norm(W, axis=0)
        result = certify_ce_limit(W, 0.2, nonnegative=True)
        assert result.certified, result.reason
        H = np.abs(rng.normal(size=(200, d)))
        H /= np.linalg.norm(H, axis=1, keepdims=True)
        logits = H @ W / 0.2
        ce = np.log(np.exp(logits).sum(1))[:, None] - logits  # (samples, class)
        assert result.lower_bound <= ce.min(axis=0).sum() + 1e-12
