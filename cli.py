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


# ----------------------------------------------------------------------------- deep

from deep.config import train_options as _deep_train_options  # stdlib + click only: keeps --help fast


@main.group("deep", cls=_CleanErrors)
def deep() -> None:
    """Train ResNets with SCL + prototypes on real images and compare with the UFM prediction."""


@deep.command("train")
@_deep_train_options
def deep_train(config_file, **options) -> None:
    """Train (or --resume) a run; writes metrics.jsonl, checkpoints and the run facts to --out.

    \b
    Example:
      ncgeo deep train --dataset fmnist --imbalance step --ratio 10 --protos 100 --out runs/demo
    """
    from deep.config import resolve_config
    from deep.train import train

    click.echo(str(train(resolve_config(options, config_file))))


@deep.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for figures and tables.")
@click.option("--predict/--no-predict", default=True, show_default=True,
              help="Compute the UFM prediction of SCL runs (cached in RUN/prediction.json).")
@click.option("--model", type=click.Choice(["batch", "dataset"]), default="batch", show_default=True,
              help="Class weights of the prediction: expected per-batch counts or training-set counts.")
def deep_report(runs, out, predict, model) -> None:
    """Delta-vs-epoch curves, final Gram heatmaps beside G_W and the prediction, accuracy tables."""
    from deep.report import report

    result = report(list(runs), out, predict=predict, model=model)
    click.echo((result.out / "accuracy.md").read_text(encoding="utf-8"), nl=False)
    for path in result.files:
        click.echo(f"wrote {path}")


@deep.command("predict")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--model", type=click.Choice(["batch", "dataset"]), default="batch", show_default=True,
              help="Class weights: expected per-batch counts b*n_c/N (THEORY.md section 7) or the counts n_c.")
@click.option("--solver", type=click.Choice(["CLARABEL", "SCS"]), default="CLARABEL", show_default=True)
def deep_predict(run, model, solver) -> None:
    """Certified UFM prediction for RUN's class proportions, batch, n_w, tau and prototypes."""
    from deep.predict import predict_run

    prediction = predict_run(run, model, solver=solver)
    click.echo(prediction.summary())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
