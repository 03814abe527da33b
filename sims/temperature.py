r"""Study ``temperature``: how fast the many-prototype limit is reached at each temperature.

For ``tau`` on a log grid in ``[0.02, 2]`` and a few ``n_w``, the same quantities as the
``limit`` study (:mod:`sims.limit`): the certified full-batch optimum of SCL + prototypes
(reduced SDP polished by the solver, :func:`sims.common.certified_optimum`), the
certified CE-limit optimum (:func:`sims.common.ce_limit_optimum`), the loss gap
``(L/N - log n_w) - CE*`` and the geometry gap ``Delta(G_M, G_CE)``.

Theory (docs/theory.md section 4): the sample-sample terms vanish at rate ``O(1/n_w)`` at every
temperature, so the loss gap falls like ``1/n_w`` for every ``tau``; the geometry follows
only once those terms are small against the curvature of the CE objective, which is of
order ``exp(-margin/tau)`` -- the ``n_w`` needed grows exponentially as ``tau`` decreases.
Where the CE optimum is below ``1e-12`` (saturated softmax) its geometry is numerically
undetermined in float64; such rows are flagged ``ce_saturated``.

Verdict: at every ``tau`` the fitted slope of ``log |loss gap|`` against ``log n_w`` lies in
``[-1.3, -0.7]``, and at the largest ``n_w`` the geometry gap is ``< 1e-3`` for every
``tau >= converged_tau``.
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
from .study import Option, StudyResult, Verdict, finish_study, require_values, resolve_settings

__all__ = ["OPTIONS", "run_temperature", "plot_temperature", "temperature_point"]

NAME = "temperature"

OPTIONS = (
    Option("k", "int", 4, 10, "number of classes k", low=2, high=10_000),
    Option("n", "int", 10, 20, "samples of each majority class", low=1),
    Option("ratio", "float", 10.0, 10.0, "step-imbalance ratio R", low=1),
    Option("geometry", "str", "of", "of", "prototypes: etf, of, random, random+, hierarchical or a file"),
    Option("taus", "floats", [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
           [float(f"{x:.3g}") for x in np.logspace(np.log10(0.02), np.log10(2), 13)], "temperatures tau",
           low=0, low_open=True),
    Option("n_w", "floats", [1e2, 1e4, 1e6], [1e1, 1e2, 1e3, 1e4, 1e5, 1e6], "prototype multiplicities n_w",
           low=0, low_open=True),
    Option("converged_tau", "float", 0.2, 0.2, "smallest tau whose geometry gap must be < 1e-3 at the largest n_w",
           low=0, low_open=True),
    Option("seed", "int", 0, 0, "seed of random prototypes", low=0),
)


def temperature_point(point: dict[str, Any]) -> dict[str, Any]:
    """CE-limit optimum (``n_w = None``) or certified SCL optimum at ``(tau, n_w)``."""
    sizes = sizes_from_settings(point, point["ratio"])
    W = prototypes_for(point["geometry"], point["k"], seed=point["seed"])
    if point["n_w"] is None:
        return ce_limit_optimum(sizes, W, point["tau"])
    return certified_optimum(sizes, W, point["n_w"], point["tau"])


def run_temperature(out_dir, quick: bool = False, workers: int | None = None, progress: bool = True,
                    **options: Any) -> StudyResult:
    """Run the ``temperature`` study (module docstring); writes ``out_dir/temperature.*``."""
    start = time.perf_counter()
    settings = resolve_settings(NAME, OPTIONS, quick, options)
    require_values(settings, taus=1, n_w=2)  # a slope per tau
    check_geometry_names("geometry", [settings["geometry"]])
    base = {key: settings[key] for key in ("k", "n", "ratio", "geometry", "seed")}
    base["imbalance"] = "step"
    base.update(geometry_fingerprint(base["geometry"]))  # a changed prototype file is a new point
    taus = sorted(set(float(t) for t in settings["taus"]))
    n_ws = sorted(set(float(x) for x in settings["n_w"]))
    points = [{**base, "tau": t, "n_w": x} for t in taus for x in [None] + n_ws]
    outcome = run_sweep(NAME, out_dir, points, temperature_point, workers=workers, progress=progress)
    ce = {e["point"]["tau"]: e["result"] for e in outcome.results if e["point"]["n_w"] is None}
    W = prototypes_for(base["geometry"], base["k"], seed=base["seed"])
    rows = []
    for entry in outcome.results:
        point, result = entry["point"], entry["result"]
        if point["n_w"] is None:
            continue
        limit = ce[point["tau"]]
        G_M = np.asarray(result["gram"])
        rows.append({"tau": point["tau"], "n_w": point["n_w"], "loss_per_sample": result["loss"],
                     "ce_value": limit["ce_value"],
                     "loss_gap": result["loss"] - math.log(point["n_w"]) - limit["ce_value"],
                     "geometry_gap": gram_delta(G_M, np.asarray(limit["gram"])),
                     "delta_prototypes": gram_delta(G_M, W.T @ W), "ce_saturated": limit["ce_value"] < 1e-12,
                     "certified": bool(result["certified"] and limit["certified"]), "source": result["source"],
                     # geometry_gap is a Delta between two optima: pinned when both are unique (docs/theory.md 5.1)
                     "geometry_pinned": bool(result.get("geometry_pinned", False)
                                             and limit.get("geometry_pinned", False))})
    settings = {**settings, "class_sizes": sizes_from_settings(base, base["ratio"])}
    verdict, summary = _verdict(rows, settings)
    summary["sweep"] = outcome.to_dict()
    return finish_study(NAME, out_dir, rows, verdict, settings, start, plot_temperature, summary)


def _verdict(rows: list[dict], settings: dict) -> tuple[Verdict, dict]:
    taus = sorted({r["tau"] for r in rows})
    top = max(r["n_w"] for r in rows)
    slopes, gaps = {}, {}
    for t in taus:
        sel = [r for r in rows if r["tau"] == t]
        slopes[t] = fit_power_law([r["n_w"] for r in sel], [abs(r["loss_gap"]) for r in sel])[0]
        gaps[t] = next(r["geometry_gap"] for r in sel if r["n_w"] == top)
    bad_slopes = [t for t in taus if not -1.3 <= slopes[t] <= -0.7]
    bad_gaps = [t for t in taus if t >= settings["converged_tau"] and not gaps[t] < 1e-3]
    summary = {"loss_gap_slopes": {str(t): s for t, s in slopes.items()},
               "geometry_gap_at_largest_n_w": {str(t): g for t, g in gaps.items()}, "largest_n_w": top,
               "unpinned_points": [[r["tau"], r["n_w"]] for r in rows if not r["geometry_pinned"]]}
    slope_text = ", ".join(f"{s:.2f}" for s in slopes.values())
    small = min(taus)
    text = (f"loss-gap slopes over n_w per tau: {slope_text} (theory -1); geometry gap at n_w={top:g}: "
            f"{gaps[small]:.1e} at tau={small:g} ... {gaps[max(taus)]:.1e} at tau={max(taus):g}"
            + unpinned_note([r for r in rows if r["n_w"] == top], "geometry gap"))
    passed = not bad_slopes and not bad_gaps
    if not passed:
        text = (f"FAILED: slopes outside [-1.3, -0.7] at tau={bad_slopes}; geometry gap >= 1e-3 at tau={bad_gaps} "
                f"(tau >= {settings['converged_tau']:g}); " + text)
    return Verdict(passed, text), summary


def plot_temperature(rows: list[dict], settings: dict):
    """Loss gap and geometry gap against ``tau`` (log-log), one line per ``n_w``."""
    title = setup_title("temperature (rate of the CE limit)", settings, ["k", "class_sizes", "geometry"]) + \
        ", full batch, UFM"
    figure, axes = figure_grid(1, 2, title, width=4.6, height=3.6)
    n_ws = sorted({r["n_w"] for r in rows})
    for j, n_w in enumerate(n_ws):
        sel = sorted((r for r in rows if r["n_w"] == n_w), key=lambda r: r["tau"])
        tau = finite([r["tau"] for r in sel])
        axes[0, 0].plot(tau, np.abs(finite([r["loss_gap"] for r in sel])), "o-", color=f"C{j}",
                        label=f"$n_w$ = {n_w:g}")
        axes[0, 1].plot(tau, np.maximum(finite([r["geometry_gap"] for r in sel]), 1e-9), "o-", color=f"C{j}",
                        label=f"$n_w$ = {n_w:g}")
        saturated = [r for r in sel if r["ce_saturated"]]
        if saturated:
            axes[0, 1].plot([r["tau"] for r in saturated], [max(r["geometry_gap"], 1e-9) for r in saturated], "x",
                            color="k", ms=7, label="CE saturated (< 1e-12)" if j == 0 else None)
    axes[0, 1].axhline(1e-3, color="grey", ls="--", lw=0.8, label="threshold $10^{-3}$")
    style_axis(axes[0, 0], SYMBOLS["tau"], SYMBOLS["loss_gap"], "loss gap (falls like $1/n_w$ at every $\\tau$)",
               logx=True, logy=True, legend=False)
    style_axis(axes[0, 1], SYMBOLS["tau"], SYMBOLS["geometry_gap"],
               "geometry gap (needs $n_w \\gg e^{c/\\tau}$)", logx=True, logy=True, legend=False)
    axes[0, 1].legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5), title="both panels")
    figure.tight_layout()
    return figure
