"""Atomic files for a training run: checkpoints, JSON files and an append-only JSON-lines log.

Every whole-file write goes to a temporary file in the same folder, is flushed and
``fsync``-ed, then moved over the target with ``os.replace`` (atomic on POSIX): a run
killed at any moment leaves either the old or the new file, never a torn one. Lines of
``metrics.jsonl`` are appended with one ``write`` followed by ``flush`` and ``fsync``.

Checkpoints are loaded with ``torch.load(weights_only=True)``: only tensors, numbers,
strings and plain containers are accepted, never arbitrary pickled objects.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Iterable

import numpy as np
import torch

from ncgeo._io import atomic_write_bytes, jsonable

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write_json",
    "atomic_save_arrays",
    "append_jsonl",
    "read_jsonl",
    "read_jsonl_numbered",
    "rewrite_jsonl",
    "save_checkpoint",
    "load_checkpoint",
    "lock_run_folder",
]

CHECKPOINT_FORMAT = 1


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` (after :func:`ncgeo._io.jsonable`) as indented JSON, atomically."""
    text = json.dumps(jsonable(value), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), make_folder=True)


def atomic_save_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save named arrays as an uncompressed ``.npz`` atomically (read with ``allow_pickle=False``)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(a) for name, a in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue(), make_folder=True)


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON object as one line; flushed and fsync-ed before returning."""
    line = json.dumps(jsonable(record), sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete lines of a JSON-lines file (a torn last line, without newline, is ignored)."""
    return [record for _, record in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, record)`` of every complete non-blank line of a JSON-lines file (a torn
    last line, without newline, is ignored; a missing file has none)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    records = []
    for number, line in enumerate(text.split("\n")[:-1], 1):  # the part after the last newline is torn
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not valid JSON: {exc}") from exc
    return records


def rewrite_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Replace a JSON-lines file by ``records`` atomically."""
    text = "".join(json.dumps(jsonable(r), sort_keys=True, allow_nan=False) + "\n" for r in records)
    atomic_write_bytes(path, text.encode("utf-8"), make_folder=True)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` a state dictionary (tensors, numbers, strings, containers) atomically.

    ``state`` gets the key ``"format"`` (:data:`CHECKPOINT_FORMAT`).
    """
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue(), make_folder=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises ``ValueError`` naming the file when it is missing, unreadable, or of another format.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"checkpoint {path!r} could not be loaded safely: {' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path!r} is not an ncgeo deep checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def lock_run_folder(folder: str | os.PathLike):
    """Hold an exclusive advisory lock on ``folder/.lock`` (``fcntl.flock``) while the returned
    handle is open: one training process per run folder. ``ValueError`` naming ``--out`` when
    another process holds it; ``None`` where the platform has no ``fcntl`` (no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    path = os.path.join(os.fspath(folder), ".lock")
    handle = open(path, "a", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise ValueError(f"--out {os.fspath(folder)!r} is in use by another training process (it holds "
                         f"{path}); wait for it to finish or choose another --out") from exc
    return handle

