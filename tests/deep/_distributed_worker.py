"""One process of the 2-process gloo tests of deep.distributed (run by test_distributed.py).

Started with torchrun's environment variables (RANK, WORLD_SIZE, ...). With WORLD_SIZE=1
it computes the single-process reference on the global batch with ncgeo's loss directly.
Writes a dict of results to the path given as the only argument (rank 0 and the
reference write ``path``; other ranks write ``path.rank<r>``).
"""

from __future__ import annotations

import sys

import torch

from deep.distributed import (
    all_reduce_class_statistics,
    all_reduce_sum,
    average_gradients,
    barrier,
    broadcast_buffers,
    distributed_scl_prototype_loss,
    gather_rows,
    init_distributed,
    mean_over_ranks,
    prepare_model,
    shutdown_distributed,
)
from deep.sampler import ShardedBatchSampler, shard_range
from ncgeo.geometry import simplex_etf
from ncgeo.losses import scl_prototype_loss
from ncgeo.statistics import ClassStatistics

NUM_SAMPLES, GLOBAL_BATCH, INPUT_DIM, FEATURE_DIM, NUM_CLASSES = 40, 12, 5, 4, 3
CONFIGS = [  # (n_w, reduction, prototypes_as_anchors)
    (0.0, "sum", False),
    (10.0, "sum", False),
    (10.0, "mean", False),
    (3.0, "sum", True),
    (2.0, "mean", True),
    (2.5, "mean", False),
]


def build_problem():
    """Deterministic imbalanced data set, prototypes and a small float64 MLP."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(NUM_SAMPLES, INPUT_DIM, generator=generator, dtype=torch.float64)
    labels = torch.cat([torch.zeros(25), torch.ones(10), torch.full((5,), 2.0)]).long()
    noise = 0.1 * torch.randn(NUM_SAMPLES, INPUT_DIM, generator=generator, dtype=torch.float64)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(INPUT_DIM, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, FEATURE_DIM)).double()
    prototypes = torch.as_tensor(simplex_etf(NUM_CLASSES, FEATURE_DIM))
    return inputs, noise, labels, model, prototypes


def features(model, inputs, noise, index):
    """Two 'views' per sample (input and a fixed perturbation), normalised, labels repeated."""
    views = torch.cat([inputs[index], inputs[index] + noise[index]])
    return torch.nn.functional.normalize(model(views), dim=1)


def main(path: str) -> None:
    context = init_distributed("cpu")
    inputs, noise, labels, model, prototypes = build_problem()
    world, rank = context.world_size, context.rank
    sampler = ShardedBatchSampler(NUM_SAMPLES, GLOBAL_BATCH // world, world_size=world,
                                  rank=rank, seed=7)
    index = sampler.epoch_indices(0)[0]
    wrapped = prepare_model(model, context)
    results = {"index": index, "losses": [], "reported": [], "grads": []}
    for n_w, reduction, as_anchors in CONFIGS:
        wrapped.zero_grad(set_to_none=True)
        H = features(wrapped, inputs, noise, index)
        y = labels[index].repeat(2)
        if context.enabled:
            loss = distributed_scl_prototype_loss(H, y, prototypes, n_w, 0.5, reduction=reduction,
                                                  prototypes_as_anchors=as_anchors)
        else:
            loss = scl_prototype_loss(H, y, prototypes, n_w, 0.5, reduction=reduction,
                                      prototypes_as_anchors=as_anchors)
        loss.backward()
        results["losses"].append(loss.detach())
        results["reported"].append(mean_over_ranks(loss))
        results["grads"].append([p.grad.detach().clone() for p in model.parameters()])

    # metric reduction: each rank streams its contiguous shard, with its own shifts
    embeddings = torch.randn(NUM_SAMPLES, FEATURE_DIM, generator=torch.Generator().manual_seed(3),
                             dtype=torch.float64) * 0.01 + 5.0
    part = shard_range(NUM_SAMPLES, rank, world)
    stats = ClassStatistics(NUM_CLASSES, FEATURE_DIM)
    for start in range(part.start, part.stop, 7):
        stop = min(start + 7, part.stop)
        stats.update(embeddings[start:stop], labels[start:stop])
    all_reduce_class_statistics(stats)
    results["means"] = stats.means()
    results["within"] = stats.within_covariance()
    results["counts"] = stats.counts.clone()
    results["rank_sum"] = all_reduce_sum(torch.tensor([float(rank + 1)]))
    # unequal row counts, buffers from rank 0, averaged gradients of a module outside DDP
    results["rows"] = gather_rows(torch.full((rank + 1, 2), float(rank)))
    norm = torch.nn.BatchNorm1d(3)
    norm.running_mean.fill_(float(rank + 10))
    broadcast_buffers(norm)
    results["running_mean"] = norm.running_mean.clone()
    extra = torch.nn.Parameter(torch.zeros(2))
    extra.grad = torch.full((2,), float(rank))
    average_gradients([extra])
    results["averaged_grad"] = extra.grad.clone()
    torch.save(results, path if rank == 0 else f"{path}.rank{rank}")
    barrier()  # leave together, as deep.train does: a rank tearing gloo down early can abort the other
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
