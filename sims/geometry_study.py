r"""Study ``geometry``: how prototypes engineer the learnt geometry under class imbalance.

For prototype geometries ETF, OF, random and a user Gram (default: a hierarchical Gram,
:func:`sims.common.hierarchical_gram`; ``--gram PATH`` for your own), without ReLU (UFM)
and, for the non-negative prototypes OF and random+, with ReLU (UFM+), step imbalance
``R`` in ``{1, 10, 100}`` and ``n_w`` on a log grid, the study computes the certified
full-batch optimum with the reduced SDP (:func:`sims.common.certified_optimum`) and
the distances of its uncentred class-mean Gram ``G_M`` to the prototype Gram ``G_W``, to
the OF (identity) and to the CE-limit Gram ``G_CE``
(:func:`sims.common.ce_limit_optimum`), and of the centred means to the simplex-ETF Gram
(``delta_etf``, the docs/theory.md section 6 convention, :func:`sims.common.gram_delta_etf`).

Verdict (docs/theory.md sections 3-4), at the largest ratio and the largest ``n_w``:

* ETF prototypes pull the imbalanced geometry to the ETF: ``Delta(G_M, G_W)`` is
  ``< tolerance`` while at ``n_w = 0`` (plain SCL) it is ``> 10 x tolerance``;
* OF prototypes without ReLU give an ETF, not an OF: ``delta_etf < tolerance`` (centred) and
  ``Delta(G_M, I) > 0.3``;
* OF prototypes with ReLU give the OF: ``Delta(G_M, I) < tolerance`` at every ``n_w`` and ``R``
  (except ``n_w = 0`` with a one-sample class: that sample has no positive pair, so its
  direction is not determined and the OF is not the unique optimum).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .common import (ce_limit_optimum, certified_optimum, check_geometry_names, geometry_fingerprint, gram_delta,
                     gram_delta_etf, prototypes_for, sizes_from_settings, unpinned_note)
from .plotting import finite, gram_heatmap, setup_title, style_axis
from .runner import run_sweep
from .study import Option, OptionError, StudyResult, Verdict, finish_study, require_values, resolve_settings

__all__ = ["OPTIONS", "run_geometry", "plot_geometry", "geometry_point"]

NAME = "geometry"

OPTIONS = (
    Option("k", "int", 4, 10, "number of classes k", low=2, high=10_000),
    Option("n", "int", 100, 100, "samples of each majority class (minority: floor(n/R))", low=1),
    Option("ratios", "floats", [1.0, 10.0, 100.0], [1.0, 10.0, 100.0], "step-imbalance ratios R", low=1),
    Option("n_w", "floats", [0, 10, 1e3, 1e5],
           [0] + [float(f"{x:.3g}") for x in np.logspace(0, 6, 13)], "grid of prototype multiplicities n_w", low=0),
    Option("geometries", "strs", ["etf", "of", "random", "hierarchical"], ["etf", "of", "random", "hierarchical"],
           "prototype geometries without ReLU (etf, of, random, hierarchical or a Gram/vector file)"),
    Option("relu_geometries", "strs", ["of", "random+"], ["of", "random+"],
           "non-negative prototype geometries solved with ReLU (UFM+)"),
    Option("gram", "str", "", "", "file with a user prototype Gram (replaces 'hierarchical')"),
    Option("tau", "float", 0.2, 0.2, "temperature tau (at 0.1 the OF -> ETF limit needs n_w >> 1e6)",
           low=0, low_open=True),
    Option("heatmap_n_w", "floats", [0, 10, 1e5], [0, 10, 1e6], "n_w of the class-mean Gram heatmaps", low=0),
    Option("tolerance", "float", 1e-2, 1e-2, "Delta accepted as 'reached' in the verdict", low=0, low_open=True),
    Option("seed", "int", 0, 0, "seed of random prototypes", low=0),
)


def geometry_point(point: dict[str, Any]) -> dict[str, Any]:
    """Certified optimum (or, for ``n_w = None``, the CE-limit optimum) of one set-up."""
    sizes = sizes_from_settings({"k": point["k"], "n": point["n"], "imbalance": "step"}, point["ratio"])
    W = prototypes_for(point["geometry"], point["k"], seed=point["seed"])
    if point["n_w"] is None:
        return ce_limit_optimum(sizes, W, point["tau"], nonnegative=point["relu"])
    return certified_optimum(sizes, W, point["n_w"], point["tau"], nonnegative=point["relu"])


def _label(geometry: str, relu: bool) -> str:
    name = {"etf": "ETF", "of": "OF", "random": "random", "random+": "random (non-neg.)",
            "hierarchical": "user Gram (hierarchical)"}.get(geometry, f"user Gram ({geometry})")
    return name + (" + ReLU" if relu else "")


def run_geometry(out_dir, quick: bool = False, workers: int | None = None, progress: bool = True,
                 **options: Any) -> StudyResult:
    """Run the ``geometry`` study (module docstring); writes ``out_dir/geometry.{csv,json,png,pdf}``."""
    start = time.perf_counter()
    settings = resolve_settings(NAME, OPTIONS, quick, options)
    require_values(settings, ratios=1, n_w=1)
    check_geometry_names("geometries", settings["geometries"])
    check_geometry_names("relu_geometries", settings["relu_geometries"])
    if settings["gram"]:
        check_geometry_names("gram", [settings["gram"]])
    geometries = [settings["gram"] if (g == "hierarchical" and settings["gram"]) else g
                  for g in settings["geometries"]]
    cases = [(g, False) for g in geometries] + [(g, True) for g in settings["relu_geometries"]]
    if not cases:
        raise OptionError(("geometries", "relu_geometries"), "are both empty: nothing to study")
    n_ws = sorted(set(float(x) for x in settings["n_w"]) | set(float(x) for x in settings["heatmap_n_w"]))
    base = {key: settings[key] for key in ("k", "n", "tau", "seed")}
    points = [{**base, "geometry": g, **geometry_fingerprint(g), "relu": relu, "ratio": float(R), "n_w": n_w}
              for g, relu in cases for R in settings["ratios"] for n_w in [None] + n_ws]
    outcome = run_sweep(NAME, out_dir, points, geometry_point, workers=workers, progress=progress)
    k = settings["k"]
    G_of = np.eye(k)
    limits = {(e["point"]["geometry"], e["point"]["relu"], e["point"]["ratio"]): e["result"]
              for e in outcome.results if e["point"]["n_w"] is None}
    rows = []
    for entry in outcome.results:
        point, result = entry["point"], entry["result"]
        if point["n_w"] is None:
            continue
        W = prototypes_for(point["geometry"], k, seed=point["seed"])
        G_M = np.asarray(result["gram"])
        limit = limits[(point["geometry"], point["relu"], point["ratio"])]
        G_ce = np.asarray(limit["gram"])
        rows.append({"geometry": point["geometry"], "relu": point["relu"], "ratio": point["ratio"],
                     "n_w": point["n_w"], "loss_per_sample": result["loss"], "certified": result["certified"],
                     "delta_prototypes": gram_delta(G_M, W.T @ W), "delta_etf": gram_delta_etf(G_M),
                     "delta_of": gram_delta(G_M, G_of), "delta_ce_limit": gram_delta(G_M, G_ce),
                     "ce_limit_delta_prototypes": gram_delta(G_ce, W.T @ W),
                     "min_within_similarity": result["min_within_similarity"],
                     # is each Delta one of THE optimal geometry (docs/theory.md 5.1)? SCL optimum, CE limit
                     "geometry_pinned": bool(result.get("geometry_pinned", False)),
                     "ce_limit_geometry_pinned": bool(limit.get("geometry_pinned", False)),
                     "gram_means": G_M.tolist()})
    settings = {**settings, "cases": [[g, relu] for g, relu in cases]}
    verdict, summary = _verdict(rows, settings)
    summary["sweep"] = outcome.to_dict()
    return finish_study(NAME, out_dir, rows, verdict, settings, start, plot_geometry, summary)


def _select(rows, geometry, relu, ratio=None, n_w=None):
    return [r for r in rows if r["geometry"] == geometry and r["relu"] == relu
            and (ratio is None or r["ratio"] == ratio) and (n_w is None or r["n_w"] == n_w)]


def _verdict(rows: list[dict], settings: dict) -> tuple[Verdict, dict]:
    tol = settings["tolerance"]
    R = max(settings["ratios"])
    top = max(r["n_w"] for r in rows)
    checks, summary = [], {"largest_ratio": R, "largest_n_w": top}
    if _select(rows, "etf", False, R, top):
        end = _select(rows, "etf", False, R, top)[0]["delta_prototypes"]
        zero = _select(rows, "etf", False, R, 0.0)
        begin = zero[0]["delta_prototypes"] if zero else float("nan")
        summary.update(etf_delta_at_0=begin, etf_delta_at_largest=end)
        checks.append((end < tol and begin > 10 * tol,
                       f"ETF prototypes, R={R:g}: Delta to G_W (the ETF) {begin:.3f} at n_w=0 -> {end:.1e} at n_w={top:g}"
                       + unpinned_note(zero + _select(rows, "etf", False, R, top))))
    if _select(rows, "of", False, R, top):
        row = _select(rows, "of", False, R, top)[0]
        summary.update(of_delta_etf=row["delta_etf"], of_delta_of=row["delta_of"])
        checks.append((row["delta_etf"] < tol and row["delta_of"] > 0.3,
                       f"OF prototypes without ReLU, R={R:g}, n_w={top:g}: Delta to ETF (centred) {row['delta_etf']:.1e}, "
                       f"to OF {row['delta_of']:.2f} (an ETF, not an OF)" + unpinned_note([row])))
    # the OF is the unique UFM+ optimum when every anchor has a positive: n_w > 0 or >= 2 samples per
    # class (a lone sample without prototypes only repels, its direction among the others is free)
    smallest = {R: min(sizes_from_settings({"k": settings["k"], "n": settings["n"], "imbalance": "step"}, R))
                for R in settings["ratios"]}
    relu_of = [r for r in _select(rows, "of", True) if r["n_w"] > 0 or smallest[r["ratio"]] >= 2]
    if relu_of:
        worst = max(r["delta_of"] for r in relu_of)
        summary.update(of_relu_worst_delta_of=worst)
        skipped = len(_select(rows, "of", True)) - len(relu_of)
        checks.append((worst < tol, f"OF prototypes with ReLU: Delta to OF <= {worst:.1e} at every n_w and R"
                                    + (f" ({skipped} points with n_w = 0 and a one-sample class excluded: "
                                       "no positive pair, the optimum is not unique)" if skipped else "")
                                    + unpinned_note(relu_of)))
    uncertified = [(r["geometry"], r["relu"], r["ratio"], r["n_w"]) for r in rows if not r["certified"]]
    summary["uncertified_points"] = len(uncertified)
    summary["unpinned_points"] = sum(not r["geometry_pinned"] for r in rows)
    if not checks:
        return Verdict(False, "FAILED: the options leave none of the ETF/OF checks to run"), summary
    passed = all(ok for ok, _ in checks)
    text = "; ".join(t for ok, t in checks if ok or passed) if passed else \
        "FAILED: " + "; ".join(t for ok, t in checks if not ok)
    text += f"; {len(rows) - len(uncertified)}/{len(rows)} optima certified"
    return Verdict(passed, text), summary


def plot_geometry(rows: list[dict], settings: dict):
    """Panels of ``Delta(G_M, G_W)`` (solid) and ``Delta(G_M, G_CE)`` (dashed) against ``n_w`` per
    geometry, one line per ratio, and a row of class-mean Gram heatmaps."""
    import matplotlib.pyplot as plt

    from .plotting import STYLE

    cases = [tuple(c) for c in settings["cases"]]
    ncols = 3
    nrows = (len(cases) + ncols - 1) // ncols
    heat_n_w = [float(x) for x in settings["heatmap_n_w"]]
    R = max(settings["ratios"])
    heat = [("etf", False, x) for x in heat_n_w]
    heat += [(g, relu, max(heat_n_w)) for g, relu in (("of", False), ("of", True)) if (g, relu) in cases]
    floor = 1e-6
    with plt.rc_context(STYLE):
        figure = plt.figure(figsize=(11.5, 3.0 * nrows + 2.9), layout="constrained")
        top, bottom = figure.subfigures(2, 1, height_ratios=[3.0 * nrows, 2.9])
        axes = top.subplots(nrows, ncols, squeeze=False)
        heat_axes = bottom.subplots(1, max(len(heat), 1), squeeze=False)[0]
    figure.suptitle(setup_title("geometry (certified full-batch UFM optima)", settings, ["k", "n", "tau"])
                    + "; step imbalance: the last ceil(k/2) classes have n/R samples", fontsize=10)
    for ax in axes.flat[len(cases):]:
        ax.set_visible(False)
    for index, (geometry, relu) in enumerate(cases):
        ax = axes[index // ncols, index % ncols]
        for j, ratio in enumerate(settings["ratios"]):
            sel = sorted(_select(rows, geometry, relu, ratio), key=lambda r: r["n_w"])
            x = finite([max(r["n_w"], 0.3) for r in sel])  # n_w = 0 drawn at 0.3 on the log axis
            ax.plot(x, np.maximum(finite([r["delta_prototypes"] for r in sel]), floor), "o-", color=f"C{j}",
                    label=f"R={ratio:g}")
            ax.plot(x, np.maximum(finite([r["delta_ce_limit"] for r in sel]), floor), "x--", color=f"C{j}", lw=0.9)
        ax.plot([], [], "ko-", label=r"o: to $G_W$ (prototypes)")  # the markers and lines of the curves above
        ax.plot([], [], "kx--", lw=0.9, label=r"x: to $G_{CE}$ (CE limit)")
        style_axis(ax, r"$n_w$ ($n_w = 0$ drawn at 0.3)", r"$\Delta(G_M, \cdot)$ (floor $10^{-6}$)",
                   "prototypes: " + _label(geometry, relu), logx=True, logy=True)
        ax.set_ylim(floor / 2, 3)
    image = None
    for ax, (geometry, relu, n_w) in zip(heat_axes, heat):
        sel = _select(rows, geometry, relu, R, n_w)
        if sel:
            image = gram_heatmap(ax, np.asarray(sel[0]["gram_means"]),
                                 f"{_label(geometry, relu)}, R={R:g},\n$n_w$={n_w:g}: class-mean Gram $G_M$")
    if image is not None:
        bottom.colorbar(image, ax=list(heat_axes), fraction=0.02, pad=0.01, label=r"$\mu_c\cdot\mu_{c'}$")
    return figure
