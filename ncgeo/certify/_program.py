"""Shared machinery of the convex programs: log-sum-exp objectives over a symmetric
matrix variable, solving with fallback, failure capture."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections import defaultdict

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

from .._validation import check_choice, check_positive

SOLVERS = ("CLARABEL", "SCS")
#: Clarabel's first attempt: tolerances 10-100x below its defaults (the excess of a relaxation can be
#: 1e-5 of its scale); when that attempt does not reach "optimal" Clarabel is run with its defaults.
CLARABEL_TIGHT = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "tol_ktratio": 1e-8}
#: Exceptions of a conic solve reported as a failed attempt (numerical trouble, not a bug).
NUMERICAL_ERRORS = (ArithmeticError, np.linalg.LinAlgError)


class LogSumExpObjective:
    r"""Objective ``sum_r w_r LSE_r(X) - <L, X> - c`` over a symmetric ``n x n`` matrix ``X``,
    held on the excess over its floor (docs/theory.md section 5.1).

    Each row ``r`` is a log-sum-exp of entries ``coef * X[i, j] + offset`` (counts enter
    as additive log-weights in ``offset``); rows of equal width are stacked into one
    matrix and passed to a single ``cvxpy.log_sum_exp(..., axis=1)``. A row added with
    ``floor = log P_r`` (its anchor's positive count) has ``log P_r`` subtracted from its
    offsets, i.e. it is ``w_r log(D_r / P_r)``: the rows hold the **excess**
    ``f(X) - F`` with ``F = sum_r w_r log P_r`` (:attr:`floor`), which the conic solver sees
    without the constant (``N log n_w`` at large ``n_w``).

    :meth:`expression` is the excess divided by ``normaliser`` (the number of samples ``N``;
    conic solvers are sensitive to scale); :meth:`excess` is it undivided and :meth:`value`
    the objective ``F + excess``.
    """

    def __init__(self, n: int, normaliser: float):
        self.n = n
        self.normaliser = float(normaliser)
        self.samples = self.normaliser  # N: the fallback normaliser of :meth:`solve`
        self._rows: dict[int, list] = defaultdict(list)
        self._lin_i: list[np.ndarray] = []
        self._lin_j: list[np.ndarray] = []
        self._lin_c: list[np.ndarray] = []
        self.constant = 0.0
        self.floor = 0.0

    def add_rows(self, weights, i, j, coef, offset, floor=0.0) -> None:
        """Add rows: ``weights`` (R,), ``i, j, coef, offset`` of shape (R, width) and ``floor``
        (R,) (``log P`` of each row's anchor, subtracted from its offsets and added to
        :attr:`floor`)."""
        i, j = np.atleast_2d(i), np.atleast_2d(j)
        weights = np.asarray(weights, float).reshape(-1)
        coef = np.broadcast_to(coef, i.shape).astype(float)
        floor = np.broadcast_to(np.asarray(floor, float).reshape(-1, 1), (i.shape[0], 1))
        offset = np.broadcast_to(offset, i.shape).astype(float) - floor
        self.floor += float(weights @ floor[:, 0])
        self._rows[i.shape[1]].append((weights, i, j, coef, offset))

    def add_linear(self, i, j, coef) -> None:
        """Subtract ``sum coef * X[i, j]`` (the positive terms)."""
        i, j = np.asarray(i).ravel(), np.asarray(j).ravel()
        self._lin_i.append(i)
        self._lin_j.append(j)
        self._lin_c.append(np.broadcast_to(coef, i.shape).astype(float).ravel())

    def solve(self, X, constraints: list, solver: str, **options):
        """Minimise the excess over ``constraints`` (:func:`solve_problem` with ``options``);
        when the solve fails at the :meth:`scale_to` scale it is repeated divided by ``N`` with the
        chosen solver only.
        Returns ``(cvxpy problem, solver used, status, failure)``."""
        import cvxpy as cp

        reasons = []
        while True:
            problem = cp.Problem(cp.Minimize(self.expression(X)), constraints)
            used, status, failure = solve_problem(problem, solver, **options)
            if failure is None or self.normaliser == self.samples:
                if failure is not None and reasons:
                    failure = f"{reasons[0]}; divided by N: {failure}"
                return problem, used, status, failure
            reasons.append(failure)
            self.normaliser = self.samples
            options = {**options, "fallback": False}  # the retry: the chosen solver only

    def scale_to(self, reference: np.ndarray) -> None:
        """Divide by the excess at a feasible ``reference`` matrix instead of ``N``, within
        ``[1e-6 N, N]``: the conic solver then sees an objective of order one however small the
        excess is (at ``n_w = 1e6`` it is ``~1e-5`` per sample: divided by ``N`` the solver's
        absolute tolerances swallow it). Call before :meth:`expression`."""
        N = self.samples
        self.normaliser = float(min(N, max(self.excess(reference), 1e-6 * N)))

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
        """The cvxpy expression of the excess divided by :attr:`normaliser`, for a symmetric
        ``n x n`` cvxpy variable ``X``."""
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
        """The objective ``floor + excess(X)`` at a numeric matrix ``X`` (numpy, float64)."""
        return self.floor + self.excess(X)

    def excess(self, X: np.ndarray) -> float:
        """The (undivided) excess over the floor at a numeric matrix ``X`` (numpy, float64)."""
        total = 0.0
        for _, w, i, j, c, o in self._groups():
            total += float(w @ logsumexp(c * X[i, j] + o, axis=1))
        li, lj, lc = self._linear()
        total -= float(lc @ X[li, lj]) if len(lc) else 0.0
        return total - self.constant


#: Largest PSD cone for which Clarabel is tried with tight tolerances (cold, then warm) before SCS: the reduced
#: programs (2k x 2k, k <= 20). Larger cones (the full program) try SCS first, then Clarabel's defaults.
CLARABEL_TIGHT_MAX_PSD = 40

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


@contextlib.contextmanager
def native_output_silenced(enabled: bool = True):
    """Send the process's file descriptors 1 and 2 to ``/dev/null`` while a native solver runs.

    SCS's C library prints warnings such as ``WARNING - large complementary slackness residual``
    straight to the standard output, even with ``verbose=False``: that line would corrupt
    ``ncgeo certify --json -``. The solver's status already says what the warning means."""
    if not enabled:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no usable descriptors (e.g. a closed stdout): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def solve_problem(problem, solver: str, *, time_limit: float | None = None,
                  fallback: bool = True, verbose: bool = False,
                  psd_size: int = 0, tight: bool = True) -> tuple[str, str, str | None]:
    """Solve a cvxpy problem, falling back to the other conic solver on failure.

    Returns ``(solver_used, status, failure)``; ``failure`` is None on success, else a
    reason ("missing solver", "time limit", "infeasible", "inaccurate", ...). Solver failures
    (a status other than optimal, a missing solver, the time limit, ``cvxpy.error.SolverError``
    and the numerical errors :data:`NUMERICAL_ERRORS`) are results; bad arguments and
    programming errors (``TypeError``, ``IndexError``, ...) raise.
    Clarabel is skipped (with that reason) for a PSD cone larger than ``CLARABEL_MAX_PSD``; above
    ``CLARABEL_TIGHT_MAX_PSD`` it runs at its default tolerances only, after SCS when ``fallback``.
    ``tight=False`` skips the tight Clarabel attempts (a program known to end "optimal_inaccurate" there).
    """
    import cvxpy as cp

    check_solver_args(solver, time_limit)
    order = [solver] + ([s for s in SOLVERS if s != solver] if fallback else [])
    if psd_size > CLARABEL_TIGHT_MAX_PSD:
        # a large cone (the full N x N program): Clarabel at its default tolerances only, and after SCS
        # when both may run (measured 2026-12-06, full SDP k = 5, N = 100: the tight Clarabel attempts end
        # "optimal_inaccurate" after minutes, 366 s in all; SCS certifies in 8 s)
        order = ["SCS", "CLARABEL-default"] if fallback else [solver if solver == "SCS" else "CLARABEL-default"]
    elif not tight:
        order = ["CLARABEL-default" if name == "CLARABEL" else name for name in order]
    elif "CLARABEL" in order:
        # tight tolerances (cold, then warm), the other solver, and Clarabel's default tolerances last:
        # a default-tolerance "optimal" point can be too coarse for the rigorous bound (measured: gap
        # 6e-6 of the excess where SCS's point certifies), but it is what solves the UFM+ program of
        # signed (ETF) prototypes, where every tight attempt ends "optimal_inaccurate"
        order.insert(order.index("CLARABEL") + 1, "CLARABEL-again")
        order.append("CLARABEL-default")
    reasons = []
    for attempt in order:
        name = attempt.split("-")[0]
        if attempt in ("CLARABEL-again", "CLARABEL-default") and any(r.startswith("CLARABEL: skipped") for r in reasons):
            continue
        if name == "CLARABEL" and psd_size > CLARABEL_MAX_PSD:
            gigabytes = (psd_size * (psd_size + 1) / 2) ** 2 * 8 / 1e9
            reasons.append(f"CLARABEL: skipped, a {psd_size} x {psd_size} PSD cone needs a dense "
                           f"{gigabytes:.1f} GB block in its KKT system")
            continue
        options: dict = dict(CLARABEL_TIGHT) if name == "CLARABEL" else {}
        if time_limit is not None:
            options.update({"time_limit": float(time_limit)} if name == "CLARABEL" else
                           {"time_limit_secs": float(time_limit)} if name == "SCS" else {})
        if attempt == "CLARABEL-default":
            options = {key: value for key, value in options.items() if key not in CLARABEL_TIGHT}
        if name == "SCS":
            options.update(eps_abs=1e-9, eps_rel=1e-9, max_iters=200000)
        start = time.perf_counter()
        try:
            if name not in cp.installed_solvers():
                reasons.append(f"{attempt}: missing solver")
                continue
            with warnings.catch_warnings(), native_output_silenced(not verbose):
                warnings.simplefilter("ignore", UserWarning)  # cvxpy's "may be inaccurate": the status says it
                # "CLARABEL-again" re-solves on cvxpy's cached Clarabel solver (measured: it often ends
                # "optimal" where the first attempt was "optimal_inaccurate"); every other attempt is cold,
                # since a warm start merges the new options into the cached solver's settings (a
                # "CLARABEL-default" attempt then kept the tight tolerances and failed like the first)
                problem.solve(solver=name, verbose=verbose, warm_start=attempt == "CLARABEL-again", **options)
            status = str(problem.status)
        except cp.error.SolverError as exc:
            elapsed = time.perf_counter() - start
            text = str(exc).lower()
            kind = ("time limit" if (time_limit is not None and elapsed >= 0.9 * time_limit)
                    or "time" in text else "solver error")
            reasons.append(f"{attempt}: {kind}")
            continue
        except NUMERICAL_ERRORS as exc:  # a numerical failure inside the solve is a result;
            # anything else (TypeError, IndexError, ...) is a programming error and raises
            reasons.append(f"{attempt}: numerical error ({type(exc).__name__}: {exc})")
            continue
        if status == cp.OPTIMAL:
            return name, status, None
        if status == cp.USER_LIMIT or (time_limit is not None
                                       and time.perf_counter() - start >= 0.9 * time_limit):
            reasons.append(f"{attempt}: time limit ({status})")
        else:
            reasons.append(f"{attempt}: {status}")
    status = reasons[-1].split(": ", 1)[-1] if reasons else "not solved"
    return order[-1].split("-")[0], status, "; ".join(reasons) or "not solved"


def matrix_rank(X: np.ndarray, rtol: float = 1e-5) -> int:
    """Numerical rank: eigenvalues above ``rtol * max(1, largest)``."""
    eig = np.linalg.eigvalsh((X + X.T) / 2)
    return int(np.sum(eig > rtol * max(1.0, float(eig.max(initial=0.0)))))


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
