"""Which samples each process sees: :class:`ShardedBatchSampler` for training batches and
:func:`shard_range` for evaluation.

The sampler draws one seeded permutation of the whole training set per epoch, cuts it into
global batches and each global batch into equal rank shards, so the union of the ranks'
batches is exactly the batch a single process with the global batch size would draw (the
class proportions of an imbalanced set are kept: every sample is drawn once per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ncgeo._validation import check_int, check_rank

__all__ = ["ShardedBatchSampler", "shard_range"]


class ShardedBatchSampler:
    """Equal per-rank batches cut from one seeded permutation per epoch.

    Epoch ``e`` draws the permutation ``pi`` of ``range(num_samples)`` from a CPU
    ``torch.Generator`` seeded with ``seed + e`` (identical on every rank and device).
    Global batch ``t`` is ``pi[t B:(t+1) B]`` with ``B = world_size * batch_size``; rank
    ``r`` gets its slice ``pi[t B + r b : t B + (r+1) b]``. Gathered in rank order, the
    ranks' batches are exactly the batches of a single process with batch size ``B``.
    Every sample is drawn at most once per epoch, so an imbalanced training set keeps its
    class proportions. With ``drop_last`` (default) the ``num_samples mod B`` last
    samples of the permutation are skipped; otherwise the last global batch is filled
    up with the first samples of the permutation (all ranks keep equal batch sizes).

    Iterating yields lists of indices (usable as a ``DataLoader`` batch sampler after
    :meth:`set_epoch`); :meth:`epoch_indices` returns them as one tensor for
    device-resident data.
    """

    def __init__(self, num_samples: int, batch_size: int, *, world_size: int = 1, rank: int = 0,
                 seed: int = 0, drop_last: bool = True):
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.rank, self.world_size = check_rank(rank, world_size)
        self.seed = check_int("seed", seed)
        self.drop_last = bool(drop_last)
        self.global_batch_size = self.world_size * self.batch_size
        if self.drop_last and self.num_samples < self.global_batch_size:
            raise ValueError(f"num_samples = {self.num_samples} is smaller than one global batch "
                             f"({self.world_size} x {self.batch_size}); lower batch_size")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.global_batch_size
        return math.ceil(self.num_samples / self.global_batch_size)

    def epoch_indices(self, epoch: int | None = None, device: str | torch.device | None = None
                      ) -> torch.Tensor:
        """This rank's batches of ``epoch`` (default: the current one), shape ``(len(self), b)``."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, minimum=0)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        batches = self.split(torch.randperm(self.num_samples, generator=generator))
        return batches.to(device) if device is not None else batches

    def split(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's batches ``(len(self), b)`` cut from a permutation ``order`` of the samples.

        For callers that draw the epoch's permutation themselves (e.g. from a checkpointed
        generator); with one process the batches are ``order[t b:(t+1) b]``.
        """
        if order.shape != (self.num_samples,):
            raise ValueError(f"order must have shape ({self.num_samples},), got {tuple(order.shape)}")
        needed = len(self) * self.global_batch_size
        if needed > self.num_samples:
            order = torch.cat([order, order[: needed - self.num_samples]])
        batches = order[:needed].view(len(self), self.world_size, self.batch_size)[:, self.rank]
        return batches.contiguous()

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_indices().tolist())


def shard_range(num_items: int, rank: int, world_size: int) -> range:
    """Contiguous part of ``range(num_items)`` for ``rank`` (sizes differ by at most one).

    Used for evaluation, where every item must be seen exactly once (no padding).
    """
    num_items = check_int("num_items", num_items, minimum=0)
    rank, world_size = check_rank(rank, world_size)
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
