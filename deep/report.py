"""Figures and tables comparing deep runs (``ncgeo deep report RUN [RUN ...] --out DIR``).

Writes into ``out``:

* ``delta_curves.png``: ``Delta`` to the prototype Gram, to the ETF (centred means) and
  to the OF (uncentred) against the epoch, one colour per run, training set solid and
  test set dashed (definitions of :mod:`ncgeo.metrics`, as logged in ``metrics.jsonl``);
* ``grams.png``: one row per run with the cosines of the final training class means, the
  prototype Gram ``G_W`` and the UFM prediction of :mod:`deep.predict` (cosines of the
  predicted means);
* ``accuracy.md`` / ``accuracy.csv``: one row per run (final epoch): balanced NCC and
  nearest-prototype accuracies on train and test, ``Delta`` values and the prediction gap;
* ``per_class.csv``: per-class counts and accuracies of every run.

Everything that can fail without a bug is checked before the first solve: the runs (read and
checked by :func:`deep.predict.load_run`), that each run to predict can take its
``prediction.json`` and that ``out`` is a writable folder; a write that fails anyway is one
``ValueError`` naming the file.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ncgeo._io import atomic_write_bytes, os_errors_as_value_errors

from .predict import MEAN_PRODUCTS_KEYS, Prediction, RunRecord, check_predictable, load_run, predict_record

__all__ = ["ReportResult", "report", "accuracy_rows", "cosines", "run_labels", "markdown_table", "csv_bytes",
           "write_file", "save_png"]

TABLE_COLUMNS = (
    "run", "loss", "n_w", "imbalance", "ratio", "epoch", "train_ncc", "test_ncc", "train_nearest_prototype",
    "test_nearest_prototype", "train_delta_prototypes", "test_delta_prototypes", "train_delta_etf",
    "train_nc1", "delta_measured_predicted", "prediction_model", "prediction_certified",
)


@dataclass(frozen=True)
class ReportResult:
    """Paths written by :func:`report` and the table rows."""

    out: Path
    files: tuple[Path, ...]
    rows: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "files": [str(f) for f in self.files], "rows": list(self.rows)}


def cosines(gram: np.ndarray) -> np.ndarray:
    """``G_cc' / sqrt(G_cc G_c'c')``: the cosine matrix of a Gram (zero rows stay zero)."""
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    return gram * np.outer(scale, scale)


def _final(record: RunRecord) -> dict[str, Any]:
    return record.metrics[-1]


def accuracy_rows(records: Sequence[RunRecord], predictions: Sequence[Prediction | None]) -> list[dict[str, Any]]:
    """One row per run (keys :data:`TABLE_COLUMNS`) from its last metrics line and prediction."""
    rows = []
    for record, prediction in zip(records, predictions):
        last = _final(record)
        train, test = last["train"], last.get("test") or {}
        rows.append({
            "run": record.name, "loss": record.config.get("loss"), "n_w": record.config.get("protos"),
            "imbalance": record.config.get("imbalance"), "ratio": record.config.get("ratio"),
            "epoch": last["epoch"], "train_ncc": train["ncc_accuracy"], "test_ncc": test.get("ncc_accuracy"),
            "train_nearest_prototype": train["nearest_prototype_accuracy"],
            "test_nearest_prototype": test.get("nearest_prototype_accuracy"),
            "train_delta_prototypes": train["delta_prototypes"],
            "test_delta_prototypes": test.get("delta_prototypes"),
            "train_delta_etf": train["delta_etf"], "train_nc1": train["nc1"],
            "delta_measured_predicted": None if prediction is None else prediction.delta_measured_predicted,
            "prediction_model": None if prediction is None else prediction.model,
            "prediction_certified": None if prediction is None else prediction.certified,
        })
    return rows


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A Markdown table of ``rows`` (dicts) in ``columns`` order; floats with 4 decimals, None as n/a."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """UTF-8 CSV of ``rows`` (sequences) under ``header``; None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue().encode("utf-8")


def write_file(path: Path, data: bytes) -> None:
    """Atomic write of ``data``; an OS error (full disk, permissions) is one ``ValueError`` naming the file."""
    with os_errors_as_value_errors(path):
        atomic_write_bytes(path, data, make_folder=True)


def save_png(figure, path: Path) -> None:
    """A matplotlib figure as a PNG (dpi 120), written atomically by :func:`write_file`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_file(path, buffer.getvalue())


def run_labels(records: Sequence[RunRecord]) -> list[str]:
    """A legend name per run from what it trained: ``SCL n_w = 100``, ``CE, fixed W`` (ce-fixed)
    or ``CE, learnt W`` (ce); runs that would share a name get the shortest end of their
    folder path that tells them apart, e.g. ``SCL n_w = 100 (runs/a)`` and ``... (x/a)``."""
    names = []
    for record in records:
        loss = record.config.get("loss", "scl")
        names.append({"ce": "CE, learnt W", "ce-fixed": "CE, fixed W"}.get(
            loss, f"SCL n_w = {float(record.config.get('protos', 0.0)):g}"))
    labels = list(names)
    for name in set(names):
        same = [i for i, other in enumerate(names) if other == name]
        if len(same) < 2:
            continue
        paths = {i: Path(os.path.abspath(records[i].path)).parts for i in same}
        for i in same:
            for depth in range(1, len(paths[i]) + 1):
                tail = paths[i][-depth:]
                if all(paths[j][-depth:] != tail for j in same if j != i):
                    break
            labels[i] = f"{name} ({'/'.join(tail)})"
    return labels


def _curves(records: Sequence[RunRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = (("delta_prototypes", "to the prototype Gram G_W"), ("delta_etf", "to the ETF (centred means)"),
              ("delta_of", "to the OF (uncentred means)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for index, (record, label) in enumerate(zip(records, run_labels(records))):
        colour = colours[index % len(colours)]
        epochs = [m["epoch"] for m in record.metrics]
        handles.append(Line2D([], [], color=colour, marker="o", ms=3, label=label))
        for axis, (key, _) in zip(axes[0], panels):
            train = [m["train"][key] for m in record.metrics]
            axis.plot(epochs, [np.nan if v is None else v for v in train], "-o", ms=3, color=colour)
            if all(m.get("test") for m in record.metrics):
                test = [m["test"][key] for m in record.metrics]
                axis.plot(epochs, [np.nan if v is None else v for v in test], "--", color=colour)
    for axis, (_, title) in zip(axes[0], panels):
        axis.set_title(f"Delta {title}", fontsize=10)
        axis.set_xlabel("epoch")
        axis.set_ylabel("Delta")
        axis.set_ylim(bottom=0, top=max(axis.get_ylim()[1], 1e-3))  # after every curve: none is clipped
    handles += [Line2D([], [], color="grey", ls="-", label="training set"),
                Line2D([], [], color="grey", ls="--", label="test set")]
    figure.suptitle("Gram distance Delta of the class means during training", fontsize=11)
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False,
                  bbox_to_anchor=(0.5, 0.0))
    figure.tight_layout(rect=(0, 0.06 + 0.05 * ((len(handles) - 1) // 4), 1, 1))
    save_png(figure, path)
    plt.close(figure)


def _grams(records: Sequence[RunRecord], predictions: Sequence[Prediction | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(records), 3, figsize=(10.5, 3.6 * len(records)), squeeze=False)
    image = None
    for row, (record, prediction, label) in enumerate(zip(records, predictions, run_labels(records))):
        final = _final(record)
        train = final["train"]
        # "gram_means" in runs written before the key was renamed (the same M^T M); nulls (NaN) become NaN
        key = next(key for key in MEAN_PRODUCTS_KEYS if key in train)  # load_run checked that one is there
        measured = cosines(np.asarray(train[key], dtype=np.float64))
        predicted = "" if prediction is None or prediction.delta_measured_predicted is None else \
            f"\nDelta to the learnt = {_format(prediction.delta_measured_predicted)}"
        panels = [(measured, f"{label}: learnt (epoch {final['epoch']})\n"
                             f"Delta to G_W = {_format(train.get('delta_prototypes'))}"),
                  (record.prototypes.T @ record.prototypes, "prototype Gram G_W"),
                  (None if prediction is None else cosines(prediction.gram_predicted),
                   "UFM prediction" + ("" if prediction is None else f" ({prediction.model}"
                                        + ("" if prediction.certified else ", not certified") + ")") + predicted)]
        k = measured.shape[0]
        for axis, (matrix, title) in zip(axes[row], panels):
            axis.set_title(title, fontsize=9)
            if matrix is None:
                axis.set_xticks([])
                axis.set_yticks([])
                axis.text(0.5, 0.5, "no prediction", ha="center", va="center", transform=axis.transAxes)
                continue
            image = axis.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
            ticks = range(k) if k <= 20 else range(0, k, max(1, k // 10))  # class indices
            axis.set_xticks(ticks)
            axis.set_yticks(ticks)
            axis.tick_params(labelsize=7)
            axis.set_xlabel("class", fontsize=8)
            axis.set_ylabel("class", fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="cosine")
    save_png(figure, path)
    plt.close(figure)


def report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, predict: bool = True,
           model: str | None = None) -> ReportResult:
    """Write the figures and tables of the module docstring for ``runs`` into ``out``.

    ``predict`` computes (and caches in each run's ``prediction.json``) the UFM prediction
    with :func:`deep.predict.predict_record` after :func:`deep.predict.check_predictable` for every run (``model`` None: its default per run); runs trained
    with ``--loss ce`` have none.
    """
    if isinstance(runs, (str, os.PathLike)) or not isinstance(runs, Sequence):
        raise TypeError(f"runs must be a non-empty list of run folders, got {type(runs).__name__}")
    if len(runs) == 0:
        raise ValueError("runs must be a non-empty list of run folders")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be the path of a folder, got {type(out).__name__}")
    if not os.fspath(out).strip():
        raise ValueError("--out must not be empty (a folder for the figures and tables)")
    records = [load_run(run) for run in runs]
    wanted = [predict and record.config.get("loss", "scl") != "ce" for record in records]
    models = [check_predictable(record, model) if predicted else None  # every run's checks before the first solve
              for record, predicted in zip(records, wanted)]
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way: one line, not a traceback
        raise ValueError(f"--out {str(folder)!r} cannot be created as a folder: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(folder)!r} is not writable")
    predictions: list[Prediction | None] = [predict_record(record, chosen) if chosen else None
                                            for record, chosen in zip(records, models)]
    rows = accuracy_rows(records, predictions)
    files = [folder / name for name in ("delta_curves.png", "grams.png", "accuracy.md", "accuracy.csv",
                                        "per_class.csv")]
    _curves(records, files[0])
    _grams(records, predictions, files[1])
    write_file(files[2], markdown_table(rows).encode("utf-8"))
    write_file(files[3], csv_bytes(TABLE_COLUMNS, [[row[c] for c in TABLE_COLUMNS] for row in rows]))
    per_class = []
    for record in records:
        last = _final(record)
        test = last.get("test") or {}
        for c, count in enumerate(last["train"]["class_counts"]):
            per_class.append([record.name, c, count, last["train"]["ncc_per_class"][c],
                              (test.get("ncc_per_class") or [None] * (c + 1))[c],
                              (test.get("nearest_prototype_per_class") or [None] * (c + 1))[c]])
    write_file(files[4], csv_bytes(("run", "class", "train_count", "train_ncc", "test_ncc", "test_nearest_prototype"),
                          per_class))
    return ReportResult(folder, tuple(files), tuple(rows))
