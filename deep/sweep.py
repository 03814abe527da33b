r"""``ncgeo deep sweep``: train one network per ``n_w`` with everything else equal, predict each
with its certified UFM, and say whether training reached the prediction.

For every combination of prototype geometry, feature sign and seed the sweep trains a run per
``n_w`` (default 0, 1, 10, 100, 1000) and one with ``--loss ce-fixed`` (the ``n_w -> infinity``
limit), each in ``OUT/runs/NAME`` (:func:`deep.train.train`). Each finished run is predicted by
:func:`deep.predict.predict_run`: the reduced UFM with the training-set class counts for full-batch
runs (``model="dataset"``, the exact model, docs/theory.md section 7), the expected per-batch counts for
mini-batch runs (``"batch"``), the CE-limit program for ``ce-fixed``. Per run it reports

* ``Delta(measured, predicted)`` on the training set (and with the test-set class means),
  ``Delta(predicted, G_W)``, ``Delta(measured, G_W)``, NC1, test NCC accuracy;
* the **UFM excess**: the measured embeddings put into the model's objective minus the certified
  optimum ``L`` (the certificate's lower bound), per anchor,

  .. math::

      e_\text{means} = (F(\hat M) - L)/N, \qquad e_\text{samples} = (F(H) - L)/N,

  with ``F(\hat M)`` the collapsed objective of the normalised training class means
  (:func:`ncgeo.closed_form.collapsed_loss` with the model's class weights), ``F(H)`` the
  full-batch objective of the training embeddings (:func:`ncgeo.ufm.ufm_objective`; full-batch
  single-view runs only) and for ``ce-fixed`` the summed fixed-classifier cross-entropy
  (:func:`ncgeo.losses.fixed_classifier_cross_entropy`) against ``sum_c n_c CE*_c``. A small
  excess with a large Delta means that the loss is reached but the geometry is not pinned. Rows
  without a certified prediction by construction (``certifiable`` false, below) take the excess over
  the best point found instead of ``L`` (negative when training found a lower loss).

Verdict (:func:`sweep_verdict`): every run with ``n_w >= 10`` (``ce-fixed`` included) must have
``Delta(measured, predicted) <= 0.05`` on the training set, and, where ``Delta(predicted, G_W) >
0.02``, ``Delta(measured, predicted) < Delta(measured, G_W)`` (the measurement tells the
prediction from the prototypes), and the prediction must be a certified optimum (a Delta to an
uncertified point confirms nothing). Runs with ``n_w < 10`` get the same test as information only, and
so do the finite-``n_w`` runs with non-negative features and prototypes that have negative entries (a
simplex ETF): their UFM+ relaxation cannot express ``h >= 0`` in the prototypes' coordinates and is not
tight, so no certified prediction exists (row field ``certifiable``: false; their prediction is the best
non-negative point found). Their ``ce-fixed`` run is certified (the CE limit is convex in ``h``) and decides.

Files in ``OUT``: ``sweep.json`` (the sweep's settings), ``runs/NAME/`` (run folders, each with
``prediction.json`` and ``row.json``), ``table.csv``, ``table.md``, ``verdict.json`` and
``sweep.png``. The runs are independent and train in parallel, one single-threaded process
each (``--workers``, default all CPU cores); every row records its wall and CPU seconds.
Everything is written atomically. The sweep is resumable: a run whose
``row.json`` exists is not retrained, an interrupted run resumes from its checkpoint, and a
second call with other settings on the same ``OUT`` is refused. A run that fails (:data:`RUN_ERRORS`:
training diverged, a prediction that cannot be solved) becomes a row with its ``error`` (the verdict
fails on it) while the other runs go on; it writes no ``row.json``, so the next call retries it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ncgeo._io import jsonable

from .checkpoint import atomic_write_json
from .config import TrainConfig

__all__ = ["SWEEP_NW", "CE_FIXED", "PRESETS", "TABLE_COLUMNS", "SweepSpec", "spec_from_options", "training_cap", "run_name", "sweep_configs",
           "measure_run", "ufm_excess", "weighted_ce_optimum", "row_verdict", "sweep_verdict", "run_sweep"]

#: Default prototype multiplicities.
SWEEP_NW: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, 1000.0)
#: Label of the fixed-classifier cross-entropy run (the ``n_w -> infinity`` limit).
CE_FIXED = "ce-fixed"
#: Runs with at least this ``n_w`` (and ``ce-fixed``) decide the verdict.
VERDICT_MIN_NW = 10.0
#: Largest accepted ``Delta(measured, predicted)`` on the training set.
VERDICT_TOLERANCE = 0.05
#: Where ``Delta(predicted, G_W)`` exceeds this, the measurement must be nearer the prediction than G_W.
DISTINCT_FROM_PROTOTYPES = 0.02
#: Classes of each dataset (to turn a majority class size into a training-set cap).
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fmnist": 10}
#: Columns of ``table.csv`` / ``table.md``.
TABLE_COLUMNS = ("run", "geometry", "feature", "seed", "n_w", "model", "delta_mp_train", "delta_mp_test",
                 "delta_pred_gw", "delta_gw_train", "delta_gw_test", "nc1_train", "nc1_test", "ncc_test",
                 "excess_means", "excess_samples", "certified", "certifiable", "decides", "passes", "seconds",
                 "cpu_seconds",
                 "error")


def training_cap(dataset: str, per_class: int, imbalance: str, ratio: float) -> int:
    """``--max-train-samples`` that keeps ``per_class`` images in each majority class:
    ``sum(ncgeo.classes.class_sizes(k, per_class, imbalance, ratio))`` (k of ``dataset``)."""
    from ncgeo._validation import check_int
    from ncgeo.classes import class_sizes

    if dataset not in DATASET_CLASSES:
        raise ValueError(f"--dataset must be one of {', '.join(DATASET_CLASSES)}, got {dataset!r}")
    per_class = check_int("--per-class", per_class, minimum=1)
    return int(sum(class_sizes(DATASET_CLASSES[dataset], per_class, imbalance, ratio)))


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep trains.

    Attributes
    ----------
    out : str
        Sweep folder.
    n_w : tuple of float
        Prototype multiplicities (distinct, ``>= 0``).
    ce_fixed : bool
        Add the ``--loss ce-fixed`` run.
    seeds, features, geometries : tuples
        Every combination is a group of runs (``features``: ``signed`` / ``nonnegative``;
        ``geometries``: ``etf``, ``of``, ``random``, ``spherical`` or a prototype file).
    train : mapping
        Options of :class:`deep.config.TrainConfig` shared by every run (dataset, imbalance,
        ratio, max_train_samples, tau, arch, epochs, batch_size, ...); ``protos``, ``loss``,
        ``seed``, ``feature``, ``geometry``, ``out`` and ``resume`` are set per run.
    """

    out: str
    n_w: tuple[float, ...] = SWEEP_NW
    ce_fixed: bool = True
    seeds: tuple[int, ...] = (0,)
    features: tuple[str, ...] = ("signed",)
    geometries: tuple[str, ...] = ("etf",)
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.out, (str, os.PathLike)) or not os.fspath(self.out).strip():
            raise ValueError(f"--out must be a folder name, got {self.out!r}")
        object.__setattr__(self, "out", os.fspath(self.out))
        for name in ("n_w", "seeds", "features", "geometries"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
                raise ValueError(f"--{name.replace('_', '-')} must list at least one value, got {value!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"--{name.replace('_', '-')} lists a value twice: {list(value)}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.ce_fixed, bool):
            raise TypeError(f"ce_fixed must be true or false, got {self.ce_fixed!r}")
        if not isinstance(self.train, Mapping):
            raise TypeError(f"train must be a mapping of TrainConfig options, got {type(self.train).__name__}")
        fixed = {"protos", "loss", "seed", "feature", "geometry", "out", "resume"} & set(self.train)
        if fixed:
            raise ValueError(f"train must not set {', '.join(sorted(fixed))}: the sweep sets them per run")
        if self.train.get("proto_anchors"):  # ufm_excess evaluates sample anchors only
            raise ValueError("train must not set proto_anchors: the sweep's UFM excess has no prototype anchors")
        object.__setattr__(self, "train", dict(self.train))

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"n_w": list(self.n_w), "ce_fixed": self.ce_fixed, "seeds": list(self.seeds),
                         "features": list(self.features), "geometries": list(self.geometries),
                         "train": dict(self.train)})


#: Settings of ``--quick`` and ``--full`` (explicit options win); ``--quick`` drops n_w = 1.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {"n_w": (0.0, 10.0, 100.0, 1000.0)},
    "full": {"seeds": (0, 1), "features": ("signed", "abs"), "geometries": ("etf", "of")},
}
#: Training options of a sweep that the user does not give: Fashion-MNIST, step imbalance R = 10 with
#: 100 images in each majority class (5 x 100 + 5 x 10), 1000 test images, tau = 0.2, an MLP of width
#: :data:`SWEEP_MLP_WIDTH` trained full-batch for 1000 Adam steps (lr 1e-3, cosine decay). Measured
#: 2026-12-06 (README "Deep validation"): at tau = 0.1 the same 1000-step runs end 0.10 (n_w = 100)
#: and 0.21 (n_w = 1000) away from their predictions (the loss saturates like exp(-1/tau), so the
#: gradients that pin the class means are tiny); at tau = 0.2 every n_w >= 10 run ends within 0.011
#: of its prediction, in about 20 s of one CPU core. With a constant rate, Adam spikes near the optimum
#: (n_w = 1000, seed 1: 0.001 at step 600, 0.07 at step 1000; seed 0: 0.54 at step 700); the cosine
#: decay removes the spikes (every run of both seeds monotone to 0.0015-0.0035).
SWEEP_TRAIN_DEFAULTS: dict[str, Any] = {"dataset": "fmnist", "arch": "mlp", "batch_size": "full", "epochs": 1000,
                                        "imbalance": "step", "ratio": 10.0, "tau": 0.2, "schedule": "cosine",
                                        "max_test_samples": 1000,
                                        "progress": False}
#: ``--width`` of the sweep's ``--arch mlp`` runs (784-256-256-10: half the CPU time of width 512).
SWEEP_MLP_WIDTH = 256
DEFAULT_PER_CLASS = 100


def _split(name: str, text: str, kind) -> tuple:
    """``"0,1,10"`` -> ``(0.0, 1.0, 10.0)`` with ``kind`` (float, int, str); errors name ``--name``."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    try:
        return tuple(kind(part) for part in parts)
    except ValueError as exc:
        raise ValueError(f"--{name} must be comma-separated values such as {'0,10,100' if kind is not str else 'etf,of'}, "
                         f"got {text!r}") from exc


def spec_from_options(out: str, preset: str = "default", *, protos: str | None = None, seeds: str | None = None,
                      features: str | None = None, geometries: str | None = None, ce_fixed: bool = True,
                      per_class: int | None = None, **train: Any) -> SweepSpec:
    """The :class:`SweepSpec` of ``ncgeo deep sweep``'s options: comma-separated lists for ``protos``
    (n_w), ``seeds``, ``features`` and ``geometries``; ``per_class`` (majority class size, default
    100) sets ``max_train_samples`` (:func:`training_cap`); the other keywords are
    :class:`TrainConfig` options (``None``: the preset's or :data:`SWEEP_TRAIN_DEFAULTS`' value)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    chosen = dict(PRESETS[preset])
    lists = {"n_w": _split("protos", protos, float) if protos is not None else chosen.pop("n_w", SWEEP_NW),
             "seeds": _split("seeds", seeds, int) if seeds is not None else chosen.pop("seeds", (0,)),
             "features": (_split("feature", features, str) if features is not None
                          else chosen.pop("features", ("signed",))),
             "geometries": (_split("geometry", geometries, str) if geometries is not None
                            else chosen.pop("geometries", ("etf",)))}
    chosen = {key: value for key, value in chosen.items() if key not in ("n_w", "seeds", "features", "geometries")}
    options = {**SWEEP_TRAIN_DEFAULTS, **chosen, **{k: v for k, v in train.items() if v is not None}}
    if options["arch"] == "mlp":
        options.setdefault("width", SWEEP_MLP_WIDTH)
    if any(n < 0 or not math.isfinite(n) for n in lists["n_w"]):
        raise ValueError(f"--protos must be finite numbers >= 0, got {list(lists['n_w'])}")
    if "max_train_samples" not in options:
        options["max_train_samples"] = training_cap(options["dataset"],
                                                    DEFAULT_PER_CLASS if per_class is None else per_class,
                                                    options["imbalance"], options["ratio"])
    elif per_class is not None:
        raise ValueError("--per-class and --max-train-samples both set the training-set size; give one")
    return SweepSpec(out=out, ce_fixed=ce_fixed, train=options, **lists)


def run_name(geometry: str, feature: str, seed: int, n_w: float | None) -> str:
    """Folder name of a run: ``etf-signed-s0-nw100`` (``n_w = None``: ``...-ce-fixed``)."""
    geometry = Path(geometry).stem if geometry not in ("etf", "of", "random", "spherical") else geometry
    tail = CE_FIXED if n_w is None else f"nw{n_w:g}"
    return f"{geometry}-{feature}-s{seed}-{tail}"


def sweep_configs(spec: SweepSpec) -> list[tuple[str, TrainConfig]]:
    """``(name, config)`` of every run, in training order (each checked by :class:`TrainConfig`)."""
    runs = []
    for geometry in spec.geometries:
        for feature in spec.features:
            for seed in spec.seeds:
                for n_w in list(spec.n_w) + ([None] if spec.ce_fixed else []):
                    name = run_name(geometry, feature, seed, n_w)
                    config = TrainConfig(**{**spec.train, "protos": 0.0 if n_w is None else n_w,
                                            "loss": CE_FIXED if n_w is None else "scl", "seed": seed,
                                            "feature": feature, "geometry": geometry,
                                            "out": os.path.join(spec.out, "runs", name)})
                    runs.append((name, config))
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):
        raise ValueError("--geometry lists two files with the same name; rename one")
    return runs


def ufm_excess(embeddings, labels, weights, prototypes, n_w: float | None, tau: float, optimum: float,
               *, samples: bool = True) -> tuple[float, float | None]:
    r"""``(e_means, e_samples)``: the model's objective at the measured geometry minus ``optimum``,
    per anchor (module docstring); ``n_w = None`` is the CE limit.

    Parameters
    ----------
    embeddings : (N, d) array or tensor
        Unit training embeddings ``H``.
    labels : (N,) integers in ``[0, k)``
    weights : (k,) reals
        Class counts of the model (training counts, or expected per-batch counts); the
        objective of the class means is ``sum_c weights_c l_c`` and is divided by ``sum weights``.
    prototypes : (d, k)
    n_w : float or None
    tau : float
    optimum : float
        Certified optimum of the model with ``weights`` (sum over anchors).
    samples : bool
        Also evaluate the embeddings themselves (full-batch model, ``weights`` = the counts of
        ``labels``); else ``e_samples`` is None.
    """
    import torch

    from ncgeo.closed_form import collapsed_loss
    from ncgeo.losses import fixed_classifier_cross_entropy
    from ncgeo.ufm import ufm_objective

    H = torch.as_tensor(np.asarray(embeddings, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    weights = np.asarray(weights, dtype=np.float64)
    W = torch.as_tensor(np.asarray(prototypes, dtype=np.float64))
    k = W.shape[1]
    sums = torch.zeros(k, H.shape[1], dtype=torch.float64).index_add_(0, y, H)
    means = torch.nn.functional.normalize(sums, dim=1)  # (k, d) unit class directions
    anchors = float(weights.sum())
    if n_w is None:
        per_class = fixed_classifier_cross_entropy(means, torch.arange(k), W, tau, reduction="none")
        value_means = float((torch.as_tensor(weights) * per_class).sum())
        value_samples = float(fixed_classifier_cross_entropy(H, y, W, tau, reduction="sum")) if samples else None
    else:
        value_means = float(collapsed_loss(means.T, weights, W if n_w > 0 else None, n_w, tau))
        value_samples = (float(ufm_objective(H, y, W if n_w > 0 else None, n_w, tau, [np.arange(H.shape[0])]))
                         if samples else None)
    excess_samples = None if value_samples is None else (value_samples - optimum) / H.shape[0]
    return (value_means - optimum) / anchors, excess_samples


def weighted_ce_optimum(certificate: Mapping[str, Any], weights) -> float:
    r"""Lower bound on ``sum_c weights_c CE*_c`` from a CE-limit certificate
    (:func:`ncgeo.certify.certify_ce_limit` ``.to_dict()``), whose ``lower_bound`` ``L`` bounds the
    UNWEIGHTED sum ``sum_c CE*_c`` and whose ``values`` ``v_c >= CE*_c`` are attained per class:

    .. math::

        \sum_c w_c CE^*_c \ge \sum_c w_c v_c - \max_c w_c \,\max(0, \textstyle\sum_c v_c - L),

    since every ``v_c - CE*_c >= 0`` and their sum is at most ``sum_c v_c - L``.
    """
    values = np.asarray(certificate["values"], dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if values.shape != weights.shape:
        raise ValueError(f"weights must have one entry per class ({values.shape[0]}), got shape {weights.shape}")
    slack = max(0.0, float(values.sum()) - float(certificate["lower_bound"]))
    return float(weights @ values) - float(weights.max()) * slack


def _test_delta(record, gram: np.ndarray) -> float | None:
    """``Delta(M_test, G_pred)`` from the test split's ``M^T M`` of the last evaluation."""
    from ncgeo.metrics import gram_distance

    from .predict import MEAN_PRODUCTS_KEYS, _factor

    test = record.metrics[-1].get("test") or {}
    key = next((key for key in MEAN_PRODUCTS_KEYS if key in test), None)
    if key is None:
        return None
    products = np.asarray(test[key], dtype=np.float64)
    if np.any(np.diag(products) <= 0):
        return None
    return gram_distance(_factor(products), gram)


def measure_run(folder: str | os.PathLike, config: TrainConfig, datasets=None) -> dict[str, Any]:
    """Predict a finished run and measure it (the row of the table, plus the two Grams).

    Rebuilds the trained network from ``checkpoint.pt`` to embed the training set for the UFM
    excess (``datasets`` as for :func:`deep.train.train`).
    """
    import torch

    from .checkpoint import load_checkpoint
    from .evaluate import embed
    from .predict import load_run, predict_run
    from .train import build_run, prepare_data

    record = load_run(folder)
    ce = config.loss == CE_FIXED
    exact = config.full_batch and config.views == 1
    model = "ce-limit" if ce else ("dataset" if exact else "batch")
    prediction = predict_run(record, model)
    device = torch.device("cpu")
    train_set, _ = prepare_data(config, device, datasets)
    network, _, W = build_run(config, train_set, device)
    network.load_state_dict(load_checkpoint(Path(folder) / "checkpoint.pt")["model"])
    H = embed(network, train_set.images, train_set.mean, train_set.std, config.eval_batch_size).double()
    certificate = prediction.certificate
    certifiable = prediction.certifiable
    # the excess is over the certified optimum L; without a certificate, over the best point found
    optimum = (weighted_ce_optimum(certificate, prediction.weights) if ce else
               certificate.get("lower_bound" if certifiable else "upper_bound"))
    excess_means = excess_samples = None
    if optimum is not None and math.isfinite(optimum):
        excess_means, excess_samples = ufm_excess(H.numpy(), train_set.labels.numpy(), prediction.weights, W,
                                                  None if ce else config.protos, config.tau, optimum,
                                                  samples=exact or ce)
    last = record.metrics[-1]
    test = last.get("test") or {}
    return {
        "run": Path(folder).name, "geometry": config.geometry, "feature": config.feature, "seed": config.seed,
        "n_w": CE_FIXED if ce else config.protos, "model": model,
        "delta_mp_train": prediction.delta_measured_predicted,
        "delta_mp_test": _test_delta(record, prediction.gram_predicted),
        "delta_pred_gw": prediction.delta_predicted_prototypes,
        "delta_gw_train": last["train"]["delta_prototypes"], "delta_gw_test": test.get("delta_prototypes"),
        "nc1_train": last["train"]["nc1"], "nc1_test": test.get("nc1"), "ncc_test": test.get("ncc_accuracy"),
        "excess_means": excess_means, "excess_samples": excess_samples,
        "certified": prediction.certified,
        "certifiable": certifiable,
        "epoch": last["epoch"],
        "gram_measured": np.asarray(last["train"]["mean_inner_products"]).tolist(),
        "gram_predicted": prediction.gram_predicted.tolist(),
    }


def row_verdict(row: Mapping[str, Any]) -> tuple[bool, bool, str]:
    """``(decides, passes, reason)`` of one row by the rule of the module docstring."""
    n_w = row["n_w"]
    decides = n_w == CE_FIXED or float(n_w) >= VERDICT_MIN_NW
    if row.get("error"):  # a failed run fails the verdict whatever its n_w
        return True, False, f"the run failed: {row['error']}"
    if row.get("certifiable") is False:  # measured and shown, but no certified prediction can exist
        decides = False
    measured, to_gw, predicted_gw = row["delta_mp_train"], row["delta_gw_train"], row["delta_pred_gw"]
    if measured is None or not math.isfinite(measured):
        return decides, False, "no Delta(measured, predicted)"
    if row.get("certifiable") is False:
        return decides, False, ("information: UFM+ features with prototypes that have negative entries have no "
                                "certified prediction (the Gram relaxation cannot express h >= 0); the prediction "
                                "is the best non-negative point found")
    if row.get("certified") is not True:  # a Delta to an uncertified (or unknown) optimum confirms no theory
        return decides, False, "the prediction is not a certified optimum (see its prediction.json)"
    if measured > VERDICT_TOLERANCE:
        return decides, False, f"Delta(measured, predicted) {measured:.4f} > {VERDICT_TOLERANCE}"
    if predicted_gw is not None and predicted_gw > DISTINCT_FROM_PROTOTYPES:
        if to_gw is None or not measured < to_gw:
            return decides, False, (f"Delta(measured, predicted) {measured:.4f} is not below Delta(measured, G_W) "
                                    f"{to_gw} although the prediction is {predicted_gw:.4f} from G_W")
    return decides, True, f"Delta(measured, predicted) {measured:.4f} <= {VERDICT_TOLERANCE}"


def sweep_verdict(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``PASS`` when every deciding row (``n_w >= 10`` or ``ce-fixed``) passes, else ``FAIL``; each
    row's outcome is listed, the ``n_w < 10`` ones marked as information."""
    outcomes = []
    for row in rows:
        decides, passes, reason = row_verdict(row)
        outcomes.append({"run": row["run"], "n_w": row["n_w"], "decides": decides, "passes": passes,
                         "reason": reason})
    deciding = [o for o in outcomes if o["decides"]]
    uncertifiable = [row for row in rows if row.get("certifiable") is False and not row.get("error")
                     and (row["n_w"] == CE_FIXED or float(row["n_w"]) >= VERDICT_MIN_NW)]
    verdict = "PASS" if deciding and all(o["passes"] for o in deciding) else "FAIL"
    return {"verdict": verdict,
            "rule": (f"every run with n_w >= {VERDICT_MIN_NW:g} (and ce-fixed): Delta(measured, predicted) <= "
                     f"{VERDICT_TOLERANCE} on the training set, and below Delta(measured, G_W) where "
                     f"Delta(predicted, G_W) > {DISTINCT_FROM_PROTOTYPES}, to a certified prediction; runs with "
                     "smaller n_w are information" + (
                         f", and so are {len(uncertifiable)} run(s) with non-negative features and prototypes that "
                         "have negative entries (no certified prediction exists)" if uncertifiable else "")
                     + "; every run must finish"),
            "rows": outcomes}


def _check_folder(spec: SweepSpec) -> None:
    """Create ``OUT`` with ``sweep.json``, or check that the stored sweep has the same settings."""
    out = Path(spec.out)
    stored = out / "sweep.json"
    if stored.is_file():
        try:
            with open(stored, encoding="utf-8") as handle:
                previous = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--out {spec.out!r}: sweep.json cannot be read ({exc})") from exc
        if previous != spec.to_dict():
            changed = sorted(key for key in spec.to_dict() if previous.get(key) != spec.to_dict()[key])
            raise ValueError(f"--out {spec.out!r} holds a sweep with other settings ({', '.join(changed)} differ); "
                             "choose another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {spec.out!r} exists and is not a sweep folder; choose another --out")
    from .report import write_file

    write_file(stored, json.dumps(spec.to_dict(), indent=2).encode("utf-8"))


def _write_outputs(spec: SweepSpec, rows: list[dict[str, Any]], seconds: float, cpu_seconds: float,
                   workers: int) -> dict[str, Any]:
    from .report import csv_bytes, markdown_table, write_file

    out = Path(spec.out)
    verdict = sweep_verdict(rows)
    for row, outcome in zip(rows, verdict["rows"]):
        row["decides"], row["passes"] = outcome["decides"], outcome["passes"]
    table = [{column: row.get(column) for column in TABLE_COLUMNS} for row in rows]
    write_file(out / "table.csv", csv_bytes(TABLE_COLUMNS, [[row[c] for c in TABLE_COLUMNS] for row in table]))
    shown = [{**row, "n_w": row["n_w"] if row["n_w"] == CE_FIXED else f"{float(row['n_w']):g}",
              **{c: None if row[c] is None else f"{row[c]:.2e}" for c in ("excess_means", "excess_samples")},
              **{c: None if row[c] is None else f"{row[c]:.0f}" for c in ("seconds", "cpu_seconds")}}
             for row in table]
    shown_columns = [c for c in TABLE_COLUMNS if c != "error" or any(row.get("error") for row in table)]
    write_file(out / "table.md", markdown_table(shown, shown_columns).encode("utf-8"))
    summary = {**verdict, "seconds": seconds, "cpu_seconds": cpu_seconds, "workers": workers,
               "settings": spec.to_dict(), "table": table}
    write_file(out / "verdict.json", json.dumps(jsonable(summary, strict=True), indent=1).encode("utf-8"))
    from .sweep_figure import plot_sweep

    plot_sweep(rows, spec, out / "sweep.png")
    return summary


def _show(value: float | None, form: str = ".4f") -> str:
    return "n/a" if value is None else format(value, form)


def _train_and_measure(config: TrainConfig, datasets=None) -> dict[str, Any]:
    """Train (or resume) one run, measure it and write its ``row.json``; the row gets the run's
    wall time ``seconds`` and the CPU time ``cpu_seconds`` of the process that did the work."""
    from .predict import load_run
    from .train import train

    wall, cpu = time.perf_counter(), time.process_time()
    folder = Path(config.out)
    train(config.replace(resume=(folder / "checkpoint.pt").is_file()), datasets=datasets)
    if load_run(folder).metrics[-1]["epoch"] != config.epochs:  # pragma: no cover - train ran to the end
        raise RuntimeError(f"run {folder.name} stopped before epoch {config.epochs}")
    row = measure_run(folder, config, datasets)
    row["seconds"], row["cpu_seconds"] = time.perf_counter() - wall, time.process_time() - cpu
    atomic_write_json(folder / "row.json", jsonable(row, strict=True))
    return row


#: Errors of one run (training diverged, a prediction that cannot be solved, a damaged run folder) that
#: become a failed row instead of stopping the sweep; anything else (a bug, an interrupt) stops it. Errors
#: every run would meet (the dataset cannot be read) are found before training starts.
RUN_ERRORS = (ValueError, ArithmeticError, OSError)


#: Keys every measured row has (``row.json``); a row without them is measured again.
ROW_KEYS = ("run", "geometry", "feature", "seed", "n_w", "model", "delta_mp_train", "delta_gw_train", "delta_pred_gw",
            "certified", "seconds", "cpu_seconds")


def _read_row(path: Path, name: str) -> dict[str, Any] | None:
    """The stored row of run ``name``, or None (to measure it again) when it is missing, unreadable, of
    another run or lacks a key of :data:`ROW_KEYS`."""
    try:
        with open(path, encoding="utf-8") as handle:
            row = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(row, dict) or row.get("run") != name or any(key not in row for key in ROW_KEYS):
        return None
    return row


def _cpu_time() -> float:
    """CPU seconds of this process and of its waited-for children (finished sweep workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_sweep(spec: SweepSpec, *, workers: int | None = None, datasets=None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) every run of ``spec``, measure it and write the table, figure and verdict.

    The runs are independent: ``workers`` processes (default ``os.cpu_count()``; each limits
    torch to one thread, :func:`ncgeo._parallel.process_pool`) train them in parallel; ``1``
    trains them one after the other in this process (with this process's torch threads).
    Returns the content of ``verdict.json``: ``verdict`` (``PASS``/``FAIL``), ``rule``, ``rows``
    (each run's outcome), ``table``, ``seconds`` (wall time of this call), ``cpu_seconds`` (CPU
    time of this call, its workers included) and ``workers``. ``datasets`` (train, test)
    replaces reading the dataset (tests).
    """
    from ncgeo._parallel import resolve_workers, run_each

    if not isinstance(spec, SweepSpec):
        raise TypeError(f"spec must be a SweepSpec, got {type(spec).__name__}")
    workers = resolve_workers(workers, "--workers")
    runs = sweep_configs(spec)  # every option checked before anything is written
    _check_folder(spec)
    started, cpu_started = time.perf_counter(), _cpu_time()
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for name, config in runs:
        row = _read_row(Path(config.out) / "row.json", name)
        if row is not None:
            rows[name] = row
        else:
            todo.append((name, config))
    if todo:  # what every run would meet (an unreadable dataset, too few test images): one error, now
        import torch

        from .train import prepare_data

        prepare_data(todo[0][1], torch.device("cpu"), datasets)
    workers = min(workers, max(1, len(todo)))
    log(f"{len(runs)} runs: {len(rows)} done before (not retrained), {len(todo)} to train"
        + (f" in {workers} processes" if todo else ""))

    configs = dict(runs)

    def finish(name: str, row: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is not None:  # this run's row is a failure; the other runs go on (a later call retries it)
            config = configs[name]
            row = {"run": name, "geometry": config.geometry, "feature": config.feature, "seed": config.seed,
                   "n_w": CE_FIXED if config.loss == CE_FIXED else config.protos,
                   "error": f"{type(error).__name__}: {error}"}
            rows[name] = row
            log(f"[{len(rows)}/{len(runs)}] {name}: FAILED ({row['error']}); the other runs go on, and a later "
                "call with the same --out retries this one")
            return
        rows[name] = row
        log(f"[{len(rows)}/{len(runs)}] {name}: Delta(measured, predicted) = {_show(row['delta_mp_train'])}, "
            f"Delta(measured, G_W) = {_show(row['delta_gw_train'])}, UFM excess of the means "
            f"{_show(row['excess_means'], '.2e')} per anchor ({row['seconds']:.0f} s wall, "
            f"{row['cpu_seconds']:.0f} s CPU)")

    run_each(_train_and_measure, {name: (config, datasets) for name, config in todo}, workers, finish,
             errors=RUN_ERRORS)
    return _write_outputs(spec, [rows[name] for name, _ in runs], time.perf_counter() - started,
                          _cpu_time() - cpu_started, workers)
