"""The figure of ``ncgeo deep sweep`` (``OUT/sweep.png``), drawn from the table's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .sweep import CE_FIXED, VERDICT_TOLERANCE, SweepSpec

__all__ = ["plot_sweep"]


def plot_sweep(rows: Sequence[Mapping[str, Any]], spec: SweepSpec, path: Path) -> None:
    """Deltas and NC1 against n_w (train solid, test dashed; one line per geometry/feature, mean
    over seeds), and the measured and predicted Grams of two runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import cosines, save_png

    labels = [f"{n:g}" for n in spec.n_w] + ([CE_FIXED] if spec.ce_fixed else [])
    position = {label: index for index, label in enumerate(labels)}

    def key(row):
        return row["n_w"] if row["n_w"] == CE_FIXED else f"{float(row['n_w']):g}"

    figure = plt.figure(figsize=(15, 8.5))
    grid = figure.add_gridspec(2, 12)  # top: three panels of 4 columns; bottom: four of 3
    panels = [("Delta(measured, predicted)", "delta_mp_train", "delta_mp_test", False),
              ("Delta(measured, G_W)", "delta_gw_train", "delta_gw_test", False),
              ("NC1", "nc1_train", "nc1_test", True)]
    groups = sorted({(row["geometry"], row["feature"]) for row in rows})
    for column, (title, train_key, test_key, log) in enumerate(panels):
        axis = figure.add_subplot(grid[0, 4 * column:4 * column + 4])
        positive = False
        for group_index, group in enumerate(groups):
            colour = f"C{group_index}"
            for data_key, style in ((train_key, "-"), (test_key, "--")):
                xs, ys, hollow = [], [], []
                for label in labels:
                    chosen = [row for row in rows if (row["geometry"], row["feature"]) == group
                              and key(row) == label and row.get(data_key) is not None]
                    if chosen:
                        xs.append(position[label])
                        ys.append(float(np.mean([row[data_key] for row in chosen])))
                        hollow.append(not all(row.get("certified") for row in chosen))
                positive = positive or any(y > 0 for y in ys)
                axis.plot(xs, ys, style, marker="o", color=colour,
                          label=f"{Path(group[0]).stem}/{group[1]} {'train' if data_key == train_key else 'test'}")
                open_x = [x for x, h in zip(xs, hollow) if h]
                if open_x:  # a prediction that is not certified: hollow markers
                    axis.plot(open_x, [y for y, h in zip(ys, hollow) if h], linestyle="none", marker="o",
                              markersize=7, markerfacecolor="white", markeredgecolor=colour)
        if column == 0:
            axis.axhline(VERDICT_TOLERANCE, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel("n_w")
        axis.set_title(title + (" (hollow: prediction not certified)" if column == 0 else ""), fontsize=10)
        if log and positive:  # (no positive value: e.g. every run failed)
            axis.set_yscale("log")
        if column == len(panels) - 1:  # one legend for the three panels, outside them
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    finite = [row for row in rows if row["n_w"] != CE_FIXED and row.get("gram_measured") is not None]
    shown = []
    if finite:
        first = finite[0]
        shown.append(first)
        large = [row for row in finite if (row["geometry"], row["feature"], row["seed"]) ==
                 (first["geometry"], first["feature"], first["seed"]) and row is not first]
        if large:
            shown.append(max(large, key=lambda row: float(row["n_w"]) if float(row["n_w"]) <= 100 else -1))
    axes = [figure.add_subplot(grid[1, 3 * index:3 * index + 3]) for index in range(4)]
    image = None
    for index, row in enumerate(shown[:2]):
        for offset, (name, gram) in enumerate((("measured", cosines(np.asarray(row["gram_measured"]))),
                                               ("predicted", np.asarray(row["gram_predicted"])))):
            axis = axes[2 * index + offset]
            image = axis.imshow(gram, cmap="RdBu_r", vmin=-1, vmax=1)
            axis.set_title(f"{name}, n_w = {float(row['n_w']):g}\n{row['run']}", fontsize=8)
    for axis in axes[2 * len(shown[:2]):]:
        axis.axis("off")
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.7)
    save_png(figure, path)
    plt.close(figure)
