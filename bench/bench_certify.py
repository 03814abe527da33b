r"""Timings of the certificates (docs/theory.md section 5).

(a) ``reduced``: the ``2k x 2k`` reduced SDP and the orbit-reduced program at
    ``k = 10, 100, 1000, 5000`` (step imbalance 100 vs 10 per class, ETF prototypes,
    ``n_w = 1000``, tau 0.1, d = k); the reduced program at ``k = 10`` (Clarabel), at
    ``k = 100`` only with ``--all`` (SCS: Clarabel's KKT system of a 200 x 200 PSD cone
    needs more than 3 GB), never at ``k = 1000``. Ratio: reduced / orbit time.
    Target: k = 100 certified in <= 5 s.
(b) ``dual``: the dual certificate of a solver-quality candidate at ``N = 10,000``
    (``k = 10``, 1000 per class, ETF prototypes, ``n_w = 1000``): the realised reduced
    optimum (:func:`ncgeo.certify.realise_and_certify`), then
    :func:`ncgeo.certify.dual_certificate` on the ``N x d`` embeddings. Also a dense,
    non-collapsed candidate (``N = 2000`` rows, no two equal). Target <= 10 s.
(c) ``full``: the full Gram SDP at ``N = 50`` and ``N = 100`` (``k = 5``, ETF prototypes,
    n_w = 10, tau 0.5) against the reduced SDP of the same problem (ratio);
    ``--quick`` skips ``N = 100`` (about 30 s).
(d) ``cli``: wall time of ``ncgeo solve --classes 10 --protos 1000`` (with its default
    certificate) as a fresh process, against ``--certify none``. Target <= 3 s.

Usage::

    python bench/bench_certify.py              # all parts
    python bench/bench_certify.py reduced dual --quick
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np

from ncgeo import UFMProblem
from ncgeo.certify import dual_certificate, realise_and_certify, solve_full, solve_orbit, solve_reduced
from ncgeo.classes import class_sizes, labels_from_sizes
from ncgeo.geometry import simplex_etf


def _line(name: str, seconds: float, result=None, extra: str = "") -> None:
    verdict = "" if result is None else f"  certified={result.certified}  rel.gap={result.relative_gap:.1e}"
    print(f"{name:<44s} {seconds:8.3f} s{verdict}{extra}", flush=True)


def bench_reduced(args) -> None:
    print("(a) reduced vs orbit-reduced SDP (step imbalance 100/10, ETF prototypes, n_w = 1000, tau = 0.1)")
    solve_orbit(UFMProblem.from_sizes([2, 2, 1], tau=0.5, dim=3))  # warm-up: imports and cvxpy's first compilation
    for k in (10, 100, 1000, 5000):
        sizes = class_sizes(k, 100, "step", 10)
        start = time.perf_counter()
        W = simplex_etf(k, k)
        middle = time.perf_counter()
        problem = UFMProblem.from_sizes(sizes, W, 1000.0, 0.1)
        if k >= 1000:  # the set-up's O(k^3) steps (eigh in simplex_etf, W^T W once), apart from the certificate
            print(f"{'set-up k = ' + str(k) + ': simplex_etf / UFMProblem':<44s} {middle - start:8.3f} s / "
                  f"{time.perf_counter() - middle:.3f} s")
        start = time.perf_counter()
        orbit = solve_orbit(problem)
        t_orbit = time.perf_counter() - start
        _line(f"orbit    k = {k}", t_orbit, orbit)
        if k <= 10 or (k <= 100 and args.all):
            start = time.perf_counter()
            solver = "CLARABEL" if k <= 10 else "SCS"  # Clarabel's KKT system at k = 100 needs > 3 GB
            reduced = solve_reduced(problem, solver=solver, time_limit=300)
            t_reduced = time.perf_counter() - start
            _line(f"reduced  k = {k}", t_reduced, reduced,
                  f"  ratio reduced/orbit {t_reduced / t_orbit:.1f}  |value diff| "
                  f"{abs(reduced.lower_bound - orbit.lower_bound) / abs(orbit.lower_bound):.1e}")
        else:
            print(f"reduced  k = {k}: skipped (a {2 * k} x {2 * k} SDP: too large for Clarabel's dense KKT "
                  f"block; --all tries k = 100 with SCS, 300 s limit)")


def bench_dual(args) -> None:
    print("(b) dual certificate")
    sizes = [1000] * 10
    W = simplex_etf(10, 10)
    start = time.perf_counter()
    problem = UFMProblem.from_sizes(sizes, W, 1000.0, 0.1)
    H, y, realised = realise_and_certify(problem)
    _line("realise_and_certify N = 10,000 (reduced+dual)", time.perf_counter() - start, realised)
    start = time.perf_counter()
    cert = dual_certificate(problem, H)
    _line("dual_certificate N = 10,000 (collapsed)", time.perf_counter() - start, cert)
    rng = np.random.default_rng(0)
    small = labels_from_sizes([200] * 10)
    Hs = W[:, small].T + 1e-3 * rng.standard_normal((len(small), 10))
    Hs /= np.linalg.norm(Hs, axis=1, keepdims=True)
    start = time.perf_counter()
    dense = dual_certificate(UFMProblem.from_sizes([200] * 10, W, 1000.0, 0.1), Hs, snap_tol=0)
    _line("dual_certificate N = 2,000 (dense, perturbed 1e-3)", time.perf_counter() - start, dense,
          f"  lambda_min {dense.solution['lambda_min']:.1e}")


def bench_full(args) -> None:
    print("(c) full Gram SDP vs reduced (k = 5, ETF prototypes, n_w = 10, tau = 0.5)")
    for N in (50,) if args.quick else (50, 100):
        sizes = [N // 5] * 5
        start = time.perf_counter()
        full = solve_full(UFMProblem.from_sizes(sizes, simplex_etf(5, 5), 10.0, 0.5))
        t_full = time.perf_counter() - start
        start = time.perf_counter()
        reduced = solve_reduced(UFMProblem.from_sizes(sizes, simplex_etf(5, 5), 10.0, 0.5))
        t_reduced = time.perf_counter() - start
        _line(f"full SDP N = {N}", t_full, full,
              f"  ratio full/reduced {t_full / t_reduced:.0f}  |value diff| "
              f"{abs(full.lower_bound - reduced.lower_bound) / abs(reduced.lower_bound):.1e}")
    if args.quick:
        print("full SDP N = 100: skipped (--quick)")


def bench_cli(args) -> None:
    print("(d) ncgeo solve --classes 10 --protos 1000 (fresh process, median of 3)")
    for extra in ([], ["--certify", "none"]):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cli", "solve", "--classes", "10", "--protos", "1000", *extra],
                           check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        _line("solve " + (" ".join(extra) or "(default certificate)"), statistics.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = {"reduced": bench_reduced, "dual": bench_dual, "full": bench_full, "cli": bench_cli}
    # no `choices` here: argparse checks an empty list against them and refuses it
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(parts)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="skip the N = 100 full SDP")
    parser.add_argument("--all", action="store_true", help="also try the reduced SDP at k = 100 with SCS")
    args = parser.parse_args()
    unknown = sorted(set(args.parts) - set(parts))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(parts)}")
    for part in args.parts or list(parts):
        parts[part](args)


if __name__ == "__main__":
    main()
