"""Atomic file writing for ncgeo's outputs (``.npz`` solutions, JSON reports, figures), and
:func:`jsonable`, the one conversion of results to JSON values.

The data go to a temporary file in the target directory, are flushed and ``fsync``-ed,
then moved over the target with :func:`os.replace` (atomic on POSIX), so a reader or a
crash never sees half a file.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from typing import Any, Callable, IO

import numpy as np

__all__ = ["atomic_write", "atomic_write_bytes", "exit_on_sigterm", "is_out_of_memory", "jsonable",
           "os_errors_as_value_errors", "out_of_memory_message", "remove_stale_temporaries"]


def jsonable(value: Any, strict: bool = True) -> Any:
    """Convert numpy and torch scalars and arrays, tuples and dicts (keys made ``str``),
    at any depth, to plain JSON values.

    With ``strict=True`` every non-finite float, inside arrays too, becomes ``None``
    (standard JSON has no NaN or Infinity; ``None`` reads as "undefined" or "no bound").
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, strict) for v in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor (torch is not imported here)
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), strict)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if strict and not math.isfinite(value) else value
    return value


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> str:
    """Call ``write(handle)`` on a temporary binary file next to ``path``, then ``os.replace`` it.

    The directory of ``path`` must exist (``ValueError`` otherwise, naming it); the
    temporary file is removed if ``write`` fails. Returns ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path!r}: directory {directory!r} does not exist")
    descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (the directory entry), where the file system allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(descriptor)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, ``kill``, batch schedulers) into ``SystemExit(143)`` in the
    main thread, so that a write in progress removes its temporary file on the way out
    (SIGKILL cannot be caught). A handler installed by someone else is kept."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_for_signal)


def _exit_for_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def os_errors_as_value_errors(path: str | os.PathLike):
    """Inside the block, an ``OSError`` (full disk, permissions, a folder gone read-only) is
    raised again as one ``ValueError``: ``cannot write 'PATH': REASON``."""
    try:
        yield
    except OSError as exc:
        raise ValueError(f"cannot write {os.fspath(path)!r}: {exc.strerror or exc}") from exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, make_folder: bool = False) -> str:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); with ``make_folder``
    the folder of ``path`` is created first when missing."""
    if make_folder:
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    return atomic_write(path, lambda handle: handle.write(data))


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = 0.0) -> list[str]:
    """Remove the ``.tmp-*`` files that an atomic write killed by a signal left in ``folder``
    (only those older than ``older_than`` seconds: a concurrent writer's file is young).
    Returns the names removed."""
    folder = os.fspath(folder)
    removed = []
    now = time.time()
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name)
        try:
            if name.startswith(".tmp-") and os.path.isfile(path) and now - os.path.getmtime(path) >= older_than:
                os.unlink(path)
                removed.append(name)
        except OSError:  # removed meanwhile
            continue
    return removed


def out_of_memory_message(exc: BaseException) -> str:
    """The one line a command prints for an out-of-memory failure (see :func:`is_out_of_memory`)."""
    message = " ".join(str(exc).split())[:200]
    return f"not enough memory for these sizes ({type(exc).__name__}: {message}); choose smaller ones"


def is_out_of_memory(exc: BaseException) -> bool:
    """numpy's and Python's ``MemoryError``, or torch's CPU/CUDA allocator failures: input
    sizes beyond the machine, which the commands report as one line instead of a traceback."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
        "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower()))
