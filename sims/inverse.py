r"""Study ``inverse``: design prototypes ``W`` whose optimal geometry is a given target ``G*``.

Forward map: prototypes ``W`` -> the learnt class-mean Gram, either in the CE limit
(``n_w -> inf``, docs/theory.md section 4: per class ``h_c = argmin_{||h||=1} CE(h; W)``) or at a
finite ``n_w`` (full-batch SCL + prototypes). The learnt Gram is not ``G_W`` in general,
so the naive design ``W = factor(G*)`` (:func:`ncgeo.geometry.prototypes_from_gram`) misses
the target; this study solves the inverse problem.

Method (gradient through the optimality conditions). Fix the target embeddings
``M* = factor(G*)`` (``d = k``, unit columns) and ask ``M*`` to be optimal for ``W``. For a
loss ``F(M; W)`` (``sum_c CE(m_c; W)`` in the CE limit, the collapsed full-batch SCL loss
:func:`ncgeo.closed_form.collapsed_loss` at finite ``n_w``) with Euclidean gradient
``g_c = dF/dm_c``, ``m_c`` is a KKT point of ``min F`` over the unit sphere (a minimum of the
ball relaxation) iff ``-g_c`` is a positive multiple of ``m_c``. The residual

.. math::

    r(W) = \sum_c \big\| m_c + g_c / \|g_c\| \big\|^2

is zero exactly there and is minimised over unit-column ``W`` (``W = V / ||V||``
column-wise) by L-BFGS with the gradient through ``g`` (double backward), from the
baseline and from seeded perturbations of it. Stationarity is not global optimality at
finite ``n_w``: when the certified optimum of a design is another configuration ``M_j``,
``M_j`` is added as a cutting plane (the target's loss must be below ``F(M_j; W)``) and the
design is repeated from the last ``W`` (``cuts`` times at most). In the CE limit the per-class problem is
convex on the ball, so ``r = 0`` makes ``M*`` the global optimum; every design is
nevertheless verified with the certified programs (:func:`sims.common.ce_limit_optimum`,
:func:`sims.common.certified_optimum`), and the reported Delta is the certified one.

Reachability: in the CE limit ``h_c`` is proportional to ``W (e_c - softmax_c)`` with
``1^T (e_c - softmax_c) = 0``, so the learnt Gram has rank ``<= k - 1``; targets of rank
``k`` cannot be reached (the achieved Delta is then reported as found). The default
target is a centred, mildly hierarchical Gram (:func:`hierarchical_target`).

At finite ``n_w`` the design assumes within-class collapse; where the certified optimum of the
designed ``W`` is not collapsed (seen at ``tau = 0.1``, ``k = 6``, ``n_w = 1000``: the samples of a
class spread when its mean is far from its prototype) the certified Delta says so and the
verdict fails. Whether a target is reachable at finite ``n_w`` depends on ``k``, ``n_w`` and
``tau`` (near-degenerate optima, e.g. ``k = 4``, ``n_w = 100``, ``tau = 0.1``, where a slightly
non-collapsed configuration is lower by ``1e-7`` relative, move the certified geometry by
``1e-2``); the default (``k = 6``, ``n_w = 1000``, ``tau = 0.2``; quick: fewer restarts) is
reachable, other settings are reported as found.

Verdict: for both models the designed ``W`` reaches the target (certified Delta
``< tolerance``) and beats the baseline whenever the baseline misses it (Delta ``>= tolerance``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ncgeo.geometry import etf_gram, load_prototypes, prototypes_from_gram

from .common import ce_limit_optimum, certified_optimum, gram_delta, sizes_from_settings, unpinned_note
from .plotting import figure_grid, gram_heatmap, setup_title
from .runner import run_sweep
from .study import Option, StudyResult, Verdict, finish_study, resolve_settings

__all__ = ["OPTIONS", "run_inverse", "plot_inverse", "inverse_point", "hierarchical_target",
           "design_prototypes", "optimality_residual", "design_loss"]

NAME = "inverse"

OPTIONS = (
    Option("k", "int", 6, 6, "number of classes k", low=2, high=10_000),
    Option("target", "str", "hierarchical", "hierarchical",
           "target Gram: 'hierarchical' (centred superclass Gram) or a file holding a k x k Gram"),
    Option("strength", "float", 0.1, 0.1, "superclass strength s of the hierarchical target",
           low=0, high=1, high_open=True),
    Option("tau", "float", 0.2, 0.2, "temperature tau (reachability at finite n_w depends on it: with k=6, "
           "n_w=1000 at 0.1 the designed optimum loses within-class collapse)", low=0, low_open=True),
    Option("n_w", "float", 1000.0, 1000.0, "finite prototype multiplicity n_w of the second model",
           low=0, low_open=True),
    Option("n", "int", 10, 10, "samples per (majority) class at finite n_w", low=1),
    Option("ratio", "float", 1.0, 1.0, "step-imbalance ratio R at finite n_w", low=1),
    Option("restarts", "int", 3, 8, "starts of the design (baseline, then seeded perturbations)", low=1),
    Option("cuts", "int", 4, 8, "cutting planes per start: certified optima that beat the target, "
           "added as competitors the target must beat", low=0),
    Option("tolerance", "float", 1e-3, 1e-3, "certified Delta accepted as 'reached'", low=0, low_open=True),
    Option("seed", "int", 0, 0, "seed of the perturbed starts", low=0),
)


def hierarchical_target(k: int, strength: float = 0.1, group: int = 2) -> np.ndarray:
    r"""Centred hierarchical target Gram (rank ``<= k - 1``, unit diagonal).

    ``X = C ((1 - s) G_ETF + s B) C`` with ``C = I - J/k`` the centring matrix and ``B`` the
    block indicator of superclasses of ``group`` consecutive classes; the target is
    ``D^{-1/2} X D^{-1/2}`` with ``D = diag(X)``. Classes of one superclass are closer
    than in the ETF, others further apart.
    """
    if not 0 <= strength < 1:
        raise ValueError(f"strength must lie in [0, 1), got {strength}")
    block = np.zeros((k, k))
    for start in range(0, k, group):
        block[start:start + group, start:start + group] = 1.0
    centring = np.eye(k) - 1.0 / k
    X = centring @ ((1 - strength) * etf_gram(k) + strength * block) @ centring
    scale = np.sqrt(np.diag(X))
    return X / np.outer(scale, scale)


def _target(settings: dict[str, Any]) -> np.ndarray:
    target = settings["target"]
    if target == "hierarchical":
        return hierarchical_target(settings["k"], settings["strength"])
    if not os.path.isfile(target):
        raise ValueError(f"target must be 'hierarchical' or an existing Gram file, got {target!r}")
    W = load_prototypes(target, kind="gram")
    if W.shape[1] != settings["k"]:
        raise ValueError(f"target file {target!r} holds a {W.shape[1]} x {W.shape[1]} Gram, expected k = {settings['k']}")
    return W.T @ W


def design_loss(M, W, model: str, tau: float, sizes=None, n_w: float = 0.0):
    """The loss whose optimum is designed, at class directions ``M`` (``d x k``): ``sum_c CE(m_c; W)``
    (``model="ce"``) or the collapsed full-batch SCL loss per sample (:func:`ncgeo.closed_form.collapsed_loss`)."""
    import torch

    from ncgeo.closed_form import collapsed_loss
    from ncgeo.losses import fixed_classifier_cross_entropy

    if model == "ce":
        return fixed_classifier_cross_entropy(M.T, torch.arange(M.shape[1]), W, tau, validate=False)
    return collapsed_loss(M, sizes, W, n_w, tau) / float(sum(sizes))


def optimality_residual(V, targets, model: str, tau: float, sizes=None, n_w: float = 0.0):
    r"""``r(W) = sum_c || m_c + g_c/||g_c|| ||^2`` for ``W = V / ||V||`` (module docstring); torch scalar."""
    import torch

    W = V / V.norm(dim=0, keepdim=True)
    M = targets.detach().clone().requires_grad_(True)
    loss = design_loss(M, W, model, tau, sizes, n_w)
    (grad,) = torch.autograd.grad(loss, M, create_graph=True)
    unit = grad / grad.norm(dim=0, keepdim=True).clamp_min(1e-300)
    return ((M.detach() + unit) ** 2).sum()


def design_prototypes(target: np.ndarray, model: str, tau: float, sizes=None, n_w: float = 0.0,
                      start: np.ndarray | None = None, max_iterations: int = 3000,
                      competitors: list[np.ndarray] | None = None, margin: float = 1e-4):
    r"""Minimise :func:`optimality_residual` over unit-column ``W`` by L-BFGS; returns ``(W, residual)``.

    ``competitors`` (cutting planes): class directions ``M_j`` (``d x k``) found as the certified
    optimum of an earlier design; the penalty ``sum_j max(0, F(M*; W) - F(M_j; W) + margin)^2``
    (``F`` = :func:`design_loss`) asks the target to beat them, a necessary condition of global
    optimality that the stationarity residual alone does not impose.
    """
    import torch

    k = target.shape[0]
    targets = torch.as_tensor(prototypes_from_gram(target, k), dtype=torch.float64)
    V = torch.as_tensor(targets.numpy() if start is None else start, dtype=torch.float64).clone().requires_grad_(True)
    rivals = [torch.as_tensor(M, dtype=torch.float64) for M in (competitors or [])]
    optimiser = torch.optim.LBFGS([V], lr=1.0, max_iter=max_iterations, tolerance_grad=1e-15,
                                  tolerance_change=1e-24, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = optimality_residual(V, targets, model, tau, sizes, n_w)
        if rivals:
            W = V / V.norm(dim=0, keepdim=True)
            own = design_loss(targets, W, model, tau, sizes, n_w)
            for M in rivals:
                value = value + torch.relu(own - design_loss(M, W, model, tau, sizes, n_w) + margin) ** 2
        value.backward()
        return value

    optimiser.step(closure)
    residual = float(optimality_residual(V, targets, model, tau, sizes, n_w).detach())
    W = (V / V.norm(dim=0, keepdim=True)).detach().numpy()
    return W, residual


def _verify(model: str, W: np.ndarray, point: dict, sizes) -> tuple[np.ndarray, bool, np.ndarray | None, bool]:
    """``(G, certified, means, geometry pinned)`` of the certified optimum for prototypes ``W``."""
    if model == "ce":
        result = ce_limit_optimum(sizes, W, point["tau"])
    else:
        result = certified_optimum(sizes, W, point["n_w"], point["tau"])
    means = result.get("means")
    return (np.asarray(result["gram"]), bool(result["certified"]), None if means is None else np.asarray(means),
            bool(result.get("geometry_pinned", False)))


def inverse_point(point: dict[str, Any]) -> dict[str, Any]:
    """Baseline and designed prototypes for one model (``"ce"`` or ``"finite"``), certified."""
    target = np.asarray(point["target_gram"])
    k = target.shape[0]
    sizes = sizes_from_settings(point, point["ratio"])
    model = point["model"]
    baseline = prototypes_from_gram(target, k)
    G_base, base_certified, _, base_pinned = _verify(model, baseline, point, sizes)
    out = {"baseline_delta": gram_delta(G_base, target), "baseline_certified": base_certified,
           "baseline_geometry_pinned": base_pinned,
           "baseline_gram": G_base.tolist(), "baseline_W": baseline.tolist()}
    rng = np.random.default_rng(point["seed"])
    best = None
    for restart in range(point["restarts"]):
        start = baseline if restart == 0 else baseline + 0.3 * rng.standard_normal(baseline.shape)
        competitors: list[np.ndarray] = []
        for cut in range(point["cuts"] + 1):
            W, residual = design_prototypes(target, model, point["tau"], sizes, point["n_w"], start=start,
                                            competitors=competitors)
            G, certified, means, pinned = _verify(model, W, point, sizes)
            delta = gram_delta(G, target)
            if best is None or delta < best["designed_delta"]:
                best = {"designed_delta": delta, "designed_certified": certified, "residual": residual,
                        "designed_geometry_pinned": pinned,
                        "designed_gram": G.tolist(), "designed_W": W.tolist(), "restart": restart, "cuts": cut}
            if delta < 0.1 * point["tolerance"] or means is None:
                break
            competitors.append(means)  # the certified optimum beat the target: add it as a cutting plane
            start = W
        if best["designed_delta"] < 0.1 * point["tolerance"]:
            break
    return {**out, **best}


def run_inverse(out_dir, quick: bool = False, workers: int | None = None, progress: bool = True,
                **options: Any) -> StudyResult:
    """Run the ``inverse`` study (module docstring); writes ``out_dir/inverse.*``."""
    start = time.perf_counter()
    settings = resolve_settings(NAME, OPTIONS, quick, options)
    target = _target(settings)
    base = {key: settings[key] for key in ("k", "tau", "n", "ratio", "restarts", "cuts", "tolerance", "seed")}
    base.update(imbalance="step", target_gram=target.tolist())
    points = [{**base, "model": "ce", "n_w": None}, {**base, "model": "finite", "n_w": settings["n_w"]}]
    outcome = run_sweep(NAME, out_dir, points, inverse_point, workers=workers, progress=progress)
    rows = []
    for entry in outcome.results:
        point, result = entry["point"], entry["result"]
        for method in ("baseline", "designed"):
            rows.append({"model": "CE limit" if point["model"] == "ce" else f"n_w={point['n_w']:g}",
                         "method": method, "delta": result[f"{method}_delta"],
                         "certified": result[f"{method}_certified"],
                         "geometry_pinned": bool(result.get(f"{method}_geometry_pinned", False)),
                         "residual": result.get("residual") if method == "designed" else None,
                         "gram": result[f"{method}_gram"], "W": result[f"{method}_W"]})
    settings = {**settings, "target_gram": target.tolist(), "class_sizes": sizes_from_settings(base, base["ratio"])}
    verdict, summary = _verdict(rows, settings)
    summary["sweep"] = outcome.to_dict()
    return finish_study(NAME, out_dir, rows, verdict, settings, start, plot_inverse, summary)


def _verdict(rows: list[dict], settings: dict) -> tuple[Verdict, dict]:
    tol = settings["tolerance"]
    checks, summary = [], {}
    for model in dict.fromkeys(r["model"] for r in rows):
        base = next(r for r in rows if r["model"] == model and r["method"] == "baseline")
        design = next(r for r in rows if r["model"] == model and r["method"] == "designed")
        summary[model] = {"baseline_delta": base["delta"], "designed_delta": design["delta"],
                          "designed_W": design["W"]}
        beats = base["delta"] < tol or design["delta"] < base["delta"]
        ok = design["delta"] < tol and beats and design["certified"]
        checks.append((ok, f"{model}: designed Delta {design['delta']:.1e} vs baseline factor(G*) "
                           f"{base['delta']:.1e}{'' if design['certified'] else ' (not certified)'}"
                           + unpinned_note([design])))
    passed = all(ok for ok, _ in checks)
    text = "; ".join(t for _, t in checks)
    return Verdict(passed, text if passed else f"FAILED (need Delta < {tol:g}, beating the baseline): " + text), summary


def plot_inverse(rows: list[dict], settings: dict):
    """Heatmaps: target, learnt Gram of the baseline and of the designed prototypes, per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    title = setup_title("inverse design of prototypes", settings, ["k", "tau", "class_sizes"]) + \
        ": learnt class-mean Gram (certified) vs target $G^*$"
    figure, axes = figure_grid(len(models), 4, title, width=2.9, height=2.8)
    target = np.asarray(settings["target_gram"])
    for i, model in enumerate(models):
        base = next(r for r in rows if r["model"] == model and r["method"] == "baseline")
        design = next(r for r in rows if r["model"] == model and r["method"] == "designed")
        gram_heatmap(axes[i, 0], target, "target $G^*$")
        gram_heatmap(axes[i, 1], np.asarray(base["gram"]),
                     f"{model}, $W$ = factor($G^*$)\n$\\Delta$ = {base['delta']:.1e}")
        gram_heatmap(axes[i, 2], np.asarray(design["gram"]),
                     f"{model}, designed $W$\n$\\Delta$ = {design['delta']:.1e}")
        W = np.asarray(design["W"])
        image = gram_heatmap(axes[i, 3], W.T @ W, f"designed prototype Gram\n$W^T W$ ({model})")
        figure.colorbar(image, ax=axes[i, 3], fraction=0.046, pad=0.04, label="cosine")
    figure.tight_layout()
    return figure
