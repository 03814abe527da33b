"""Helpers of sims: certified optima against closed forms, Gram distances, inverse-design targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncgeo.closed_form import closed_form_loss
from ncgeo.geometry import etf_gram, orthogonal_frame, simplex_etf
from sims.common import ce_limit_optimum, certified_optimum, gram_delta, gram_delta_etf, prototypes_for
from sims.inverse import hierarchical_target, optimality_residual
from sims.study import Option


def test_certified_optimum_matches_the_etf_closed_form():
    k, n, n_w, tau = 4, 5, 10.0, 0.5
    result = certified_optimum([n] * k, simplex_etf(k, k), n_w, tau)
    assert result["certified"]
    assert result["loss"] * k * n == pytest.approx(closed_form_loss(k, n, n_w, tau, "etf"), rel=1e-7)
    assert gram_delta(np.asarray(result["gram"]), etf_gram(k)) < 1e-6


def test_ce_limit_of_orthogonal_prototypes_is_an_etf():
    """docs/theory.md section 4: OF prototypes without ReLU give ETF class means in the CE limit."""
    k, tau = 4, 0.5
    result = ce_limit_optimum([3, 3, 1, 1], orthogonal_frame(k), tau)
    assert result["certified"]
    assert gram_delta(np.asarray(result["gram"]), etf_gram(k)) < 1e-6
    h = np.sqrt((k - 1) / k) * np.eye(k) - (1 - np.eye(k)) / np.sqrt(k * (k - 1))  # closed-form CE optimum
    per_class = math.log(math.exp(h[0, 0] / tau) + (k - 1) * math.exp(h[0, 1] / tau)) - h[0, 0] / tau
    assert result["ce_value"] == pytest.approx(per_class, rel=1e-7)


def test_gram_delta_conventions():
    G = etf_gram(5)
    assert gram_delta(G, G) == pytest.approx(0.0, abs=1e-12)
    assert gram_delta(2.0 * G, G) == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert gram_delta(np.eye(5), G) == pytest.approx(np.linalg.norm(np.eye(5) / np.sqrt(5) - G / np.linalg.norm(G)))
    assert math.isnan(gram_delta(np.full((5, 5), np.nan), G))


def test_delta_etf_uses_the_centred_means_as_in_ncgeo_and_deep(tmp_path):
    """docs/theory.md section 6: Delta to the ETF is of the centred means (one name, one formula)."""
    from ncgeo.metrics import delta_to_etf
    from sims.geometry_study import run_geometry

    k = 4
    shifted = simplex_etf(k, k + 1) + 0.5 * np.eye(k + 1)[:, [k]]  # an ETF moved off the origin
    G = shifted.T @ shifted
    assert gram_delta_etf(G) == pytest.approx(0.0, abs=1e-9) and gram_delta(G, etf_gram(k)) > 0.1
    result = run_geometry(tmp_path, quick=True, workers=1, progress=False, k=3, n=4, ratios=[1.0], n_w=[10.0],
                          heatmap_n_w=[10.0], geometries=["of"], relu_geometries=[])
    row = result.rows[0]
    means = np.linalg.cholesky(np.asarray(row["gram_means"]) + 1e-15 * np.eye(3)).T  # columns: class means
    assert row["delta_etf"] == pytest.approx(delta_to_etf(means.T, np.arange(3)), abs=1e-7)


def test_hierarchical_target_is_a_rank_deficient_unit_gram():
    G = hierarchical_target(6, 0.2)
    eigenvalues = np.linalg.eigvalsh(G)
    assert np.allclose(np.diag(G), 1.0) and eigenvalues.min() > -1e-12
    assert int(np.sum(eigenvalues > 1e-9)) == 5  # reachable in the CE limit needs rank <= k - 1
    assert G[0, 1] > G[0, 2]  # same superclass closer
    with pytest.raises(ValueError, match="strength"):
        hierarchical_target(4, 1.5)


def test_optimality_residual_vanishes_at_etf_and_not_elsewhere():
    k = 4
    W = torch.as_tensor(simplex_etf(k, k))
    assert float(optimality_residual(W.clone(), W, "ce", 0.1).detach()) < 1e-20  # h = w_y is CE-optimal for an ETF
    other = torch.as_tensor(prototypes_for("random", k, seed=1))
    assert float(optimality_residual(other, W, "ce", 0.1).detach()) > 1e-3


def test_option_parsing():
    assert Option("x", "floats", None, None, "").parse("1, 1e3,0") == [1.0, 1000.0, 0.0]
    assert Option("b", "bool", None, None, "").parse("no") is False
    with pytest.raises(ValueError, match="option k expects int"):
        Option("k", "int", None, None, "").parse(2.5)


def test_studies_accept_every_named_geometry_of_ncgeo():
    """sims kept its own list of names and refused `spherical`, which ncgeo.named_prototypes has."""
    from ncgeo.geometry import PROTOTYPE_NAMES
    from sims.common import check_geometry_names, prototypes_for

    check_geometry_names("geometry", list(PROTOTYPE_NAMES) + ["hierarchical"])
    with pytest.raises(ValueError, match="option geometry must be one of"):
        check_geometry_names("geometry", ["bogus"])
    for name in list(PROTOTYPE_NAMES) + ["hierarchical"]:  # and every accepted name builds prototypes
        W = prototypes_for(name, 6, 6)
        assert W.shape == (6, 6) and np.allclose(np.linalg.norm(W, axis=0), 1.0), name
    assert prototypes_for("spherical", 6, 3).shape == (3, 6)  # more classes than d + 1


def test_certified_optima_carry_their_geometry_verdict():
    """Issue 13 item 5: a Delta of a certified optimum says whether that optimum's Gram is unique."""
    k = 4
    scl = certified_optimum([5] * k, simplex_etf(k, k), 10.0, 0.5)
    assert scl["certified"] and scl["geometry_pinned"] is True
    assert scl["geometry_verdict"].startswith("geometry certified (unique optimal Gram)")
    ce = ce_limit_optimum([3, 3, 1, 1], orthogonal_frame(k), 0.5)
    assert ce["certified"] and ce["geometry_pinned"] is True
    # identical prototypes: the CE loss is log k at every h (gradient 0): certified, not pinned
    same = np.tile(np.eye(k)[:, :1], (1, k))
    flat = ce_limit_optimum([2] * k, same, 0.5, polish=False)
    assert flat["certified"] and flat["ce_value"] == pytest.approx(math.log(k), rel=1e-9)
    assert flat["geometry_pinned"] is False and "not pinned" in flat["geometry_verdict"]


def test_a_delta_verdict_on_an_unpinned_geometry_says_so():
    from sims.common import unpinned_note
    from sims.geometry_study import _verdict

    assert unpinned_note([{"geometry_pinned": True}] * 2) == ""
    assert "NOT pinned" in unpinned_note([{"geometry_pinned": True}, {"geometry_pinned": False}])
    row = {"geometry": "etf", "relu": False, "ratio": 1.0, "certified": True, "delta_etf": 0.0, "delta_of": 0.5}
    settings = {"tolerance": 1e-2, "ratios": [1.0], "k": 4, "n": 5}
    rows = [dict(row, n_w=0.0, delta_prototypes=0.5, geometry_pinned=True),
            dict(row, n_w=100.0, delta_prototypes=1e-4, geometry_pinned=True)]
    verdict, _ = _verdict(rows, settings)
    assert verdict.passed and "NOT pinned" not in verdict.reason
    rows[1]["geometry_pinned"] = False
    verdict, summary = _verdict(rows, settings)
    assert verdict.passed and "NOT pinned" in verdict.reason and summary["unpinned_points"] == 1
