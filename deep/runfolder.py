"""The run folder of :mod:`deep.train`: checks before a run starts or resumes, its creation
with the first file, and what a resume says about the files it finds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import TrainConfig, check_resume

__all__ = ["open_run_folder", "make_run_folder", "clean_run_folder", "check_evaluations"]


def open_run_folder(config: TrainConfig) -> dict | None:
    """Check ``--out`` and return the checkpoint state when resuming (``None`` for a new run).

    Refuses (ValueError naming ``--out``/``--resume``) an existing run without ``--resume``, a
    resume whose options differ from the stored run, and a folder that cannot be created. A
    new run's folder is created only when its first file is written (:func:`make_run_folder`),
    so a start that fails (missing data, bad options) leaves nothing behind.
    """
    out = Path(config.out)
    checkpoint_path = out / "checkpoint.pt"
    state = None
    if checkpoint_path.exists():
        if not config.resume:
            raise ValueError(f"--out {str(out)!r} already holds a run; pass --resume to continue it "
                             "or choose another --out")
        state = load_checkpoint(checkpoint_path, map_location="cpu")
        check_resume(config, TrainConfig.from_dict(state["config"]), out)
    try:  # the nearest existing folder on the way must be a writable folder
        existing = out
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:  # a file in the way: one line, not a traceback
        raise ValueError(f"--out {str(out)!r} cannot be created as a run folder: {exc.strerror}") from exc
    return state


def make_run_folder(out: Path) -> None:
    """Create the run folder ``out`` (and its parents); ValueError naming ``--out`` otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r} cannot be created as a run folder: {exc.strerror}") from exc


def check_evaluations(records: list[dict], epoch: int, stored_epochs: int, eval_every: int, log) -> None:
    """Say when ``metrics.jsonl`` lacks an evaluation written before the checkpoint of ``epoch``
    (epoch 0 or the checkpoint's own): the file was truncated or edited, since every line is
    appended and fsync-ed before its checkpoint; ``deep report``/``predict`` will miss it."""
    present = {record["epoch"] for record in records}
    expected = {0} | ({epoch} if epoch % eval_every == 0 or epoch == stored_epochs else set())
    missing = sorted(expected - present)
    if missing:
        log(f"warning: metrics.jsonl lacks the evaluation of epoch(s) {missing}, written before the checkpoint "
            "(the file was truncated or edited); deep report and deep predict will miss it")


def clean_run_folder(out: Path) -> None:
    """Remove the metrics and timing lines of an earlier, unfinished start in ``out``."""
    for name in ("metrics.jsonl", "timing.jsonl"):
        if (out / name).exists():
            (out / name).unlink()
