"""The ``ncgeo`` command: thin click front end over ncgeo, sims and deep.

It parses options, calls the packages and prints their results; it computes nothing
itself. Bad input ends with one line naming the argument and exit status 2.
"""

from __future__ import annotations

import sys

import click


class _CleanErrors(click.Group):
    """Report bad input as one line and exit status 2, never a traceback.

    ValueError/TypeError raised by the library (which name the argument) and click's
    own usage errors are both printed as ``Error: ...`` on one line.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError) as exc:
            raise click.UsageError(" ".join(str(exc).split()), ctx) from exc

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_CleanErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ncgeo")
def main() -> None:
    """ncgeo: neural-collapse geometry of supervised-contrastive learning with prototypes.

    \b
    Examples:
      ncgeo solve --classes 10 --protos 1000
      ncgeo sims all --out results --quick
      ncgeo deep train --dataset fmnist --protos 100 --out runs/demo
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
