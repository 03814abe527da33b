"""The scripts and input files in examples/ run as the README says (pymanopt runs its examples
as tests too): each script in a fresh process from the repository root, at its quick size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncgeo.geometry import load_prototypes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
INPUTS = ("gram.npy", "gram4.npy", "target_gram.csv", "vectors.csv")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root with the repository first on the path."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"python {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_committed_inputs_are_what_make_inputs_writes(tmp_path):
    run("examples/make_inputs.py", "--out", str(tmp_path))
    for name in INPUTS:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(INPUTS)


def test_inputs_are_what_their_names_say():
    etf = lambda k: k / (k - 1) * (np.eye(k) - 1.0 / k)  # noqa: E731  (simplex-ETF Gram)
    for name, k in (("gram.npy", 10), ("gram4.npy", 4)):
        G = np.load(EXAMPLES / name)
        block = np.kron(np.eye(k // 2), np.ones((2, 2)))  # superclasses of two classes
        np.testing.assert_allclose(G, (etf(k) + block) / 2, atol=1e-15)
        W = load_prototypes(EXAMPLES / name)
        np.testing.assert_allclose(W.T @ W, G, atol=1e-10)
    G4 = np.load(EXAMPLES / "gram4.npy")
    assert np.isclose(G4[0, 1], 1 / 3) and np.isclose(G4[0, 2], -1 / 6)
    target = np.loadtxt(EXAMPLES / "target_gram.csv", delimiter=",")
    assert target.shape == (5, 5)
    np.testing.assert_allclose(np.diag(target), 1.0, atol=1e-12)
    np.testing.assert_allclose(target, target.T, atol=1e-12)
    eig = np.linalg.eigvalsh((target + target.T) / 2)
    assert -1e-12 < eig[0] < 1e-12 < eig[1]  # PSD of rank k - 1 (built from centred vectors)
    assert target[0, 1] > target[0, 2]  # a superclass pair is closer than two others
    W = load_prototypes(EXAMPLES / "vectors.csv")
    assert W.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1.0, atol=1e-15)
    G = W.T @ W
    np.testing.assert_allclose(G[0, 1], -1.0, atol=1e-15)  # the two poles
    np.testing.assert_allclose(G[2:, 2:][~np.eye(3, dtype=bool)], -0.5, atol=1e-15)  # 120 degrees
    np.testing.assert_allclose(G[:2, 2:], 0.0, atol=1e-15)  # poles orthogonal to the equator


def test_solve_and_certify_example():
    out = run("examples/solve_and_certify.py", "--quick").stdout
    assert "sizes [10, 10, 1, 1]" in out and "closed form" in out and "CE limit" in out
    assert out.count("certified global optimum") == 3 and "not certified" not in out  # solve, realised, CE limit


@pytest.mark.slow
def test_study_from_python_example(tmp_path):
    out = run("examples/study_from_python.py", "--out", str(tmp_path / "results"), "--quick").stdout
    assert out.startswith("study") and "limit" in out
    assert (tmp_path / "results" / "limit.json").is_file()


def test_geometry_check_example_passes_under_pytest():
    out = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_geometry_example.py").stdout
    assert "4 passed" in out
