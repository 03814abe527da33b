"""The speed options of deep.train on the CPU: bf16 autocast and torch.compile give the eager
fp32 step's loss and gradients (within their precision), and train() runs with them.

The CUDA-only parts (fused SGD, channels_last on the GPU, NCCL) are in the GPU-marked tests,
skipped without CUDA. A note on tolerances: these small BatchNorm networks are sensitive (a
1e-6 perturbation of the weights moves a step's gradient by ~5e-2), so the comparisons are of
one step from the same weights, not of trained runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from helpers import synthetic_images, tiny_config

from deep.checkpoint import read_jsonl
from deep.optim import build_optimizer
from deep.train import _build, train, train_step


def _one_step(config, model_transform=lambda m: m, objective_changes=None):
    """Loss and gradients of one train_step from the seeded initial weights on a fixed batch."""
    data = synthetic_images(seed=0)
    model, objective, _ = _build(config, data, torch.device("cpu"))
    if objective_changes:
        for key, value in objective_changes.items():
            setattr(objective, key, value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keep the gradients, leave the weights
    index = torch.arange(0, 96, 6)  # 16 images, every class
    generator = torch.Generator().manual_seed(7)
    loss = train_step(model_transform(model), objective, optimizer, data.images[index], data.labels[index],
                      data.mean, data.std, generator)
    return float(loss), {name: p.grad.clone() for name, p in model.named_parameters()}


def _relative(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


def test_bf16_autocast_step_matches_fp32_on_cpu():
    config = tiny_config("unused", width=8)
    loss, grads = _one_step(config)
    loss16, grads16 = _one_step(config, objective_changes={"autocast_dtype": torch.bfloat16})
    assert loss16 != loss  # the network did run in bf16
    assert loss16 == pytest.approx(loss, rel=2e-2)
    assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads16.values())
    # bf16 keeps 8 bits of mantissa and these nets amplify round-off (module docstring):
    # the step's direction is kept, not every tensor's gradient
    flat16, flat = (torch.cat([g.flatten() for g in d.values()]) for d in (grads16, grads))
    assert torch.nn.functional.cosine_similarity(flat16, flat, dim=0) > 0.9


@pytest.mark.slow
def test_compiled_step_matches_eager_and_train_runs_compiled(tmp_path):
    config = tiny_config(tmp_path / "run", width=8, epochs=1)
    loss, grads = _one_step(config)
    torch._dynamo.reset()
    loss_c, grads_c = _one_step(config, model_transform=torch.compile)
    assert loss_c == pytest.approx(loss, rel=1e-5)
    assert _relative(grads_c, grads) < 1e-3
    run = train(config.replace(compile=True), datasets=(synthetic_images(seed=0), synthetic_images(per_class=8, seed=1)))
    lines = read_jsonl(run / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [0, 1]
    assert torch.isfinite(torch.tensor(lines[1]["loss"]))


class _HostTraffic(TorchDispatchMode):
    """Records the operators that move numbers between the host and the device on a GPU:
    ``lift_fresh`` (a tensor made from Python numbers, which a CUDA step would then copy to the
    device with a blocking, stream-synchronising copy), ``_local_scalar_dense`` (``.item()``,
    ``float()``, ``bool()`` of a tensor: a device-to-host read) and the operators whose output
    size depends on the data (``nonzero``, boolean-mask selection, ``unique``,
    ``repeat_interleave``), which read that size back from the GPU."""

    WATCHED = ("aten.lift_fresh", "aten._local_scalar_dense", "aten.nonzero", "aten.masked_select",
               "aten._unique", "aten.unique", "aten.repeat_interleave")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_mask = name.startswith(("aten.index.", "aten.index_put")) and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool
            for index in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
        if name.startswith(self.WATCHED) or boolean_mask:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_host_traffic_spy_sees_what_it_watches():
    x = torch.randn(6)
    with _HostTraffic() as spy:
        x[x > 0], float(x.sum()), torch.tensor([1.0, 2.0]), x.nonzero()
        x[torch.arange(3)]  # integer indexing needs no read-back
    assert spy.seen == ["aten.index.Tensor", "aten._local_scalar_dense.default", "aten.lift_fresh.default",
                        "aten.nonzero.default"]


@pytest.mark.parametrize("loss", ["scl", "ce", "ce-fixed"])
def test_training_step_makes_no_host_round_trip(loss):
    config = tiny_config("unused", width=4, loss=loss)
    data = synthetic_images(seed=0)
    model, objective, _ = _build(config, data, torch.device("cpu"))
    optimizer = build_optimizer(list(model.parameters()) + list(objective.parameters()), config)
    generator = torch.Generator().manual_seed(0)
    batch = (data.images[:16], data.labels[:16], data.mean, data.std, generator)
    train_step(model, objective, optimizer, *batch)  # the first step may set up its constants
    with _HostTraffic() as spy:
        for _ in range(2):
            loss_value = train_step(model, objective, optimizer, *batch, channels_last=True)
    assert spy.seen == [] and loss_value.ndim == 0


def test_the_benchmark_reference_loss_makes_no_host_round_trip_without_validation():
    """bench/deep_throughput.py's reference reads the loss once per step (.item()), as the public
    SupCon code does; its materialised-prototype loss must add no read-back of its own (the value
    checks do), or the reference would be slowed below what that code achieves."""
    from ncgeo.geometry import simplex_etf
    from ncgeo.losses import materialise_prototypes, supcon_loss_materialised

    generator = torch.Generator().manual_seed(0)
    H = torch.nn.functional.normalize(torch.randn(12, 4, generator=generator), dim=1)
    y = torch.arange(12) % 3
    W = torch.as_tensor(simplex_etf(3, 4), dtype=torch.float32)
    values = []
    for validate in (True, False):
        with _HostTraffic() as spy:
            rows, labels, is_prototype = materialise_prototypes(H, y, W, 5, validate=validate)
            values.append(supcon_loss_materialised(rows, labels, 0.1, anchor_mask=~is_prototype, validate=validate))
        assert (spy.seen == []) == (not validate), spy.seen
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_with_fused_sgd_channels_last_and_bf16(tmp_path):
    config = tiny_config(tmp_path / "cuda", width=8, device="cuda", precision="bf16", epochs=1)
    data = synthetic_images(seed=0)
    model, objective, _ = _build(config, data, torch.device("cuda"))
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), config)
    assert optimizer.defaults["fused"]
    images, labels = data.images.cuda(), data.labels.cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    before = copy.deepcopy(model.state_dict())
    step = (model, objective, optimizer, images[:16], labels[:16], data.mean, data.std, generator)
    train_step(*step, channels_last=True)  # sets up the normalisation constants on the device
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises
    try:
        loss = train_step(*step, channels_last=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss) and loss.device.type == "cuda"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the engine end to end on CUDA (torch.compile on CUDA runs in bench/gpu_check.sh)
    run = train(config, datasets=(data, synthetic_images(per_class=8, seed=1)))
    lines = read_jsonl(run / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [0, 1] and torch.isfinite(torch.tensor(lines[1]["loss"]))
