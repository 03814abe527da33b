"""What every study shares: its result type, its option specs and how its files are written.

A study is a pair of functions

* ``run_NAME(out_dir, quick=False, workers=None, **options) -> StudyResult``: runs the
  sweep (resumable, see :mod:`sims.runner`), writes ``DIR/NAME.csv``, ``DIR/NAME.json``,
  ``DIR/NAME.png`` and ``DIR/NAME.pdf``, and returns the tidy table and a verdict;
* ``plot_NAME(rows, settings) -> matplotlib.figure.Figure``.

Options are declared once as :class:`Option` specs (name, type, quick and full
defaults, help); :func:`resolve_settings` merges the user's options into the defaults
and the CLI builds its flags from the same specs.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ncgeo._io import jsonable

from .io import save_figure_atomic, write_csv_atomic, write_json_atomic

__all__ = ["Verdict", "StudyResult", "Option", "OptionError", "resolve_settings", "require_values", "finish_study"]


class OptionError(ValueError):
    """Bad value of study options ``names``: ``str()`` names them as Python options
    (``option tau must be ...``), :meth:`for_flags` as command-line flags (``--tau``).

    ``every`` marks a rule broken by one value of a list option (``every value of option n_w
    must be ...``); ``"out_dir"`` is the output folder (the flag ``--out``).
    """

    def __init__(self, names: str | Sequence[str], reason: str, every: bool = False) -> None:
        self.names = (names,) if isinstance(names, str) else tuple(names)
        self.reason, self.every = reason, every
        label = "options " + " and ".join(self.names) if len(self.names) > 1 else f"option {self.names[0]}"
        super().__init__(f"{'every value of ' if every else ''}{label} {reason}")

    @property
    def flags(self) -> tuple[str, ...]:
        """The command-line flags of :attr:`names` (``n_w`` -> ``--n-w``, ``out_dir`` -> ``--out``)."""
        return tuple("--out" if name == "out_dir" else "--" + name.replace("_", "-") for name in self.names)

    def for_flags(self) -> str:
        """The message with the flags instead of the Python names, e.g. ``--tau must be ...``."""
        return f"{'every value of ' if self.every else ''}{' and '.join(self.flags)} {self.reason}"


@dataclass(frozen=True)
class Verdict:
    """Pass/fail of a study against the theory, with the reason in words and numbers."""

    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"passed": bool(self.passed), "reason": self.reason}


@dataclass(frozen=True)
class StudyResult:
    """Outcome of one study.

    Attributes
    ----------
    name : str
        Study name (``limit``, ``geometry``, ...).
    rows : list of dict
        The tidy table: one dict of plain values per row (also written to ``NAME.csv``).
    verdict : Verdict
        Pass/fail against the theory, with the reason.
    settings : dict
        The settings used (defaults merged with the options).
    seconds : float
        Wall time of the run, including cached points and writing the files.
    files : tuple of str
        Paths written.
    summary : dict
        Study-specific numbers behind the verdict (fitted slopes, worst Deltas, ...) and
        ``sweep``: points computed in this run and read back from the resume cache.
    """

    name: str
    rows: list[dict[str, Any]]
    verdict: Verdict
    settings: dict[str, Any]
    seconds: float
    files: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"name": self.name, "verdict": self.verdict.to_dict(), "settings": self.settings,
                         "seconds": self.seconds, "summary": self.summary, "files": list(self.files),
                         "rows": self.rows})


@dataclass(frozen=True)
class Option:
    """One study option: ``name`` (Python identifier), ``kind`` (``int``, ``float``, ``str``,
    ``bool``, ``floats`` = comma-separated floats, ``ints``, ``strs``), quick and full defaults,
    a help line and the range of a number (of every item of a list): ``low``/``high`` (``None``:
    unbounded), excluded when ``low_open``/``high_open``. Numbers of the float kinds must be
    finite."""

    name: str
    kind: str
    quick: Any
    full: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def range_text(self) -> str:
        """The range in words, e.g. ``>= 2``, ``> 0`` or ``in [0, 1)``; empty when unbounded."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""

    def parse(self, value: Any) -> Any:
        """Convert a user value (possibly a string from the CLI) to the option's type and check
        its range; ``ValueError`` naming the option otherwise."""
        parsed = self._convert(value)
        if parsed is not None and self.kind in ("int", "float", "ints", "floats"):
            for item in (parsed if isinstance(parsed, list) else [parsed]):
                self._check_number(item)
        return parsed

    def _check_number(self, item: float) -> None:
        number = "an integer" if self.kind in ("int", "ints") else "a finite number"
        inside = math.isfinite(item)
        if inside and self.low is not None:
            inside = item > self.low if self.low_open else item >= self.low
        if inside and self.high is not None:
            inside = item < self.high if self.high_open else item <= self.high
        if not inside:
            raise OptionError(self.name, f"must be {number} {self.range_text}".rstrip() + f", got {item!r}",
                              every=self.kind in ("ints", "floats"))

    def _convert(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            if self.kind == "int":
                return _integer(value)
            if self.kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if self.kind == "bool":
                if isinstance(value, str):
                    lowered = value.lower()
                    if lowered not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    return lowered in ("true", "1", "yes")
                if not isinstance(value, bool):
                    raise ValueError
                return value
            if self.kind == "str":
                return str(value)
            if self.kind in ("floats", "ints", "strs"):
                items = value.split(",") if isinstance(value, str) else list(value)
                items = [item.strip() if isinstance(item, str) else item for item in items]
                items = [item for item in items if item != ""]
                convert = {"floats": float, "ints": _integer, "strs": str}[self.kind]
                return [convert(item) for item in items]
        except (TypeError, ValueError) as exc:
            raise OptionError(self.name, f"expects {self.kind}, got {value!r}") from exc
        raise ValueError(f"unknown option kind {self.kind!r}")  # pragma: no cover


def _integer(item: Any) -> int:
    """An int from an int or an integral float/string; ValueError otherwise (1.5 is not 1)."""
    if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
        raise ValueError
    return int(item)


def resolve_settings(study: str, specs: Sequence[Option], quick: bool, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults (quick or full) overridden by ``options``; unknown names raise ``ValueError``."""
    known = {spec.name: spec for spec in specs}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"study {study!r} has no option {', '.join(unknown)}; "
                         f"its options are {', '.join(sorted(known))}")
    settings = {spec.name: (spec.quick if quick else spec.full) for spec in specs}
    for name, value in options.items():
        if value is not None:
            settings[name] = known[name].parse(value)
    settings["quick"] = bool(quick)
    return settings


def require_values(settings: dict[str, Any], **minimum_counts: int) -> None:
    """Raise ``ValueError`` naming the option when a list setting holds fewer distinct values than
    asked (e.g. ``require_values(settings, n_w=1)``: an empty grid leaves nothing to fit or plot;
    a power law needs two)."""
    for name, count in minimum_counts.items():
        if len(set(settings[name])) < count:
            raise OptionError(name, f"must hold at least {count} distinct value{'s' if count > 1 else ''}, "
                                    f"got {settings[name]!r}")


def finish_study(name: str, out_dir: str | os.PathLike, rows: list[dict[str, Any]], verdict: Verdict,
                 settings: dict[str, Any], start: float, plot: Callable[[list, dict], Any],
                 summary: dict[str, Any] | None = None) -> StudyResult:
    """Write ``NAME.csv``, draw and save ``NAME.png``/``.pdf``, write ``NAME.json``; return the result.

    ``NAME.json`` (settings and verdict) is removed first and written last, so a run killed
    in between never leaves an old verdict beside new tables and figures."""
    import matplotlib.pyplot as plt

    out_dir = os.fspath(out_dir)
    stem = os.path.join(out_dir, name)
    if os.path.exists(stem + ".json"):  # the verdict of an earlier run must not outlive a half-written new one
        os.unlink(stem + ".json")
    files = [write_csv_atomic(stem + ".csv", rows)]
    figure = plot(rows, settings)
    try:
        files += save_figure_atomic(figure, stem)
    finally:
        plt.close(figure)
    files.append(stem + ".json")
    result = StudyResult(name=name, rows=rows, verdict=verdict, settings=settings,
                         seconds=time.perf_counter() - start, files=tuple(files), summary=summary or {})
    write_json_atomic(stem + ".json", result.to_dict(), strict=True)
    return result
