"""SGD with momentum or Adam, and the learning-rate schedule for :mod:`deep.train` (warm-up, then
multistep or cosine, stepped every iteration), and loading a checkpointed optimiser state
onto the parameters' current device and layout."""

from __future__ import annotations

import torch

from .config import TrainConfig

__all__ = ["WARMUP_START_FACTOR", "build_optimizer", "load_optimizer_state", "build_scheduler"]

#: The warm-up starts at this fraction of ``--lr``.
WARMUP_START_FACTOR = 0.1


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer``: SGD with ``config.lr``, ``momentum`` and ``weight_decay``, or Adam with
    ``config.lr``, torch's default betas and ``weight_decay`` (L2, added to the gradient); the
    fused kernel when every parameter is on CUDA."""
    parameters = list(parameters)
    fused = bool(parameters) and all(p.is_cuda for p in parameters)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpointed SGD (or Adam) state into ``optimizer`` built by :func:`build_optimizer`, on
    whatever device and memory format its parameters now have.

    ``Optimizer.load_state_dict`` moves the momentum buffers to each parameter's device but
    keeps their saved strides, and CUDA's fused SGD kernel requires a buffer laid out like
    its parameter: a run checkpointed on the CPU (contiguous weights) and resumed on CUDA
    (``channels_last`` weights) would fail at its first step. The buffers are therefore
    copied into their parameter's layout, and every group takes this optimiser's ``fused``
    setting (the device may have changed).
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"] = optimizer.defaults["fused"]
    for parameter, entry in optimizer.state.items():
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):  # SGD's buffer, Adam's moments
            buffer = entry.get(key)
            if buffer is not None and buffer.stride() != parameter.stride():
                entry[key] = torch.empty_like(parameter, dtype=buffer.dtype).copy_(buffer)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: optional ``LinearLR`` warm-up, then multistep (x0.1), cosine or constant.

    Milestones are epochs counted from the start of training (converted to iterations);
    the cosine runs from the end of the warm-up to the last iteration.
    """
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "constant":
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif config.schedule == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    else:
        milestones = [m * steps_per_epoch - warmup for m in config.effective_milestones]
        if any(m <= 0 for m in milestones):
            raise ValueError(f"--milestones {list(config.effective_milestones)} must lie after the "
                             f"warm-up ({config.warmup_epochs} epochs)")
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if warmup == 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0,
                                             total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
