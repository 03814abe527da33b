"""The UFM at scale: the collapsed path, compact results, the streamed loss (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ncgeo import UFMProblem, solve_ufm
from ncgeo.closed_form import closed_form_for_setup
from ncgeo.geometry import orthogonal_frame, simplex_etf
from ncgeo.losses import scl_prototype_loss
from ncgeo.ufm import load_npz, streamed_loss_and_grad
from ncgeo.ufm.result import size_runs


def _rows(n, d, seed, nonnegative=False):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x.abs() if nonnegative else x, dim=1)


# ------------------------------------------------------------------ streamed loss


@pytest.mark.parametrize("n_w, anchors, sizes", [
    (0.0, False, [5, 4, 1, 3]),  # a class of one sample: an anchor without positives
    (0.5, False, [5, 4, 1, 3]),
    (1e6, False, [3, 3, 3, 3]),
    (2.5, True, [4, 0, 2, 5]),  # prototype anchors, an absent class
])
@pytest.mark.parametrize("block", [1, 4, 7, 100])
def test_streamed_loss_and_gradient_equal_the_dense_ones(n_w, anchors, sizes, block):
    y = torch.as_tensor(np.repeat(np.arange(4), sizes))
    H = _rows(len(y), 5, seed=block)
    W = torch.as_tensor(np.linalg.qr(np.random.default_rng(0).normal(size=(5, 4)))[0])
    X = H.clone().requires_grad_(True)
    dense = scl_prototype_loss(X, y, W if n_w > 0 else None, n_w, 0.2, prototypes_as_anchors=anchors)
    (dense_grad,) = torch.autograd.grad(dense, X)
    value, grad = streamed_loss_and_grad(H, y, W if n_w > 0 else None, n_w, 0.2, prototypes_as_anchors=anchors,
                                         block=block)
    assert abs(float(value) - float(dense.detach())) <= 1e-12 * abs(float(dense.detach()))
    assert float((grad - dense_grad).abs().max()) <= 1e-12 * max(1.0, float(dense_grad.abs().max()))


def test_block_size_follows_the_free_memory(monkeypatch):
    import ncgeo.ufm.streaming as streaming

    monkeypatch.setattr(streaming, "available_memory", lambda device: 4 * 6 * 8 * (1000 + 10) * 10)
    assert streaming.block_rows(1000, 10, torch.float64, torch.device("cpu")) == 10
    monkeypatch.setattr(streaming, "available_memory", lambda device: 1)
    assert streaming.block_rows(1000, 10, torch.float64, torch.device("cpu")) == 1
    monkeypatch.setattr(streaming, "available_memory", lambda device: 10**15)  # capped at MAX_BLOCK_BYTES
    assert streaming.block_rows(10**6, 0, torch.float64, torch.device("cpu")) == 2**30 // (6 * 8 * 10**6)
    monkeypatch.setattr(streaming, "available_memory", lambda device: None)
    assert streaming.block_rows(1000, 10, torch.float64, torch.device("cpu")) == 1000


def test_streamed_solve_reaches_the_dense_optimum():
    problem = UFMProblem.from_sizes([6, 6, 2], simplex_etf(3, 3), 3.0, 0.3)
    dense = solve_ufm(problem, "lbfgs", options=dict(init="random", stream=False))
    streamed = solve_ufm(problem, "lbfgs", options=dict(init="random", stream=True, block=5))
    assert streamed.settings["stream_block"] == 5 and dense.settings["stream_block"] is None
    assert streamed.grad_norm <= 1e-9
    assert streamed.loss == pytest.approx(dense.loss, rel=1e-12)


def test_adam_streams_its_full_batch_loss_when_the_dense_one_does_not_fit(monkeypatch):
    """Adam's batches fit, its final full-batch loss and gradient would not: they are streamed (they used to
    form the N x N similarities whatever the memory), with the same value as the dense evaluation."""
    import ncgeo.ufm.solver as solver
    import ncgeo.ufm.streaming as streaming

    problem = UFMProblem.from_sizes([20, 20, 10], simplex_etf(3, 3), 3.0, 0.3)
    options = dict(batch_size=8, max_iterations=3, seed=0)
    dense = solve_ufm(problem, "adam", options=options)
    need = sum(solver._memory_need(50, 3, 3, 50, 8))
    monkeypatch.setattr(solver, "available_memory", lambda device: need)  # 90% of it: the dense batch does not fit
    monkeypatch.setattr(streaming, "available_memory", lambda device: need)
    streamed = solve_ufm(problem, "adam", options=options)
    assert dense.settings["stream_block"] is None and streamed.settings["stream_block"] is not None
    assert streamed.loss == pytest.approx(dense.loss, rel=1e-12)


# ------------------------------------------------------------------ collapsed path


@pytest.mark.parametrize("sizes, W, n_w, tau, flags", [
    ([10, 10, 2, 2], None, 0.0, 0.5, {}),  # plain SCL under imbalance: not an ETF
    ([6, 6, 6, 2], "etf", 5.0, 0.3, {}),
    ([8, 8, 2, 2], "of", 3.0, 0.5, {"nonnegative": True}),
    ([5, 5, 5], "etf", 4.0, 0.2, {"prototypes_as_anchors": True}),
])
def test_collapsed_path_agrees_with_the_dense_path_on_the_excess(sizes, W, n_w, tau, flags):
    k = len(sizes)
    prototypes = {"etf": simplex_etf(k, k), "of": orthogonal_frame(k), None: None}[W]
    problem = UFMProblem.from_sizes(sizes, prototypes, n_w, tau, **flags)
    dense = solve_ufm(problem, "lbfgs")
    collapsed = solve_ufm(problem, "collapsed")
    excess = dense.loss - problem.floor()
    assert excess > 0
    assert abs(collapsed.loss - dense.loss) <= 1e-8 * excess
    assert collapsed.embeddings is None and collapsed.class_means.shape == (problem.dim, k)
    # the same collapsed optimum (up to a rotation when there are no prototypes)
    assert np.allclose(collapsed.metrics.gram_means, dense.metrics.gram_means, atol=1e-5)
    assert collapsed.certificate is not None and collapsed.certificate.certified
    assert collapsed.grad_norm <= 1e-8


def test_auto_takes_the_collapsed_path_when_the_dense_work_cannot_fit():
    problem = UFMProblem.from_sizes([100_000] * 3, simplex_etf(3, 3), 10.0, 0.1)  # 300,000 x 300,000 similarities
    result = solve_ufm(problem)
    assert result.settings["method"] == "collapsed" and result.embeddings is None
    closed, geometry = closed_form_for_setup([100_000] * 3, simplex_etf(3, 3), 10.0, 0.1)
    assert geometry == "etf"
    assert abs(result.loss - closed) <= 1e-8 * (closed - problem.floor())
    assert result.certificate.certified
    assert "collapsed path: N = 300,000 never materialised" in result.report()
    assert "sizes 3 x 100000" in result.report()


def test_report_shows_class_sizes_as_runs_and_json_keeps_them():
    assert size_runs([1000] * 500 + [100] * 500) == "500 x 1000, 500 x 100"
    assert size_runs([5, 3, 3, 1]) == "5, 2 x 3, 1"
    sizes = [20] * 30 + [2] * 30
    result = solve_ufm(UFMProblem.from_sizes(sizes, simplex_etf(60, 60), 10.0, 0.2), "collapsed")
    assert "(sizes 30 x 20, 30 x 2)" in result.report()
    assert result.to_dict()["class_sizes"] == sizes


def test_compact_npz_round_trips_through_ncgeo_certify(tmp_path):
    from cli import main

    problem = UFMProblem.from_sizes([30, 30, 3, 3], simplex_etf(4, 4), 20.0, 0.2)
    result = solve_ufm(problem, "collapsed", metadata={"geometry": "etf"})
    result.save_npz(tmp_path / "compact.npz")
    with np.load(tmp_path / "compact.npz") as data:
        assert "M" in data.files and "H" not in data.files
    saved = load_npz(tmp_path / "compact.npz")
    assert np.array_equal(saved.H, result.H) and np.array_equal(saved.class_means, result.class_means)
    result.save_npz(tmp_path / "full.npz", embeddings=True)
    with np.load(tmp_path / "full.npz") as data:
        assert "M" in data.files and np.array_equal(data["H"], result.H)
    out = CliRunner().invoke(main, ["certify", str(tmp_path / "compact.npz"), "--json", "-"],
                             standalone_mode=False)
    assert out.exit_code == 0, out.output
    certificate = json.loads(out.output)
    assert certificate["certified"] and certificate["upper_bound"] == pytest.approx(result.loss, rel=1e-12)
    bad = dict(np.load(tmp_path / "compact.npz"))
    bad["y"] = np.array([0, 9])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="do not match"):
        load_npz(tmp_path / "bad.npz")


def test_cli_collapsed_path_saves_compact_and_reports_one_line(tmp_path):
    from cli import main

    path = tmp_path / "sol.npz"
    out = CliRunner().invoke(main, ["solve", "--classes", "4", "--samples", "50000", "--protos", "100",
                                    "--method", "collapsed", "--save", str(path)], standalone_mode=False)
    assert out.exit_code == 0, out.output
    assert "collapsed path: N = 200,000 never materialised" in out.output
    assert "sizes 4 x 50000" in out.output and "certified global optimum" in out.output
    with np.load(path) as data:
        assert "H" not in data.files and data["M"].shape == (4, 4) and data["y"].shape == (200_000,)


def test_cli_says_when_the_collapsed_candidate_is_not_certified():
    """Step imbalance 50000 vs 5000 with n_w = 100: the dual bound at the collapsed point leaves a
    gap (the point may be a saddle); the answer says so, never silently."""
    from cli import main

    out = CliRunner().invoke(main, ["solve", "--classes", "4", "--samples", "50000", "--imbalance", "step",
                                    "--protos", "100", "--require-certificate"])
    assert out.exit_code == 1, out.output
    assert "collapsed path: N = 110,000 never materialised" in out.output
    assert "may be a saddle" in out.output and "\nnot certified: relative gap" in out.output
