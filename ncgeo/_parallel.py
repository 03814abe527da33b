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
from typing import Any, Callable, Hashable, Mapping

__all__ = ["resolve_workers", "process_pool", "run_each"]


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


def run_each(function: Callable[..., Any], calls: Mapping[Hashable, tuple], workers: int,
             finish: Callable[[Hashable, Any, BaseException | None], None],
             errors: tuple[type[BaseException], ...] = ()) -> None:
    """``function(*calls[key])`` for every key, in this process when ``workers == 1`` or there is one call,
    else in :func:`process_pool` (``function`` must then be picklable); ``finish(key, value, None)`` as each
    ends, ``finish(key, None, exc)`` for an exception of type ``errors`` (the other calls go on). Any other
    exception cancels the pending calls and is raised."""
    if workers == 1 or len(calls) <= 1:
        for key, args in calls.items():
            try:
                value, error = function(*args), None
            except errors as exc:
                value, error = None, exc
            finish(key, value, error)
        return
    with process_pool(min(workers, len(calls))) as pool:
        pending = {pool.submit(function, *args): key for key, args in calls.items()}
        try:
            for future in futures.as_completed(pending):
                try:
                    value, error = future.result(), None
                except errors as exc:
                    value, error = None, exc
                finish(pending[future], value, error)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
