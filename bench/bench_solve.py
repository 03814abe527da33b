r"""End-to-end and large-N timings of the UFM solver.

(b) ``cli``: wall time of ``ncgeo solve --classes 10 --protos 1000`` as a fresh process
    (imports included), median of ``--repeats`` runs, against the reference
    ``python -c "import torch"`` (the interpreter and torch import alone) in the same
    session. Target: <= 3 s on 2 CPU cores.
(c) ``large``: full-batch solve at ``N = 10,000`` (``k = 100``, 100 per class, ETF
    prototypes, ``n_w`` = ``--protos``, tau 0.1, float64) with the default start (the
    reduced ``k``-direction problem, then the full-batch polish to gradient norm 1e-9),
    against the reference cost of ONE full-batch loss + gradient evaluation
    (:func:`ncgeo.ufm.ufm_objective` + autograd) at the same size. Target: <= 60 s on CPU.

Usage::

    python bench/bench_solve.py                 # both
    python bench/bench_solve.py cli --repeats 5
    python bench/bench_solve.py large --protos 1000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def _wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_cli(repeats: int) -> dict:
    ncgeo = shutil.which("ncgeo") or str(__import__("pathlib").Path(sys.executable).with_name("ncgeo"))
    command = [ncgeo, "solve", "--classes", "10", "--protos", "1000"]
    solve = _wall(command, repeats)
    reference = _wall([sys.executable, "-c", "import torch"], repeats)
    print(f"(b) {' '.join(['ncgeo'] + command[1:])}: median {solve:.2f} s over {repeats} runs (target <= 3 s); "
          f"reference 'python -c \"import torch\"' {reference:.2f} s; ratio {solve / reference:.2f}")
    return dict(seconds=solve, reference_seconds=reference)


def bench_large(n_w: float, per_class: int, classes: int) -> dict:
    import torch

    from ncgeo import UFMProblem
    from ncgeo.classes import labels_from_sizes
    from ncgeo.geometry import simplex_etf
    from ncgeo.ufm import make_batches, solve_ufm, ufm_objective

    sizes = [per_class] * classes
    W = simplex_etf(classes, classes)
    labels = labels_from_sizes(sizes)
    H = torch.nn.functional.normalize(torch.randn(len(labels), classes, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(0)), dim=1)
    start = time.perf_counter()
    H.requires_grad_(True)
    value = ufm_objective(H, labels, torch.tensor(W), n_w, 0.1, make_batches(labels, "full"), validate=False)
    torch.autograd.grad(value, H)
    evaluation = time.perf_counter() - start
    start = time.perf_counter()
    # the N x N path itself ("auto" would take the collapsed path when the dense one does not fit)
    result = solve_ufm(UFMProblem.from_sizes(sizes, W, n_w, 0.1), "lbfgs", options=dict(progress=True))
    seconds = time.perf_counter() - start
    closed = result.closed_form()
    print(f"(c) full batch N = {len(labels)}, k = {classes}, n_w = {n_w:g}, tau = 0.1, float64, "
          f"{torch.get_num_threads()} threads: solve {seconds:.1f} s (target <= 60 s), "
          f"{result.iterations} full-batch iterations, grad norm {result.grad_norm:.1e}, "
          f"loss {result.loss:.10f}" + ("" if closed is None else f" (closed form {closed[0]:.10f})"))
    print(f"    reference: one loss + gradient evaluation {evaluation:.1f} s; solve / evaluation = "
          f"{seconds / evaluation:.1f}")
    return dict(seconds=seconds, evaluation_seconds=evaluation, grad_norm=result.grad_norm)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="?", choices=["cli", "large", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--protos", type=float, default=0.0, help="n_w of the large solve (default 0)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args(argv)
    if args.which in ("cli", "all"):
        bench_cli(args.repeats)
    if args.which in ("large", "all"):
        bench_large(args.protos, args.per_class, args.classes)


if __name__ == "__main__":
    main()
