r"""Multi-process (DDP) training for deep: set-up, contrastive gather, metric reduction.

One process per device is started by ``torchrun`` (``torch.distributed.run``), which sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and the rendezvous address). This module

* initialises the process group from those variables (``nccl`` on CUDA, ``gloo`` on CPU)
  and returns a :class:`DistributedContext`;
* gathers the embeddings of the global batch **with gradient**
  (``torch.distributed.nn.functional.all_gather``) so that every rank computes the
  SCL-with-prototypes loss of its *own* anchors against the *global* batch;
* scales that loss so that DDP's gradient averaging gives exactly the gradient of the
  single-process global-batch loss (:func:`distributed_scl_prototype_loss`);
* reduces :class:`ncgeo.statistics.ClassStatistics` and counters across ranks.

Which samples each rank draws is :mod:`deep.sampler`; the launching process (the
``torchrun`` command line, waiting for the workers) is :mod:`deep.launch`.

Gradient scaling (derivation). Let the global loss be ``L = sum_i l_i`` over the anchors
of the global batch, and ``L_r`` the part of the anchors held by rank ``r``
(``L = sum_r L_r``). Rank ``r`` back-propagates ``c L_r``; the all-gather's backward sums
the gradients of every rank's loss with respect to rank ``r``'s embeddings, so rank
``r``'s embeddings receive ``c dL/dh_r`` and its parameters ``c g_r`` with
``sum_r g_r = dL/dtheta`` (each ``g_r`` is the contribution of rank ``r``'s samples).
DDP then averages: ``(1/W) sum_r c g_r = (c/W) dL/dtheta``. Hence ``c = W`` (the world
size) yields exactly the single-process gradient, and the mean over ranks of the
returned values equals ``L``.

Batch normalisation is per rank unless the model is converted with
``torch.nn.SyncBatchNorm`` (:func:`prepare_model` does this on CUDA; SyncBatchNorm has no
CPU implementation), so exact equality with single-process training holds for models
without batch-norm in training mode.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from ncgeo._validation import check_choice
from ncgeo.losses import scl_prototype_loss
from ncgeo.statistics import ClassStatistics

__all__ = [
    "DistributedContext",
    "init_distributed",
    "shutdown_distributed",
    "is_distributed",
    "world_size",
    "rank",
    "gather_embeddings",
    "distributed_scl_prototype_loss",
    "gather_rows",
    "broadcast_buffers",
    "average_gradients",
    "all_reduce_sum",
    "all_reduce_class_statistics",
    "mean_over_ranks",
    "prepare_model",
    "barrier",
]



@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, its device and backend.

    ``enabled`` is False for an ordinary single process (``world_size == 1``, no group).
    """

    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: str

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


def init_distributed(device: str | torch.device | None = None, *, backend: str | None = None,
                     env: Mapping[str, str] | None = None) -> DistributedContext:
    """Initialise the default process group from torchrun's environment variables.

    Reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus ``MASTER_ADDR``/``MASTER_PORT``,
    used by the ``env://`` rendezvous). Without them, or with ``WORLD_SIZE=1``, nothing is
    initialised and a single-process context is returned.

    Parameters
    ----------
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"`` (each process takes ``cuda:LOCAL_RANK``) or ``None``
        (CUDA when available, else CPU). An explicit ``"cuda:i"`` is honoured as given
        only for a single process.
    backend : {"nccl", "gloo"}, optional
        Default ``nccl`` on CUDA, ``gloo`` on CPU.
    env : mapping, optional
        Environment to read (default ``os.environ``).
    """
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    global_rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", global_rank)
    if world < 1 or not 0 <= global_rank < world:
        raise ValueError(f"RANK={global_rank} and WORLD_SIZE={world} are inconsistent")
    requested = torch.device(device) if device is not None else None
    if requested is None:
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = requested.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is 'cuda' but CUDA is not available")
        if world > 1:
            index = local_rank
        elif requested is not None and requested.index is not None:
            index = requested.index
        else:
            index = torch.cuda.current_device()
        torch.cuda.set_device(index)
        device_name = f"cuda:{index}"
    else:
        device_name = str(requested) if requested is not None else "cpu"
    if world == 1:
        return DistributedContext(0, 0, 1, None, device_name)
    chosen = backend or ("nccl" if kind == "cuda" else "gloo")
    check_choice("backend", chosen, ("nccl", "gloo"))
    if not dist.is_initialized():
        options: dict[str, Any] = {}
        if chosen == "nccl":
            options["device_id"] = torch.device(device_name)
        dist.init_process_group(chosen, init_method="env://", rank=global_rank, world_size=world,
                                **options)
    return DistributedContext(global_rank, local_rank, world, chosen, device_name)


def shutdown_distributed() -> None:
    """Destroy the default process group if one was initialised (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_embeddings(embeddings: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All-gather the local batch into the global batch, keeping the gradient.

    Every rank must pass the same number of rows ``b`` (the sampler guarantees it).
    The embeddings go through ``torch.distributed.nn.functional.all_gather``, whose
    backward sums, over all ranks, the gradients with respect to this rank's rows; the
    labels through a plain ``all_gather``.

    Parameters
    ----------
    embeddings : (b, d) tensor
        This rank's embeddings.
    labels : (b,) integer tensor
        Their classes.

    Returns
    -------
    (H, y, start) : ((W b, d) tensor, (W b,) tensor, int)
        The global batch in rank order and the row where this rank's rows start
        (``rank * b``). Without a process group, the inputs and 0.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must have shape (b, d), got {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if not is_distributed():
        return embeddings, labels, 0
    from torch.distributed.nn.functional import all_gather as all_gather_with_gradient

    with warnings.catch_warnings():
        # deprecated in favour of functional collectives, which torch.compile needs; the
        # loss is not compiled, and this autograd-aware gather is the documented one.
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather_with_gradient(embeddings)
    label_parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(label_parts, labels.contiguous())
    return torch.cat(parts, dim=0), torch.cat(label_parts), dist.get_rank() * embeddings.shape[0]


def distributed_scl_prototype_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor | None = None,
    n_w: float = 0.0,
    tau: float = 0.1,
    *,
    reduction: str = "sum",
    prototypes_as_anchors: bool = False,
    loss_scale: float = 1.0,
    validate: bool = False,
) -> torch.Tensor:
    r"""This rank's share of the global-batch SCL-with-prototypes loss, scaled for DDP.

    The global batch ``B`` is gathered (:func:`gather_embeddings`); the per-anchor losses
    ``l_i`` of :func:`ncgeo.losses.scl_prototype_loss` (docs/theory.md section 2, each anchor
    contrasted with the whole global batch and the ``n_w`` copies of every prototype)
    are computed and this rank's rows ``A_r`` kept. The returned value is

    .. math::

        \mathcal{L}_r = \frac{W}{Z}\Big[\sum_{i \in A_r} \ell_i
                        + \frac{1}{W}\, n_w \sum_c \ell_c \,[\text{prototypes as anchors}]\Big]

    with ``W`` the world size and ``Z = 1`` (``reduction="sum"``) or the number of global
    anchors ``|B| (+ k n_w)`` (``"mean"``). Then ``(1/W) sum_r L_r`` is the single-process
    loss of the global batch, and DDP's gradient average equals its exact gradient (see
    the module docstring). Cost per rank: ``O(|B| (|B| + k) d)`` for the global ``|B|``.
    Without a process group this is ``scl_prototype_loss`` itself.

    Parameters
    ----------
    embeddings : (b, d) tensor
        This rank's (unit-norm) embeddings; equal ``b`` on every rank.
    labels : (b,) integer tensor
    prototypes : (d, k) tensor, optional
    n_w, tau, prototypes_as_anchors, loss_scale, validate
        As in :func:`ncgeo.losses.scl_prototype_loss` (``validate`` defaults to False
        here: no host synchronisation in the training step).
    reduction : {"sum", "mean"}
    """
    check_choice("reduction", reduction, ("sum", "mean"))
    H, y, start = gather_embeddings(embeddings, labels)
    common = dict(n_w=n_w, tau=tau, loss_scale=loss_scale, validate=validate)
    if not is_distributed():
        return scl_prototype_loss(H, y, prototypes, prototypes_as_anchors=prototypes_as_anchors,
                                  reduction=reduction, **common)
    world = dist.get_world_size()
    per_anchor = scl_prototype_loss(H, y, prototypes, reduction="none", **common)
    local = per_anchor[start:start + embeddings.shape[0]].sum()
    anchors = float(H.shape[0])
    total = world * local
    if prototypes_as_anchors and n_w > 0:
        with_prototype_anchors = scl_prototype_loss(H, y, prototypes, prototypes_as_anchors=True,
                                                    reduction="sum", **common)
        # n_w * sum_c l_c, shared by all ranks: each contributes 1/W of it (times W)
        total = total + (with_prototype_anchors - per_anchor.sum())
        anchors += prototypes.shape[1] * n_w
    return total if reduction == "sum" else total / max(anchors, 1.0)


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (no gradient); row counts may differ.

    Rows are padded to the largest count for the collective and trimmed afterwards.
    Without a process group, ``local`` itself.
    """
    if not is_distributed():
        return local
    world = dist.get_world_size()
    where = _collective_device(local)
    count = torch.tensor([local.shape[0]], device=where)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=where)
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(local.device)


def _collective_device(tensor: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (moved to the backend's device if needed)."""
    if not is_distributed():
        return tensor
    where = _collective_device(tensor)
    buffer = tensor.to(where)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over ranks, returned as a new tensor."""
    out = value.detach().clone()
    return all_reduce_sum(out) / world_size() if is_distributed() else out


def all_reduce_class_statistics(stats: ClassStatistics) -> ClassStatistics:
    r"""Merge the :class:`~ncgeo.statistics.ClassStatistics` of all ranks, in place.

    Every rank accumulated its samples around its own per-class shift ``s_c``:
    shifted sums ``S_c = sum_i (h_i - s_c)`` and scatter ``T = sum_i x_i x_i^T`` with
    ``x_i = h_i - s_{y_i}``. The raw sums ``S_c + n_c s_c`` are summed first, giving the
    global class means ``m_c``, which become the common shift; with
    ``delta_c = s_c - m_c`` each rank re-centres exactly

    .. math::

        S'_c = S_c + n_c \delta_c, \qquad
        T' = T + S^\top \Delta + \Delta^\top S + \Delta^\top \mathrm{diag}(n) \Delta

    (``S``, ``Delta`` the ``k x d`` matrices of rows ``S_c``, ``delta_c``) and then
    ``n``, ``S'`` and ``T'`` are summed over ranks. Centring on the global means keeps the
    float64 scatter free of cancellation. Afterwards every rank holds the statistics of
    the union of all ranks' samples.
    """
    if not is_distributed():
        return stats
    counts = stats.counts
    shift = stats._shift  # noqa: SLF001 - the merge must re-centre the private sums
    shifted_sum = stats._shifted_sum  # noqa: SLF001
    raw = torch.cat([counts[:, None], shifted_sum + counts[:, None] * shift], dim=1)
    all_reduce_sum(raw)
    global_counts = raw[:, 0]
    global_means = raw[:, 1:] / global_counts.clamp_min(1.0)[:, None]
    delta = shift - global_means
    delta = torch.where(counts[:, None] > 0, delta, torch.zeros_like(delta))
    new_sum = shifted_sum + counts[:, None] * delta
    cross = shifted_sum.T @ delta
    new_scatter = stats._scatter + cross + cross.T + (delta.T * counts) @ delta  # noqa: SLF001
    packed = torch.cat([new_sum.reshape(-1), new_scatter.reshape(-1)])
    all_reduce_sum(packed)
    k, d = shifted_sum.shape
    stats.counts = global_counts
    stats._shift = global_means  # noqa: SLF001
    stats._shift_set = global_counts > 0  # noqa: SLF001
    stats._shifted_sum = packed[: k * d].view(k, d).clone()  # noqa: SLF001
    stats._scatter = packed[k * d:].view(d, d).clone()  # noqa: SLF001
    return stats


def prepare_model(model: torch.nn.Module, context: DistributedContext, *,
                  sync_batchnorm: bool | None = None) -> torch.nn.Module:
    """Wrap ``model`` (already on ``context.device``) in DistributedDataParallel.

    ``sync_batchnorm`` (default: True on CUDA) converts batch-norm layers to
    ``torch.nn.SyncBatchNorm`` so that their statistics are those of the global batch,
    as in single-process training; it is refused on CPU, where PyTorch has no
    SyncBatchNorm. Returns ``model`` unchanged for a single process.
    """
    if not context.enabled:
        return model
    on_cuda = context.device.startswith("cuda")
    if sync_batchnorm is None:
        sync_batchnorm = on_cuda
    if sync_batchnorm:
        if not on_cuda:
            raise ValueError("sync_batchnorm=True needs CUDA devices (PyTorch has no CPU SyncBatchNorm)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [torch.device(context.device).index] if on_cuda else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast_buffers(module: torch.nn.Module, source: int = 0) -> None:
    """Copy the buffers (batch-norm running statistics) of rank ``source`` to every rank.

    Without SyncBatchNorm each rank updates its running statistics with its own batches;
    this makes evaluation use the same network on every rank.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        moved = buffer.to(_collective_device(buffer))
        dist.broadcast(moved, src=source)
        if moved is not buffer:
            buffer.copy_(moved)


def average_gradients(parameters) -> None:
    """Average the ``.grad`` of parameters that DDP does not manage (mean over ranks)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            all_reduce_sum(parameter.grad).div_(world)


def barrier() -> None:
    """Wait for all ranks (no-op for a single process)."""
    if is_distributed():
        dist.barrier()


