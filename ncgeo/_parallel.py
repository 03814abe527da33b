"""Worker processes for the sweeps of ``sims`` and ``deep`` (one implementation for both).

:func:`process_pool` is a :class:`concurrent.futures.ProcessPoolExecutor` whose workers are
forked where the platform allows it (no re-import of the caller's main module, imports and
read-only data shared with the parent; ``spawn`` elsewhere) and limit torch to one thread
each, so ``workers`` processes use ``workers`` cores.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os

__all__ = ["resolve_workers", "process_pool"]


def resolve_workers(workers: int | None, name: str = "workers") -> int:
    """``workers`` validated (an int ``>= 1``; errors name ``name``); ``None`` means ``os.cpu_count()``."""
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"{name} must be an integer, got {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {workers}")
    return workers


def _init_worker() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a pool shutting down must be able to stop its workers
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def process_pool(workers: int) -> futures.ProcessPoolExecutor:
    """A pool of ``workers`` single-threaded processes (forked where possible); use it as a
    context manager."""
    workers = resolve_workers(workers)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)
