r"""Study ``limit``: SCL with ``n_w`` prototypes becomes cross-entropy with a fixed classifier.

docs/theory.md section 4: with only samples as anchors, ``l_i - log n_w -> CE_i`` as ``n_w -> inf``
(cross-entropy with the fixed classifier ``W``, logit scale ``1/tau``, normalised
features), the sample-sample terms vanishing at rate ``O(1/n_w)``. For every ``n_w`` of a
log grid the study computes

* the certified full-batch UFM optimum of SCL + prototypes with the reduced ``2k x 2k``
  SDP (:func:`ncgeo.certify.reduced.solve_reduced`; embedding dimension ``d = N + k`` so
  that every relaxation optimum is realisable and the bound is the UFM optimum), its
  value per sample ``L/N`` and its class-mean Gram ``G_M`` (uncentred,
  ``(G_M)_cc' = mu_c . mu_c'``);
* the certified optimum of CE with the fixed classifier (the per-class ``(k+1) x (k+1)``
  program of docs/theory.md section 4, solved in an exact second-order-cone form by
  :func:`ncgeo.certify.ce_limit.certify_ce_limit`): the value
  ``CE* = (1/N) sum_c n_c CE_c`` and the learnt Gram ``G_CE``;
* the loss gap ``(L/N - log n_w) - CE*`` and the geometry gap ``Delta(G_M, G_CE)``.

The prototypes-as-anchors variant (same reduced SDP with the anchor terms) is solved on
the same grid; there an ``h``-dependent term of order one survives (docs/theory.md section 4)
and its geometry gap stays bounded away from zero.

Verdict: the slope of ``log |loss gap|`` against ``log n_w`` fitted over
``n_w >= fit_min`` lies in ``[-1.3, -0.7]``, the geometry gap at the largest ``n_w`` is
``< 1e-3``, the optimum at the largest ``n_w`` and the CE limit are certified, and the
anchors variant's geometry gap at the largest ``n_w`` is more than 10 times the
samples-only gap. Points where the certificate does not close (e.g. where the optimum
has no within-class collapse, ``min_within_similarity < 1``) are counted in the reason.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .common import (ce_limit_optimum, certified_optimum, check_geometry_names, geometry_fingerprint, gram_delta,
                     prototypes_for, sizes_from_settings, unpinned_note)
from .plotting import SYMBOLS, figure_grid, finite, fit_power_law, setup_title, style_axis
from .runner import run_sweep
from .study import Option, OptionError, StudyResult, Verdict, finish_study, resolve_settings

__all__ = ["OPTIONS", "run_limit", "plot_limit", "limit_point"]

NAME = "limit"

OPTIONS = (
    Option("k", "int", 4, 10, "number of classes k", low=2, high=10_000),
    Option("n", "int", 10, 100,
           "samples of each majority class (step imbalance: the last ceil(k/2) get floor(n/ratio))", low=1),
    Option("ratio", "float", 10.0, 10.0, "imbalance ratio R (1 = balanced)", low=1),
    Option("imbalance", "str", "step", "step", "imbalance kind: step or exp"),
    Option("geometry", "str", "of", "of", "prototypes: etf, of, random, random+, hierarchical or a Gram/vector file"),
    Option("tau", "float", 0.2, 0.2, "temperature tau (the rate constant grows like exp(c/tau): at tau=0.1 "
           "the geometry of OF prototypes needs n_w >> 1e6, see the temperature study)", low=0, low_open=True),
    Option("n_w", "floats", [0, 1, 10, 100, 1e3, 1e4, 1e5, 1e6],
           [0] + [float(f"{x:.3g}") for x in np.logspace(0, 6, 25)], "grid of prototype multiplicities n_w", low=0),
    Option("fit_min", "float", 100.0, 100.0, "smallest n_w used to fit the power law of the loss gap",
           low=0, low_open=True),
    Option("anchors", "bool", True, True, "also solve the prototypes-as-anchors variant"),
    Option("seed", "int", 0, 0, "seed of random prototypes", low=0),
)


def _setup(point: dict[str, Any]):
    sizes = sizes_from_settings(point, point["ratio"])
    W = prototypes_for(point["geometry"], point["k"], seed=point["seed"])
    return sizes, W


def limit_point(point: dict[str, Any]) -> dict[str, Any]:
    """One point of the sweep: the CE-limit optimum (``variant="ce"``) or the certified
    SCL optimum at ``n_w`` (``variant="samples"`` or ``"anchors"``)."""
    sizes, W = _setup(point)
    if point["variant"] == "ce":
        return ce_limit_optimum(sizes, W, point["tau"])
    return certified_optimum(sizes, W, point["n_w"], point["tau"],
                             prototypes_as_anchors=point["variant"] == "anchors")


def run_limit(out_dir, quick: bool = False, workers: int | None = None, progress: bool = True,
              **options: Any) -> StudyResult:
    """Run the ``limit`` study (module docstring); writes ``out_dir/limit.{csv,json,png,pdf}``."""
    start = time.perf_counter()
    settings = resolve_settings(NAME, OPTIONS, quick, options)
    check_geometry_names("geometry", [settings["geometry"]])
    base = {key: settings[key] for key in ("k", "n", "ratio", "imbalance", "geometry", "tau", "seed")}
    sizes, W = _setup(base)
    base.update(geometry_fingerprint(base["geometry"]))  # a changed prototype file is a new point
    grid_n_w = sorted(set(float(x) for x in settings["n_w"]))
    if sum(x >= settings["fit_min"] for x in grid_n_w) < 2:
        raise OptionError("n_w", f"must hold at least 2 values >= fit_min = {settings['fit_min']:g} "
                                 f"(the power law of the loss gap is fitted over them), got {grid_n_w}")
    points = [{**base, "variant": "ce", "n_w": None}]
    points += [{**base, "variant": "samples", "n_w": x} for x in grid_n_w]
    if settings["anchors"]:
        points += [{**base, "variant": "anchors", "n_w": x} for x in grid_n_w if x >= 1]
    outcome = run_sweep(NAME, out_dir, points, limit_point, workers=workers, progress=progress)
    ce = outcome.results[0]["result"]
    G_ce = np.asarray(ce["gram"])
    G_W = W.T @ W
    rows = []
    for entry in outcome.results[1:]:
        point, result = entry["point"], entry["result"]
        n_w = point["n_w"]
        G_M = np.asarray(result["gram"])
        per_sample = result["loss"]
        gap = per_sample - math.log(n_w) - ce["ce_value"] if (n_w > 0 and point["variant"] == "samples") else math.nan
        rows.append({"variant": point["variant"], "n_w": n_w, "loss_per_sample": per_sample,
                     "lower_bound": result["lower_bound"], "ce_value": ce["ce_value"], "loss_gap": gap,
                     "geometry_gap": gram_delta(G_M, G_ce), "delta_prototypes": gram_delta(G_M, G_W),
                     "min_within_similarity": result["min_within_similarity"],
                     "certified": result["certified"], "source": result["source"],
                     # geometry_gap is a Delta between two optima: pinned when both are unique (docs/theory.md 5.1)
                     "geometry_pinned": bool(result.get("geometry_pinned", False)
                                             and ce.get("geometry_pinned", False)),
                     "gram_means": G_M.tolist()})
    rows.append({"variant": "ce", "n_w": math.inf, "ce_value": ce["ce_value"], "geometry_gap": 0.0,
                 "delta_prototypes": gram_delta(G_ce, G_W), "certified": ce["certified"],
                 "geometry_pinned": bool(ce.get("geometry_pinned", False)), "gram_means": G_ce.tolist()})
    settings = {**settings, "class_sizes": sizes, "dim": int(sum(sizes) + len(sizes))}
    verdict, summary = _verdict(rows, settings)
    summary["sweep"] = outcome.to_dict()
    return finish_study(NAME, out_dir, rows, verdict, settings, start, plot_limit, summary)


def _verdict(rows: list[dict], settings: dict) -> tuple[Verdict, dict]:
    samples = [r for r in rows if r["variant"] == "samples"]
    anchors = [r for r in rows if r["variant"] == "anchors"]
    fit_rows = [r for r in samples if r["n_w"] >= settings["fit_min"]]
    slope, intercept = fit_power_law([r["n_w"] for r in fit_rows], [abs(r["loss_gap"]) for r in fit_rows])
    geo_slope, _ = fit_power_law([r["n_w"] for r in fit_rows], [r["geometry_gap"] for r in fit_rows])
    last = max(samples, key=lambda r: r["n_w"])
    summary = {"loss_gap_slope": slope, "loss_gap_intercept": intercept, "geometry_gap_slope": geo_slope,
               "largest_n_w": last["n_w"], "geometry_gap_at_largest": last["geometry_gap"],
               "uncertified_points": [r["n_w"] for r in samples if not r["certified"]],
               "unpinned_points": [r["n_w"] for r in samples if not r["geometry_pinned"]],
               "ce_certified": bool(next(r for r in rows if r["variant"] == "ce")["certified"])}
    checks = [(-1.3 <= slope <= -0.7, f"loss-gap slope {slope:.3f} (theory -1, accepted [-1.3, -0.7])"),
              (last["geometry_gap"] < 1e-3,
               f"geometry gap {last['geometry_gap']:.2e} at n_w={last['n_w']:g} (< 1e-3 required)"
               + unpinned_note([last], "geometry gap")),
              (last["certified"] and summary["ce_certified"],
               f"optimum at the largest n_w certified: {last['certified']}, CE limit certified: "
               f"{summary['ce_certified']}; {len(samples) - len(summary['uncertified_points'])}/{len(samples)} "
               "SCL optima certified" + (f" (not: n_w={summary['uncertified_points']}, e.g. no within-class "
                                         "collapse there)" if summary["uncertified_points"] else ""))]
    if anchors:
        top = max(anchors, key=lambda r: r["n_w"])
        summary["anchors_geometry_gap_at_largest"] = top["geometry_gap"]
        ok = top["geometry_gap"] > 10 * max(last["geometry_gap"], 1e-12)
        checks.append((ok, f"anchors variant gap {top['geometry_gap']:.2e} "
                           f"{'stays' if ok else 'does NOT stay'} > 10x the samples-only gap"
                           + unpinned_note([top, last], "geometry gap")))
    passed = all(ok for ok, _ in checks)
    failed = [text for ok, text in checks if not ok]
    reason = ("; ".join(text for _, text in checks) if passed else "FAILED: " + "; ".join(failed))
    return Verdict(passed, reason), summary


def plot_limit(rows: list[dict], settings: dict):
    """Two log-log panels: the loss gap with its fitted power law, and the geometry gaps."""
    title = setup_title("limit (SCL + prototypes -> fixed-classifier CE)", settings,
                        ["k", "class_sizes", "geometry", "tau"]) + ", full batch, UFM"
    figure, axes = figure_grid(1, 2, title, width=4.6, height=3.6)
    samples = [r for r in rows if r["variant"] == "samples" and r["n_w"] > 0]
    anchors = [r for r in rows if r["variant"] == "anchors"]
    ax = axes[0, 0]
    n_w = finite([r["n_w"] for r in samples])
    gap = finite([r["loss_gap"] for r in samples])
    ax.plot(n_w, np.abs(gap), "o-", color="C0", label="certified optimum (reduced SDP + polish)")
    negative = gap < 0
    if negative.any():
        ax.plot(n_w[negative], -gap[negative], "o", mfc="none", color="C3", label="(gap < 0: |gap| shown)")
    fit = [r for r in samples if r["n_w"] >= settings["fit_min"]]
    slope, intercept = fit_power_law([r["n_w"] for r in fit], [abs(r["loss_gap"]) for r in fit])
    if math.isfinite(slope):
        xs = np.array([min(r["n_w"] for r in fit), max(r["n_w"] for r in fit)])
        ax.plot(xs, np.exp(intercept) * xs**slope, "--", color="k",
                label=f"fit $n_w \\geq {settings['fit_min']:g}$: slope {slope:.2f} (theory $-1$)")
    style_axis(ax, SYMBOLS["n_w"], SYMBOLS["loss_gap"], "loss gap to the CE limit", logx=True, logy=True)
    ax = axes[0, 1]
    ax.plot(n_w, finite([r["geometry_gap"] for r in samples]), "o-", color="C0",
            label="samples as anchors (default)")
    if anchors:
        ax.plot(finite([r["n_w"] for r in anchors]), finite([r["geometry_gap"] for r in anchors]), "s-",
                color="C1", label="prototypes also anchors")
    geo_slope, geo_intercept = fit_power_law([r["n_w"] for r in fit], [r["geometry_gap"] for r in fit])
    if math.isfinite(geo_slope):
        xs = np.array([min(r["n_w"] for r in fit), max(r["n_w"] for r in fit)])
        ax.plot(xs, np.exp(geo_intercept) * xs**geo_slope, "--", color="k",
                label=f"fit $n_w \\geq {settings['fit_min']:g}$: slope {geo_slope:.2f}")
    zero = [r for r in rows if r["variant"] == "samples" and r["n_w"] == 0]
    if zero:
        ax.axhline(zero[0]["geometry_gap"], color="C2", ls=":", label="$n_w = 0$ (plain SCL)")
    ax.axhline(1e-3, color="grey", ls="--", lw=0.8, label="verdict threshold $10^{-3}$")
    style_axis(ax, SYMBOLS["n_w"], SYMBOLS["geometry_gap"], "learnt geometry vs CE-optimal geometry",
               logx=True, logy=True)
    figure.tight_layout()
    return figure
