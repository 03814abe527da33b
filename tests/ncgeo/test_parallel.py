"""ncgeo._parallel: the worker count and the pool of single-threaded processes shared by the sweeps."""

from __future__ import annotations

import os

import pytest
import torch

from ncgeo._parallel import process_pool, resolve_workers


def test_resolve_workers_defaults_to_the_cores_and_names_the_option():
    assert resolve_workers(None) == max(1, os.cpu_count() or 1) and resolve_workers(3) == 3
    with pytest.raises(ValueError, match="--workers must be an integer >= 1"):
        resolve_workers(0, "--workers")
    with pytest.raises(TypeError, match="workers must be an integer"):
        resolve_workers(2.0)
    with pytest.raises(TypeError, match="workers"):
        resolve_workers(True)


def _threads_and_pid(_: int) -> tuple[int, int]:
    return torch.get_num_threads(), os.getpid()


def test_pool_workers_are_other_processes_with_one_torch_thread():
    with process_pool(2) as pool:
        results = list(pool.map(_threads_and_pid, range(4)))
    assert {threads for threads, _ in results} == {1}
    assert os.getpid() not in {pid for _, pid in results}
