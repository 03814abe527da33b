"""Configuration of a deep training run: one frozen dataclass, its checks and its sources.

A :class:`TrainConfig` can be built from keyword arguments, from a TOML file whose keys
are the command-line option names (``batch-size = 128``; ``batch_size`` is accepted too)
or from both, the explicit options winning. Every check raises ``ValueError`` or
``TypeError`` naming the command-line option, so the CLI prints one line.

Defaults follow docs/theory.md section 7: ResNet-18, SGD lr 0.1, momentum 0.9, weight decay
5e-4, multistep schedule (x0.1 at 50% and 75% of the epochs unless ``milestones`` is
given), tau 0.1, batch 128 images (each seen in two augmented views, so 256 samples per
contrastive batch), ETF prototypes with multiplicity ``protos`` (``n_w``; 0 is plain SCL).

This module imports neither torch nor the rest of ``deep`` so that ``ncgeo --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["TrainConfig", "ARCH_DEFAULTS", "FULL_BATCH", "MLP_FULL_BATCH_EPOCHS", "DATASET_CHOICES", "GEOMETRY_NAMES", "MAX_FEATURE_DIM", "MAX_WIDTH", "RESUME_MUTABLE",
           "load_toml", "train_options", "check_resume", "config_nproc", "option_name", "resolve_config"]

DATASET_CHOICES = ("cifar10", "cifar100", "mnist", "fmnist")
ARCH_CHOICES = ("resnet18", "resnet34", "mlp", "cnn")
OPTIMIZER_CHOICES = ("sgd", "adam")
AUGMENT_CHOICES = ("crop-flip", "none")
#: Value of ``--batch-size`` for full-batch training: every step sees the whole training (sub)set.
FULL_BATCH = "full"
#: Defaults that depend on ``--arch`` (fields left ``None``): the ResNets follow docs/theory.md section 7;
#: the small networks are trained full-batch-style with Adam on un-augmented images, the setting in
#: which a 784-512-512-10 MLP reaches the certified UFM optimum in about 2000 steps (README).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet18": {"width": 64, "depth": None, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4,
                 "augment": "crop-flip", "schedule": "multistep"},
    "resnet34": {"width": 64, "depth": None, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4,
                 "augment": "crop-flip", "schedule": "multistep"},
    "mlp": {"width": 512, "depth": 3, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "augment": "none",
            "schedule": "constant"},
    "cnn": {"width": 32, "depth": 2, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "augment": "none",
            "schedule": "constant"},
}
#: Epochs (full-batch steps) after which the default ``--arch mlp --batch-size full`` run has collapsed
#: on a few hundred Fashion-MNIST images (measured, README "Deep validation").
MLP_FULL_BATCH_EPOCHS = 2000
#: Evaluations of a full-batch run when ``--eval-every`` is not given (one step per epoch).
FULL_BATCH_EVALUATIONS = 20
FEATURE_CHOICES = ("signed", "nonnegative", "abs", "linear", "mlp")
#: Feature heads whose features are >= 0 (predicted by the UFM+): the final ReLU, or ``|z|`` of the small networks.
NONNEGATIVE_FEATURES = ("nonnegative", "abs")
IMBALANCE_CHOICES = ("none", "step", "exp")
SCHEDULE_CHOICES = ("multistep", "cosine", "constant")
PRECISION_CHOICES = ("fp32", "bf16")
SYNC_BATCHNORM_CHOICES = ("auto", "on", "off")
LOSS_CHOICES = ("scl", "ce", "ce-fixed")
GEOMETRY_NAMES = ("etf", "of", "random", "spherical")
#: fields that may differ between a run and its ``--resume`` (they do not change the result;
#: ``out`` may name the same folder differently, ``./run`` or an absolute path, or a moved run)
RESUME_MUTABLE = frozenset({"device", "progress", "log_every", "resume", "compile", "out"})
#: Largest ``--width``: 16 x the standard 64, i.e. about 2.9e9 parameters for ResNet-18 and 5.4e9 for
#: ResNet-34 (parameters grow as width^2: 11.2e6 and 21.3e6 at width 64), 11 / 22 GiB in float32 before
#: gradients and momentum triple it -- about what one 141 GB GPU can still train. Wider values only
#: fail later in the allocator (a C++ error, or a hang while it swaps).
MAX_WIDTH = 1024
#: Largest ``--feature-dim`` of a linear/MLP head: 2^16, a ``Linear(8 width, d)`` of at most 5.4e8
#: parameters at ``MAX_WIDTH`` (the features are compared with ``k <= 100`` class means and prototypes,
#: so much larger ``d`` changes nothing but memory).
MAX_FEATURE_DIM = 65536


def option_name(field_name: str) -> str:
    """The command-line option of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{option_name(name)} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An integer option in ``[minimum, maximum]`` (:func:`ncgeo._validation.check_int`, named as an option)."""
    from ncgeo._validation import check_int

    return check_int(option_name(name), value, minimum, maximum)


def _check_real(name: str, value: Any, minimum: float, strict: bool = False) -> float:
    """A real option (Python or numpy number, not bool), finite and ``>= minimum`` (``>`` if strict)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{option_name(name)} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{option_name(name)} must be a finite number {relation} {minimum:g}, got {value!r}")
    return value


def _parse_milestones(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [part for part in value.replace(" ", ",").split(",") if part]
        try:
            value = [int(part) for part in parts]
        except ValueError as exc:
            raise ValueError(f"--milestones must be comma-separated epochs such as 15,22, got {value!r}") from exc
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"--milestones must be a list of epochs, got {value!r}")
    out = tuple(_check_int("milestones", item, 1) for item in value)
    if list(out) != sorted(set(out)):
        raise ValueError(f"--milestones must be strictly increasing, got {list(out)}")
    return out


@dataclass(frozen=True)
class TrainConfig:
    """All options of ``ncgeo deep train`` (field ``batch_size`` is option ``--batch-size``).

    Attributes
    ----------
    dataset : {"cifar10", "cifar100", "mnist", "fmnist"}
    data_root : str or None
        Folder holding the dataset files (default: the reader's standard place).
    arch : {"resnet18", "resnet34", "mlp", "cnn"}
        A CIFAR-stem ResNet, or a small network of :mod:`deep.small_models` (an MLP on the
        flattened image, a small CNN) that collapses on a CPU.
    width : int
        Channels of the first ResNet / CNN stage, hidden units of the MLP (default by
        ``arch``, :data:`ARCH_DEFAULTS`: 64, 512, 32; at most :data:`MAX_WIDTH` = 1024).
    depth : int or None
        Linear layers of the MLP (default 3) / convolution stages of the CNN (default 2);
        None for the ResNets.
    feature : {"signed", "nonnegative", "abs", "linear", "mlp"}
        Feature head: L2-normalised penultimate output without (signed) or with the final
        ReLU (non-negative), ``|z|`` normalised (``abs``, non-negative, small networks only),
        or a linear / MLP projection to ``feature_dim``.
    feature_dim : int or None
        Dimension ``d`` of a linear/MLP head, or of the output of ``mlp`` / ``cnn`` (None: the
        model's default, 128 for a head and the number of classes for the small networks; at
        most :data:`MAX_FEATURE_DIM` = 65536). The small networks take ``signed`` or
        ``nonnegative`` features only.
    imbalance, ratio :
        Subsampling of the training set (docs/theory.md section 1): ``none``, ``step`` or ``exp``
        with ratio ``R >= 1``.
    protos : float
        ``n_w``, copies of every prototype in each batch (real ``>= 0``; 0 = plain SCL).
    geometry : str
        Prototypes: ``etf``, ``of``, ``random`` or the path of a Gram / vector file.
    epochs, batch_size, lr, momentum, weight_decay :
        ``batch_size`` counts images (each contributes ``views`` samples) or is ``"full"``:
        every step sees the whole training set, one step per epoch (docs/theory.md section 7: the
        UFM with the set's class counts is then the exact model). ``lr`` and ``weight_decay``
        default by ``arch`` (:data:`ARCH_DEFAULTS`); ``momentum`` is SGD's.
    optimizer : {"sgd", "adam"}
        ``torch.optim.SGD`` (momentum, weight decay) or ``torch.optim.Adam`` (default betas,
        L2 weight decay); default by ``arch``: SGD for the ResNets, Adam for mlp / cnn.
    augment : {"crop-flip", "none"}
        Two augmented views per image (random crop with 4-pixel padding, horizontal flip), or
        one un-augmented view; default by ``arch``: crop-flip for the ResNets, none for mlp / cnn.
    schedule : {"multistep", "cosine", "constant"}
        Default by ``arch``: multistep for the ResNets, constant for mlp / cnn (a decay at
        50% of the epochs freezes the small networks before their geometry has settled).
    milestones : tuple of int
        Epochs where multistep multiplies the rate by 0.1, after the warm-up (empty: 50% and
        75% of ``epochs``, those after the warm-up).
    warmup_epochs : float
        Linear warm-up from 0.1 x lr, in epochs (0: none).
    tau : float
        Temperature of the SCL / the logit scale ``1/tau`` of ``ce-fixed``.
    loss : {"scl", "ce", "ce-fixed"}
        SCL with prototypes, CE with a learnt linear classifier, or CE with the fixed
        prototype classifier on normalised features.
    eval_every : int
        Evaluate (and append to ``metrics.jsonl``) every this many epochs, and after the last
        (default 1; with ``batch_size="full"``, ``epochs // 20`` so that a run of one step per
        epoch is evaluated 20 times). With ``batch_size="full"`` the checkpoint is written at
        the evaluations only (its Adam state is three copies of the network).
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    seed : int
    out : str
        Run folder.
    resume : bool
        Continue the run in ``out`` from its checkpoint (start afresh when there is none).
    max_train_samples, max_test_samples : int or None
        Keep at most this many images, drawn per class in the proportions of the set.
    eval_batch_size, log_every, progress :
        Evaluation chunk size, steps between progress lines, progress on/off.
    precision : {"fp32", "bf16"}
        Arithmetic of the network: float32, or bf16 autocast (features normalised and the
        loss computed in float32).
    compile : bool
        Wrap the network in ``torch.compile``.
    proto_anchors : bool
        The prototype copies are anchors too (docs/theory.md section 2's flag; ``scl`` only).
    sync_batchnorm : {"auto", "on", "off"}
        With several processes, batch-norm statistics of the global batch
        (``torch.nn.SyncBatchNorm``, CUDA only) or of each process's shard; ``auto``: on
        with CUDA unless ``compile`` (torch.compile and SyncBatchNorm under DDP fail together,
        PyTorch issue #107372), off on the CPU. PyTorch's SyncBatchNorm reads a size back from
        the GPU in every layer's forward, so ``off`` is the faster multi-GPU step.
    """

    dataset: str = "cifar10"
    data_root: str | None = None
    arch: str = "resnet18"
    width: int | None = None
    depth: int | None = None
    feature: str = "signed"
    feature_dim: int | None = None
    imbalance: str = "none"
    ratio: float = 1.0
    protos: float = 0.0
    geometry: str = "etf"
    epochs: int = 30
    batch_size: int | str = 128
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    augment: str | None = None
    schedule: str | None = None
    milestones: tuple[int, ...] = field(default_factory=tuple)
    warmup_epochs: float = 0.0
    tau: float = 0.1
    loss: str = "scl"
    eval_every: int | None = None
    device: str = "auto"
    seed: int = 0
    out: str = "runs/deep"
    resume: bool = False
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    eval_batch_size: int = 512
    log_every: int = 50
    progress: bool = True
    precision: str = "fp32"
    compile: bool = False
    proto_anchors: bool = False
    sync_batchnorm: str = "auto"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("dataset", _check_choice("dataset", self.dataset, DATASET_CHOICES))
        put("arch", _check_choice("arch", self.arch, ARCH_CHOICES))
        for name, value in ARCH_DEFAULTS[self.arch].items():  # options left None take the arch's default
            if getattr(self, name) is None:
                put(name, value)
        put("optimizer", _check_choice("optimizer", self.optimizer, OPTIMIZER_CHOICES))
        put("augment", _check_choice("augment", self.augment, AUGMENT_CHOICES))
        put("feature", _check_choice("feature", self.feature, FEATURE_CHOICES))
        put("imbalance", _check_choice("imbalance", self.imbalance, IMBALANCE_CHOICES))
        put("schedule", _check_choice("schedule", self.schedule, SCHEDULE_CHOICES))
        put("loss", _check_choice("loss", self.loss, LOSS_CHOICES))
        put("precision", _check_choice("precision", self.precision, PRECISION_CHOICES))
        put("sync_batchnorm", _check_choice("sync_batchnorm", self.sync_batchnorm, SYNC_BATCHNORM_CHOICES))
        for name in ("data_root", "out", "device", "geometry"):
            value = getattr(self, name)
            if value is None and name == "data_root":
                continue
            if not isinstance(value, str):
                raise TypeError(f"{option_name(name)} must be a string, got {value!r}")
            if not value.strip():
                raise ValueError(f"{option_name(name)} must not be empty")
        put("width", _check_int("width", self.width, 1, MAX_WIDTH))
        small = self.arch in ("mlp", "cnn")
        if self.depth is not None:
            if not small:
                raise ValueError(f"--depth applies to --arch mlp and cnn, not {self.arch}")
            put("depth", _check_int("depth", self.depth, 1, 64))
        if small and self.feature not in ("signed", "nonnegative", "abs"):
            raise ValueError(f"--feature {self.feature} (a projection head) applies to the ResNets; "
                             f"--arch {self.arch} takes signed, nonnegative or abs")
        if not small and self.feature == "abs":
            raise ValueError(f"--feature abs applies to --arch mlp and cnn, not {self.arch}")
        if self.feature_dim is not None:
            put("feature_dim", _check_int("feature_dim", self.feature_dim, 1, MAX_FEATURE_DIM))
        put("ratio", _check_real("ratio", self.ratio, 1.0))
        put("protos", _check_real("protos", self.protos, 0.0))
        put("epochs", _check_int("epochs", self.epochs, 1))
        if self.batch_size != FULL_BATCH:
            if isinstance(self.batch_size, str):  # the command line gives a string
                if not self.batch_size.strip().isdigit():
                    raise ValueError(f"--batch-size must be a positive integer or {FULL_BATCH!r}, "
                                     f"got {self.batch_size!r}")
                put("batch_size", int(self.batch_size))
            put("batch_size", _check_int("batch_size", self.batch_size, 1))
        put("lr", _check_real("lr", self.lr, 0.0, strict=True))
        put("momentum", _check_real("momentum", self.momentum, 0.0))
        put("weight_decay", _check_real("weight_decay", self.weight_decay, 0.0))
        put("milestones", _parse_milestones(self.milestones))
        put("warmup_epochs", _check_real("warmup_epochs", self.warmup_epochs, 0.0))
        from ncgeo._validation import MIN_TAU  # here, not at the top: this module must not import torch

        put("tau", _check_real("tau", self.tau, MIN_TAU))  # ncgeo's floor: the loss refuses smaller
        if self.eval_every is None:
            put("eval_every", max(1, self.epochs // FULL_BATCH_EVALUATIONS) if self.full_batch else 1)
        put("eval_every", _check_int("eval_every", self.eval_every, 1))
        put("seed", _check_int("seed", self.seed, 0))
        for name in ("max_train_samples", "max_test_samples"):
            if getattr(self, name) is not None:
                put(name, _check_int(name, getattr(self, name), 1))
        put("eval_batch_size", _check_int("eval_batch_size", self.eval_batch_size, 1))
        put("log_every", _check_int("log_every", self.log_every, 1))
        for name in ("resume", "progress", "compile", "proto_anchors"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{option_name(name)} must be true or false, got {getattr(self, name)!r}")
        if self.seed > 2**63 - 1:  # torch generators take 64-bit seeds; seed + 1 and seed + epoch are used too
            raise ValueError(f"--seed must be an integer in [0, 2**63 - 1], got {self.seed}")
        if self.proto_anchors and self.loss != "scl":
            raise ValueError(f"--proto-anchors applies to --loss scl (prototype copies as anchors), not {self.loss}")
        if self.momentum >= 1:
            raise ValueError(f"--momentum must be < 1, got {self.momentum}")
        if self.milestones and self.milestones[-1] > self.epochs:
            raise ValueError(f"--milestones must not exceed --epochs ({self.epochs}), got {list(self.milestones)}")
        if self.milestones and self.milestones[0] <= self.warmup_epochs:
            raise ValueError(f"--milestones must lie after the warm-up (--warmup-epochs {self.warmup_epochs:g}), "
                             f"got {list(self.milestones)}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"--warmup-epochs must be smaller than --epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.geometry not in GEOMETRY_NAMES and not os.path.isfile(self.geometry):
            raise ValueError(f"--geometry must be one of {', '.join(GEOMETRY_NAMES)} or the path of a "
                             f"prototype file, got {self.geometry!r} (no such file)")

    @property
    def full_batch(self) -> bool:
        """Whether every step sees the whole training set (``--batch-size full``)."""
        return self.batch_size == FULL_BATCH

    @property
    def views(self) -> int:
        """Samples per image in a batch: 2 augmented views, or 1 un-augmented (``--augment none``)."""
        return 2 if self.augment == "crop-flip" else 1

    @property
    def effective_milestones(self) -> tuple[int, ...]:
        """The multistep milestones in epochs (the default: 50% and 75% of ``epochs``, those
        after the warm-up; explicit milestones inside the warm-up are refused by the scheduler)."""
        if self.milestones:
            return self.milestones
        return tuple(sorted({m for m in (self.epochs // 2, (3 * self.epochs) // 4)
                             if self.warmup_epochs < m < self.epochs}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary keyed by field name (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping whose keys are field names or option names (``batch-size``)."""
        return cls(**_normalise_keys(values, source="configuration"))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def differences(self, other: "TrainConfig", ignore=RESUME_MUTABLE) -> list[str]:
        """Option names whose values differ between ``self`` and ``other``."""
        return [option_name(f.name) for f in dataclasses.fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _normalise_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise TypeError(f"the {source} must be a mapping of option names to values, got {type(values).__name__}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in _FIELDS:
            known = ", ".join(sorted(option_name(n)[2:] for n in _FIELDS))
            raise ValueError(f"unknown option {key!r} in the {source} (known: {known})")
        if name in out:
            raise ValueError(f"option {key!r} is given twice in the {source}")
        out[name] = value
    return out


#: Keys of a ``--config`` file that belong to the launcher (``ncgeo deep train``), not to the run.
LAUNCH_KEYS = ("nproc",)


def _read_toml_table(path: str | os.PathLike) -> dict[str, Any]:
    """The options table of a TOML file: ``[train]`` when present, else the top level."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ValueError(f"--config file {path!r} does not exist") from exc
    except OSError as exc:  # a folder, no permission, an I/O error: one line naming --config
        raise ValueError(f"--config file {path!r} cannot be read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--config file {path!r} is not valid TOML: {exc}") from exc
    return data["train"] if isinstance(data.get("train"), dict) else data


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML file of options (keys are option names, e.g. ``batch-size``) as field names.

    A ``[train]`` table is used when present, else the top level. The launcher's keys
    (:data:`LAUNCH_KEYS`, read by :func:`config_nproc`) are left out.
    """
    data = {key: value for key, value in _read_toml_table(path).items() if key not in LAUNCH_KEYS}
    return _normalise_keys(data, source=f"--config file {os.fspath(path)!r}")


def config_nproc(nproc: int | None, config_file: str | os.PathLike | None) -> int:
    """Processes to launch: ``--nproc`` when given, else the file's ``nproc`` key, else 1."""
    if nproc is not None:
        return _check_nproc(nproc, "--nproc")
    if config_file is None:
        return 1
    return _check_nproc(_read_toml_table(config_file).get("nproc", 1),
                        f"--config file {os.fspath(config_file)!r}: nproc")


def _check_nproc(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def resolve_config(options: Mapping[str, Any], config_file: str | os.PathLike | None = None) -> TrainConfig:
    """Combine defaults, a TOML file and explicit options (``None`` values mean "not given").

    With ``resume`` and a run folder that already holds ``config.json``, that stored
    configuration is the base: options given now must agree with it, except
    :data:`RESUME_MUTABLE` ones (a mismatch raises ``ValueError`` naming the option).
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of option names to values, got {type(options).__name__}")
    given = _normalise_keys({k: v for k, v in options.items() if v is not None}, source="options")
    values = load_toml(config_file) if config_file is not None else {}
    values.update(given)
    config = TrainConfig(**values)
    stored_path = os.path.join(config.out, "config.json")
    if config.resume and os.path.isfile(stored_path):
        try:
            with open(stored_path, encoding="utf-8") as handle:
                stored_values = json.load(handle)
        except OSError as exc:
            raise ValueError(f"--resume: {stored_path!r} cannot be read: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ValueError(f"--resume: {stored_path!r} is not valid JSON: {exc}") from exc
        if not isinstance(stored_values, dict):
            raise ValueError(f"--resume: {stored_path!r} does not hold a run configuration (a JSON object)")
        stored = TrainConfig.from_dict(stored_values)
        config = stored.replace(**values)
        check_resume(config, stored, config.out)
    return config


def check_resume(config: TrainConfig, stored: TrainConfig, folder: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming the options of ``config`` that may not differ from the
    ``stored`` run it resumes: all but :data:`RESUME_MUTABLE`, and ``--epochs`` unless it
    grows under ``--schedule multistep`` with the same explicit ``--milestones`` (then the
    rates of the epochs already trained are unchanged; the cosine and the default milestones
    depend on ``--epochs``)."""
    ignore = RESUME_MUTABLE
    if (config.epochs > stored.epochs and config.schedule == stored.schedule == "multistep"
            and stored.milestones and config.milestones == stored.milestones):
        ignore = ignore | {"epochs"}
    mismatched = config.differences(stored, ignore)
    if mismatched:
        raise ValueError(f"--resume: {', '.join(mismatched)} differ from the run stored in {os.fspath(folder)!r}; "
                         "only --device, --progress, --log-every, --compile and --out may change, and --epochs "
                         "may grow when the run has --schedule multistep with explicit --milestones")


def _option_specs():
    """``(field, click type, help)`` of every ``ncgeo deep train`` option, in help order."""
    import click

    return [
        ("dataset", click.Choice(DATASET_CHOICES), "Image dataset."),
        ("data_root", str, "Folder of the dataset files (default: the reader's standard place)."),
        ("arch", click.Choice(ARCH_CHOICES), "Network: a CIFAR-stem ResNet, or an MLP / small CNN that collapses "
         f"on a CPU (mlp with --batch-size full: about {MLP_FULL_BATCH_EPOCHS} epochs, one step each, on a few "
         "hundred images)."),
        ("width", int, f"Channels of the first ResNet/CNN stage, hidden units of the MLP (default 64 / 32 / 512; "
         f"at most {MAX_WIDTH})."),
        ("depth", int, "Linear layers of the MLP (default 3) or convolution stages of the CNN (default 2)."),
        ("feature", click.Choice(FEATURE_CHOICES), "Feature head (signed / post-ReLU / |z| (mlp, cnn) normalised output, or a linear/MLP projection)."),
        ("feature_dim", int, f"Dimension of a linear/MLP head (default 128) or of the mlp/cnn output (default: the "
         f"number of classes); at most {MAX_FEATURE_DIM}."),
        ("imbalance", click.Choice(IMBALANCE_CHOICES), "Subsample the training set (docs/theory.md section 1)."),
        ("ratio", float, "Imbalance ratio R >= 1."),
        ("protos", float, "n_w: copies of every prototype in each batch (0 = plain SCL)."),
        ("geometry", str, "Prototypes: etf, of, random, spherical (minimal-energy code, any k) or a Gram/vector file (.npy/.csv/.txt)."),
        ("epochs", int, "Training epochs (with --batch-size full one step each; --arch mlp needs about "
         f"{MLP_FULL_BATCH_EPOCHS} to collapse)."),
        ("batch_size", str, "Images per batch, or 'full': every step sees the whole training set."),
        ("optimizer", click.Choice(OPTIMIZER_CHOICES), "Optimiser (default: sgd for the ResNets, adam for mlp/cnn)."),
        ("lr", float, "Learning rate (default: 0.1 for the ResNets, 1e-3 for mlp/cnn)."),
        ("momentum", float, "SGD momentum."),
        ("weight_decay", float, "Weight decay (default: 5e-4 for the ResNets, 0 for mlp/cnn)."),
        ("augment", click.Choice(AUGMENT_CHOICES), "Two augmented views per image (crop-flip) or one plain "
         "view (none); default: crop-flip for the ResNets, none for mlp/cnn."),
        ("schedule", click.Choice(SCHEDULE_CHOICES), "Learning-rate schedule (default: multistep for the ResNets, "
         "constant for mlp/cnn)."),
        ("milestones", str, "Multistep epochs, comma-separated (default: 50% and 75% of the epochs, those after the warm-up)."),
        ("warmup_epochs", float, "Linear warm-up from 0.1 x lr over this many epochs."),
        ("tau", float, "Temperature (logit scale 1/tau for ce-fixed)."),
        ("loss", click.Choice(LOSS_CHOICES), "scl (with prototypes), ce (learnt linear classifier), ce-fixed (prototype classifier)."),
        ("eval_every", int, "Evaluate every this many epochs (and after the last); default 1, with "
         "--batch-size full epochs/20."),
        ("device", str, "auto, cpu, cuda, cuda:N."),
        ("seed", int, "Seed of the initialisation, shuffling, augmentation and subsampling."),
        ("out", str, "Run folder."),
        ("max_train_samples", int, "Keep at most this many training images (class proportions kept)."),
        ("max_test_samples", int, "Keep at most this many test images (balanced)."),
        ("eval_batch_size", int, "Images per evaluation chunk."),
        ("log_every", int, "Steps between progress lines."),
        ("precision", click.Choice(PRECISION_CHOICES), "fp32, or bf16 autocast on the network (loss in float32)."),
        ("sync_batchnorm", click.Choice(SYNC_BATCHNORM_CHOICES),
         "Several processes: batch-norm statistics of the global batch (SyncBatchNorm, CUDA only; it reads back "
         "from the GPU in every layer) or per process (off); auto: on with CUDA, unless --compile."),
    ]


def train_options(function):
    """Click decorator adding every :class:`TrainConfig` option plus ``--config FILE.toml``.

    Every option defaults to ``None`` ("not given"; the dataclass default applies), so
    :func:`resolve_config` can let explicit options override the TOML file.
    """
    import click

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    decorators = [click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                               help="TOML file whose keys are these option names (explicit options win).")]
    for name, kind, text in _option_specs():
        default = defaults[name]
        shown = "" if default is None or default is dataclasses.MISSING else f"  [default: {default}]"
        decorators.append(click.option(option_name(name), name, type=kind, default=None, help=text + shown))
    decorators.append(click.option("--resume", "resume", is_flag=True, default=None,
                                   help="Continue the run in --out from its checkpoint."))
    decorators.append(click.option("--progress/--no-progress", "progress", default=None,
                                   help="Progress lines on stderr  [default: on]."))
    decorators.append(click.option("--compile", "compile", is_flag=True, default=None,
                                   help="Compile the network with torch.compile."))
    decorators.append(click.option("--proto-anchors", "proto_anchors", is_flag=True, default=None,
                                   help="The prototype copies are anchors too (scl; default: only samples)."))
    for decorator in reversed(decorators):
        function = decorator(function)
    return function
