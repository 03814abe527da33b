"""The ``ncgeo`` command: thin click front end over ncgeo, sims and deep.

It parses options, calls the packages and prints their results; it computes nothing
itself. Bad input ends with one line naming the argument and exit status 2.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import click


class _RangeInWords:
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


class _FloatRange(_RangeInWords, click.FloatRange):
    """click.FloatRange whose errors say what is needed in words (and refuse nan and inf)."""


class _IntRange(_RangeInWords, click.IntRange):
    """click.IntRange whose errors say what is needed in words."""


class _CleanErrors(click.Group):
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


# ----------------------------------------------------------------------------- solve


def _solve_prototypes(geometry: str, k: int, dim: int | None, relu: bool, seed: int):
    """``(W, d, name)`` for ``--geometry`` (:func:`ncgeo.geometry.named_prototypes`); an error
    about the dimension names ``--dim``, any other ``--geometry``."""
    from ncgeo.geometry import named_prototypes

    try:
        W = named_prototypes(geometry, k, dim, seed=seed, nonnegative=relu)
    except (ValueError, TypeError) as exc:
        option = "'--dim'" if "d must be" in str(exc) else "'--geometry'"  # e.g. a rank-4 Gram in d = 2
        raise click.BadParameter(str(exc), param_hint=option) from exc
    names = {"etf": "etf", "of": "of (standard basis, non-negative)",
             "random": f"random ({'non-negative, ' if relu else ''}seed {seed})",
             "random+": f"random (non-negative, seed {seed})", "spherical": f"spherical (seed {seed})"}
    return W, W.shape[0], names.get(geometry, f"file {geometry}")


#: --rtol / --atol of the certificates (docs/theory.md section 5.1)
_RTOL = _FloatRange(min=0.0, max=1.0, min_open=True, max_open=True)
_ATOL = _FloatRange(min=0.0, max=1.0)  # per anchor; finite (inf would certify anything)
_RTOL_HELP = ("Accepted gap relative to the excess (the loss above its floor F = sum over anchors of log P_a): "
              "certified iff gap <= rtol * excess + atol * anchors.")
_ATOL_HELP = "Accepted gap per anchor, added to rtol * excess."


def _check_output(option: str, path: str | None) -> None:
    """Before any work: the folder of an output file must exist and be writable (one line, exit 2)."""
    import os

    if path is None or path == "-":
        return
    if not path.strip():  # a folder is refused by click.Path(dir_okay=False) already
        raise click.BadParameter(f"{path!r} is not a file name", param_hint=f"'{option}'")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot write {path!r}: folder {directory!r} does not exist or is not writable",
                                 param_hint=f"'{option}'")


def _write_output(option: str, path: str, write) -> None:
    """Call ``write()`` (an atomic write of ``path``); an OS error becomes one line naming ``option``
    (:func:`ncgeo._io.os_errors_as_value_errors`)."""
    from ncgeo._io import os_errors_as_value_errors

    try:
        with os_errors_as_value_errors(path):
            write()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from exc


@main.command("solve")
@click.option("--classes", "classes", type=_IntRange(min=2, max=1_000_000), required=True, help="Number of classes K (>= 2).")
@click.option("--samples", type=_IntRange(min=1), default=10, show_default=True,
              help="Samples per (majority) class n.")
@click.option("--imbalance", type=click.Choice(["none", "step", "exp"]), default="none", show_default=True,
              help="step: first floor(K/2) classes n, rest floor(n/R); exp: n R^(-c/(K-1)).")
@click.option("--ratio", type=_FloatRange(min=1.0), default=10.0, show_default=True,
              help="Imbalance ratio R >= 1 (ignored with --imbalance none).")
@click.option("--protos", type=_FloatRange(min=0.0), default=0.0, show_default=True,
              help="n_w: copies of each class prototype in every batch (0 = plain SCL).")
@click.option("--geometry", default="etf", show_default=True, metavar="{etf,of,random,random+,spherical,PATH}",
              help="Prototypes: simplex ETF, orthogonal frame (standard basis), random unit vectors "
                   "(non-negative with --relu or random+), a seeded spherical code, or a .npy/.csv/.txt file "
                   "with a K x K Gram or D x K vectors.")
@click.option("--dim", type=_IntRange(min=1), default=None, help="Embedding dimension D [default: K].")
@click.option("--tau", type=_FloatRange(min=0.0, min_open=True), default=0.1, show_default=True,
              help="Temperature (> 0).")
@click.option("--relu/--no-relu", default=False, show_default=True, help="UFM+: non-negative features.")
@click.option("--batching", type=click.Choice(["full", "partition", "shuffle", "bind"]), default="full",
              show_default=True, help="Full batch, fixed random partition, reshuffled every epoch, or binding.")
@click.option("--batch-size", type=_IntRange(min=2), default=None,
              help="Batch size B >= 2 (required with --batching partition, shuffle or bind; refused with full). "
                   "B >= N gives one batch of all samples.")
@click.option("--proto-anchors/--no-proto-anchors", default=False, show_default=True,
              help="Prototype copies are anchors too.")
@click.option("--restarts", type=_IntRange(min=1, max=10_000), default=1, show_default=True,
              help="Starts (the lowest loss is kept); --init auto adds a collapsed start for a full batch.")
@click.option("--seed", type=_IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--init", type=click.Choice(["auto", "collapsed", "random"]), default="auto", show_default=True,
              help="collapsed: solve the K-direction reduced problem, polish from it; random: random unit "
                   "vectors; auto: for a full batch the collapsed start, then the --restarts random ones.")
@click.option("--max-iterations", type=_IntRange(min=0), default=None,
              help="Iteration cap [default: 20000; epochs for shuffle: 200].")
@click.option("--learning-rate", type=_FloatRange(min=0.0, min_open=True), default=0.1, show_default=True,
              help="Initial Adam step of --batching shuffle (cosine-decayed over the epochs).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the result (loss, sizes, iterations, grad_norm, seconds, geometry, settings) as JSON "
                   "('-': print only the JSON, to stdout).")
@click.option("--save", "save_path", type=click.Path(dir_okay=False), default=None,
              help="Write y, W, the settings and H to an .npz file (the name must end in .npz; collapsed path: "
                   "the class means M instead of H; `ncgeo certify` and load_npz expand them).")
@click.option("--save-embeddings", is_flag=True, default=False,
              help="With --save on the collapsed path: write H (N x d) too.")
@click.option("--method", type=click.Choice(["auto", "lbfgs", "collapsed"]), default="auto", show_default=True,
              help="lbfgs: L-BFGS over the N embeddings (a full batch beyond memory is streamed in row blocks); "
                   "collapsed: solve in the class space (full batch, any N; H is never formed); auto: lbfgs, "
                   "or collapsed for a full batch whose N x N work does not fit in memory.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a heatmap of the class-mean Gram beside the prototype Gram (.png, .pdf or .svg).")
@click.option("--certify", "certify_method", type=click.Choice(["auto", "reduced", "orbit", "full", "dual", "none"]),
              default="auto", show_default=True,
              help="Certify global optimality (auto: fastest applicable method, with fallbacks).")
@click.option("--rtol", type=_RTOL, default=1e-6, show_default=True, help=_RTOL_HELP)
@click.option("--atol", type=_ATOL, default=1e-12, show_default=True, help=_ATOL_HELP)
@click.option("--require-certificate", is_flag=True, default=False,
              help="Exit with status 1 when the solution is not certified.")
@click.pass_context
def solve(ctx, classes, samples, imbalance, ratio, protos, geometry, dim, tau, relu, batching, batch_size,
          proto_anchors, restarts, seed, device, dtype, init, max_iterations, learning_rate, json_path, save_path,
          save_embeddings, method, plot_path, certify_method, rtol, atol, require_certificate):
    """Solve the unconstrained-features model of SCL with prototypes and report its geometry.

    Minimises the sum over batches of the batch loss (docs/theory.md section 2) over unit
    embeddings (non-negative with --relu) to a gradient norm of 1e-9 (float64, full
    batch), then prints the loss, the closed-form value when one is known, and the
    geometry: NC1 and the Gram distances Delta to the prototypes, the ETF and the OF.

    \b
    Examples:
      ncgeo solve --classes 10 --protos 1000
      ncgeo solve --classes 4 --samples 10 --imbalance step --ratio 10 --tau 0.5
      ncgeo solve --classes 4 --samples 20 --imbalance step --relu --geometry of --protos 10
      ncgeo solve --classes 4 --samples 4 --relu --batching bind --batch-size 4 --json out.json
      ncgeo solve --classes 10 --protos 100 --geometry gram.npy --save sol.npz --plot gram.png
      ncgeo solve --classes 1000 --samples 1000 --protos 1000 --imbalance step --ratio 10
    """
    import json
    import re

    from ncgeo._io import atomic_write_bytes
    from ncgeo.classes import class_sizes
    from ncgeo.ufm import solve_ufm

    quiet = json_path == "-"
    for option, path in (("--json", json_path), ("--save", save_path), ("--plot", plot_path)):
        _check_output(option, path)
    if plot_path is not None:
        from ncgeo.plotting import figure_format

        try:
            figure_format(plot_path)
        except ValueError as exc:
            raise click.BadParameter(str(exc).replace("path ", "", 1), param_hint="'--plot'") from exc
    if save_path is not None and save_path != "-" and not save_path.lower().endswith(".npz"):
        raise click.BadParameter(f"must name an .npz file (a NumPy zip archive), got {save_path!r}",
                                 param_hint="'--save'")
    if batching != "full" and batch_size is None:
        raise click.BadParameter(f"is required with --batching {batching} (an integer >= 2)", param_hint="'--batch-size'")
    if batching == "full" and batch_size is not None:
        raise click.BadParameter("applies only to --batching partition, shuffle or bind (the full batch holds "
                                 "all N samples); add one of them or leave --batch-size out", param_hint="'--batch-size'")
    if proto_anchors and 0 < protos < 1:
        raise click.BadParameter(f"must be 0 or >= 1 with --proto-anchors, got {protos:g}", param_hint="'--protos'")
    try:
        sizes = class_sizes(classes, samples, imbalance, ratio)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}", param_hint="'--ratio' / '--samples'") from exc
    from ncgeo.problem import UFMProblem
    from ncgeo.ufm import make_batches

    if batching != "full" and sum(sizes) <= 1_000_000 and not quiet:  # larger N: the memory check below refuses B >= N
        from ncgeo.classes import labels_from_sizes

        if len(make_batches(labels_from_sizes(sizes), batching, batch_size, seed)) == 1:
            click.echo(f"note: --batch-size {batch_size} with N = {sum(sizes)} samples gives one batch of all "
                       "samples: the full-batch problem", err=True)
    from ncgeo.ufm.solver import check_memory

    if method == "collapsed" and batching != "full":
        raise click.BadParameter(f"collapsed needs --batching full (got {batching})", param_hint="'--method'")
    if method == "lbfgs" and batching == "shuffle":  # reshuffled batches are minimised by Adam epochs only
        raise click.BadParameter("lbfgs needs fixed batches; --batching shuffle runs Adam epochs (leave --method "
                                 "at auto)", param_hint="'--method'")
    # the class rows first: --classes 1e6 would otherwise allocate a dense k x k prototype matrix
    # before solve_ufm's own check (which also covers the N samples)
    check_memory(classes, classes if dim is None else dim, classes, dtype=dtype, device=device, nonnegative=relu)
    W, d, geometry_name = _solve_prototypes(geometry, classes, dim, relu, seed)
    # the full-batch problem (the problem itself unless batches are drawn below)
    full = UFMProblem.from_sizes(sizes, W, protos, tau, nonnegative=relu, prototypes_as_anchors=proto_anchors, dim=d)
    if certify_method != "none":  # before the solve: what the certificate needs of the set-up
        from ncgeo.certify.auto import check_method

        try:
            if batching != "full" and certify_method in ("reduced", "orbit"):
                raise ValueError(f"method {certify_method!r} needs the full batch; use 'auto', 'full' or 'dual' "
                                 "for other batchings")
            check_method(certify_method, full)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--certify'") from exc
    if batching in ("full", "shuffle"):
        problem = full
    else:
        from ncgeo.classes import labels_from_sizes

        labels = labels_from_sizes(sizes)
        problem = UFMProblem.from_labels(labels, W, protos, tau, nonnegative=relu, prototypes_as_anchors=proto_anchors,
                                         dim=d, batches=make_batches(labels, batching, batch_size, seed))
    options = dict(restarts=restarts, seed=seed, device=device, dtype=dtype, max_iterations=max_iterations,
                   init=init, learning_rate=learning_rate, progress=not quiet,
                   certify=certify_method == "auto", rtol=rtol, atol=atol)
    if batching == "shuffle":
        method, options["batch_size"] = "adam", batch_size
    try:
        result = solve_ufm(problem, method, options=options,
                           metadata={"geometry": geometry_name, "samples": samples, "imbalance": imbalance,
                                     "ratio": ratio, "scheme": batching})
    except (ValueError, TypeError) as exc:  # an option's error names the option, not options['...']
        named = re.match(r"options\['(\w+)'\] ", str(exc))
        if named is None:
            raise
        raise click.BadParameter(str(exc)[named.end():], param_hint=f"'--{named.group(1).replace('_', '-')}'") from exc
    summary = result.to_dict()
    certificate = result.certificate  # the collapsed path certifies its own candidate with --certify auto
    if certify_method == "dual" and result.class_means is not None:  # the dual bound from the class means alone
        from ncgeo.certify import collapsed_certificate

        certificate = collapsed_certificate(problem, result.class_means, rtol=rtol, atol=atol)
    elif certify_method != "none" and certificate is None:
        from ncgeo.certify import certify_result

        certificate = certify_result(result, method=certify_method, rtol=rtol, atol=atol)  # a named method: H expanded
    if certificate is not None:
        summary["certificate"] = _certificate_summary(certificate)
    text = json.dumps(summary, indent=2)
    if quiet:
        click.echo(text)
    else:
        click.echo(result.report())
        if certificate is not None:
            click.echo(certificate.verdict())
            click.echo(summary["certificate"]["geometry"]["line"])  # the geometry verdict (issue 13)
        elif certify_method != "none":
            click.echo(result.settings.get("certificate_note", "not certified"))
        if json_path is not None:
            _write_output("--json", json_path, lambda: atomic_write_bytes(json_path, (text + "\n").encode()))
            click.echo(f"wrote {json_path}")
    if save_path is not None:
        _write_output("--save", save_path, lambda: result.save_npz(save_path, embeddings=save_embeddings))
        click.echo(f"wrote {save_path}", err=quiet)
    if plot_path is not None:
        from ncgeo.plotting import plot_gram_comparison

        _write_output("--plot", plot_path, lambda: plot_gram_comparison(
            result.metrics.gram_means, result.W.T @ result.W, plot_path,
            title=f"k = {classes}, n_w = {protos:g}, tau = {tau:g}, prototypes {geometry_name}"))
        click.echo(f"wrote {plot_path}", err=quiet)
    if require_certificate and (certificate is None or not certificate.certified):
        ctx.exit(1)


def certificate_lines(certificate, verbose: bool = False) -> list[str]:
    """The lines `ncgeo certify` prints under the verdict: bounds, floor and excess, rank, and with
    ``verbose`` every attempt."""
    c = certificate
    lines = [f"lower bound {c.lower_bound:.12g}, upper bound {c.upper_bound:.12g}, gap {c.gap:.2e}",
             f"floor {c.floor:.12g}, excess {c.excess:.6g}, relative gap (to the excess) {c.relative_gap:.2e}, "
             f"accepted gap {c.tolerance:.2e}"]
    if c.rank is not None:
        lines.append(f"rank {c.rank} (d = {c.dim})" if c.rank <= (c.dim or c.rank) or not c.certified else
                     f"rank {c.rank} of the relaxation's optimum (d = {c.dim}; the bound is valid whatever it is)")
    if verbose:
        for a in c.attempts:
            bound = "none" if a["lower_bound"] is None or not math.isfinite(a["lower_bound"]) else \
                f"{a['lower_bound']:.12g}"
            lines.append(f"  tried {a['method']}: status {a['status']}, lower bound {bound}, "
                         f"{a['seconds']:.2f} s: {a['reason']}")
    return lines


def _certificate_summary(certificate) -> dict:
    """The ``certificate`` entry of ``--json``."""
    data = certificate.to_dict()
    keys = ("lower_bound", "upper_bound", "gap", "relative_gap", "floor", "excess", "tolerance", "certified",
            "method", "reason", "solver_status", "seconds", "rank", "dim", "attempts")
    from ncgeo.certify.face import geometry_summary

    return {**{key: data[key] for key in keys}, "geometry": geometry_summary(certificate)}


@main.command("certify")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(["auto", "reduced", "orbit", "full", "dual"]), default="auto",
              show_default=True, help="Certificate (auto: fastest applicable, with fallbacks).")
@click.option("--solver", type=click.Choice(["CLARABEL", "SCS"]), default="CLARABEL", show_default=True,
              help="Conic solver of the relaxations (the other one is the fallback).")
@click.option("--time-limit", type=_FloatRange(min=0.0, min_open=True), default=None,
              help="Seconds per conic-solver attempt.")
@click.option("--rtol", type=_RTOL, default=1e-6, show_default=True, help=_RTOL_HELP)
@click.option("--atol", type=_ATOL, default=1e-12, show_default=True, help=_ATOL_HELP)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the certificate as JSON ('-': print only the JSON).")
@click.option("--verbose", is_flag=True, default=False,
              help="Also print every method tried (method, status, lower bound, seconds, reason).")
@click.option("--require-certificate", is_flag=True, default=False,
              help="Exit with status 1 when not certified.")
@click.pass_context
def certify_command(ctx, path, method, solver, time_limit, rtol, atol, json_path, verbose, require_certificate):
    """Certify the global optimality of embeddings saved by `ncgeo solve --save`.

    PATH is an .npz with H (N, d), y (N,), W (d, k; (d, 0) without prototypes) and
    `settings` (a JSON string with at least n_w and tau; optional nonnegative,
    prototypes_as_anchors, batching) and, for mini-batches, batch_indices/batch_offsets.
    Prints one verdict line and the bounds. Certified means gap <= rtol * excess + atol * anchors,
    the excess being the loss above its floor F = sum over anchors of log P_a (docs/theory.md section 5.1).

    \b
    Examples:
      ncgeo solve --classes 4 --samples 10 --save sol.npz && ncgeo certify sol.npz
      ncgeo certify sol.npz --method full --json cert.json
    """
    import json

    from ncgeo._io import atomic_write_bytes
    from ncgeo.certify import certify_result
    from ncgeo.ufm import load_npz

    _check_output("--json", json_path)
    solution = load_npz(path)
    certificate = certify_result(solution, method=method, solver=solver, time_limit=time_limit, rtol=rtol,
                                 atol=atol)
    text = json.dumps(certificate.to_dict(), indent=2)
    if json_path == "-":
        click.echo(text)
    else:
        click.echo(certificate.verdict())
        for line in certificate_lines(certificate, verbose):
            click.echo(line)
        if json_path is not None:
            _write_output("--json", json_path, lambda: atomic_write_bytes(json_path, (text + "\n").encode()))
            click.echo(f"wrote {json_path}")
    if require_certificate and not certificate.certified:
        ctx.exit(1)


# ----------------------------------------------------------------------------- deep

from deep.config import train_options as _deep_train_options  # stdlib + click only: keeps --help fast


@main.group("deep", cls=_CleanErrors)
def deep() -> None:
    """Train networks with SCL + prototypes on real images and compare with the UFM prediction."""


@deep.command("train")
@_deep_train_options
@click.option("--nproc", type=_IntRange(min=1), default=None,
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
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Runs trained at once, one process and one torch thread each  [default: all CPU cores].")
def deep_sweep(out, preset, protos, ce_fixed, seeds, features, geometries, per_class, workers, **train) -> None:
    """Train one run per n_w (and ce-fixed), predict each with its certified UFM, write a table,
    a figure and a verdict; finished runs are not retrained.

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


# ----------------------------------------------------------------------------- sims

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
        click.Option(["--workers"], type=_IntRange(min=1), default=None,
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
                kind = (_IntRange if spec.kind == "int" else _FloatRange)(
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


class _SimsGroup(_CleanErrors):
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
@click.option("--quick", is_flag=True, help="Small sizes: all studies in under a minute on 2 cores.")
@click.option("--workers", type=_IntRange(min=1), default=None, help="Processes [default: all CPU cores].")
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


@main.group("sims", cls=_SimsGroup)
def sims() -> None:
    """Studies of the theory's claims: table (CSV), figure (PNG/PDF) and verdict (JSON) each.

    \b
    ncgeo sims NAME --out DIR [--quick] [--workers N] [study options]
    ncgeo sims all --out DIR --quick      every study, small sizes (under a minute on 2 cores)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
