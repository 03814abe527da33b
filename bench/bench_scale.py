r"""``ncgeo solve`` at scale: wall time and peak memory per N (issue 16).

Every point is ONE fresh process, ``python cli.py solve ... --json FILE`` (Python start-up and
imports included), timed from its parent, itself a fresh process per point, whose
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is then that solve's peak resident memory (what
``/usr/bin/time -v`` reports). The
grid: step imbalance R = 10 with ``k`` in {100, 1000}, ETF and OF prototypes, ``n_w`` in
{0, 1000}, ``N`` from 10^3 to 10^6, solved on the collapsed path (``--method collapsed``, what
``--method auto`` takes once the ``N x N`` work does not fit); beside every point with
``N <= --dense-max`` the
same solve on the ``N x N`` path (``--method lbfgs``), its time and the relative difference of
the two losses on the excess ``U - F``. The two targets of the issue (run with ``targets``):

* ``--classes 1000 --samples 1000 --imbalance step --ratio 10 --protos 1000`` (N = 550,000);
* ``--classes 100 --samples 10000 --protos 100`` (balanced, N = 10^6);

each to be certified in <= 60 s wall and <= 4 GB peak, with the loss equal to the closed
form / orbit value to 1e-6 (relative, on the excess).

Usage::

    python bench/bench_scale.py targets
    python bench/bench_scale.py grid --figure scale.png [--quick] [--json scale.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "k1000-step": ["--classes", "1000", "--samples", "1000", "--imbalance", "step", "--ratio", "10",
                   "--protos", "1000"],
    "k100-balanced": ["--classes", "100", "--samples", "10000", "--protos", "100"],
}


def run_solve(args: list[str], timeout: float) -> dict:
    """One fresh ``ncgeo solve`` process: wall seconds, peak RSS (GB), exit status, its JSON."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.json")
        command = [sys.executable, str(ROOT / "cli.py"), "solve", *args, "--json", out]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            _, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return {"args": args, "status": "timeout", "seconds": timeout}
        seconds = time.perf_counter() - start
        usage = _child_usage(child)
        record = {"args": args, "status": child.returncode, "seconds": seconds, "peak_gb": usage,
                  "stderr_tail": err.decode(errors="replace")[-300:] if child.returncode else ""}
        if child.returncode == 0 and os.path.exists(out):
            with open(out, encoding="utf-8") as handle:
                summary = json.load(handle)
            certificate = summary.get("certificate") or {}
            closed = summary.get("closed_form") or {}
            record.update(loss=summary["loss"], num_samples=summary["num_samples"],
                          method=summary["settings"].get("method"), certified=certificate.get("certified"),
                          certificate_method=certificate.get("method"), lower_bound=certificate.get("lower_bound"),
                          floor=certificate.get("floor"), closed_form=closed.get("value"))
        return record


def _child_usage(child) -> float | None:
    """Peak RSS (GB) of the reaped child: ``RUSAGE_CHILDREN`` grows to the largest child so far,
    so the measurement is exact when each point runs in a fresh parent (``point`` below)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9


def run_point(args: list[str], timeout: float) -> dict:
    """:func:`run_solve` inside a fresh parent process, so that ``RUSAGE_CHILDREN`` is this point's."""
    code = ("import json, sys; sys.path.insert(0, %r); from bench.bench_scale import run_solve; "
            "print(json.dumps(run_solve(json.loads(sys.argv[1]), float(sys.argv[2]))))" % str(ROOT))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args), str(timeout)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout + 60)
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_value(args: list[str]) -> dict:
    """The loss the solve must reach, computed apart (not timed): the closed form when one is known
    (balanced ETF / OF), else the orbit relaxation's collapsed point (:func:`ncgeo.certify.solve_orbit`'s
    upper bound), with the problem's floor ``F`` (the difference is judged on the excess ``U - F``)."""
    sys.path.insert(0, str(ROOT))
    from ncgeo import UFMProblem
    from ncgeo.certify import solve_orbit
    from ncgeo.classes import class_sizes
    from ncgeo.closed_form import closed_form_for_problem
    from ncgeo.geometry import simplex_etf

    value = dict(zip(args[::2], args[1::2]))
    k, n = int(value["--classes"]), int(value["--samples"])
    sizes = class_sizes(k, n, value.get("--imbalance", "none"), float(value.get("--ratio", 10)))
    W, n_w = simplex_etf(k, k), float(value["--protos"])
    problem = UFMProblem.from_sizes(sizes, W, n_w, 0.1)
    closed = closed_form_for_problem(problem)
    if closed is not None:
        return {"reference": closed[0], "reference_kind": f"closed form ({closed[1]})", "floor": problem.floor()}
    return {"reference": solve_orbit(problem).upper_bound, "reference_kind": "orbit program", "floor": problem.floor()}


def _excess_difference(a: dict, b: dict) -> float | None:
    """``|U_a - U_b| / (U_b - F)``, with the floor ``F`` of ``a``'s certificate
    (:meth:`ncgeo.UFMProblem.floor`); ``None`` when a loss or that floor is missing."""
    if "loss" not in a or "loss" not in b or a.get("floor") is None:
        return None
    return abs(a["loss"] - b["loss"]) / max(b["loss"] - a["floor"], 1e-300)


def grid(quick: bool, dense_max: int, timeout: float) -> list[dict]:
    ks = [100] if quick else [100, 1000]
    rows = []
    for k in ks:
        for geometry in ("etf", "of"):
            for n_w in (0, 1000):
                for N in ([10**3, 10**4, 10**5] if quick else [10**3, 10**4, 10**5, 10**6]):
                    n = max(10, round(N / (k // 2 * 1.1)))  # step R = 10: N = k/2 (n + n/10); n >= R (k = 1000: N >= 5,500)
                    args = ["--classes", str(k), "--samples", str(n), "--imbalance", "step", "--ratio", "10",
                            "--protos", str(n_w), "--geometry", geometry]
                    point = dict(k=k, n=n, ratio=10.0, n_w=n_w, geometry=geometry)
                    row = {**point, **run_point(args + ["--method", "collapsed"], timeout)}
                    if row.get("num_samples", N) <= dense_max:
                        dense = {**point, **run_point(args + ["--method", "lbfgs"], timeout)}
                        row["dense_seconds"] = dense.get("seconds")
                        row["dense_peak_gb"] = dense.get("peak_gb")
                        row["excess_difference"] = _excess_difference(row, dense)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def figure(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series: dict = {}
    for row in rows:
        if "num_samples" in row:
            series.setdefault((row["k"], row["geometry"], row["n_w"]), []).append(row)
    for (k, geometry, n_w), points in sorted(series.items()):
        points.sort(key=lambda r: r["num_samples"])
        N = [r["num_samples"] for r in points]
        label = f"k={k}, {geometry}, n_w={n_w}"
        axes[0].loglog(N, [r["seconds"] for r in points], "o-", label=label)
        axes[1].loglog(N, [r["peak_gb"] for r in points], "o-", label=label)
        dense = [r for r in points if r.get("dense_seconds")]
        if dense:
            axes[0].loglog([r["num_samples"] for r in dense], [r["dense_seconds"] for r in dense], "x--",
                           color=axes[0].lines[-1].get_color())
    axes[0].set(xlabel="N", ylabel="wall seconds (x: N x N path)", title="ncgeo solve, fresh process")
    axes[1].set(xlabel="N", ylabel="peak RSS (GB)", title="peak memory")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["targets", "grid"])
    parser.add_argument("--quick", action="store_true", help="k = 100 and N <= 10^5 only")
    parser.add_argument("--dense-max", type=int, default=11000, help="largest N also solved on the N x N path")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point")
    parser.add_argument("--figure", default=None, help="log-log figure path (grid)")
    parser.add_argument("--json", default=None, help="write the rows as JSON")
    options = parser.parse_args()
    if options.what == "targets":
        rows = []
        for name, args in TARGETS.items():
            row = {"target": name, **run_point(args, options.timeout)}
            row.update(reference_value(args))
            if "loss" in row:
                row["loss_vs_reference"] = abs(row["loss"] - row["reference"]) / (row["reference"] - row["floor"])
            ok = (row.get("certified") and row["seconds"] <= 60 and row["peak_gb"] <= 4
                  and row.get("loss_vs_reference", math.inf) <= 1e-6)
            print(json.dumps({**row, "meets_target": bool(ok)}), flush=True)
            rows.append(row)
    else:
        rows = grid(options.quick, options.dense_max, options.timeout)
        if options.figure:
            figure(rows, options.figure)
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
