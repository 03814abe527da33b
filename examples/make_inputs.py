"""Write the small input files that the README's commands and the examples use.

    python examples/make_inputs.py [--out examples]

* ``gram.npy``: a 10 x 10 hierarchical prototype Gram, superclasses of two consecutive
  classes: ``G = (G_ETF + B) / 2`` with ``B`` the superclass indicator
  (:func:`sims.common.hierarchical_gram`). Unit diagonal, PSD, rank 10: use it with
  ``--classes 10``.
* ``gram4.npy``: the same construction for 4 classes (within-superclass cosine 1/3,
  between -1/6), for the quick size of ``ncgeo sims geometry`` (k = 4).
* ``target_gram.csv``: a centred hierarchical target Gram for k = 5
  (:func:`sims.inverse.hierarchical_target`, strength 0.1), for ``ncgeo sims inverse --k 5``.
* ``vectors.csv``: 5 prototypes in R^3 as the columns of a 3 x 5 matrix (a triangular
  bipyramid: the two poles and three equatorial vectors 120 degrees apart), for
  ``--geometry examples/vectors.csv`` with ``--classes 5``: more classes than d + 1, where
  no simplex ETF exists.

Everything is deterministic (no random numbers), so rerunning the script rewrites the same
files; ``tests/test_examples.py`` checks that the committed files are what it writes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ncgeo._io import atomic_write_bytes
from sims.common import hierarchical_gram
from sims.inverse import hierarchical_target

HERE = Path(__file__).resolve().parent


def bipyramid() -> np.ndarray:
    """The 3 x 5 matrix of unit prototypes: poles +-e_3 and three equatorial unit vectors."""
    angles = 2 * np.pi * np.arange(3) / 3
    equator = np.stack([np.cos(angles), np.sin(angles), np.zeros(3)])
    poles = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    return np.concatenate([poles, equator], axis=1)


def _csv(matrix: np.ndarray) -> bytes:
    rows = [",".join(repr(float(x)) for x in row) for row in matrix]
    return ("\n".join(rows) + "\n").encode()


def _npy(matrix: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(matrix, dtype=np.float64), allow_pickle=False)
    return buffer.getvalue()


def inputs() -> dict[str, bytes]:
    """File name -> content of every example input."""
    return {
        "gram.npy": _npy(hierarchical_gram(10)),
        "gram4.npy": _npy(hierarchical_gram(4)),
        "target_gram.csv": _csv(hierarchical_target(5, 0.1)),
        "vectors.csv": _csv(bipyramid()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.fspath(HERE), help="folder for the files (default: examples/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in inputs().items():
        atomic_write_bytes(out / name, content)
        print(out / name)


if __name__ == "__main__":
    main()
