"""``ncgeo deep ...``: the command group of :mod:`deep` (train, report, predict, sweep), added to
``ncgeo`` by ``cli.py``. Heavy modules are imported inside the commands (``--help`` stays fast)."""

from __future__ import annotations

from pathlib import Path

import click

from ncgeo._click import CleanErrors, IntRange

from .config import train_options as _deep_train_options  # stdlib + click only: keeps --help fast

__all__ = ["deep"]


@click.group("deep", cls=CleanErrors)
def deep() -> None:
    """Train networks with SCL + prototypes on real images and compare with the UFM prediction."""


@deep.command("train")
@_deep_train_options
@click.option("--nproc", type=IntRange(min=1), default=None,
              help="Processes (one per GPU); more than 1 launches torchrun with DDP, --batch-size staying global "
                   "[default: the --config file's nproc, else 1].")
@click.pass_context
def deep_train(ctx, config_file, nproc, **options) -> None:
    """Train (or --resume) a run; writes metrics.jsonl, checkpoints and the run facts to --out.

    \b
    Example:
      ncgeo deep train --dataset fmnist --imbalance step --ratio 10 --protos 100 --out runs/demo
      ncgeo deep train --dataset cifar10 --nproc 4 --precision bf16 --out runs/ddp
    """
    from deep.config import config_nproc, resolve_config
    from deep.train import run

    config = resolve_config(options, config_file)
    ctx.exit(run(config, config_nproc(nproc, config_file), echo=click.echo))


@deep.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for figures and tables.")
@click.option("--predict/--no-predict", default=True, show_default=True,
              help="Compute the UFM prediction of SCL and ce-fixed runs (also written to RUN/prediction.json).")
@click.option("--model", type=click.Choice(["batch", "dataset", "ce-limit"]), default=None,
              help="Prediction: reduced UFM with expected per-batch counts (default for mini-batch or two-view SCL "
                   "runs) or training-set counts (default for full-batch runs of one view), or the CE limit "
                   "(default for ce-fixed runs).")
def deep_report(runs, out, predict, model) -> None:
    """Delta-vs-epoch curves, final Gram heatmaps beside G_W and the prediction, accuracy tables."""
    from deep.report import report

    result = report(list(runs), out, predict=predict, model=model)
    click.echo((result.out / "accuracy.md").read_text(encoding="utf-8"), nl=False)
    for path in result.files:
        click.echo(f"wrote {path}")


@deep.command("predict")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--model", type=click.Choice(["batch", "dataset", "ce-limit"]), default=None,
              help="Reduced UFM with expected per-batch counts views*b*n_c/N (docs/theory.md section 7; default for "
                   "mini-batch or two-view SCL runs) or the counts n_c (default for full-batch runs of one view), "
                   "or the CE limit with fixed classifier W (default for ce-fixed runs).")
@click.option("--solver", type=click.Choice(["CLARABEL", "SCS"]), default="CLARABEL", show_default=True)
@click.option("--write/--no-write", default=True, show_default=True,
              help="Write RUN/prediction.json (--no-write: only print, e.g. for a read-only run folder).")
@click.option("--require-certificate", is_flag=True, default=False,
              help="Exit with status 1 when the prediction is not certified (e.g. UFM+ with ETF prototypes).")
@click.pass_context
def deep_predict(ctx, run, model, solver, write, require_certificate) -> None:
    """Certified UFM prediction for RUN's class proportions, batch, n_w, tau and prototypes."""
    from deep.predict import predict_run

    prediction = predict_run(run, model, solver=solver, write=write)
    click.echo(prediction.summary())
    if require_certificate and not prediction.certified:
        ctx.exit(1)


@deep.command("sweep")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Sweep folder (resumable).")
@click.option("--quick", "preset", flag_value="quick", default=None,
              help="n_w = 0, 10, 100, 1000 and ce-fixed (5 runs of about 20 s of one CPU core each).")
@click.option("--full", "preset", flag_value="full",
              help="2 seeds, signed and abs (|z|, non-negative) features, ETF and OF prototypes (48 runs, about "
                   "10 min on 2 cores); abs with ETF at finite n_w has no certified prediction (information).")
@click.option("--protos", default=None, help="n_w of the runs, comma-separated  [default: 0,1,10,100,1000].")
@click.option("--ce-fixed/--no-ce-fixed", default=True, show_default=True,
              help="Add the --loss ce-fixed run (the n_w -> infinity limit).")
@click.option("--seeds", default=None, help="Seeds, comma-separated  [default: 0].")
@click.option("--feature", "features", default=None, help="signed, nonnegative (final ReLU) and/or abs (|z|, non-negative without dead units), comma-separated  [default: signed].")
@click.option("--geometry", "geometries", default=None,
              help="Prototypes, comma-separated: etf, of, random, spherical or a file  [default: etf].")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "mnist", "fmnist"]), default=None,
              help="[default: fmnist]")
@click.option("--data-root", default=None, help="Folder of the dataset files.")
@click.option("--imbalance", type=click.Choice(["none", "step", "exp"]), default=None, help="[default: step]")
@click.option("--ratio", type=float, default=None, help="Imbalance ratio R  [default: 10].")
@click.option("--per-class", type=int, default=None, help="Training images of a majority class  [default: 100].")
@click.option("--max-test-samples", type=int, default=None, help="Test images  [default: 1000].")
@click.option("--tau", type=float, default=None, help="Temperature  [default: 0.2].")
@click.option("--arch", type=click.Choice(["resnet18", "resnet34", "mlp", "cnn"]), default=None, help="[default: mlp]")
@click.option("--width", type=int, default=None, help="Network width  [default: 256 for mlp, else the --arch default].")
@click.option("--steps", "--epochs", "epochs", type=int, default=None,
              help="Epochs, one step each with a full batch  [default: 1000].")
@click.option("--batch-size", default=None, help="Images per batch or 'full' (mini-batches: the per-batch model)  "
                                                  "[default: full].")
@click.option("--lr", type=float, default=None, help="Learning rate  [default: the --arch's, 1e-3 for mlp].")
@click.option("--schedule", type=click.Choice(["multistep", "cosine", "constant"]), default=None,
              help="Learning-rate schedule  [default: cosine].")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N.")
@click.option("--workers", type=IntRange(min=1), default=None,
              help="Runs trained at once, one process and one torch thread each  [default: all CPU cores].")
@click.pass_context
def deep_sweep(ctx, out, preset, protos, ce_fixed, seeds, features, geometries, per_class, workers, **train) -> None:
    """Train one run per n_w (and ce-fixed), predict each with its certified UFM, write a table,
    a figure and a verdict; finished runs are not retrained. Exit status 1 when a run failed (its row
    says why; a second call retries it), else 0 whatever the verdict.

    \b
    Example:
      ncgeo deep sweep --quick --out runs/sweep
    """
    from deep.sweep import run_sweep, spec_from_options

    spec = spec_from_options(out, preset or "default", protos=protos, seeds=seeds, features=features,
                             geometries=geometries, ce_fixed=ce_fixed, per_class=per_class, **train)
    summary = run_sweep(spec, workers=workers, log=lambda text: click.echo(text, err=True))
    click.echo((Path(out) / "table.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"verdict: {summary['verdict']} ({summary['rule']})")
    click.echo(f"this call: {summary['seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s CPU, "
               f"{summary['workers']} processes")
    for name in ("table.csv", "table.md", "verdict.json", "sweep.png"):
        click.echo(f"wrote {Path(out) / name}")
    failed = [row["run"] for row in summary["table"] if row.get("error")]
    if failed:
        click.echo(f"{len(failed)} run(s) failed: {', '.join(failed)}; run the same command again to retry them",
                   err=True)
        ctx.exit(1)
