"""UFM solver: batching, objective, reduced/closed forms, optimiser, result files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ncgeo.classes import labels_from_sizes
from ncgeo.closed_form import closed_form_for_setup, closed_form_loss, collapsed_loss
from ncgeo.geometry import orthogonal_frame, random_prototypes, simplex_etf
from ncgeo.losses import materialise_prototypes, scl_prototype_loss, supcon_loss_materialised
from ncgeo.ufm import (
    load_npz,
    make_batches,
    riemannian_lbfgs,
    scheme_problem,
    solve_ufm,
    stationarity_residual,
    ufm_objective,
)


def _unit_rows(rows, d, seed, nonnegative=False):
    x = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x.abs() if nonnegative else x, dim=1)


# ------------------------------------------------------------------ batching

def test_make_batches_full_and_partition():
    y = labels_from_sizes([5, 4, 3])
    assert [b.tolist() for b in make_batches(y, "full")] == [list(range(12))]
    batches = make_batches(y, "partition", 5, seed=3)
    assert [len(b) for b in batches] == [5, 5, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(12))
    same = make_batches(y, "partition", 5, seed=3, epoch=7)
    assert all(np.array_equal(a, b) for a, b in zip(batches, same))
    other = make_batches(y, "partition", 5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_make_batches_shuffle_changes_every_epoch():
    y = labels_from_sizes([6, 6])
    first, second = make_batches(y, "shuffle", 4, seed=0, epoch=0), make_batches(y, "shuffle", 4, seed=0, epoch=1)
    for batches in (first, second):
        assert sorted(np.concatenate(batches).tolist()) == list(range(12))
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    again = make_batches(y, "shuffle", 4, seed=0, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(second, again))


def test_make_batches_bind_adds_one_fixed_sample_per_class():
    y = labels_from_sizes([4, 4, 4])
    batches = make_batches(y, "bind", 3, seed=1)
    bound = set(batches[0].tolist())
    for b in batches:
        assert sorted(set(y[b].tolist())) == [0, 1, 2]
    common = set.intersection(*(set(b.tolist()) for b in batches))
    assert len(common) == 3 and sorted(y[list(common)].tolist()) == [0, 1, 2]
    rest = np.concatenate([np.setdiff1d(b, list(common)) for b in batches])
    assert sorted(rest.tolist()) == sorted(set(range(12)) - common)
    assert [len(b) for b in batches] == [6, 6, 6]
    assert bound >= common


@pytest.mark.parametrize("kwargs, match", [
    (dict(scheme="partition"), "batch_size is required"),
    (dict(scheme="partition", batch_size=1), "batch_size must be an integer >= 2"),
    (dict(scheme="nope", batch_size=2), "batching must be one of"),
])
def test_make_batches_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_batches(labels_from_sizes([3, 3]), **kwargs)


# ------------------------------------------------------------------ objective

@pytest.mark.parametrize("anchors", [False, True])
def test_ufm_objective_equals_materialised_per_batch_sum(anchors):
    sizes, n_w, tau = [4, 3, 2], 3, 0.3
    y = labels_from_sizes(sizes)
    W = torch.tensor(random_prototypes(3, 4, seed=0))
    H = _unit_rows(len(y), 4, seed=1)
    batches = make_batches(y, "bind", 2, seed=2)
    expected = 0.0
    for b in batches:
        features, labels, is_proto = materialise_prototypes(H[b], y[b], W, n_w)
        expected += float(supcon_loss_materialised(features, labels, tau, None if anchors else ~is_proto))
    value = ufm_objective(H, y, W, n_w, tau, batches, prototypes_as_anchors=anchors)
    assert float(value) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ closed forms

@pytest.mark.parametrize("anchors", [False, True])
def test_collapsed_loss_equals_loss_of_expanded_configuration(anchors):
    sizes, n_w, tau = [3, 1, 5], 2.0, 0.2
    M = _unit_rows(3, 5, seed=4).T
    W = torch.tensor(random_prototypes(3, 5, seed=5))
    y = labels_from_sizes(sizes)
    expanded = scl_prototype_loss(M.T[y], y, W, n_w, tau, prototypes_as_anchors=anchors)
    value = collapsed_loss(M, sizes, W, n_w, tau, prototypes_as_anchors=anchors)
    assert float(value) == pytest.approx(float(expanded), rel=1e-12)


@pytest.mark.parametrize("geometry, anchors, n_w", [("etf", False, 10.0), ("of", False, 3.0),
                                                     ("etf", True, 5.0), ("of", True, 1.0), ("etf", False, 0.0)])
def test_closed_form_equals_loss_at_aligned_collapse(geometry, anchors, n_w):
    k, n, tau = 4, 3, 0.1
    W = torch.tensor(simplex_etf(k, k) if geometry == "etf" else orthogonal_frame(k))
    y = labels_from_sizes([n] * k)
    direct = scl_prototype_loss(W.T[y], y, W, n_w, tau, prototypes_as_anchors=anchors)
    assert closed_form_loss(k, n, n_w, tau, geometry, prototypes_as_anchors=anchors) == pytest.approx(
        float(direct), rel=1e-12)


def test_closed_form_is_finite_for_small_tau_and_large_n_w():
    assert np.isfinite(closed_form_loss(10, 100, 1e9, 0.01, "etf"))


def test_closed_form_for_setup_cases():
    etf, of = simplex_etf(4, 4), orthogonal_frame(4)
    assert closed_form_for_setup([5] * 4, etf, 10, 0.1)[1] == "etf"
    assert closed_form_for_setup([5] * 4, of, 0, 0.1, nonnegative=True)[1] == "of"
    assert closed_form_for_setup([5] * 4, of, 10, 0.1, nonnegative=True)[1] == "of"
    assert closed_form_for_setup([5] * 4, of, 10, 0.1) is None  # OF prototypes without ReLU
    assert closed_form_for_setup([5, 5, 1, 1], etf, 10, 0.1) is None  # imbalance
    assert closed_form_for_setup([5] * 4, etf, 10, 0.1, batching="bind") is None


# ------------------------------------------------------------------ optimiser

@pytest.mark.parametrize("nonnegative", [False, True])
def test_riemannian_lbfgs_linear_objective(nonnegative):
    a = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def objective(x):
        return -(x * a).sum(), -a

    start = _unit_rows(6, 3, seed=1, nonnegative=nonnegative)
    out = riemannian_lbfgs(objective, start, nonnegative=nonnegative, grad_tol=1e-12)
    target = a.clamp(min=0) if nonnegative else a
    target = torch.where(target.norm(dim=1, keepdim=True) > 0, target, torch.nn.functional.one_hot(
        a.argmax(dim=1), 3).to(a.dtype))
    assert out.grad_norm <= 1e-12
    assert torch.allclose(out.x, torch.nn.functional.normalize(target, dim=1), atol=1e-10)


@pytest.mark.parametrize("n_w, anchors", [(0.0, False), (30.0, False), (30.0, True)])
def test_minimise_collapsed_reaches_the_etf_closed_form_and_restores_threads(n_w, anchors):
    from ncgeo.ufm.collapsed import minimise_collapsed

    W = torch.as_tensor(simplex_etf(4, 4))
    threads = torch.get_num_threads()
    out = minimise_collapsed(_unit_rows(4, 4, seed=3, nonnegative=False), [7] * 4, W if n_w else None, n_w, 0.2,
                             nonnegative=False, prototypes_as_anchors=anchors, grad_tol=1e-12,
                             max_iterations=2000, single_thread=True)
    assert torch.get_num_threads() == threads
    assert out.grad_norm <= 1e-12
    assert float(out.value) == pytest.approx(closed_form_loss(4, 7, n_w, 0.2, prototypes_as_anchors=anchors),
                                             rel=1e-12)
    assert torch.allclose(out.x @ out.x.T, W.T @ W, atol=1e-6)  # a simplex ETF
    if n_w:  # aligned with the prototypes
        assert torch.allclose(out.x, W.T, atol=1e-6)


# ------------------------------------------------------------------ solver

def _projected_grad_norm(result, batches=None, nonnegative=False):
    H = torch.tensor(result.H, requires_grad=True)
    W = None if result.W is None else torch.tensor(result.W)
    value = ufm_objective(H, result.labels, W, result.settings["n_w"], result.settings["tau"],
                          batches or make_batches(result.labels, "full"), result.settings["prototypes_as_anchors"])
    (grad,) = torch.autograd.grad(value, H)
    return float(value.detach()), float(stationarity_residual(H.detach(), grad, nonnegative).norm())


@pytest.mark.parametrize("init", ["random", "collapsed"])
def test_full_batch_reaches_gradient_tolerance_and_closed_form(init):
    W = simplex_etf(5, 5)
    result = solve_ufm(scheme_problem([6] * 5, W, 20, 0.2), options=dict(init=init))
    assert result.stopping_reason == "gradient norm below tolerance"
    value, grad_norm = _projected_grad_norm(result)
    assert grad_norm <= 1e-9 and result.grad_norm <= 1e-9
    assert value == pytest.approx(result.loss, rel=1e-13)
    closed = result.closed_form()
    assert closed is not None and closed[1] == "etf"
    assert result.loss == pytest.approx(closed[0], rel=1e-10)
    assert result.settings["start"] == init


def test_ufm_plus_rows_nonnegative_unit_and_kkt():
    result = solve_ufm(scheme_problem([5, 4, 3], random_prototypes(3, 4, seed=0, nonnegative=True), 2, 0.3, nonnegative=True), options=dict(init="random", restarts=2, seed=3))
    assert np.all(result.H >= 0)
    assert np.allclose(np.linalg.norm(result.H, axis=1), 1.0)
    _, kkt = _projected_grad_norm(result, nonnegative=True)
    assert kkt <= 1e-9
    assert result.loss <= min(result.restart_losses) + 1e-12 * abs(result.loss)
    assert len(result.restart_losses) == 2 and result.settings["starts"] == ["random", "random"]


@pytest.mark.parametrize("batching", ["partition", "bind"])
def test_fixed_batches_minimise_the_deterministic_sum(batching):
    result = solve_ufm(scheme_problem([4, 4, 4], None, 0.0, 0.5, scheme=batching, batch_size=3, seed=2), options=dict(seed=2))
    batches = make_batches(result.labels, batching, 3, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(batches, result.batches))
    value, grad_norm = _projected_grad_norm(result, batches)
    assert value == pytest.approx(result.loss, rel=1e-13)
    assert grad_norm <= 1e-9


def test_shuffle_reports_full_batch_objective():
    result = solve_ufm(scheme_problem([4, 4], None, 0.0, 0.5), "adam", options=dict(max_iterations=15, learning_rate=0.05, batch_size=4))
    value, grad_norm = _projected_grad_norm(result)
    assert result.iterations == 15 and len(result.loss_history) == 15
    assert result.loss == pytest.approx(value, rel=1e-12)
    assert result.grad_norm == pytest.approx(grad_norm, rel=1e-6)
    assert result.batches is None


def test_float32_solve_stops_and_reports():
    result = solve_ufm(scheme_problem([5, 5, 5], simplex_etf(3, 3), 5, 0.2), options=dict(dtype="float32", init="random"))
    assert result.settings["dtype"] == "float32" and result.grad_norm <= 1e-3
    assert result.H.dtype == np.float64
    # the keys that metadata may not overwrite are exactly the ones the solve writes
    from ncgeo.ufm.solver import SETTINGS_KEYS

    assert set(result.settings) == set(SETTINGS_KEYS)
    tagged = solve_ufm(scheme_problem([2, 2], None, 0, 0.5), metadata={"note": "x"})
    assert set(tagged.settings) == set(SETTINGS_KEYS) | {"note"}


def test_solve_rejects_bad_input():
    with pytest.raises(ValueError, match="problem.class_sizes must be integers >= 1 for k >= 2 classes"):
        solve_ufm(scheme_problem([5], None))
    with pytest.raises(ValueError, match="prototypes are required"):
        solve_ufm(scheme_problem([5, 5], None, 1))
    with pytest.raises(ValueError, match=r"shape \(d, 2\)"):
        solve_ufm(scheme_problem([5, 5], simplex_etf(3, 3), 1))
    with pytest.raises(ValueError, match="dim must equal"):
        solve_ufm(scheme_problem([5, 5], simplex_etf(2, 2), 1, dim=3))
    with pytest.raises(ValueError, match="unit diagonal"):
        solve_ufm(scheme_problem([5, 5], 2 * simplex_etf(2, 2), 1))
    with pytest.raises(ValueError, match="batch_size is required"):  # before any solve
        solve_ufm(scheme_problem([5, 5], None, scheme="bind"))
    with pytest.raises(ValueError, match="class_sizes\\[1\\]"):
        solve_ufm(scheme_problem([5, 0], None))


def test_save_and_load_npz_round_trip(tmp_path):
    result = solve_ufm(scheme_problem([3, 3, 3], orthogonal_frame(3), 2, 0.3, scheme="partition", batch_size=4), metadata={"geometry": "of"})
    path = tmp_path / "sol.npz"
    result.save_npz(path)
    assert os.listdir(tmp_path) == ["sol.npz"]
    saved = load_npz(path)
    assert np.array_equal(saved.H, result.H) and np.array_equal(saved.labels, result.labels)
    assert np.array_equal(saved.W, result.W)
    assert saved.settings == result.settings and saved.settings["geometry"] == "of"
    assert saved.summary["loss"] == result.loss
    assert all(np.array_equal(a, b) for a, b in zip(saved.batches, result.batches))
    without = solve_ufm(scheme_problem([2, 2], None, 0.0, 0.5))
    without.save_npz(tmp_path / "none.npz")
    assert load_npz(tmp_path / "none.npz").W is None


def test_load_npz_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks H \(or the class means M\), y, W, settings"):
        load_npz(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"'.*text.npz' is not an .npz archive \(written by ncgeo solve --save\)$"):
        load_npz(tmp_path / "text.npz")  # numpy alone calls any non-zip file "pickled (object) data"
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="is not an .npz archive"):
        load_npz(tmp_path / "array.npy")


def test_prototype_anchors_full_batch_matches_closed_form_from_random_start():
    result = solve_ufm(scheme_problem([3] * 3, simplex_etf(3, 3), 5, 0.2, prototypes_as_anchors=True), options=dict(init="random"))
    assert result.grad_norm <= 1e-9
    assert result.loss == pytest.approx(closed_form_loss(3, 3, 5, 0.2, "etf", prototypes_as_anchors=True), rel=1e-10)


def test_progress_lines_go_to_stderr(capsys):
    from ncgeo.ufm.solver import _Progress

    reporter = _Progress(True, restarts=2, after=0.0)
    reporter.stage("reduced problem")
    reporter(3, 1.5, 2e-3)
    reporter.restart = 1
    reporter(7, 1.25, float("nan"), unit="epoch")
    reporter.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert "solving, restart 1/2: reduced problem" in lines
    assert any(line.startswith("solving, restart 1/2: 3 iterations") and "loss 1.5, grad norm 2.00e-03" in line
               for line in lines), lines
    assert any(line.startswith("solving, restart 2/2: 7 epochs") and line.endswith("loss 1.25]") for line in lines)
    silent = _Progress(False, restarts=1, after=0.0)
    silent.stage("reduced problem")
    silent(1, 1.0, 1.0)
    silent.close()
    assert capsys.readouterr().err == ""


def test_a_solve_shorter_than_the_delay_prints_nothing(capsys):
    solve_ufm(scheme_problem([3] * 3, simplex_etf(3, 3), 5, 0.2), options=dict(progress=True))
    assert capsys.readouterr().err == ""


def test_auto_init_adds_a_collapsed_start_for_the_full_batch():
    from ncgeo.ufm.solver import AUTO_RANDOM_START_MAX_SAMPLES, _start_kinds

    assert _start_kinds("auto", "full", 1, 100) == ["collapsed", "random"]
    assert _start_kinds("auto", "full", 2, AUTO_RANDOM_START_MAX_SAMPLES + 1) == ["collapsed", "random"]
    assert _start_kinds("auto", "full", 1, AUTO_RANDOM_START_MAX_SAMPLES + 1) == ["collapsed"]
    assert _start_kinds("auto", "bind", 2, 100) == ["random", "random"]
    assert _start_kinds("collapsed", "full", 2, 100) == ["collapsed", "collapsed"]
    result = solve_ufm(scheme_problem([4, 4, 4], simplex_etf(3, 3), 10, 0.2))
    assert result.settings["starts"] == ["collapsed", "random"] and len(result.restart_losses) == 2
    # the two starts reach the same optimum; a tie within round-off keeps the collapsed one
    assert result.restart_losses[1] == pytest.approx(result.restart_losses[0], rel=1e-12)
    assert result.settings["start"] == "collapsed"


def test_solve_refuses_a_dimension_that_cannot_fit_in_memory():
    from ncgeo.ufm.solver import check_memory

    check_memory(30, 3, 3)  # small: fine
    with pytest.raises(ValueError, match=r"^dim: .* GB"):
        solve_ufm(scheme_problem([10, 10, 10], None, dim=10**9))
    big = scheme_problem([100_000] * 3, None)  # one batch of 300,000 samples
    with pytest.raises(ValueError, match=r"^batch: .* GB"):
        solve_ufm(big, "lbfgs", options=dict(stream=False))
    check_memory(300_000, 3, 3, batching="partition", batch_size=100)  # small batches fit


def test_load_npz_refuses_inconsistent_batch_offsets(tmp_path):
    result = solve_ufm(scheme_problem([4, 4], None, 0.0, 0.5, scheme="partition", batch_size=4, seed=0), options=dict(seed=0))
    result.save_npz(tmp_path / "good.npz")
    assert len(load_npz(tmp_path / "good.npz").batches) == 2
    with np.load(tmp_path / "good.npz") as data:
        arrays = {name: data[name] for name in data.files}
    for offsets in ([0, 50, 3], [0, 8, 4, 8], [1, 8], [0.0, 4.0, 8.0]):
        np.savez(tmp_path / "bad.npz", **{**arrays, "batch_offsets": np.array(offsets)})
        with pytest.raises(ValueError, match="batch_offsets must be non-decreasing integers from 0"):
            load_npz(tmp_path / "bad.npz")


def test_ufm_objective_checks_its_batches_and_shapes():
    from ncgeo.ufm import ufm_objective

    H = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1)
    y = np.array([0, 0, 1, 1, 2, 2])
    for batch in ([0, -1], [0.7, 5.9], [0, 9]):  # -1 used to wrap and 0.7 to truncate
        with pytest.raises(ValueError, match=r"batches\[0\] must be a 1-D array of sample indices in \[0, 5\]"):
            ufm_objective(H, y, None, 0.0, 0.1, [batch])
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        ufm_objective(H, y[:4], None, 0.0, 0.1, [np.arange(4)])
    with pytest.raises(ValueError, match="H must be a 2-D"):
        ufm_objective(H[0], y, None, 0.0, 0.1, [np.arange(3)])


def test_solve_arguments_are_checked_before_the_solve():
    """metadata clashing with the settings and a string time_limit failed only after the solve;
    a truthy string made nonnegative='no' a UFM+ solve."""
    problem = scheme_problem([2, 2], None, 0.0, 0.5)
    cases = [
        (dict(metadata={"n_w": 3}), ValueError, "must not redefine the solve's own settings: n_w"),
        (dict(metadata="abc"), TypeError, "metadata must be a dict"),
        (dict(options={"time_limit": "5"}), TypeError, "time_limit'\\] must be a real number"),
        (dict(options={"time_limit": -1}), ValueError, "time_limit'\\] must be > 0"),
        (dict(method="adam", options={"batch_size": "4"}), TypeError, "batch_size'\\] must be an integer"),
        (dict(options={"tolerance": 1e-3}), ValueError, "options has unknown keys 'tolerance'"),
        (dict(options=[("seed", 1)]), TypeError, "options must be a dict"),
        (dict(method="newton"), ValueError, "method must be one of"),
        (dict(method="adam"), ValueError, "batch_size'\\] is required by method 'adam'"),
        # an option the named method never reads is refused, not silently ignored ("auto" accepts them all)
        (dict(method="lbfgs", options={"batch_size": 4}), ValueError, "batch_size'\\] does not apply to method 'lbfgs'"),
        (dict(method="lbfgs", options={"certify": False}), ValueError, "certify'\\] does not apply"),
        (dict(method="collapsed", options={"restarts": 3}), ValueError, "restarts'\\] does not apply"),
        (dict(method="collapsed", options={"dtype": "float32"}), ValueError, "dtype'\\] does not apply"),
        (dict(method="adam", options={"batch_size": 2, "stream": True}), ValueError, "stream'\\] does not apply"),
    ]
    for kwargs, kind, message in cases:
        with pytest.raises(kind, match=message):
            solve_ufm(problem, **kwargs)
    with pytest.raises(TypeError, match="problem must be an ncgeo.UFMProblem"):
        solve_ufm([2, 2])
    with pytest.raises(TypeError, match="nonnegative must be True or False"):
        scheme_problem([2, 2], None, 0.0, 0.5, nonnegative="no")
    with pytest.raises(ValueError, match="needs a full-batch problem"):
        solve_ufm(scheme_problem([2, 2], None, 0.0, 0.5, scheme="partition", batch_size=2), "collapsed")
    with pytest.raises(TypeError, match="rotate must be True or False"):
        simplex_etf(3, rotate="no")
    assert solve_ufm(problem, metadata={"note": "mine"}).settings["note"] == "mine"
    # defaults (and the collapsed path's own float64 / CPU) are no conflict
    assert solve_ufm(problem, "collapsed", options={"dtype": "float64", "device": "cpu", "restarts": 1}).loss > 0
    assert solve_ufm(problem, "lbfgs", options={"learning_rate": 0.1, "certify": True}).loss > 0
    assert solve_ufm(problem, "collapsed", options={"restarts": np.int64(1)}).settings["grad_tol"] == 1e-10
    with pytest.raises(ValueError, match="batch_size'\\] does not apply to method 'auto'"):
        solve_ufm(problem, options={"batch_size": 4})  # auto never takes the Adam path
