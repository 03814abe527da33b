"""Figures of ncgeo (matplotlib with the Agg backend, imported only when a figure is drawn)."""

from __future__ import annotations

import io
import os

import numpy as np

from ._io import atomic_write_bytes
from ._validation import as_float_array

__all__ = ["plot_gram_comparison", "figure_format", "FIGURE_FORMATS"]

#: File formats of :func:`plot_gram_comparison`, chosen by the path's suffix.
FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_format(path: str | os.PathLike) -> str:
    """The format named by ``path``'s suffix (``png``, ``pdf`` or ``svg``; ``ValueError`` otherwise)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"path {os.fspath(path)!r} must end in .png, .pdf or .svg (the figure's format)")
    return suffix


def plot_gram_comparison(gram_means, gram_prototypes=None, path: str | os.PathLike | None = None, *,
                         title: str | None = None, dpi: int = 120):
    """Heatmaps of the class-mean cosine Gram beside the prototype Gram (both ``k x k``).

    Colour scale fixed to ``[-1, 1]`` (diverging, with a colour bar), one panel per matrix,
    a tick per class up to ``k = 20``, and the entries written in the cells only when their
    text fits inside a cell (e.g. ``k = 4``, not ``k = 10``). Writes the figure to ``path`` atomically when given (PNG,
    PDF or SVG by the suffix, :func:`figure_format`) and returns the matplotlib figure.

    Parameters
    ----------
    gram_means : (k, k) array
        Cosines between class means (e.g. ``GeometryMetrics.gram_means``).
    gram_prototypes : (k, k) array, optional
        ``W^T W``; omitted panel when ``None``.
    path : path, optional
        Output ``.png``, ``.pdf`` or ``.svg``.
    title : str, optional
        Figure title.
    """
    fmt = None if path is None else figure_format(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("class means: cos(mu_c, mu_c')", as_float_array("gram_means", gram_means, ndim=2))]
    if gram_prototypes is not None:
        panels.append(("prototypes: W^T W", as_float_array("gram_prototypes", gram_prototypes, ndim=2)))
    k = panels[0][1].shape[0]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.8, 4.0), squeeze=False)
    image = None
    for axis, (name, matrix) in zip(axes[0], panels):
        image = axis.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("class")
        axis.set_ylabel("class")
        if k <= 20:  # a tick per class while the labels fit
            axis.set_xticks(range(k))
            axis.set_yticks(range(k))
            axis.tick_params(labelsize=8 if k <= 12 else 6)
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8, label="cosine")
    if title:
        figure.suptitle(title, fontsize=10)
    for axis, (_, matrix) in zip(axes[0], panels):
        _write_values_if_they_fit(figure, axis, matrix)
    if path is not None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=dpi)
        atomic_write_bytes(path, buffer.getvalue())
    plt.close(figure)
    return figure


def _write_values_if_they_fit(figure, axis, matrix: np.ndarray, fontsize: float = 7.0) -> bool:
    """Write every entry (2 decimals) in its cell when the widest text fits in a cell with a
    margin, measured with the figure's renderer; returns whether the values were written."""
    renderer = figure.canvas.get_renderer()
    cell = axis.get_window_extent(renderer).width / matrix.shape[1]
    probe = axis.text(0, 0, "-0.00", fontsize=fontsize)
    widest = probe.get_window_extent(renderer).width
    probe.remove()
    if widest > 0.85 * cell:
        return False
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                  color="white" if abs(value) > 0.6 else "black")
    return True
