"""Atomic file writing for ncgeo's outputs (``.npz`` solutions, JSON reports, figures).

The data go to a temporary file in the target directory, are flushed and ``fsync``-ed,
then moved over the target with :func:`os.replace` (atomic on POSIX), so a reader or a
crash never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, IO

__all__ = ["atomic_write", "atomic_write_bytes"]


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
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data))
