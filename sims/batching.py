r"""Study ``batching``: which batching schemes let UFM+ reach the orthogonal frame.

UFM+ (non-negative unit features, a final ReLU) is solved with :func:`ncgeo.ufm.solve_ufm`
under four batching schemes (:func:`ncgeo.ufm.make_batches`): full batch, a fixed random
partition into batches of ``batch_size``, random batches reshuffled every epoch (Adam
epochs), and batch binding (one fixed sample of each class added to every batch), for
``seeds`` seeds each (the seed draws the batches and the start). The measured quantity
is ``Delta(M, I)``, the Gram distance of the **uncentred** class means to the OF.

Theory (docs/theory.md section 3, fact 4; Kini et al. 2023, Cor. 2.1): the OF is the unique
minimiser when every batch contains every class and the batches connect all samples;
batch binding guarantees it, random small batches need not. Verdict: full batch and
binding reach the OF (``Delta < tolerance``) in every seed. How often the partition and
reshuffled schemes miss it is reported in the reason.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .common import prototypes_for, sizes_from_settings
from .plotting import figure_grid, setup_title, style_axis
from .runner import run_sweep
from .study import Option, StudyResult, Verdict, finish_study, resolve_settings

__all__ = ["OPTIONS", "SCHEMES", "run_batching", "plot_batching", "batching_point"]

NAME = "batching"
SCHEMES = ("full", "bind", "partition", "shuffle")

OPTIONS = (
    Option("k", "int", 4, 10, "number of classes k", low=2, high=10_000),
    Option("n", "int", 4, 10, "samples per (majority) class", low=1),
    Option("ratio", "float", 1.0, 1.0, "step-imbalance ratio R (1 = balanced)", low=1),
    Option("batch_size", "int", 4, 10, "batch size b (binding adds the k bound samples to every batch)", low=2),
    Option("seeds", "int", 10, 10, "number of seeds per scheme", low=1, high=10_000),
    Option("tau", "float", 0.1, 0.1, "temperature tau", low=0, low_open=True),
    Option("n_w", "float", 0.0, 0.0, "prototype multiplicity n_w (non-negative OF prototypes when > 0)", low=0),
    Option("epochs", "int", 100, 300, "Adam epochs of the reshuffled scheme", low=1),
    Option("tolerance", "float", 1e-3, 1e-3, "Delta to the OF accepted as 'reached'", low=0, low_open=True),
    Option("time_limit", "float", 30.0, 120.0, "seconds per solve", low=0, low_open=True),
)


def batching_point(point: dict[str, Any]) -> dict[str, Any]:
    """Solve UFM+ for one scheme and seed; return loss, gradient norm and Deltas."""
    from ncgeo.ufm import scheme_problem, solve_ufm

    sizes = sizes_from_settings(point, point["ratio"])
    W = prototypes_for("of", point["k"]) if point["n_w"] > 0 else None
    scheme = point["scheme"]
    batch_size = None if scheme == "full" else point["batch_size"]
    problem = scheme_problem(sizes, W, point["n_w"], point["tau"], scheme=scheme, batch_size=batch_size,
                             seed=point["seed"], dim=point["k"], nonnegative=True)
    options = dict(seed=point["seed"], time_limit=point["time_limit"])
    if scheme == "shuffle":
        options.update(batch_size=batch_size, max_iterations=point["epochs"])
    result = solve_ufm(problem, "adam" if scheme == "shuffle" else "lbfgs", options=options)
    metrics = result.metrics
    return {"delta_of": float(metrics.delta_of), "delta_etf": float(metrics.delta_etf), "nc1": float(metrics.nc1),
            "loss": float(result.loss), "grad_norm": float(result.grad_norm),
            "stopping_reason": result.stopping_reason, "iterations": int(result.iterations),
            "gram_means": np.asarray(metrics.gram_means).tolist()}


def run_batching(out_dir, quick: bool = False, workers: int | None = None, progress: bool = True,
                 **options: Any) -> StudyResult:
    """Run the ``batching`` study (module docstring); writes ``out_dir/batching.{csv,json,png,pdf}``."""
    start = time.perf_counter()
    settings = resolve_settings(NAME, OPTIONS, quick, options)
    base = {key: settings[key] for key in ("k", "n", "ratio", "batch_size", "tau", "n_w", "epochs", "time_limit")}
    base["imbalance"] = "step"
    points = [{**base, "scheme": scheme, "seed": seed} for scheme in SCHEMES for seed in range(settings["seeds"])]
    outcome = run_sweep(NAME, out_dir, points, batching_point, workers=workers, progress=progress)
    rows = [{"scheme": e["point"]["scheme"], "seed": e["point"]["seed"], **e["result"]} for e in outcome.results]
    settings = {**settings, "class_sizes": sizes_from_settings(base, base["ratio"])}
    verdict, summary = _verdict(rows, settings)
    summary["sweep"] = outcome.to_dict()
    return finish_study(NAME, out_dir, rows, verdict, settings, start, plot_batching, summary)


def _verdict(rows: list[dict], settings: dict) -> tuple[Verdict, dict]:
    tol = settings["tolerance"]
    reached = {s: sum(r["delta_of"] < tol for r in rows if r["scheme"] == s) for s in SCHEMES}
    total = {s: sum(r["scheme"] == s for r in rows) for s in SCHEMES}
    worst = {s: max((r["delta_of"] for r in rows if r["scheme"] == s), default=float("nan")) for s in SCHEMES}
    summary = {"reached_of": reached, "seeds": total, "worst_delta_of": worst}
    passed = all(reached[s] == total[s] for s in ("full", "bind"))
    parts = [f"{s}: {reached[s]}/{total[s]} seeds reach the OF (worst Delta {worst[s]:.1e})" for s in SCHEMES]
    return Verdict(passed, ("" if passed else "FAILED (full/bind must reach the OF in every seed): ")
                   + "; ".join(parts)), summary


def plot_batching(rows: list[dict], settings: dict):
    """Box plot of ``Delta(M, I)`` per scheme over seeds, with the individual seeds."""
    title = setup_title("batching (UFM+, non-negative features)", settings,
                        ["k", "class_sizes", "batch_size", "n_w", "tau", "seeds"])
    figure, axes = figure_grid(1, 1, title, width=6.4, height=3.8)
    ax = axes[0, 0]
    labels = {"full": "full batch", "bind": "batch binding", "partition": "fixed partition",
              "shuffle": "reshuffled\n(Adam epochs)"}
    data = [[r["delta_of"] for r in rows if r["scheme"] == s] for s in SCHEMES]
    ax.boxplot(data, showfliers=False, widths=0.5)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data):
        ax.plot(i + 1 + rng.uniform(-0.12, 0.12, len(values)), values, "o", color=f"C{i}", alpha=0.7,
                label=f"{labels[SCHEMES[i]].splitlines()[0]}: {sum(v < settings['tolerance'] for v in values)}"
                      f"/{len(values)} reach OF")
    ax.set_xticks(range(1, len(SCHEMES) + 1), [labels[s] for s in SCHEMES])
    ax.axhline(settings["tolerance"], color="grey", ls="--", lw=0.8)
    style_axis(ax, "batching scheme", r"$\Delta(M, I)$: class means vs orthogonal frame")
    figure.tight_layout()
    return figure
