"""Command-line helpers shared by ``cli.py``, ``deep.cli`` and ``sims.cli``: click parameter types
whose errors say in words what is needed, and the command group that turns bad input into one line.

Only the command line imports this module (click is a dependency of the package for it)."""

from __future__ import annotations

import math
import sys

import click

__all__ = ["RangeInWords", "FloatRange", "IntRange", "CleanErrors"]


class RangeInWords:
    """Mixin for click's ranges: a value that is not a number, not finite or out of range
    reads ``must be a finite number > 0, got 'abc'`` (click says "not a valid float range")."""

    def convert(self, value, param, ctx):
        try:
            converted = super().convert(value, param, ctx)
        except click.BadParameter:
            converted = None
        if converted is None or (isinstance(converted, float) and not math.isfinite(converted)):
            number = "an integer" if isinstance(self, click.IntRange) else "a finite number"
            low, high = (None if x is None else f"{x:g}" if isinstance(x, float) else str(x) for x in (self.min, self.max))
            if low is not None and high is not None:
                low, high = f"in {'(' if self.min_open else '['}{low}, {high}{')' if self.max_open else ']'}", None
            low = low if low is None or low.startswith("in ") else f"{'>' if self.min_open else '>='} {low}"
            high = high if high is None else f"{'<' if self.max_open else '<='} {high}"
            self.fail(" ".join(["must be", number, *filter(None, (low, high))]) + f", got {value!r}", param, ctx)
        return converted


class FloatRange(RangeInWords, click.FloatRange):
    """click.FloatRange whose errors say what is needed in words (and refuse nan and inf)."""


class IntRange(RangeInWords, click.IntRange):
    """click.IntRange whose errors say what is needed in words."""


class CleanErrors(click.Group):
    """Report bad input as one line and exit status 2, never a traceback.

    ValueError/TypeError raised by the library (which name the argument) and click's
    own usage errors are both printed as ``Error: ...`` on one line; so is a diverged
    computation (``FloatingPointError``, exit status 1).
    """

    def invoke(self, ctx):
        from ncgeo._io import is_out_of_memory, out_of_memory_message

        try:
            return super().invoke(ctx)
        except (ValueError, TypeError) as exc:
            raise click.UsageError(" ".join(str(exc).split()), ctx) from exc
        except FloatingPointError as exc:  # a diverged run: one line and exit status 1, not a traceback
            raise click.ClickException(" ".join(str(exc).split())) from exc
        except (MemoryError, RuntimeError) as exc:  # sizes beyond this machine: one line, not a traceback
            if not is_out_of_memory(exc):
                raise
            raise click.UsageError(out_of_memory_message(exc), ctx) from exc

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from ncgeo._io import exit_on_sigterm

        exit_on_sigterm()  # a killed run removes its half-written temporary files
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `ncgeo`, `ncgeo deep`, `ncgeo sims`
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)
