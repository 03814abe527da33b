r"""The UFM prediction for a deep run, and how far the learnt geometry is from it (THEORY.md section 7).

Prototypes compete with the batch, not with the dataset. The default model (``"batch"``)
is therefore the full-batch reduced relaxation of :func:`ncgeo.certify.reduced.solve_reduced`
with the **expected per-batch class counts** as real weights,

.. math::

    \bar n_c = s \, n_c / N, \qquad s = \text{views} \times \text{batch size}
    \ (\text{the samples of one contrastive batch}),

the run's ``n_w``, ``tau`` and prototypes ``W`` (UFM+ when the features are non-negative).
``model="dataset"`` uses the training-set counts ``n_c`` themselves instead, and
``model="ce-limit"`` the ``n_w -> infinity`` limit: cross-entropy with the fixed classifier
``W`` (:func:`ncgeo.certify.certify_ce_limit`, THEORY.md section 4), which is also the
prediction (and the default) for runs trained with ``--loss ce-fixed``.

The predicted class-mean Gram comes from the optimal ``R`` of the reduced program:
``G_pred[c, c'] = R[c, c'] / sqrt(w_c w_c')`` (``= b_cc'`` off the diagonal and
``(1 + (w_c - 1) a_c) / w_c`` on it; 1 at collapse). Distances use
:func:`ncgeo.metrics.gram_distance`: ``Delta(measured, predicted)`` with the uncentred
training class means ``M`` of the run's last evaluation, and ``Delta(predicted, G_W)``.
The learnt-classifier CE baseline (``--loss ce``) has no such prediction and is refused.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncgeo._validation import check_choice
from ncgeo.metrics import gram_distance

from .checkpoint import atomic_write_json, read_jsonl

__all__ = ["PREDICTION_MODELS", "Prediction", "RunRecord", "load_run", "expected_batch_counts",
           "predict_run", "predicted_means_gram"]

PREDICTION_MODELS = ("batch", "dataset", "ce-limit")


@dataclass(frozen=True)
class RunRecord:
    """What a run folder holds: configuration, run facts, metrics lines, prototypes, latest means."""

    path: Path
    config: dict[str, Any]
    run: dict[str, Any]
    metrics: list[dict[str, Any]]
    prototypes: np.ndarray
    train_means: np.ndarray | None
    means_epoch: int | None

    @property
    def name(self) -> str:
        return self.path.name


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read a run folder written by :func:`deep.train.train` (``ValueError`` naming what is missing)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"run folder {str(folder)!r} does not exist")
    needed = ("config.json", "run.json", "metrics.jsonl", "prototypes.npz")
    for name in needed:
        if not (folder / name).is_file():
            raise ValueError(f"run folder {str(folder)!r} has no {name}; is it a `ncgeo deep train` run?")
    def read(name: str, reader):
        try:
            return reader(folder / name)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"run folder {str(folder)!r}: {name} is corrupt ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from exc

    def read_json(path: Path) -> dict:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
        if not isinstance(value, dict):
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        return value

    def read_array(key: str):
        def reader(path: Path) -> np.ndarray:
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(data[key], dtype=np.float64)
        return reader

    def read_metrics(path: Path) -> list[dict[str, Any]]:
        records = read_jsonl(path)
        for number, record in enumerate(records, 1):
            if not isinstance(record, dict) or not isinstance(record.get("train"), dict) or "epoch" not in record:
                raise ValueError(f"line {number} is not an evaluation record (epoch, train, test)")
        return records

    config = read("config.json", read_json)
    run = read("run.json", read_json)
    for name, values, keys in (("config.json", config, ("protos", "tau")),
                               ("run.json", run, ("train_class_counts", "samples_per_batch"))):
        missing = [key for key in keys if key not in values]
        if missing:
            raise ValueError(f"run folder {str(folder)!r}: {name} is corrupt (no {', '.join(missing)})")
    metrics = read("metrics.jsonl", read_metrics)
    if not metrics:
        raise ValueError(f"run folder {str(folder)!r} has no evaluation in metrics.jsonl yet")
    prototypes = read("prototypes.npz", read_array("prototypes"))
    if prototypes.ndim != 2:
        raise ValueError(f"run folder {str(folder)!r}: prototypes.npz is corrupt (prototypes of shape "
                         f"{prototypes.shape}, expected d x k)")
    train_means, epoch = None, None
    if (folder / "means.npz").is_file():
        train_means = read("means.npz", read_array("train"))
        epoch = int(read("means.npz", read_array("epoch")))
    return RunRecord(folder, config, run, metrics, prototypes, train_means, epoch)


def expected_batch_counts(class_counts, samples_per_batch: float) -> np.ndarray:
    """``s n_c / N``: expected samples of each class in a batch of ``s`` samples drawn uniformly."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0 or np.any(counts < 0):
        raise ValueError(f"class_counts must be non-negative with a positive total, got {counts}")
    return float(samples_per_batch) * counts / counts.sum()


def predicted_means_gram(R: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Class-mean Gram ``R[:k, :k] / sqrt(w_c w_c')`` of a reduced optimum ``R`` with weights ``w``."""
    scale = np.sqrt(np.asarray(weights, dtype=np.float64))
    k = len(scale)
    return R[:k, :k] / np.outer(scale, scale)


def _factor(gram: np.ndarray) -> np.ndarray:
    """A matrix ``F`` (``k x k``) with ``F^T F = gram`` (negative eigenvalues clipped)."""
    eigenvalues, vectors = np.linalg.eigh((gram + gram.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))).T


@dataclass(frozen=True)
class Prediction:
    """UFM prediction for a run and its distance to the measured geometry.

    Attributes
    ----------
    model : str
        ``"batch"`` (expected per-batch counts), ``"dataset"`` (training-set counts) or
        ``"ce-limit"`` (the CE limit with the fixed classifier ``W``).
    weights : ndarray (k,)
        Class weights given to the reduced program (the training counts for ``ce-limit``,
        where they do not enter).
    n_w, tau : float
    nonnegative : bool
        Whether the UFM+ (non-negative) relaxation was solved.
    prototypes_as_anchors : bool
        Whether the prototype copies were anchors in the predicted model (runs trained with
        ``--proto-anchors``).
    gram_predicted : ndarray (k, k)
        Predicted class-mean Gram.
    delta_measured_predicted : float or None
        ``Delta(M, G_pred)`` with the run's latest training class means ``M``.
    delta_predicted_prototypes : float or None
        ``Delta`` between the predicted means and ``G_W`` (None when ``n_w = 0``).
    delta_measured_prototypes : float or None
        ``Delta(M, G_W)`` as logged by the run (same definition).
    epoch : int or None
        Epoch of the measured means.
    certificate : dict
        ``to_dict()`` of the :class:`ncgeo.certify.CertificateResult` (or
        :class:`ncgeo.certify.CELimitResult`) of the solve.
    """

    model: str
    weights: np.ndarray
    n_w: float
    tau: float
    nonnegative: bool
    prototypes_as_anchors: bool
    gram_predicted: np.ndarray
    delta_measured_predicted: float | None
    delta_predicted_prototypes: float | None
    delta_measured_prototypes: float | None
    epoch: int | None
    verdict: str
    certificate: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "weights": self.weights.tolist(), "n_w": self.n_w, "tau": self.tau,
            "nonnegative": self.nonnegative, "prototypes_as_anchors": self.prototypes_as_anchors,
            "gram_predicted": self.gram_predicted.tolist(),
            "delta_measured_predicted": self.delta_measured_predicted,
            "delta_predicted_prototypes": self.delta_predicted_prototypes,
            "delta_measured_prototypes": self.delta_measured_prototypes,
            "epoch": self.epoch, "verdict": self.verdict, "certificate": self.certificate,
        }

    def summary(self) -> str:
        """A few lines for the terminal."""
        def show(value):
            return "n/a" if value is None else f"{value:.4f}"
        weights = ", ".join(f"{w:.3g}" for w in self.weights)
        plus = "+" if self.nonnegative else ""
        if self.model == "ce-limit":
            described = (f"model: CE limit (n_w -> infinity) of the UFM{plus}: fixed classifier W, "
                         f"logit scale 1/tau, tau = {self.tau:g}")
        else:
            described = (f"model: reduced full-batch UFM{plus} with "
                         f"{'expected per-batch' if self.model == 'batch' else 'training-set'} class counts "
                         f"[{weights}], n_w = {self.n_w:g}, tau = {self.tau:g}"
                         f"{', prototypes as anchors' if self.prototypes_as_anchors else ''}")
        return "\n".join([
            described,
            f"certificate: {self.verdict}",
            f"Delta(measured, predicted) = {show(self.delta_measured_predicted)} (epoch {self.epoch})",
            f"Delta(predicted, prototypes) = {show(self.delta_predicted_prototypes)}",
            f"Delta(measured, prototypes) = {show(self.delta_measured_prototypes)}",
        ])


def predict_run(run: str | os.PathLike | RunRecord, model: str | None = None, *, solver: str = "CLARABEL",
                write: bool = True) -> Prediction:
    """Certified UFM prediction for a run (module docstring); written to ``prediction.json`` if ``write``.

    ``model`` defaults to ``"batch"`` for SCL runs and ``"ce-limit"`` for ``ce-fixed`` runs.
    """
    from ncgeo.certify import certify_ce_limit, solve_reduced

    record = run if isinstance(run, RunRecord) else load_run(run)
    loss = record.config.get("loss", "scl")
    if loss == "ce":
        raise ValueError(f"run {record.name!r} was trained with --loss ce (a learnt classifier): no UFM "
                         "prediction applies; predict needs --loss scl or ce-fixed")
    if model is None:
        model = "ce-limit" if loss == "ce-fixed" else "batch"
    check_choice("model", model, PREDICTION_MODELS)
    if loss == "ce-fixed" and model != "ce-limit":
        raise ValueError(f"run {record.name!r} was trained with --loss ce-fixed; its prediction is "
                         f"--model ce-limit, not {model!r}")
    counts = np.asarray(record.run["train_class_counts"], dtype=np.float64)
    if np.any(counts <= 0):
        raise ValueError(f"run {record.name!r} has classes without training samples: {counts.astype(int).tolist()}")
    n_w, tau = float(record.config["protos"]), float(record.config["tau"])
    nonnegative = record.config.get("feature") == "nonnegative"
    anchors = bool(record.config.get("proto_anchors", False))
    if anchors and model == "ce-limit":
        raise ValueError(f"run {record.name!r} was trained with --proto-anchors: its n_w -> infinity limit is not "
                         "cross-entropy (an extra term survives, THEORY.md section 4); use --model batch or dataset")
    W = record.prototypes
    if model == "ce-limit":
        weights = counts
        limit = certify_ce_limit(W, tau, nonnegative, solver=solver)
        if not np.all(np.isfinite(limit.gram)):
            raise ValueError(f"the CE-limit program could not be solved for run {record.name!r}: {limit.reason}")
        gram, certificate = limit.gram, limit.to_dict()
        verdict = (f"certified: CE-limit program solved, norm bound active ({limit.seconds:.2f} s)"
                   if limit.certified else f"not certified: {limit.reason}")
    else:
        weights = expected_batch_counts(counts, record.run["samples_per_batch"]) if model == "batch" else counts
        result = solve_reduced(weights, W if n_w > 0 else None, n_w, tau, nonnegative=nonnegative,
                               prototypes_as_anchors=anchors and n_w > 0, dim=W.shape[0], solver=solver)
        if "R" not in result.solution:
            raise ValueError(f"the reduced UFM program could not be solved for run {record.name!r}: {result.reason}")
        gram, certificate, verdict = (predicted_means_gram(np.asarray(result.solution["R"]), weights),
                                      result.to_dict(), result.verdict())
    measured = None
    if record.train_means is not None:
        present = np.any(record.train_means != 0, axis=0)
        if np.all(present):
            measured = gram_distance(record.train_means, gram)
    uses_prototypes = n_w > 0 or model == "ce-limit"
    delta_predicted_prototypes = gram_distance(_factor(gram), W.T @ W) if uses_prototypes else None
    prediction = Prediction(
        model=model, weights=weights, n_w=n_w, tau=tau, nonnegative=nonnegative,
        prototypes_as_anchors=anchors and n_w > 0 and model != "ce-limit", gram_predicted=gram,
        delta_measured_predicted=measured, delta_predicted_prototypes=delta_predicted_prototypes,
        delta_measured_prototypes=record.metrics[-1]["train"]["delta_prototypes"],
        epoch=record.means_epoch, verdict=verdict, certificate=certificate,
    )
    if write:
        atomic_write_json(record.path / "prediction.json", prediction.to_dict())
    return prediction
