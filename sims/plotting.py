"""Shared figure style for the studies (matplotlib, Agg backend: no display needed).

Conventions: every axis is labelled with its symbol (and unit where there is one; the
quantities here are dimensionless), power laws are drawn on log-log axes, every
figure has a legend and a title stating the set-up.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["figure_grid", "style_axis", "gram_heatmap", "fit_power_law", "setup_title",
           "finite", "SYMBOLS"]

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.markersize": 4,
    "figure.dpi": 110,
}

#: Axis labels with symbols, shared by the studies.
SYMBOLS = {
    "n_w": r"prototype multiplicity $n_w$ (copies per batch)",
    "tau": r"temperature $\tau$",
    "loss_gap": r"loss gap $|\,\mathcal{L}/N - \log n_w - \mathrm{CE}^\star|$ (nats per sample)",
    "geometry_gap": r"geometry gap $\Delta(G_M, G_{\mathrm{CE}})$",
    "delta_w": r"$\Delta(G_M, G_W)$",
}


def figure_grid(nrows: int, ncols: int, title: str, width: float = 4.2, height: float = 3.3):
    """A figure with an ``nrows x ncols`` grid of axes (squeezed array) and a suptitle."""
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    figure.suptitle(title, fontsize=10)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
    return figure, axes


def style_axis(ax, xlabel: str, ylabel: str, title: str | None = None, logx: bool = False,
               logy: bool = False, legend: bool = True) -> None:
    """Label an axis, set log scales and draw its legend (if it has labelled artists)."""
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    if title:
        ax.set_title(title, fontsize=9)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7.5, framealpha=0.8)


def finite(values: Sequence[Any]) -> np.ndarray:
    """Float array with ``None`` turned into NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``log y = slope log x + intercept`` over positive finite pairs.

    Returns ``(slope, intercept)``; NaNs when fewer than two usable pairs.
    """
    x, y = finite(x), finite(y)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if keep.sum() < 2:
        return math.nan, math.nan
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(slope), float(intercept)


def gram_heatmap(ax, gram: np.ndarray, title: str, vmin: float = -1.0, vmax: float = 1.0,
                 annotate: bool | None = None):
    """Heatmap of a ``k x k`` Gram (cosine) matrix on a diverging colour map; returns the image."""
    gram = np.asarray(gram, dtype=float)
    k = gram.shape[0]
    image = ax.imshow(gram, cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=8)
    ticks = np.arange(k) if k <= 12 else np.linspace(0, k - 1, 5).astype(int)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("class $c'$", fontsize=8)
    ax.set_ylabel("class $c$", fontsize=8)
    ax.grid(False)
    if annotate is None:
        annotate = k <= 6
    if annotate:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{gram[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(gram[i, j]) > 0.6 else "black")
    return image


def setup_title(study: str, settings: dict[str, Any], keys: Sequence[str]) -> str:
    """``"study: k=4, tau=0.1, ..."`` from the named settings (lists shortened)."""
    parts = []
    for key in keys:
        value = settings.get(key)
        if isinstance(value, list):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}={value}")
    return f"{study}: " + ", ".join(parts)
