"""Name -> study: the run and plot functions, the option specs with quick and full sizes.

``run_study(name, out_dir, quick, workers, **options)`` runs one study;
``run_all(out_dir, quick, workers)`` runs them all in the order of :data:`STUDIES` and
returns their results (a failed verdict does not stop the others).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from . import batching, geometry_study, inverse, limit, temperature
from .study import Option, OptionError, StudyResult

__all__ = ["Study", "STUDIES", "get_study", "run_study", "run_all", "verdict_table"]


@dataclass(frozen=True)
class Study:
    """A registered study: ``name``, one-line ``question``, ``run``/``plot`` functions, ``options``."""

    name: str
    question: str
    run: Callable[..., StudyResult]
    plot: Callable[[list, dict], Any]
    options: tuple[Option, ...]

    def sizes(self, quick: bool) -> dict[str, Any]:
        """The default settings of the quick or the full size."""
        return {o.name: (o.quick if quick else o.full) for o in self.options}


STUDIES: dict[str, Study] = {
    study.name: study
    for study in (
        Study("limit", "does SCL + n_w prototypes converge to fixed-classifier CE, at rate 1/n_w?",
              limit.run_limit, limit.plot_limit, limit.OPTIONS),
        Study("geometry", "how do ETF/OF/random/user prototypes (with/without ReLU) shape the imbalanced geometry?",
              geometry_study.run_geometry, geometry_study.plot_geometry, geometry_study.OPTIONS),
        Study("batching", "which batching schemes let UFM+ reach the orthogonal frame?",
              batching.run_batching, batching.plot_batching, batching.OPTIONS),
        Study("temperature", "how does the rate of the CE limit depend on the temperature?",
              temperature.run_temperature, temperature.plot_temperature, temperature.OPTIONS),
        Study("inverse", "which prototypes make a target Gram the learnt geometry?",
              inverse.run_inverse, inverse.plot_inverse, inverse.OPTIONS),
    )
}


def get_study(name: str) -> Study:
    """The registered study called ``name`` (ValueError listing the names otherwise)."""
    if name not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(STUDIES)}, got {name!r}")
    return STUDIES[name]


def run_study(name: str, out_dir, quick: bool = False, workers: int | None = None, progress: bool = True,
              **options: Any) -> StudyResult:
    """Run one study by name; see its module for the options."""
    _check_out_dir(out_dir)
    return get_study(name).run(out_dir, quick=quick, workers=workers, progress=progress, **options)


def _check_out_dir(out_dir) -> None:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir (--out) must be a folder path, got {type(out_dir).__name__}")
    if not os.fspath(out_dir).strip():
        raise OptionError("out_dir", "must not be empty (a folder for the study's files)")


def run_all(out_dir, quick: bool = False, workers: int | None = None, progress: bool = True,
            names: list[str] | None = None) -> list[StudyResult]:
    """Run every study (or ``names``) with its default settings; returns the results in order."""
    if isinstance(names, str):
        raise TypeError(f"names must be a list of study names, got the string {names!r}")
    names = list(STUDIES) if names is None else names
    _check_out_dir(out_dir)
    for name in names:
        get_study(name)
    return [run_study(name, out_dir, quick=quick, workers=workers, progress=progress) for name in names]


def verdict_table(results: list[StudyResult]) -> str:
    """A plain-text table: study, PASS/FAIL, seconds, reason."""
    lines = [f"{'study':<12} {'verdict':<7} {'seconds':>8}  reason"]
    for result in results:
        status = "PASS" if result.verdict.passed else "FAIL"
        lines.append(f"{result.name:<12} {status:<7} {result.seconds:8.1f}  {result.verdict.reason}")
    return "\n".join(lines)
