"""``ncgeo sims ...``: the command group of :mod:`sims`, one command per registered study (built from
its option specs on demand) and ``all``; added to ``ncgeo`` by ``cli.py``."""

from __future__ import annotations

import contextlib

import click

from ncgeo._click import CleanErrors, FloatRange, IntRange

__all__ = ["sims"]


_SIMS_KINDS = {"int": int, "float": float, "str": str, "floats": str, "ints": str, "strs": str}


def _sims_print(result) -> None:
    status = "PASS" if result.verdict.passed else "FAIL"
    click.echo(f"{result.name}: {status} ({result.seconds:.1f} s): {result.verdict.reason}")
    for path in result.files:
        click.echo(f"wrote {path}")


def _sims_default(value) -> str:
    if isinstance(value, list):
        if len(value) > 6:
            return f"{len(value)} values from {value[0]:g} to {value[-1]:g}"
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def _sims_flags():
    """A :class:`sims.study.OptionError` (``option tau must be ...``) becomes one line naming the
    flags (``--tau must be ...``)."""
    from sims.study import OptionError

    try:
        yield
    except OptionError as exc:
        raise click.UsageError(exc.for_flags()) from exc


def _sims_command(study) -> click.Command:
    """A click command for one registered study, its flags built from the study's option specs."""
    params = [
        click.Option(["--out"], required=True, type=click.Path(file_okay=False),
                     help="Output folder: NAME.csv, NAME.json, NAME.png/.pdf and NAME.points/ (resume cache)."),
        click.Option(["--quick"], is_flag=True, help="Small sizes (seconds); default: the full sizes."),
        click.Option(["--workers"], type=IntRange(min=1), default=None,
                     help="Processes for the sweep [default: all CPU cores]."),
        click.Option(["--progress/--no-progress"], default=True, show_default=True, help="Progress bar on stderr."),
    ]
    for spec in study.options:
        flag = "--" + spec.name.replace("_", "-")
        shown = f"[quick: {_sims_default(spec.quick)}; full: {_sims_default(spec.full)}]"
        if spec.kind == "bool":
            params.append(click.Option([f"{flag}/--no-{spec.name.replace('_', '-')}", spec.name], default=None,
                                       help=f"{spec.help} {shown}"))
        else:
            listed = " (comma-separated)" if spec.kind in ("floats", "ints", "strs") else ""
            if spec.range_text:
                listed = (f" (comma-separated, each {spec.range_text})" if listed else f" ({spec.range_text})")
            kind = _SIMS_KINDS[spec.kind]
            if spec.kind in ("int", "float"):  # its range checked by click, in words naming the flag
                kind = (IntRange if spec.kind == "int" else FloatRange)(
                    min=spec.low, max=spec.high, min_open=spec.low_open, max_open=spec.high_open)
            params.append(click.Option([flag, spec.name], type=kind, default=None,
                                       help=f"{spec.help}{listed} {shown}"))

    def callback(out, quick, workers, progress, **options):
        from sims.registry import run_study

        with _sims_flags():
            result = run_study(study.name, out, quick=quick, workers=workers, progress=progress, **options)
        _sims_print(result)

    return click.Command(study.name, callback=callback, params=params,
                         help=f"{study.question}\n\nSee the module sims.{study.run.__module__.split('.')[-1]} "
                              "for the method and the verdict. Exit status 0 whatever the verdict.",
                         short_help=study.question)


class _SimsGroup(CleanErrors):
    """Builds the study commands from :mod:`sims.registry` on demand (keeps ``ncgeo --help`` fast)."""

    def list_commands(self, ctx):
        from sims.registry import STUDIES

        return ["all", *STUDIES]

    def get_command(self, ctx, name):
        if name == "all":
            return sims_all
        from sims.registry import STUDIES

        return _sims_command(STUDIES[name]) if name in STUDIES else None


@click.command("all")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder for every study.")
@click.option("--quick", is_flag=True, help="Small sizes: all studies in about a minute on 2 cores.")
@click.option("--workers", type=IntRange(min=1), default=None, help="Processes [default: all CPU cores].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def sims_all(out, quick, workers, progress) -> None:
    """Run every study with its default settings and print a table of verdicts.

    The exit status is 0 even when a verdict fails: FAIL rows are printed in the table
    (the run itself succeeded; the verdict is a scientific result, in NAME.json).
    """
    from sims.registry import run_all, verdict_table

    with _sims_flags():
        results = run_all(out, quick=quick, workers=workers, progress=progress)
    click.echo(verdict_table(results))
    failed = [r.name for r in results if not r.verdict.passed]
    click.echo(f"{len(results) - len(failed)}/{len(results)} studies PASS" +
               (f"; FAIL: {', '.join(failed)}" if failed else "") + f"; files in {out}")


@click.group("sims", cls=_SimsGroup)
def sims() -> None:
    """Studies of the theory's claims: table (CSV), figure (PNG/PDF) and verdict (JSON) each.

    \b
    ncgeo sims NAME --out DIR [--quick] [--workers N] [study options]
    ncgeo sims all --out DIR --quick      every study, small sizes (about a minute on 2 cores)
    \b
    Studies and their full sizes (--quick: k=4, inverse k=6, and short grids):
      limit        k=10, n=100 (step R=10), OF prototypes, tau=0.2, 25 n_w in [1, 1e6]
      geometry     k=10, n=100, R in {1,10,100}, ETF/OF/random/user Gram (+ReLU), tau=0.2, 13 n_w in [1, 1e6]
      batching     k=10, n=10, b=10, 10 seeds x {full, bind, partition, shuffle}, UFM+
      temperature  k=10, n=20 (R=10), 13 tau in [0.02, 2] x 6 n_w in [10, 1e6]
      inverse      k=6, hierarchical target, tau=0.2, CE limit and n_w=1000 (quick: fewer restarts)
    \b
    Sweeps run in parallel over CPU cores and resume: finished points are kept in
    DIR/NAME.points/ and never recomputed. Every verdict is PASS or FAIL; the exit
    status is 0 either way (see NAME.json for the numbers behind it).
    """
