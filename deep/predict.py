r"""The UFM prediction for a deep run, and how far the learnt geometry is from it (docs/theory.md section 7).

Prototypes compete with the batch, not with the dataset. The default model (``"batch"``)
is therefore the full-batch reduced relaxation of :func:`ncgeo.certify.reduced.solve_reduced`
with the **expected per-batch class counts** as real weights,

.. math::

    \bar n_c = s \, n_c / N, \qquad s = \text{views} \times \text{batch size}
    \ (\text{the samples of one contrastive batch}),

the run's ``n_w``, ``tau`` and prototypes ``W`` (UFM+ when the features are non-negative).
``model="dataset"`` uses the training-set counts ``n_c`` themselves instead, and
``model="ce-limit"`` the ``n_w -> infinity`` limit: cross-entropy with the fixed classifier
``W`` (:func:`ncgeo.certify.certify_ce_limit`, docs/theory.md section 4), which is also the
prediction (and the default) for runs trained with ``--loss ce-fixed``.

The predicted class-mean Gram comes from the optimal ``R`` of the reduced program:
``G_pred[c, c'] = R[c, c'] / sqrt(w_c w_c')`` (``= b_cc'`` off the diagonal and
``(1 + (w_c - 1) a_c) / w_c`` on it; 1 at collapse). UFM+ with prototypes that have negative
entries (a simplex ETF) is the exception: its Gram relaxation cannot express ``h >= 0`` and is not
tight, so no certified prediction exists; the prediction is then the best non-negative collapsed point
the certificate found (its upper bound, :func:`ncgeo.certify.reduced.finish_relaxation`), and the
verdict says "best non-negative point found, not certified". Distances use
:func:`ncgeo.metrics.gram_distance`: ``Delta(measured, predicted)`` with the uncentred
training class means ``M`` of the run's last evaluation, and ``Delta(predicted, G_W)``.
The learnt-classifier CE baseline (``--loss ce``) has no such prediction and is refused.

:func:`load_run` checks every file it reads, and every line of ``metrics.jsonl``, for the keys,
types and lengths that this module and :mod:`deep.report` use, so a damaged or hand-edited run
is one ``ValueError`` naming the file (and line) instead of a ``KeyError`` deep inside a report.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncgeo._io import os_errors_as_value_errors
from ncgeo._validation import MIN_TAU, as_float_array, check_choice, check_positive
from ncgeo.metrics import gram_distance

from .checkpoint import atomic_write_json, read_jsonl_numbered
from .config import FEATURE_CHOICES, LOSS_CHOICES, NONNEGATIVE_FEATURES

__all__ = ["MEAN_PRODUCTS_KEYS", "PREDICTION_MODELS", "Prediction", "RunRecord", "check_predictable",
           "check_prediction_writable", "load_run", "expected_batch_counts", "predict_record", "predict_run",
           "predicted_means_gram"]

PREDICTION_MODELS = ("batch", "dataset", "ce-limit")
#: Key of the ``k x k`` matrix ``M^T M`` of a split in ``metrics.jsonl``: the current name, then the
#: name of runs written before the rename (the same matrix).
MEAN_PRODUCTS_KEYS = ("mean_inner_products", "gram_means")
#: Numbers (or null: NaN is written as null) of every split of a metrics line that predict/report read.
_SPLIT_NUMBERS = ("delta_prototypes", "delta_etf", "delta_of", "nc1", "ncc_accuracy", "nearest_prototype_accuracy")


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


class _Corrupt(ValueError):
    """A file of a run folder holds something else than :func:`deep.train.train` writes."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _numbers(value: Any, length: int, *, null: bool = True) -> bool:
    """``value`` is a list of ``length`` JSON numbers (or nulls, when ``null``)."""
    return (isinstance(value, list) and len(value) == length
            and all(_is_real(v) or (null and v is None) for v in value))


def _split_problem(split: dict, name: str, k: int) -> str | None:
    """What is wrong with the metrics of one split (``train`` or ``test``) of a line, if anything."""
    for key in _SPLIT_NUMBERS:
        if key not in split:
            return f"has no {name}.{key}"
        if not (split[key] is None or _is_real(split[key])):
            return f"{name}.{key} must be a number or null, got {_short(split[key])}"
    per_class = ("ncc_per_class",) if name == "train" else ("ncc_per_class", "nearest_prototype_per_class")
    for key in per_class:
        value = split.get(key)
        if (name == "train" or value is not None) and not _numbers(value, k):
            return f"{name}.{key} must be a list of {k} numbers (one per class), got {_short(value)}"
    return None


def _line_problem(record: Any, k: int) -> str | None:
    """What is wrong with one line of ``metrics.jsonl`` for a run of ``k`` classes, if anything."""
    if not isinstance(record, dict):
        return "is not an evaluation record (a JSON object with epoch, train, test)"
    if "epoch" not in record:
        return "has no epoch"
    if not _is_count(record["epoch"]):
        return f"epoch must be an integer >= 0, got {_short(record['epoch'])}"
    train = record.get("train")
    if not isinstance(train, dict):
        return f"train must be an object of metrics, got {_short(train)}"
    problem = _split_problem(train, "train", k)
    if problem:
        return problem
    counts = train.get("class_counts")
    if not (isinstance(counts, list) and len(counts) == k and all(_is_count(c) for c in counts)):
        return f"train.class_counts must be a list of {k} integers >= 0 (one per class), got {_short(counts)}"
    key = next((key for key in MEAN_PRODUCTS_KEYS if key in train), None)
    if key is None:
        return f"has no train.{MEAN_PRODUCTS_KEYS[0]} (the {k} x {k} matrix of class-mean inner products)"
    matrix = train[key]
    if not (isinstance(matrix, list) and len(matrix) == k and all(_numbers(row, k) for row in matrix)):
        return f"train.{key} must be a {k} x {k} matrix of numbers (lists of lists), got {_short(matrix)}"
    test = record.get("test")
    if test is None:
        return None
    if not isinstance(test, dict):
        return f"test must be an object of metrics or null, got {_short(test)}"
    return _split_problem(test, "test", k)


def _config_problem(config: dict) -> str | None:
    """What is wrong with the keys of ``config.json`` that the prediction and the report read."""
    for key, minimum in (("protos", 0.0), ("tau", MIN_TAU)):  # the bounds TrainConfig checks
        if key not in config:
            return f"no {key}"
        value = config[key]
        if not _is_real(value) or not math.isfinite(value) or value < minimum:
            return f"{key} must be a finite number >= {minimum:g}, got {_short(value)}"
    for key, choices in (("loss", LOSS_CHOICES), ("feature", FEATURE_CHOICES)):
        if key in config and not (isinstance(config[key], str) and config[key] in choices):
            return f"{key} must be one of {', '.join(choices)}, got {_short(config[key])}"
    if not isinstance(config.get("proto_anchors", False), bool):
        return f"proto_anchors must be true or false, got {_short(config['proto_anchors'])}"
    return None


def _check_config(folder: Path, config: dict) -> None:
    problem = _config_problem(config)
    if problem:
        raise ValueError(f"run folder {str(folder)!r}: config.json is corrupt ({problem})")


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read a run folder written by :func:`deep.train.train` (``ValueError`` naming what is missing).

    Checked (one ``ValueError`` naming the file, and the line of ``metrics.jsonl``): ``config.json``
    has a finite ``protos >= 0`` and ``tau >= MIN_TAU`` (1e-6, as ``TrainConfig``) and a known ``loss`` / ``feature``; ``run.json``
    has ``k`` training class counts (``k`` columns of the ``d x k`` prototypes) and an integer
    ``samples_per_batch >= 1``; every metrics line has an integer ``epoch >= 0`` and, in ``train``,
    the numbers (or null) ``delta_prototypes``, ``delta_etf``, ``delta_of``, ``nc1``,
    ``ncc_accuracy``, ``nearest_prototype_accuracy``, ``k`` class counts and NCC accuracies and
    the ``k x k`` mean inner products (:data:`MEAN_PRODUCTS_KEYS`); ``test`` is null or the same
    numbers with per-class lists of length ``k``; ``means.npz`` has a scalar integer ``epoch``
    and ``d x k`` finite ``train`` means.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"run must be the path of a run folder, got {type(path).__name__}")
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
        except _Corrupt as exc:
            raise ValueError(f"run folder {str(folder)!r}: {name} is corrupt ({exc})") from exc
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"run folder {str(folder)!r}: {name} is corrupt ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from exc

    def read_json(path: Path) -> dict:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
        if not isinstance(value, dict):
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        return value

    def read_array(key: str, dtype=np.float64):
        def reader(path: Path) -> np.ndarray:
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(data[key], dtype=dtype)
        return reader

    prototypes = read("prototypes.npz", read_array("prototypes"))
    if prototypes.ndim != 2 or prototypes.size == 0 or not np.all(np.isfinite(prototypes)):
        raise ValueError(f"run folder {str(folder)!r}: prototypes.npz is corrupt (prototypes of shape "
                         f"{prototypes.shape}, expected a finite d x k matrix)")
    k = prototypes.shape[1]

    def read_metrics(path: Path) -> list[dict[str, Any]]:
        numbered = read_jsonl_numbered(path)
        for line, record in numbered:
            problem = _line_problem(record, k)
            if problem:
                raise _Corrupt(f"line {line} {problem}")
        return [record for _, record in numbered]

    config = read("config.json", read_json)
    _check_config(folder, config)
    run = read("run.json", read_json)
    counts, samples = run.get("train_class_counts"), run.get("samples_per_batch")
    if not (isinstance(counts, list) and len(counts) == k and all(_is_count(c) for c in counts)):
        raise ValueError(f"run folder {str(folder)!r}: run.json is corrupt (train_class_counts must be a list of "
                         f"{k} integers >= 0, one per prototype column, got {_short(counts)})")
    if not (_is_count(samples) and samples >= 1):
        raise ValueError(f"run folder {str(folder)!r}: run.json is corrupt (samples_per_batch must be an integer "
                         f">= 1, got {_short(samples)})")
    metrics = read("metrics.jsonl", read_metrics)
    if not metrics:
        raise ValueError(f"run folder {str(folder)!r} has no evaluation in metrics.jsonl yet")
    train_means, epoch = None, None
    if (folder / "means.npz").is_file():
        train_means = read("means.npz", read_array("train"))
        stored_epoch = read("means.npz", read_array("epoch", dtype=None))
        if stored_epoch.ndim != 0 or not np.issubdtype(stored_epoch.dtype, np.integer) or stored_epoch < 0:
            raise ValueError(f"run folder {str(folder)!r}: means.npz is corrupt (epoch must be one integer >= 0, "
                             f"got {stored_epoch.dtype} of shape {stored_epoch.shape})")
        if train_means.shape != prototypes.shape or not np.all(np.isfinite(train_means)):
            raise ValueError(f"run folder {str(folder)!r}: means.npz is corrupt (train means must be a finite "
                             f"d x k = {prototypes.shape} matrix like the prototypes, got shape {train_means.shape})")
        epoch = int(stored_epoch)
    return RunRecord(folder, config, run, metrics, prototypes, train_means, epoch)


def check_prediction_writable(folder: str | os.PathLike) -> None:
    """``ValueError`` naming the run ``folder`` when ``prediction.json`` cannot be written into it
    (a read-only folder or file system): checked before the solve, not after it."""
    folder = os.fspath(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"run folder {folder!r} is not writable: its prediction.json cannot be written "
                         "(make the folder writable, or predict without writing: --no-write)")


def expected_batch_counts(class_counts, samples_per_batch: float) -> np.ndarray:
    """``s n_c / N``: expected samples of each class in a batch of ``s > 0`` samples drawn uniformly
    (``class_counts``: finite, non-negative, positive total)."""
    counts = as_float_array("class_counts", class_counts, ndim=1)
    samples_per_batch = check_positive("samples_per_batch", samples_per_batch)
    if counts.sum() <= 0 or np.any(counts < 0):
        raise ValueError(f"class_counts must be non-negative with a positive total, got {counts}")
    return samples_per_batch * counts / counts.sum()


def predicted_means_gram(R: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Class-mean Gram ``R[:k, :k] / sqrt(w_c w_c')`` of a reduced optimum ``R`` (square, at least
    ``k x k``) with ``k`` positive finite weights ``w``."""
    weights = as_float_array("weights", weights, ndim=1)
    if len(weights) == 0 or np.any(weights <= 0):
        raise ValueError(f"weights must be positive (one per class), got {weights}")
    R = as_float_array("R", R, ndim=2)
    k = len(weights)
    if R.shape[0] != R.shape[1] or R.shape[0] < k:
        raise ValueError(f"R must be a square matrix of size at least k = {k}, got shape {R.shape}")
    scale = np.sqrt(weights)
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
    certifiable : bool
        False for UFM+ with prototypes that have negative entries at finite ``n_w``
        (:func:`ncgeo.certify.signed_ufm_plus`): no certified prediction exists, and
        :attr:`gram_predicted` is the best non-negative point found.
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
    certifiable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "weights": self.weights.tolist(), "n_w": self.n_w, "tau": self.tau,
            "nonnegative": self.nonnegative, "prototypes_as_anchors": self.prototypes_as_anchors,
            "gram_predicted": self.gram_predicted.tolist(),
            "delta_measured_predicted": self.delta_measured_predicted,
            "delta_predicted_prototypes": self.delta_predicted_prototypes,
            "delta_measured_prototypes": self.delta_measured_prototypes,
            "epoch": self.epoch, "verdict": self.verdict, "certificate": self.certificate,
            "certifiable": self.certifiable,
        }

    @property
    def certified(self) -> bool:
        """Whether the solve that gave :attr:`gram_predicted` was certified (``certificate["certified"]``)."""
        return bool(self.certificate.get("certified", False))

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


def check_predictable(record: RunRecord, model: str | None = None, write: bool = True) -> str:
    """Everything that would make :func:`predict_run` fail before its solve (which may take
    minutes): the run's configuration, a model that fits its loss, classes with samples, a
    writable run folder when ``write``. Returns the model (its default for the run's loss)."""
    _check_config(record.path, record.config)  # a RunRecord may be built or changed by hand
    loss = record.config.get("loss", "scl")
    if loss == "ce":
        raise ValueError(f"run {record.name!r} was trained with --loss ce (a learnt classifier): no UFM "
                         "prediction applies; predict needs --loss scl or ce-fixed")
    if model is None:  # a full-batch run of single views: the training counts are the batch's counts
        exact = record.run.get("full_batch") is True and record.run.get("views") == 1
        model = "ce-limit" if loss == "ce-fixed" else ("dataset" if exact else "batch")
    check_choice("model", model, PREDICTION_MODELS)
    if loss == "ce-fixed" and model != "ce-limit":
        raise ValueError(f"run {record.name!r} was trained with --loss ce-fixed; its prediction is "
                         f"--model ce-limit, not {model!r}")
    counts = np.asarray(record.run["train_class_counts"], dtype=np.float64)
    if np.any(counts <= 0):
        raise ValueError(f"run {record.name!r} has classes without training samples: {counts.astype(int).tolist()}")
    if record.config.get("proto_anchors", False) and model == "ce-limit":
        raise ValueError(f"run {record.name!r} was trained with --proto-anchors: its n_w -> infinity limit is not "
                         "cross-entropy (an extra term survives, docs/theory.md section 4); use --model batch or dataset")
    if write:
        check_prediction_writable(record.path)
    return model


def predict_run(run: str | os.PathLike | RunRecord, model: str | None = None, *, solver: str = "CLARABEL",
                write: bool = True) -> Prediction:
    """Certified UFM prediction for a run (module docstring); written to ``prediction.json`` if ``write``.

    ``model`` defaults to ``"ce-limit"`` for ``ce-fixed`` runs, ``"dataset"`` for full-batch SCL runs
    of one view per image (every step is the training set: the model is exact) and ``"batch"``
    for the other SCL runs.
    """
    record = run if isinstance(run, RunRecord) else load_run(run)
    return predict_record(record, check_predictable(record, model, write), solver=solver, write=write)


def predict_record(record: RunRecord, model: str, *, solver: str = "CLARABEL", write: bool = True) -> Prediction:
    """:func:`predict_run` of a record that :func:`check_predictable` has passed, with the model
    it returned (:func:`deep.report.report` checks every run before the first solve)."""
    from ncgeo import UFMProblem
    from ncgeo.certify import certify_ce_limit, signed_ufm_plus, solve_reduced

    counts = np.asarray(record.run["train_class_counts"], dtype=np.float64)
    n_w, tau = float(record.config["protos"]), float(record.config["tau"])
    nonnegative = record.config.get("feature") in NONNEGATIVE_FEATURES
    anchors = bool(record.config.get("proto_anchors", False))
    W = record.prototypes
    certifiable = True  # False: UFM+ with signed prototypes at finite n_w (no certified prediction exists)
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
        problem = UFMProblem.from_sizes(weights, W, n_w, tau, nonnegative=nonnegative,
                                        prototypes_as_anchors=anchors and n_w > 0, dim=W.shape[0])
        result = solve_reduced(problem, solver=solver)
        certificate, verdict = result.to_dict(), result.verdict()
        certifiable = not signed_ufm_plus(problem)
        if not certifiable and not result.certified and "means" in result.solution:
            # UFM+ with signed prototypes: the relaxation's optimum is not attained by non-negative
            # features; the prediction is the best non-negative collapsed point found (its loss is the
            # certificate's upper bound), not the relaxation's Gram
            means = np.asarray(result.solution["means"])
            gram, verdict = means.T @ means, f"best non-negative point found, {verdict}"
        elif "R" in result.solution:
            gram = predicted_means_gram(np.asarray(result.solution["R"]), weights)
        else:
            raise ValueError(f"the reduced UFM program could not be solved for run {record.name!r}: {result.reason}")
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
        epoch=record.means_epoch, verdict=verdict, certificate=certificate, certifiable=certifiable,
    )
    if write:
        target = record.path / "prediction.json"
        with os_errors_as_value_errors(target):  # e.g. the folder turned read-only during the solve
            atomic_write_json(target, prediction.to_dict())
    return prediction
