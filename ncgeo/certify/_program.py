"""Shared machinery of the convex programs: log-sum-exp objectives over a symmetric
matrix variable, solving with fallback, failure capture."""

from __future__ import annotations

import time
import warnings
from collections import defaultdict

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

from .._validation import check_choice, check_positive

SOLVERS = ("CLARABEL", "SCS")


class LogSumExpObjective:
    r"""Objective ``sum_r w_r LSE_r(X) - <L, X> - c`` over a symmetric ``n x n`` matrix ``X``.

    :meth:`expression` divides it by ``normaliser`` (the number of samples ``N``) for the
    conic solver (they are sensitive to scale); :meth:`value` returns it undivided.

    Each row ``r`` is a log-sum-exp of entries ``coef * X[i, j] + offset`` (counts enter
    as additive log-weights in ``offset``); rows of equal width are stacked into one
    matrix and passed to a single ``cvxpy.log_sum_exp(..., axis=1)``.
    """

    def __init__(self, n: int, normaliser: float):
        self.n = n
        self.normaliser = float(normaliser)
        self._rows: dict[int, list] = defaultdict(list)
        self._lin_i: list[np.ndarray] = []
        self._lin_j: list[np.ndarray] = []
        self._lin_c: list[np.ndarray] = []
        self.constant = 0.0

    def add_rows(self, weights, i, j, coef, offset) -> None:
        """Add rows: ``weights`` (R,), and ``i, j, coef, offset`` of shape (R, width)."""
        i, j = np.atleast_2d(i), np.atleast_2d(j)
        coef = np.broadcast_to(coef, i.shape).astype(float)
        offset = np.broadcast_to(offset, i.shape).astype(float)
        self._rows[i.shape[1]].append((np.asarray(weights, float).reshape(-1), i, j, coef, offset))

    def add_linear(self, i, j, coef) -> None:
        """Subtract ``sum coef * X[i, j]`` (the positive terms)."""
        i, j = np.asarray(i).ravel(), np.asarray(j).ravel()
        self._lin_i.append(i)
        self._lin_j.append(j)
        self._lin_c.append(np.broadcast_to(coef, i.shape).astype(float).ravel())

    def _groups(self):
        for width, parts in self._rows.items():
            w = np.concatenate([p[0] for p in parts])
            i = np.concatenate([p[1] for p in parts])
            j = np.concatenate([p[2] for p in parts])
            c = np.concatenate([p[3] for p in parts])
            o = np.concatenate([p[4] for p in parts])
            yield width, w, i, j, c, o

    def _linear(self):
        if not self._lin_i:
            return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
        return np.concatenate(self._lin_i), np.concatenate(self._lin_j), np.concatenate(self._lin_c)

    def expression(self, X):
        """The cvxpy expression for a symmetric ``n x n`` cvxpy variable ``X``."""
        import cvxpy as cp

        n = self.n
        v = cp.vec(X, order="F")
        total = 0
        for width, w, i, j, c, o in self._groups():
            rows = len(w)
            # column-major layout of the (rows, width) logits: the reshape is free (an
            # order="C" reshape makes cvxpy build a dense permutation of size (rows*width)^2)
            A = sp.csr_matrix((c.T.ravel(), (np.arange(rows * width), (j * n + i).T.ravel())),
                              shape=(rows * width, n * n))
            logits = cp.reshape(A @ v + o.T.ravel(), (rows, width), order="F")
            total = total + w @ cp.log_sum_exp(logits, axis=1)
        li, lj, lc = self._linear()
        if len(lc):
            L = np.zeros(n * n)
            np.add.at(L, lj * n + li, lc)
            total = total - L @ v
        return (total - self.constant) / self.normaliser

    def value(self, X: np.ndarray) -> float:
        """The (undivided) objective at a numeric matrix ``X`` (numpy, float64)."""
        total = 0.0
        for _, w, i, j, c, o in self._groups():
            total += float(w @ logsumexp(c * X[i, j] + o, axis=1))
        li, lj, lc = self._linear()
        total -= float(lc @ X[li, lj]) if len(lc) else 0.0
        return total - self.constant


#: Largest PSD cone handed to Clarabel: its KKT system holds a dense block of
#: ``(n (n + 1) / 2)^2`` entries (n = 200: 3.2 GB before factorisation).
CLARABEL_MAX_PSD = 150


def block_and_sign_constraints(X, m: int, kp: int, G_W, proto_nonneg: bool, nonnegative: bool) -> list:
    """Constraints shared by the Gram relaxations on a cvxpy matrix ``X`` whose first ``m``
    rows are samples (full) or classes (reduced) and whose last ``kp`` rows are prototypes:
    the fixed prototype block ``G_W``, ``X >= 0`` on the sample-prototype block when the
    prototypes are non-negative and, for UFM+ (``nonnegative``), on the sample block."""
    constraints = []
    if kp:
        constraints.append(X[m:, m:] == G_W)
        if proto_nonneg:
            constraints.append(X[:m, m:] >= 0)
    if nonnegative:
        constraints.append(X[:m, :m] >= 0)
    return constraints


def check_solver_args(solver, time_limit) -> None:
    """``solver`` one of :data:`SOLVERS`; ``time_limit`` None or a finite number of seconds > 0."""
    check_choice("solver", solver, SOLVERS)
    if time_limit is not None:
        check_positive("time_limit", time_limit)


def solve_problem(problem, solver: str, *, time_limit: float | None = None,
                  fallback: bool = True, verbose: bool = False,
                  psd_size: int = 0) -> tuple[str, str, str | None]:
    """Solve a cvxpy problem, falling back to the other conic solver on failure.

    Returns ``(solver_used, status, failure)``; ``failure`` is None on success, else a
    reason ("missing solver", "time limit", "infeasible", "inaccurate", ...). Solver failures are
    results; only bad arguments (``solver``, ``time_limit``) raise.
    Clarabel is skipped (with that reason) for a PSD cone larger than ``CLARABEL_MAX_PSD``.
    """
    import cvxpy as cp

    check_solver_args(solver, time_limit)
    order = [solver] + ([s for s in SOLVERS if s != solver] if fallback else [])
    reasons = []
    for name in order:
        if name == "CLARABEL" and psd_size > CLARABEL_MAX_PSD:
            gigabytes = (psd_size * (psd_size + 1) / 2) ** 2 * 8 / 1e9
            reasons.append(f"CLARABEL: skipped, a {psd_size} x {psd_size} PSD cone needs a dense "
                           f"{gigabytes:.1f} GB block in its KKT system")
            continue
        options: dict = {}
        if time_limit is not None:
            options = {"time_limit": float(time_limit)} if name == "CLARABEL" else \
                      {"time_limit_secs": float(time_limit)} if name == "SCS" else {}
        if name == "SCS":
            options.update(eps_abs=1e-9, eps_rel=1e-9, max_iters=200000)
        start = time.perf_counter()
        try:
            if name not in cp.installed_solvers():
                reasons.append(f"{name}: missing solver")
                continue
            with warnings.catch_warnings():  # cvxpy's "may be inaccurate": the status says it
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=name, verbose=verbose, **options)
            status = str(problem.status)
        except cp.error.SolverError as exc:
            elapsed = time.perf_counter() - start
            text = str(exc).lower()
            kind = ("time limit" if (time_limit is not None and elapsed >= 0.9 * time_limit)
                    or "time" in text else "solver error")
            reasons.append(f"{name}: {kind}")
            continue
        except Exception as exc:  # any other solver crash is reported, never raised
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if status == cp.OPTIMAL:
            return name, status, None
        if status == cp.USER_LIMIT or (time_limit is not None
                                       and time.perf_counter() - start >= 0.9 * time_limit):
            reasons.append(f"{name}: time limit ({status})")
        else:
            reasons.append(f"{name}: {status}")
    status = reasons[-1].split(": ", 1)[-1] if reasons else "not solved"
    return order[-1], status, "; ".join(reasons) or "not solved"


def matrix_rank(X: np.ndarray, rtol: float = 1e-5) -> int:
    """Numerical rank: eigenvalues above ``rtol * max(1, largest)``."""
    eig = np.linalg.eigvalsh((X + X.T) / 2)
    return int(np.sum(eig > rtol * max(1.0, float(eig.max(initial=0.0)))))


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
