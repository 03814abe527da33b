"""The ``ncgeo`` command: thin click front end over ncgeo, sims and deep.

It parses options, calls the packages and prints their results; it computes nothing
itself. Bad input ends with one line naming the argument and exit status 2.
"""

from __future__ import annotations

import sys

import click


class _CleanErrors(click.Group):
    """Turn ValueError/TypeError raised by the library into click usage errors (exit 2)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError) as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


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
