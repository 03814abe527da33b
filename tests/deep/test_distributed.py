"""deep.distributed: 2-process gloo runs equal single-process training on the global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deep.distributed import (
    DistributedContext,
    all_reduce_class_statistics,
    distributed_scl_prototype_loss,
    gather_embeddings,
    init_distributed,
)
from deep.sampler import ShardedBatchSampler, shard_range
from ncgeo.losses import scl_prototype_loss
from ncgeo.statistics import ClassStatistics

WORKER = Path(__file__).with_name("_distributed_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(world: int, out: Path, attempts: int = 3) -> None:
    """Start ``world`` worker processes with torchrun's environment variables.

    A port picked free can be taken by another process before rank 0 binds it; such a
    start is retried on a new port.
    """
    for _ in range(attempts):
        port = free_port()
        procs = []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env,
                                          cwd=ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        logs = [proc.communicate(timeout=120)[0] for proc in procs]
        if all(proc.returncode == 0 for proc in procs):
            return
        if not any("address already in use" in log.lower() for log in logs):
            break
    raise AssertionError("\n".join(logs))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    launch(1, folder / "single.pt")
    launch(2, folder / "ddp.pt")
    load = lambda name: torch.load(folder / name, weights_only=True)  # noqa: E731
    return load("single.pt"), load("ddp.pt"), load("ddp.pt.rank1")


def test_ranks_draw_the_single_process_global_batch(runs):
    single, rank0, rank1 = runs
    assert torch.equal(torch.cat([rank0["index"], rank1["index"]]), single["index"])


def test_loss_and_gradients_equal_single_process(runs):
    single, rank0, rank1 = runs
    for i, reference in enumerate(single["losses"]):
        for rank_result in (rank0, rank1):
            assert torch.allclose(rank_result["reported"][i], reference, rtol=0, atol=1e-6)
            for grad, expected in zip(rank_result["grads"][i], single["grads"][i]):
                assert torch.allclose(grad, expected, rtol=0, atol=1e-6), (i, grad - expected)
        # the ranks' own shares differ; only their mean is the global loss
        assert not torch.allclose(rank0["losses"][i], rank1["losses"][i])


def test_class_statistics_merge_equals_single_pass(runs):
    single, rank0, rank1 = runs
    for rank_result in (rank0, rank1):
        assert torch.equal(rank_result["counts"], single["counts"])
        assert torch.allclose(rank_result["means"], single["means"], rtol=0, atol=1e-12)
        assert torch.allclose(rank_result["within"], single["within"], rtol=0, atol=1e-12)
    assert single["within"].abs().max() > 1e-6  # the covariance is not trivially zero
    assert float(rank0["rank_sum"]) == float(rank1["rank_sum"]) == 3.0


def test_row_gather_buffer_broadcast_and_gradient_average(runs):
    single, rank0, rank1 = runs
    expected_rows = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    for rank_result in (rank0, rank1):
        assert torch.equal(rank_result["rows"], expected_rows)
        assert torch.equal(rank_result["running_mean"], torch.full((3,), 10.0))
        assert torch.equal(rank_result["averaged_grad"], torch.full((2,), 0.5))
    assert torch.equal(single["rows"], torch.zeros(1, 2))
    assert torch.equal(single["averaged_grad"], torch.zeros(2))


def test_single_process_fallbacks():
    context = init_distributed("cpu", env={})
    assert context == DistributedContext(0, 0, 1, None, "cpu") and not context.enabled
    assert context.is_main and context.to_dict()["world_size"] == 1
    H = torch.nn.functional.normalize(torch.randn(8, 3, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    W = torch.eye(3, dtype=torch.float64)
    gathered, labels, start = gather_embeddings(H, y)
    assert gathered is H and labels is y and start == 0
    expected = scl_prototype_loss(H, y, W, 4.0, 0.2, reduction="mean")
    assert torch.equal(distributed_scl_prototype_loss(H, y, W, 4.0, 0.2, reduction="mean"), expected)
    stats = ClassStatistics.from_embeddings(H, y)
    assert all_reduce_class_statistics(stats) is stats


def test_sync_batchnorm_on_is_refused_on_cpu_processes():
    from deep.distributed import prepare_model

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert prepare_model(model, DistributedContext(0, 0, 1, None, "cpu"), sync_batchnorm=True) is model
    with pytest.raises(ValueError, match=r"^sync_batchnorm=True needs CUDA devices"):  # before any DDP wrapping
        prepare_model(model, DistributedContext(0, 0, 2, "gloo", "cpu"), sync_batchnorm=True)


def test_sync_batchnorm_choice():
    from deep.config import TrainConfig
    from deep.train import sync_batchnorm

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    auto = TrainConfig()
    assert sync_batchnorm(auto, cuda, 2) and not sync_batchnorm(auto, cpu, 2) and not sync_batchnorm(auto, cuda, 1)
    assert not sync_batchnorm(auto.replace(compile=True), cuda, 4)  # PyTorch issue #107372
    assert sync_batchnorm(auto.replace(compile=True, sync_batchnorm="on"), cuda, 4)
    with pytest.raises(ValueError, match=r"^--sync-batchnorm on needs CUDA devices"):
        sync_batchnorm(auto.replace(sync_batchnorm="on"), cpu, 2)
    assert not sync_batchnorm(auto.replace(sync_batchnorm="on"), cpu, 1)  # one process: nothing to synchronise
    assert not sync_batchnorm(auto.replace(sync_batchnorm="off"), cuda, 8)


def test_init_distributed_rejects_bad_environment():
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu", env={"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK"):
        init_distributed("cpu", env={"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_shards_partition_the_epoch(drop_last):
    n, b, world = 23, 3, 2
    shards = [ShardedBatchSampler(n, b, world_size=world, rank=r, seed=5, drop_last=drop_last)
              for r in range(world)]
    single = ShardedBatchSampler(n, b * world, seed=5, drop_last=drop_last)
    for epoch in (0, 1):
        parts = [s.epoch_indices(epoch) for s in shards]
        assert all(p.shape == (len(shards[0]), b) for p in parts)
        assert torch.equal(torch.cat(parts, dim=1), single.epoch_indices(epoch))
        drawn = torch.cat([p.reshape(-1) for p in parts])
        if drop_last:
            assert len(shards[0]) == n // (b * world) and drawn.unique().numel() == drawn.numel()
        else:
            assert len(shards[0]) == 4 and drawn.unique().numel() == n  # padded with repeats
    assert not torch.equal(single.epoch_indices(0), single.epoch_indices(1))
    order = torch.randperm(n)
    assert torch.equal(torch.cat([s.split(order) for s in shards], dim=1), single.split(order))
    if drop_last:  # one process: consecutive slices of the permutation, as a plain loop would cut
        assert torch.equal(single.split(order), order[: len(single) * b * world].view(-1, b * world))
    with pytest.raises(ValueError, match="order"):
        single.split(order[:-1])
    shards[0].set_epoch(1)
    assert list(shards[0]) == shards[0].epoch_indices(1).tolist()


def test_sampler_keeps_class_proportions_over_an_epoch():
    labels = torch.cat([torch.zeros(500), torch.ones(50)]).long()  # ratio 10
    sampler = ShardedBatchSampler(550, 25, world_size=2, rank=1, seed=0, drop_last=False)
    drawn = labels[sampler.epoch_indices(0)].reshape(-1)
    # each rank draws half of the epoch: about 250 of class 0 and 25 of class 1
    assert abs(int((drawn == 1).sum()) - 25) <= 12


def test_sampler_and_shard_validation():
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(10, 2, world_size=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        ShardedBatchSampler(10, 6, world_size=2)
    with pytest.raises(TypeError, match="batch_size"):
        ShardedBatchSampler(10, 2.5)
    assert [len(shard_range(10, r, 3)) for r in range(3)] == [4, 3, 3]
    assert list(shard_range(10, 2, 3)) == [7, 8, 9]
    with pytest.raises(ValueError, match="rank"):
        shard_range(5, 3, 3)


def _parse_training_options(arguments: list[str]):
    import click

    from deep.config import resolve_config, train_options

    @click.command()
    @train_options
    def capture(config_file, **options):
        return resolve_config(options, config_file)

    return capture.main(args=arguments, standalone_mode=False)


@pytest.mark.parametrize("changes", [
    {},
    {"dataset": "fmnist", "imbalance": "step", "ratio": 10.0, "protos": 100.0, "milestones": (3, 5),
     "epochs": 6, "lr": 1e-4, "weight_decay": 0.0, "max_train_samples": 500, "progress": False,
     "feature": "mlp", "feature_dim": 32, "warmup_epochs": 0.5, "seed": 3, "device": "cpu",
     "sync_batchnorm": "off", "proto_anchors": True},
])
def test_launch_arguments_rebuild_the_configuration(tmp_path, changes):
    from deep.config import TrainConfig
    from deep.launch import config_arguments, torchrun_command

    config = TrainConfig(out=str(tmp_path / "run"), **changes)
    assert _parse_training_options(config_arguments(config)) == config
    command = torchrun_command(config, 2, python="python3")
    assert command[:7] == ["python3", "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "deep.train"]
    with pytest.raises(ValueError, match="nproc"):
        torchrun_command(config, 0)
