"""Atomic writers for the studies' tables, JSON summaries and figures.

Every file is first written to a temporary file in the target directory and then moved
into place with :func:`os.replace`, so a reader (or a crash) never sees half a file:
``DIR/NAME.csv`` (tidy table), ``DIR/NAME.json`` (settings, seconds, verdict, rows),
``DIR/NAME.png`` and ``DIR/NAME.pdf`` (figure).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Iterable, Sequence

from ncgeo._io import atomic_write_bytes, jsonable

__all__ = ["write_text_atomic", "write_json_atomic", "write_csv_atomic", "save_figure_atomic",
           "table_columns"]


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), make_folder=True)


def write_json_atomic(path: str | os.PathLike, obj: Any, strict: bool = False) -> str:
    """Write ``obj`` as indented JSON atomically.

    ``strict=False`` keeps NaN/inf as the (Python-readable) tokens ``NaN``/``Infinity``;
    ``strict=True`` writes them as ``null``.
    """
    text = json.dumps(jsonable(obj, strict), indent=1, allow_nan=not strict, sort_keys=False)
    return write_text_atomic(path, text + "\n")


def table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Column names of a tidy table: keys in order of first appearance over all rows."""
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    return columns


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[dict[str, Any]],
                     columns: Iterable[str] | None = None) -> str:
    """Write a tidy table (one dict per row, scalar values) as CSV atomically.

    Missing values and ``None`` are empty cells; lists/dicts are written as JSON text;
    floats use ``repr`` (round-trip precision).
    """
    columns = list(columns) if columns is not None else table_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for column in columns:
            value = jsonable(row.get(column), strict=False)
            if value is None:
                cells.append("")
            elif isinstance(value, (list, dict)):
                cells.append(json.dumps(value))
            else:
                cells.append(repr(value) if isinstance(value, float) else str(value))
        writer.writerow(cells)
    return write_text_atomic(path, buffer.getvalue())


def save_figure_atomic(figure, stem: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"),
                       dpi: int = 110) -> list[str]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf`` (atomically); returns the paths."""
    paths = []
    for fmt in formats:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(atomic_write_bytes(f"{os.fspath(stem)}.{fmt}", buffer.getvalue(), make_folder=True))
    return paths
