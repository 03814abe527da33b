"""The launching process of ``ncgeo deep train --nproc N``: the ``torchrun`` command line that
rebuilds a :class:`deep.config.TrainConfig` in every worker, and a launch that waits for the
workers (and stops them when it is stopped itself).

The workers run :mod:`deep.train` under :mod:`deep.distributed`.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from ncgeo._validation import check_int

from .config import TrainConfig, option_name

__all__ = ["check_batch_split", "config_arguments", "torchrun_command", "launch", "wait_or_terminate"]


def check_batch_split(config: TrainConfig, nproc: int) -> int:
    """``nproc`` (an integer >= 1) after checking that the global ``--batch-size`` of ``config``
    splits equally over ``nproc`` processes."""
    nproc = check_int("nproc", nproc, minimum=1)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.full_batch:
        if nproc > 1:
            raise ValueError(f"--batch-size full trains in one process, not --nproc {nproc}")
        return nproc
    if config.batch_size % nproc:
        raise ValueError(f"--batch-size {config.batch_size} must be divisible by --nproc {nproc} "
                         "(it is the global batch, split equally over the processes)")
    return nproc


def config_arguments(config: TrainConfig) -> list[str]:
    """Options of ``python -m deep.train`` that rebuild exactly ``config``.

    Every field is passed explicitly (``--batch-size 128``; milestones comma-separated),
    except unset optional ones; a boolean appears only when it differs from its default
    (``--resume``, ``--no-progress``, ...).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    arguments: list[str] = []
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if isinstance(value, bool):
            if value != spec.default:
                arguments.append(option_name(spec.name) if value else f"--no-{option_name(spec.name)[2:]}")
        elif value is None or value == ():
            continue
        elif isinstance(value, tuple):
            arguments += [option_name(spec.name), ",".join(str(item) for item in value)]
        else:
            arguments += [option_name(spec.name), str(value)]
    return arguments


def torchrun_command(config: TrainConfig, nproc: int, python: str | None = None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m deep.train OPTIONS``.

    ``--standalone`` runs a single-node rendezvous on a free local port.
    """
    nproc = check_batch_split(config, nproc)
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "deep.train", *config_arguments(config)]


def launch(config: TrainConfig, nproc: int) -> int:
    """Run :func:`torchrun_command` and wait; returns its exit status.

    Stopped itself (SIGTERM as ``SystemExit``, Ctrl-C), the launcher passes SIGTERM on to
    torchrun, which stops its workers (they exit cleanly, see :func:`ncgeo._io.exit_on_sigterm`),
    and waits for it: nothing keeps training orphaned in the background.
    """
    return wait_or_terminate(subprocess.Popen(torchrun_command(config, nproc)))


def wait_or_terminate(process: subprocess.Popen, grace: float = 60.0) -> int:
    """``process.wait()``; if the wait is interrupted, SIGTERM the process, give it ``grace``
    seconds (then SIGKILL) and re-raise."""
    try:
        return process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
