r"""Resumable, parallel sweep runner shared by every study.

A sweep is a list of **points** (plain JSON-serialisable dicts of settings) and a
top-level function ``compute(point) -> dict`` (the result of that point: plain values).
:func:`run_sweep` evaluates the points in parallel over CPU cores with a
:class:`concurrent.futures.ProcessPoolExecutor` and stores every finished point as

    DIR/NAME.points/<key>.json     {"point": {...}, "result": {...}, "seconds": s}

written atomically (temporary file + ``os.replace``), where ``key`` is a hash of the
point's canonical JSON. A point whose file exists is read back and never recomputed,
so an interrupted sweep resumes where it stopped and a finished sweep is free to
rerun (e.g. to redraw a figure). Progress goes to stderr (:class:`ncgeo.progress.Progress`).

Worker processes come from :func:`ncgeo._parallel.process_pool`: forked where the platform
allows it (no re-import of the caller's main module, imports shared with the parent;
``spawn`` elsewhere), each limiting torch to one thread, so ``workers`` processes use
``workers`` cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ncgeo._io import is_out_of_memory, out_of_memory_message, remove_stale_temporaries
from ncgeo._parallel import resolve_workers, run_each
from ncgeo.progress import Progress

from .io import write_json_atomic
from .study import OptionError

#: A ``.tmp-*`` file in a points cache older than this was left by a killed write (a live
#: one, of another sweep writing the same folder, is milliseconds old).
STALE_SECONDS = 600.0

__all__ = ["SweepOutcome", "point_key", "run_sweep", "grid"]


def point_key(point: dict[str, Any]) -> str:
    """Stable file key of a point: the first 16 hex digits of SHA-256 of its canonical JSON."""
    text = json.dumps(point, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SweepOutcome:
    """What :func:`run_sweep` returns.

    Attributes
    ----------
    results : list of dict
        ``{"point": ..., "result": ..., "seconds": ...}`` in the order of the input points.
    computed : int
        Number of points evaluated in this call.
    cached : int
        Number of points read back from ``DIR/NAME.points`` (not recomputed).
    seconds : float
        Wall time of the call.
    """

    results: list[dict[str, Any]]
    computed: int
    cached: int
    seconds: float

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows: each point's settings merged with its result (result keys win)."""
        return [{**entry["point"], **entry["result"]} for entry in self.results]

    def to_dict(self) -> dict[str, Any]:
        return {"computed": self.computed, "cached": self.cached, "seconds": self.seconds,
                "points": len(self.results)}


def _timed(compute: Callable[[dict], dict], point: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    try:
        result = compute(point)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        # one line through the CLI (ValueError), naming the point, instead of a worker traceback
        raise ValueError(f"the sweep point {json.dumps(point, sort_keys=True)}: {out_of_memory_message(exc)}") from None
    if not isinstance(result, dict):
        raise TypeError(f"a sweep's compute function must return a dict, got {type(result).__name__}")
    return result, time.perf_counter() - start


def _read_point(path: str, point: dict) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            entry = json.load(handle)
    except (OSError, ValueError):
        return None  # unreadable or truncated by a crash: recompute
    if not isinstance(entry, dict) or entry.get("point") != json.loads(json.dumps(point)) or "result" not in entry:
        return None
    return entry


def run_sweep(name: str, out_dir: str | os.PathLike, points: Sequence[dict[str, Any]],
              compute: Callable[[dict[str, Any]], dict[str, Any]], *, workers: int | None = None,
              progress: bool = True) -> SweepOutcome:
    """Evaluate ``compute`` on every point, in parallel, skipping points already stored.

    Parameters
    ----------
    name : str
        Sweep name; points are stored under ``out_dir/name.points/``.
    out_dir : path
        Output directory (created if missing).
    points : sequence of dict
        JSON-serialisable settings, one dict per point; duplicates are evaluated once.
    compute : callable
        A **top-level** (picklable) function ``point -> dict`` of plain values.
    workers : int, optional
        Number of processes (default ``os.cpu_count()``); ``1`` computes in this process.
    progress : bool
        Draw a progress bar on stderr.

    Returns
    -------
    SweepOutcome
        Results in the order of ``points``, with the numbers computed and cached.
    """
    if not isinstance(name, str) or not name or os.sep in name:
        raise ValueError(f"name must be a non-empty file name, got {name!r}")
    workers = resolve_workers(workers)
    points = [dict(p) for p in points]
    for i, point in enumerate(points):
        try:
            json.dumps(point, allow_nan=True)
        except TypeError as exc:
            raise TypeError(f"points[{i}] must be JSON-serialisable: {exc}") from exc
    start = time.perf_counter()
    store = os.path.join(os.fspath(out_dir), f"{name}.points")
    try:
        os.makedirs(store, exist_ok=True)
    except OSError as exc:  # a file in the way: one line, not a traceback
        raise OptionError("out_dir", f"{os.fspath(out_dir)!r}: cannot create {store!r}: {exc.strerror}") from exc
    remove_stale_temporaries(store, older_than=STALE_SECONDS)  # left by writes killed by a signal
    keys = [point_key(p) for p in points]
    entries: dict[str, dict] = {}
    todo: dict[str, dict] = {}
    for key, point in zip(keys, points):
        if key in entries or key in todo:
            continue
        entry = _read_point(os.path.join(store, f"{key}.json"), point)
        if entry is None:
            todo[key] = point
        else:
            entries[key] = entry
    cached = len(entries)
    bar = Progress(f"{name} ({cached} cached)" if cached else name, len(entries) + len(todo), unit="points",
                   initial=cached, enabled=progress and bool(todo))

    def finish(key: str, timed: tuple[dict, float], error: BaseException | None) -> None:
        result, seconds = timed
        entry = {"point": todo[key], "result": result, "seconds": seconds}
        write_json_atomic(os.path.join(store, f"{key}.json"), entry)
        entries[key] = json.loads(json.dumps(entry, allow_nan=True))
        bar.update()

    with bar:
        run_each(_timed, {key: (compute, point) for key, point in todo.items()}, workers, finish)
    return SweepOutcome(results=[entries[key] for key in keys], computed=len(todo), cached=cached,
                        seconds=time.perf_counter() - start)


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """Cartesian product of named axes as a list of point dicts (last axis fastest)."""
    points: list[dict[str, Any]] = [{}]
    for axis, values in axes.items():
        points = [{**p, axis: v} for p in points for v in values]
    return points
