"""Each fallback attempt of ``solve_problem`` runs with its own settings: the "CLARABEL-default"
retry must not inherit the first attempt's options through cvxpy's cached (warm-started) solver."""

from __future__ import annotations

import cvxpy as cp
import numpy as np

import ncgeo.certify._program as program


def test_the_clarabel_default_retry_does_not_inherit_the_first_attempts_settings(monkeypatch):
    # a first attempt limited to one iteration cannot finish; the retry drops that option
    monkeypatch.setattr(program, "CLARABEL_TIGHT", {"max_iter": 1})
    X = cp.Variable((3, 3), symmetric=True)
    C = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    problem = cp.Problem(cp.Minimize(cp.trace(C @ X)), [X >> 0, cp.trace(X) == 1])
    used, status, failure = program.solve_problem(problem, "CLARABEL", fallback=False)
    assert (used, status, failure) == ("CLARABEL", "optimal", None)
    assert abs(problem.value - np.linalg.eigvalsh(C)[0]) < 1e-7  # lambda_min(C) = 2 - sqrt(2)


def test_the_reduced_ufm_plus_program_with_etf_prototypes_is_solved(monkeypatch):
    from ncgeo import UFMProblem
    from ncgeo.certify import solve_reduced
    from ncgeo.geometry import simplex_etf

    problem = UFMProblem.from_sizes([100] * 5 + [10] * 5, simplex_etf(10, 10), 10, 0.2, nonnegative=True)
    attempts = []
    original = program.solve_problem
    monkeypatch.setattr(program, "solve_problem", lambda *a, **k: attempts.append(k) or original(*a, **k))
    result = solve_reduced(problem)
    assert result.solver_status == "optimal" and "R" in result.solution
    # not certified: h >= 0 in the prototypes' coordinates is not seen by the Gram relaxation
    assert not result.certified and "prototypes have negative entries" in result.reason
    # its tight Clarabel attempts are skipped (they end "optimal_inaccurate" after ~30 s)
    assert attempts and all(k.get("tight") is False for k in attempts)
