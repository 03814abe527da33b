"""The ``ncgeo`` command: thin click front end over ncgeo, sims and deep.

It parses options, calls the packages and prints their results; it computes nothing
itself. Bad input ends with one line naming the argument and exit status 2.
"""

from __future__ import annotations

import math
import sys

import click

from ncgeo._click import CleanErrors, FloatRange, IntRange


@click.group(cls=CleanErrors, context_settings={"help_option_names": ["-h", "--help"]})
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
_RTOL = FloatRange(min=0.0, max=1.0, min_open=True, max_open=True)
_ATOL = FloatRange(min=0.0, max=1.0)  # per anchor; finite (inf would certify anything)
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
@click.option("--classes", "classes", type=IntRange(min=2, max=1_000_000), required=True, help="Number of classes K (>= 2).")
@click.option("--samples", type=IntRange(min=1), default=10, show_default=True,
              help="Samples per (majority) class n.")
@click.option("--imbalance", type=click.Choice(["none", "step", "exp"]), default="none", show_default=True,
              help="step: first floor(K/2) classes n, rest floor(n/R); exp: n R^(-c/(K-1)).")
@click.option("--ratio", type=FloatRange(min=1.0), default=10.0, show_default=True,
              help="Imbalance ratio R >= 1 (ignored with --imbalance none).")
@click.option("--protos", type=FloatRange(min=0.0), default=0.0, show_default=True,
              help="n_w: copies of each class prototype in every batch (0 = plain SCL).")
@click.option("--geometry", default="etf", show_default=True, metavar="{etf,of,random,random+,spherical,PATH}",
              help="Prototypes: simplex ETF, orthogonal frame (standard basis), random unit vectors "
                   "(non-negative with --relu or random+), a seeded spherical code, or a .npy/.csv/.txt file "
                   "with a K x K Gram or D x K vectors.")
@click.option("--dim", type=IntRange(min=1), default=None, help="Embedding dimension D [default: K].")
@click.option("--tau", type=FloatRange(min=0.0, min_open=True), default=0.1, show_default=True,
              help="Temperature (> 0).")
@click.option("--relu/--no-relu", default=False, show_default=True, help="UFM+: non-negative features.")
@click.option("--batching", type=click.Choice(["full", "partition", "shuffle", "bind"]), default="full",
              show_default=True, help="Full batch, fixed random partition, reshuffled every epoch, or binding.")
@click.option("--batch-size", type=IntRange(min=2), default=None,
              help="Batch size B >= 2 (required with --batching partition, shuffle or bind; refused with full). "
                   "B >= N gives one batch of all samples.")
@click.option("--proto-anchors/--no-proto-anchors", default=False, show_default=True,
              help="Prototype copies are anchors too.")
@click.option("--restarts", type=IntRange(min=1, max=10_000), default=1, show_default=True,
              help="Starts (the lowest loss is kept); --init auto adds a collapsed start for a full batch.")
@click.option("--seed", type=IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--init", type=click.Choice(["auto", "collapsed", "random"]), default="auto", show_default=True,
              help="collapsed: solve the K-direction reduced problem, polish from it; random: random unit "
                   "vectors; auto: for a full batch the collapsed start, then the --restarts random ones.")
@click.option("--max-iterations", type=IntRange(min=0), default=None,
              help="Iteration cap [default: 20000; epochs for shuffle: 200].")
@click.option("--learning-rate", type=FloatRange(min=0.0, min_open=True), default=0.1, show_default=True,
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
      ncgeo solve --classes 10 --protos 100 --geometry examples/gram.npy --save sol.npz --plot gram.png
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
    if batching != "shuffle" and ctx.get_parameter_source("learning_rate") is click.core.ParameterSource.COMMANDLINE:
        raise click.BadParameter("applies only to --batching shuffle (Adam); the other batchings use L-BFGS, "
                                 "which has no learning rate", param_hint="'--learning-rate'")
    if proto_anchors and 0 < protos < 1:
        raise click.BadParameter(f"must be 0 or >= 1 with --proto-anchors, got {protos:g}", param_hint="'--protos'")
    try:
        sizes = class_sizes(classes, samples, imbalance, ratio)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}", param_hint="'--ratio' / '--samples'") from exc
    from ncgeo.ufm import scheme_problem
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
    problem = scheme_problem(sizes, W, protos, tau, scheme=batching, batch_size=batch_size, seed=seed,
                             nonnegative=relu, prototypes_as_anchors=proto_anchors, dim=d)
    if certify_method != "none":  # before the solve: what the certificate needs of the set-up
        from ncgeo.certify.auto import check_method

        try:
            if batching == "shuffle" and certify_method != "auto":
                raise ValueError(f"method {certify_method!r} does not apply to --batching shuffle: reshuffled "
                                 "batches have no fixed objective to certify (leave --certify at auto or none)")
            check_method(certify_method, problem)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--certify'") from exc
    one_batch = sum(sizes) <= batch_size if batching == "shuffle" else (batching != "full" and problem.full_batch)
    if one_batch and not quiet:
        click.echo(f"note: --batch-size {batch_size} with N = {sum(sizes)} samples gives one batch of all "
                   "samples: the full-batch problem", err=True)
    options = dict(restarts=restarts, seed=seed, device=device, dtype=dtype, max_iterations=max_iterations,
                   init=init, progress=not quiet)
    if batching == "shuffle":
        method, options["batch_size"], options["learning_rate"] = "adam", batch_size, learning_rate
    if method in ("auto", "collapsed"):  # the collapsed path certifies its own candidate
        options.update(certify=certify_method == "auto", rtol=rtol, atol=atol)
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
    if certify_method != "none" and certificate is None:
        from ncgeo.certify import certify_result

        certificate = certify_result(result, method=certify_method, rtol=rtol, atol=atol)
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
    """The certificate in ``--json``: every key of ``to_dict()`` and the geometry verdict."""
    from ncgeo.certify.face import geometry_summary

    return {**certificate.to_dict(), "geometry": geometry_summary(certificate)}


@main.command("certify")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(["auto", "reduced", "orbit", "full", "dual"]), default="auto",
              show_default=True, help="Certificate (auto: fastest applicable, with fallbacks).")
@click.option("--solver", type=click.Choice(["CLARABEL", "SCS"]), default="CLARABEL", show_default=True,
              help="Conic solver of the relaxations (the other one is the fallback).")
@click.option("--time-limit", type=FloatRange(min=0.0, min_open=True), default=None,
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
      ncgeo certify sol.npz --method reduced --json cert.json
      ncgeo certify sol.npz --method full   # the N x N program: 85 s for this N = 40 set-up
    """
    import json

    from ncgeo._io import atomic_write_bytes
    from ncgeo.certify import certify_result
    from ncgeo.ufm import load_npz

    _check_output("--json", json_path)
    solution = load_npz(path)
    certificate = certify_result(solution, method=method, solver=solver, time_limit=time_limit, rtol=rtol,
                                 atol=atol)
    text = json.dumps(_certificate_summary(certificate), indent=2)
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


# ----------------------------------------------------------------------------- deep and sims

from deep.cli import deep  # noqa: E402  (click groups of their packages; heavy imports stay inside commands)
from sims.cli import sims  # noqa: E402

main.add_command(deep)
main.add_command(sims)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
