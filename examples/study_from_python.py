"""Run a study of ``sims`` from Python and read its result.

    python examples/study_from_python.py [--out results] [--quick]

``sims.registry.run_study`` runs one study (here ``limit``: does SCL with n_w prototypes
converge to cross-entropy with the fixed classifier, at rate 1/n_w? docs/theory.md
section 4), writes ``OUT/limit.csv``, ``.png``, ``.pdf`` and ``.json``, and returns a frozen
``StudyResult``. A finished point is cached in ``OUT/limit.points/``: a second call redraws
the figure without recomputing.
"""

from __future__ import annotations

import argparse

from sims.registry import run_study, verdict_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run the limit study from Python")
    parser.add_argument("--out", default="results", help="folder for the study's files (default: results)")
    parser.add_argument("--quick", action="store_true", help="the study's quick sizes (seconds)")
    args = parser.parse_args(argv)

    result = run_study("limit", args.out, quick=args.quick, workers=1, progress=False)
    print(verdict_table([result]))
    print(f"k = {result.settings['k']}, tau = {result.settings['tau']}, {len(result.rows)} rows; "
          f"fitted loss-gap slope {result.summary['loss_gap_slope']:.3f} (theory -1)")
    print(f"{'n_w':>9} {'loss gap':>10} {'geometry gap':>13}  certified")
    for row in result.rows:
        if row["variant"] == "samples":  # the other variant uses the prototypes as anchors too
            print(f"{row['n_w']:9.3g} {row['loss_gap']:10.2e} {row['geometry_gap']:13.2e}  {row['certified']}")
    print("files:", ", ".join(str(f) for f in result.files))


if __name__ == "__main__":
    main()
