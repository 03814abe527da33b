r"""Training engine: SCL with prototypes (or a CE baseline) on a ResNet, geometry logged per epoch.

One step (docs/theory.md sections 2 and 7): a batch of ``b`` images is augmented on its device
into ``views = 2`` crops-and-flips each; the ``2 b`` views are samples of the batch with the
label of their image, and the loss is

* ``scl``: :func:`ncgeo.losses.scl_prototype_loss` with ``n_w = --protos`` copies of every
  prototype (never materialised), temperature ``tau``, **mean** over the ``2 b`` sample
  anchors (and over the ``k n_w`` prototype copies too with ``--proto-anchors``);
* ``ce``: cross-entropy of a learnt linear classifier (with bias) on the un-normalised
  penultimate features ``z`` (the standard baseline), mean over the views;
* ``ce-fixed``: :func:`ncgeo.losses.fixed_classifier_cross_entropy` with the prototypes as
  fixed classifier on the normalised features, logit scale ``1/tau``, mean over the views
  (the ``n_w -> infinity`` limit of ``scl``, docs/theory.md section 4).

Networks: the ResNets, or an MLP / small CNN (:mod:`deep.small_models`). ``--augment none``
(the default of mlp and cnn) gives each image as one un-augmented sample instead of two views.
``--batch-size full``: every step is the whole training set (one step per epoch), the setting
in which the UFM with the set's class counts is the exact model (docs/theory.md section 7).

Optimiser: SGD with momentum and weight decay, or Adam (``--optimizer``); the rate follows an optional linear warm-up
(``torch.optim.lr_scheduler.LinearLR`` from 0.1 x lr) then ``MultiStepLR`` (x0.1 at the
milestones) or ``CosineAnnealingLR``, chained with ``SequentialLR`` and stepped every
iteration. Each epoch draws one permutation of the training set from a CPU generator
(``drop_last``: ``floor(N / b)`` steps); the augmentation draws from a generator on the data's
device. The training set stays on the device as ``uint8``; :func:`train_step` neither
synchronises with the host nor validates its inputs (the loss is returned as a device tensor).

Run folder ``--out``: ``config.json``, ``run.json`` (class counts, dimensions, model used),
``prototypes.npz`` (``W``, ``d x k``), ``metrics.jsonl`` (one line per evaluation: epoch,
step, lr, mean training loss, ``train`` and ``test`` metrics of :mod:`deep.evaluate`; epoch 0
is the initial network), ``timing.jsonl`` (seconds and images/s per epoch, kept apart so
that metrics lines are reproducible bit for bit), ``means.npz`` (latest class means) and
``checkpoint.pt`` (written atomically after every epoch). ``--resume`` reloads the model,
objective, optimiser, scheduler and both generators and continues to the same parameters,
bit for bit on CPU, as an uninterrupted run.

Several processes (``torchrun --nproc_per_node=N -m deep.train ...`` or ``ncgeo deep train
--nproc N``): every process trains a ``DistributedDataParallel`` replica on its own device
(``cuda:LOCAL_RANK``, or the CPU with the gloo backend). ``--batch-size`` stays the *global*
number of images per step, split equally over the processes (it must be divisible by N): the
epoch's permutation is cut into global batches and each into rank shards
(:class:`deep.sampler.ShardedBatchSampler`), every rank draws the augmentation of the
whole global batch from the same seeded generator and applies its own part (so the crops and
flips are those of one process, and independent across ranks), the SCL loss gathers the embeddings of the
global batch with gradient and is scaled so that DDP's average is the gradient of the
global-batch loss (:func:`deep.distributed.distributed_scl_prototype_loss`); batch-norm layers
are synchronised on CUDA unless ``--sync-batchnorm off`` (PyTorch's SyncBatchNorm reads a size
back from the GPU in every layer, the one host synchronisation of a multi-GPU step). Evaluation is sharded over the processes and the embeddings gathered,
so the metrics are those of the whole sets; rank 0 alone writes the run folder and prints.

Speed: the model runs in ``channels_last``, SGD uses the fused kernel and cuDNN's autotuner
is on (``torch.backends.cudnn.benchmark``: the shapes are fixed) on CUDA;
``--precision bf16`` runs the network under bf16 autocast (features normalised and the loss
computed in float32); ``--compile`` wraps the network in ``torch.compile``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ncgeo._io import remove_stale_temporaries
from ncgeo._validation import check_device
from ncgeo.classes import class_sizes
from ncgeo.progress import Progress

from .augment import augment_batch, to_float
from .checkpoint import (
    append_jsonl,
    atomic_save_arrays,
    atomic_write_json,
    lock_run_folder,
    read_jsonl,
    rewrite_jsonl,
    save_checkpoint,
)
from .config import NONNEGATIVE_FEATURES, TrainConfig
from .data import ImageDataset, imbalanced_indices, load_dataset
from .distributed import (
    average_gradients,
    barrier,
    broadcast_buffers,
    init_distributed,
    mean_over_ranks,
    prepare_model,
    rank,
    shutdown_distributed,
)
from .evaluate import evaluate_run
from .launch import check_batch_split, launch
from .models import build_model
from .objective import Objective, build_prototypes
from .optim import build_optimizer, build_scheduler, load_optimizer_state
from .runfolder import check_evaluations, clean_run_folder, make_run_folder, open_run_folder
from .sampler import ShardedBatchSampler

__all__ = [
    "run",
    "VIEWS",
    "PADDING",
    "resolve_device",
    "prepare_data",
    "build_run",
    "sync_batchnorm",
    "train_step",
    "train",
    "main",
]

VIEWS = 2
PADDING = 4


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)`` (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = check_device("--device", name)
    try:  # training draws its augmentation from a generator on the device (e.g. not possible on meta)
        torch.Generator(device=device)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r} cannot be trained on ({' '.join(str(exc).split())})") from exc
    return device


def sync_batchnorm(config: TrainConfig, device: torch.device, world_size: int) -> bool:
    """Whether batch-norm layers use the statistics of the global batch (``SyncBatchNorm``).

    ``--sync-batchnorm on``/``off`` as given; ``auto``: with several CUDA processes and no
    ``--compile`` (torch.compile and SyncBatchNorm under DDP fail together, PyTorch issue
    #107372). A single process needs no synchronisation. ``on`` without CUDA is a
    ``ValueError`` (PyTorch has no CPU SyncBatchNorm).
    """
    if world_size == 1:
        return False
    if config.sync_batchnorm == "auto":
        return device.type == "cuda" and not config.compile
    if config.sync_batchnorm == "on" and device.type != "cuda":
        raise ValueError("--sync-batchnorm on needs CUDA devices (PyTorch has no CPU SyncBatchNorm)")
    return config.sync_batchnorm == "on"


def _majority_size(counts: np.ndarray, imbalance: str, ratio: float, limit: int) -> int:
    """Largest majority size ``n`` whose ``class_sizes`` total is at most ``limit`` (at least 1)."""
    low, high = 1, int(counts.min())
    while low < high:
        middle = (low + high + 1) // 2
        if sum(class_sizes(len(counts), middle, imbalance, ratio)) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def prepare_data(config: TrainConfig, device: torch.device,
                 datasets: tuple[ImageDataset, ImageDataset] | None = None) -> tuple[ImageDataset, ImageDataset]:
    """Training set (imbalanced, capped by ``max_train_samples``) and test set, on ``device``.

    ``datasets`` (train, test) replaces reading ``config.dataset`` from ``config.data_root``
    (e.g. your own images as :class:`deep.data.ImageDataset`). The training set keeps ``ncgeo.classes.class_sizes(k, n, imbalance, ratio)`` images per
    class, ``n`` the largest majority size available (or that fits ``max_train_samples``);
    the test set stays balanced (``max_test_samples // k`` per class when capped).
    """
    if datasets is None:
        train_set = load_dataset(config.dataset, config.data_root, train=True)
        test_set = load_dataset(config.dataset, config.data_root, train=False)
    else:
        train_set, test_set = datasets
        if not isinstance(train_set, ImageDataset) or not isinstance(test_set, ImageDataset):
            raise TypeError("datasets must be a pair (train, test) of deep.data.ImageDataset")
        if train_set.num_classes != test_set.num_classes:
            raise ValueError(f"datasets: train has {train_set.num_classes} classes, test {test_set.num_classes}")
    k = train_set.num_classes
    counts = train_set.class_counts()
    majority = None
    if config.max_train_samples is not None:
        majority = _majority_size(counts, config.imbalance, config.ratio, config.max_train_samples)
    if config.imbalance != "none" or majority is not None:
        index = imbalanced_indices(train_set.labels, config.imbalance, config.ratio, config.seed, k, majority)
        train_set = train_set.subset(index)
    if config.max_test_samples is not None and config.max_test_samples < k:
        raise ValueError(f"--max-test-samples must be at least one per class (k = {k}): the test set stays "
                         f"balanced, got {config.max_test_samples}")
    if config.max_test_samples is not None and config.max_test_samples < len(test_set):
        per_class = max(1, min(config.max_test_samples // k, int(test_set.class_counts().min())))
        test_set = test_set.subset(imbalanced_indices(test_set.labels, "none", 1.0, config.seed, k, per_class))
    if not config.full_batch and len(train_set) < config.batch_size:
        raise ValueError(f"--batch-size {config.batch_size} exceeds the {len(train_set)} training images")
    return train_set.to(device), test_set.to(device)


def train_step(model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
               generator: torch.Generator | None = None, *, channels_last: bool = False,
               shard: tuple[int, int] = (0, 1), views: int = VIEWS, augment: bool = True) -> torch.Tensor:
    """One optimisation step on a ``uint8`` batch ``(b, C, H, W)`` with labels ``(b,)``.

    The batch becomes ``views * b`` augmented samples (view-major, labels repeated; in
    ``channels_last`` layout when asked), or with ``augment=False`` the ``b`` images themselves
    (normalised; ``views`` must then be 1); returns the detached mean loss as a device tensor
    (no host synchronisation). Under DDP the batch is rank ``shard[0]``'s part of the global
    batch (its augmentation draws are those of the global batch, see
    :func:`deep.augment.random_crop_flip`), and the objective's own parameters (the ``ce``
    classifier) have their gradients averaged over the processes here.
    """
    if augment:
        samples = augment_batch(images, mean, std, views, PADDING, generator, channels_last=channels_last,
                                shard=shard)
    else:
        if views != 1:
            raise ValueError(f"views must be 1 without augmentation, got {views}")
        samples = to_float(images, mean, std)
        if channels_last:
            samples = samples.contiguous(memory_format=torch.channels_last)
    loss = objective(model, samples, labels.repeat(views))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(objective.parameters())
    optimizer.step()
    return loss.detach()


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    shuffle = torch.Generator(device="cpu")
    shuffle.manual_seed(seed)
    augment = torch.Generator(device=device)
    augment.manual_seed(seed + 1)
    return shuffle, augment


def _build(config: TrainConfig, train_set: ImageDataset, device: torch.device):
    """Model, objective and prototypes, initialised from ``config.seed`` without touching the
    global CPU random state (``torch.manual_seed`` also reseeds the CUDA generators, which the
    training does not draw from: its augmentation has its own generator)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        small = config.arch in ("mlp", "cnn")  # their default d is the number of classes
        model = build_model(config.arch, train_set.images.shape[1], config.width, config.feature,
                            config.feature_dim or (train_set.num_classes if small else None),
                            depth=config.depth, image_shape=tuple(train_set.images.shape[1:]) if small else None)
        W = build_prototypes(config.geometry, train_set.num_classes, model.feature_dim, config.seed,
                             nonnegative=config.feature in NONNEGATIVE_FEATURES)
        objective = Objective(config.loss, torch.as_tensor(W, dtype=torch.float32), config.protos, config.tau,
                              autocast_dtype=torch.bfloat16 if config.precision == "bf16" else None,
                              prototypes_as_anchors=config.proto_anchors)
    return model.to(device), objective.to(device), W


def build_run(config: TrainConfig, train_set: ImageDataset, device: torch.device):
    """``(model, objective, W)`` of a run as :func:`train` builds them before training (the
    initialisation of ``config.seed``); load a checkpoint's ``model`` state to get the trained one."""
    return _build(config, train_set, device)


def _evaluate_and_log(out: Path, model, objective, train_set, test_set, config: TrainConfig,
                      epoch: int, step: int, lr: float, loss: float | None, write: bool = True) -> dict:
    broadcast_buffers(model)  # every process evaluates with rank 0's batch-norm statistics
    train_metrics, test_metrics = evaluate_run(model, train_set, test_set, objective.prototypes,
                                               config.eval_batch_size,
                                               progress=f"evaluating epoch {epoch}" if config.progress and write else None)
    record = {"epoch": epoch, "step": step, "lr": lr, "loss": loss, "train": train_metrics.to_dict(),
              "test": None if test_metrics is None else test_metrics.to_dict()}
    if not write:
        return record
    append_jsonl(out / "metrics.jsonl", record)
    arrays = {"epoch": np.array(epoch), "train": train_metrics.means}
    if test_metrics is not None:
        arrays["test"] = test_metrics.means
    atomic_save_arrays(out / "means.npz", **arrays)
    return record


def _preflight(config: TrainConfig, nproc: int) -> None:
    """Check, in the launching process, what would make every worker of ``--nproc`` fail
    (the run folder, the data read once on the CPU, ``--sync-batchnorm``), so that bad
    input is one line and exit status 2 instead of a traceback per worker. ``nproc`` has
    passed :func:`deep.launch.check_batch_split`."""
    open_run_folder(config)
    sync_batchnorm(config, resolve_device(config.device), nproc)
    prepare_data(config, torch.device("cpu"))


def run(config: TrainConfig, nproc: int = 1, *, echo: Callable[[str], None] = print) -> int:
    """What ``ncgeo deep train`` does; returns the exit status.

    ``nproc == 1``: :func:`train` in this process, then ``echo`` the run folder (0). Else:
    :func:`_preflight` once here, then launch ``nproc`` workers by torchrun and wait
    (:func:`deep.launch.launch`; their exit status, the workers print their own errors).
    A diverged run raises ``FloatingPointError``; bad input ``ValueError``/``TypeError``.
    """
    nproc = check_batch_split(config, nproc)
    if nproc > 1:
        _preflight(config, nproc)
        return launch(config, nproc)
    echo(str(train(config)))
    return 0


def train(config: TrainConfig, *, datasets: tuple[ImageDataset, ImageDataset] | None = None,
          stop_after: int | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Train (or resume) the run described by ``config``; returns the run folder.

    The main process holds an exclusive lock on the run folder (``RUN/.lock``) while it
    trains: a second process on the same ``--out`` is refused instead of interleaving its
    files with the first's.

    Parameters
    ----------
    config : TrainConfig
    datasets : (ImageDataset, ImageDataset), optional
        Train and test images to use instead of reading ``config.dataset`` (imbalance and
        sample caps of ``config`` still apply).
    stop_after : int, optional
        Stop after this many epochs of this call, leaving a resumable run (for time-sliced
        jobs; the test of resumption uses it).
    log : callable, optional
        Receives one-line status messages (default: stderr when ``config.progress``).
    """
    locks: list = []
    status = {"main": True, "epoch": None}  # the last epoch checkpointed, kept up to date by _train
    try:
        return _train(config, datasets, stop_after, log, locks, status)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (ncgeo._io.exit_on_sigterm)
        if status["main"]:
            print(f"interrupted after epoch {status['epoch']}; continue with --resume" if status["epoch"] else
                  "interrupted before the first epoch ended (no checkpoint yet); run the command again",
                  file=sys.stderr, flush=True)
        raise
    finally:
        for lock in locks:
            if lock is not None:
                lock.close()


def _train(config: TrainConfig, datasets, stop_after, log, locks: list, status: dict) -> Path:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after must be a positive integer or None, got {stop_after!r}")
    device = resolve_device(config.device)
    context = init_distributed(device)  # torchrun's processes: one device each (cuda:LOCAL_RANK)
    if context.enabled:
        device = torch.device(context.device)
    main_process = status["main"] = context.is_main
    if not main_process:
        log = lambda text: None  # noqa: E731 - rank 0 alone prints
    elif log is None:
        log = (lambda text: print(text, file=sys.stderr, flush=True)) if config.progress else (lambda text: None)
    check_batch_split(config, context.world_size)
    out = Path(config.out)
    checkpoint_path = out / "checkpoint.pt"
    state = open_run_folder(config)
    if state is not None and main_process:
        locks.append(lock_run_folder(out))

    train_set, test_set = prepare_data(config, device, datasets)
    model, objective, W = _build(config, train_set, device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    sync = sync_batchnorm(config, device, context.world_size)
    if context.world_size > 1 and config.sync_batchnorm == "auto" and device.type == "cuda" and not sync:
        log("--compile with several CUDA processes: per-process batch-norm statistics (torch.compile and "
            "SyncBatchNorm under DDP fail together, PyTorch issue #107372); --sync-batchnorm on to try anyway")
    network = prepare_model(model, context, sync_batchnorm=sync)
    if config.compile:
        network = torch.compile(network)
    parameters = list(model.parameters()) + list(objective.parameters())
    optimizer = build_optimizer(parameters, config)
    batch_size = len(train_set) if config.full_batch else config.batch_size  # images per global step
    sampler = ShardedBatchSampler(len(train_set), batch_size // context.world_size,
                                  world_size=context.world_size, rank=context.rank, seed=config.seed)
    steps = len(sampler)
    scheduler = build_scheduler(optimizer, config, steps)
    shuffle, augment = _generators(config.seed, device)

    log(f"training {config.arch} (width {config.width}, {config.feature} features, d = {model.feature_dim}) on "
        f"{config.dataset}: {len(train_set)} training images in {train_set.num_classes} classes, {len(test_set)} test "
        f"images; device {device}{f' x {context.world_size} processes' if context.world_size > 1 else ''}; "
        f"{steps} steps of {config.batch_size} images per epoch, {config.epochs} epochs; run folder {out}")
    epoch = 0
    if state is None and main_process:
        make_run_folder(out)
        locks.append(lock_run_folder(out))
        clean_run_folder(out)
        atomic_write_json(out / "config.json", config.to_dict())
        atomic_write_json(out / "run.json", {
            "dataset": config.dataset, "num_classes": train_set.num_classes,
            "train_class_counts": train_set.class_counts(), "test_class_counts": test_set.class_counts(),
            "image_shape": list(train_set.images.shape[1:]), "feature_dim": model.feature_dim,
            "views": config.views, "samples_per_batch": config.views * batch_size, "steps_per_epoch": steps,
            "full_batch": config.full_batch,
            "n_w": config.protos, "tau": config.tau, "loss": config.loss, "geometry": config.geometry,
            "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
            "processes": context.world_size,
        })
        atomic_save_arrays(out / "prototypes.npz", prototypes=W)
    if state is None:
        _evaluate_and_log(out, model, objective, train_set, test_set, config, 0, 0,
                          optimizer.param_groups[0]["lr"], None, write=main_process)
    else:
        model.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        shuffle.set_state(state["shuffle_generator"])
        epoch = int(state["epoch"])
        try:
            augment.set_state(state["augment_generator"])
        except RuntimeError:  # saved on another device type (CPU and CUDA generators differ)
            augment.manual_seed(config.seed + 1 + epoch)
            log(f"--resume on {device.type}: the checkpoint's augmentation generator belongs to another "
                f"device type; the augmentation continues from seed {config.seed + 1 + epoch} instead "
                "(the run is no longer bit-identical to an uninterrupted one)")
        if main_process and config.epochs != state["config"]["epochs"]:  # --epochs grew (check_resume)
            atomic_write_json(out / "config.json", config.replace(resume=False).to_dict())
        # drop lines written after the checkpoint (rank 0 owns the files)
        for name in ("metrics.jsonl", "timing.jsonl") if main_process else ():
            records = read_jsonl(out / name)
            rewrite_jsonl(out / name, [r for r in records if r["epoch"] <= epoch])
            if name == "metrics.jsonl":
                check_evaluations(records, epoch, int(state["config"]["epochs"]), config.eval_every, log)
        if main_process:
            removed = remove_stale_temporaries(out)
            if removed:
                log(f"removed {len(removed)} temporary file(s) left by an interrupted write: {', '.join(removed)}")
        log(f"resuming {out} after epoch {epoch}")
        status["epoch"] = epoch

    show = config.progress and main_process
    done_now = 0
    model.train()
    while epoch < config.epochs and (stop_after is None or done_now < stop_after):
        epoch += 1
        bar = Progress(f"epoch {epoch}/{config.epochs}", steps, unit="steps", enabled=show)
        started = time.perf_counter()
        batches = sampler.split(torch.randperm(len(train_set), generator=shuffle)).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        last_time, last_step = started, 0
        for step in range(steps):
            index = batches[step]
            loss = train_step(network, objective, optimizer, train_set.images[index], train_set.labels[index],
                              train_set.mean, train_set.std, augment, channels_last=channels_last,
                              shard=(context.rank, context.world_size), views=config.views,
                              augment=config.augment == "crop-flip")
            scheduler.step()
            loss_sum += loss
            if show and ((step + 1) % config.log_every == 0 or step + 1 == steps):  # float(loss) syncs
                now = time.perf_counter()
                rate = (step + 1 - last_step) * batch_size / max(now - last_time, 1e-9)
                bar.update(1, loss=float(loss), speed=f"{rate:.0f} img/s", lr=optimizer.param_groups[0]["lr"])
                last_time, last_step = now, step + 1
            else:
                bar.update(1)
        bar.close()
        mean_loss = float(mean_over_ranks(loss_sum)) / steps
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"the training loss became {mean_loss} in epoch {epoch}; "
                                     "lower --lr or raise --tau")
        seconds = time.perf_counter() - started
        if main_process:
            append_jsonl(out / "timing.jsonl", {"epoch": epoch, "seconds": seconds,
                                                "images_per_second": steps * batch_size / seconds})
        evaluated = epoch % config.eval_every == 0 or epoch == config.epochs
        if evaluated:
            record = _evaluate_and_log(out, model, objective, train_set, test_set, config, epoch,
                                       epoch * steps, optimizer.param_groups[0]["lr"], mean_loss,
                                       write=main_process)
            log(f"epoch {epoch}: loss {mean_loss:.4f}  train Delta(prototypes) "
                f"{record['train']['delta_prototypes']:.4f}  test NCC acc "
                f"{(record['test'] or {}).get('ncc_accuracy', float('nan')):.4f}")
        done_now += 1
        last_of_call = epoch == config.epochs or (stop_after is not None and done_now >= stop_after)
        # a full-batch epoch is one step: its checkpoint (three copies of the network with Adam) is
        # written at the evaluations and at the end only; a resume drops the metrics written after it
        if main_process and (evaluated or last_of_call or not config.full_batch):
            save_checkpoint(checkpoint_path, {
                "epoch": epoch,
                "config": config.to_dict(),
                "model": model.state_dict(),
                "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "shuffle_generator": shuffle.get_state(),
                "augment_generator": augment.get_state(),
            })
            status["epoch"] = epoch  # the last epoch checkpointed (every epoch with mini-batches)
    # every process leaves together, after rank 0 has written the checkpoint: a process that tore
    # its process group down while another still wrote could abort in gloo's threads at exit
    barrier()
    return out


def _command():
    import click

    from .config import resolve_config, train_options

    @click.command(name="deep.train", context_settings={"help_option_names": ["-h", "--help"]})
    @train_options
    def command(config_file, **options):
        """Train a ResNet with SCL + prototypes (python -m deep.train; same options as `ncgeo deep train`)."""
        out = train(resolve_config(options, config_file))
        if rank() == 0:
            click.echo(str(out))

    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m deep.train`` (and of ``torchrun ... -m deep.train``).

    Bad input ends with one line ``Error: ...`` and exit status 2.
    """
    import click

    from ncgeo._io import exit_on_sigterm, is_out_of_memory, out_of_memory_message

    exit_on_sigterm()  # torchrun and schedulers stop workers with SIGTERM: clean temporary files
    try:
        _command().main(args=list(argv) if argv is not None else None, prog_name="python -m deep.train",
                        standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except (ValueError, TypeError) as exc:
        click.echo(f"Error: {' '.join(str(exc).split())}", err=True)
        return 2
    except (MemoryError, RuntimeError) as exc:  # sizes beyond this machine: one line, not a traceback
        if not is_out_of_memory(exc):
            raise
        click.echo(f"Error: {out_of_memory_message(exc)}", err=True)
        return 2
    except FloatingPointError as exc:  # a diverged run (the loss became NaN or infinite)
        click.echo(f"Error: {exc}", err=True)
        return 1
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
