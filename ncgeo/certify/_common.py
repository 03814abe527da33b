"""Input checks and small helpers shared by the certificates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import as_float_array
from ..problem import check_problem


@dataclass(frozen=True)
class ClassProgram:
    """What the class-level (reduced and orbit) relaxations need of a full-batch problem."""

    weights: np.ndarray        # (k,) class sizes, all > 0 (real weights allowed)
    n_w: float
    tau: float
    W: np.ndarray | None       # (d, k) prototypes when n_w > 0, else None
    G_W: np.ndarray | None     # W^T W when n_w > 0
    dim: int
    proto_nonneg: bool         # UFM+ with entrywise non-negative prototypes: sample-prototype entries >= 0
    anchors: bool              # prototypes as anchors (with n_w > 0)
    nonnegative: bool

    @property
    def k(self) -> int:
        return len(self.weights)


def class_program(problem, method: str) -> ClassProgram:
    """The inputs of the reduced / orbit relaxation of ``problem`` (a :class:`ncgeo.UFMProblem`):
    ``ValueError`` naming ``problem`` unless it is full batch with samples in every class."""
    problem = check_problem(problem)
    if not problem.full_batch:
        raise ValueError(f"problem must be full batch for method {method!r} (use 'full' or 'dual' for batches)")
    weights = np.asarray(problem.class_sizes, dtype=float)
    if np.any(weights <= 0):
        raise ValueError(f"problem must have samples in every class for method {method!r}, got class sizes "
                         f"{weights.tolist()}")
    use_p = problem.n_w > 0
    W = np.asarray(problem.prototypes, dtype=float) if use_p else None
    return ClassProgram(weights, problem.n_w, problem.tau, W, None if W is None else problem.prototype_gram, problem.dim,
                        bool(problem.nonnegative and W is not None and np.all(W >= 0)),
                        bool(problem.prototypes_as_anchors and use_p), problem.nonnegative)


#: Why a UFM+ relaxation with prototypes that have negative entries (e.g. a simplex ETF) is not tight
#: (docs/theory.md section 5): ``h >= 0`` is a constraint in the prototypes' coordinates, which the Gram of
#: ``[H, W]`` does not see (only ``h.h' >= 0`` is imposed).
SIGNED_UFM_PLUS_NOTE = ("the prototypes have negative entries: the Gram relaxation imposes h.h' >= 0 but not h >= 0 "
                        "in their coordinates, so it is not tight for UFM+ and no certificate is expected "
                        "(docs/theory.md section 5)")


def signed_ufm_plus(problem) -> bool:
    """UFM+ with prototypes (``n_w > 0``) that have negative entries: a :class:`ncgeo.UFMProblem` or a
    :class:`ClassProgram`."""
    if isinstance(problem, ClassProgram):
        return bool(problem.nonnegative and problem.W is not None and not problem.proto_nonneg)
    return bool(problem.nonnegative and problem.n_w > 0 and np.any(np.asarray(problem.prototypes) < 0))


def batch_list(problem) -> list[np.ndarray]:
    """The batches of ``problem`` as index arrays (one full batch when ``problem.batches`` is None)."""
    if problem.batches is None:
        return [np.arange(int(problem.num_samples))]
    return [np.asarray(b) for b in problem.batches]


def problem_candidate(problem, H):
    """A validated candidate of ``problem``: ``(H, labels)``.

    ``H`` must be ``(N, d)`` with ``N`` the problem's samples and ``d`` its dimension; it is
    brought onto the feasible set by :func:`feasible_candidate` (the certificates then compute its
    loss themselves, in float64: an upper bound is never taken from the caller).
    """
    problem = check_problem(problem)
    labels = problem.sample_labels()
    H = as_float_array("H", H, ndim=2)
    if H.shape != (len(labels), problem.dim):
        raise ValueError(f"H must have shape ({len(labels)}, {problem.dim}) (samples x dim of the problem), "
                         f"got {H.shape}")
    H, _ = feasible_candidate(H, problem.nonnegative)
    return H, np.asarray(labels, dtype=np.int64)


def candidate_loss(H, y, W, n_w: float, tau: float, batches=None,
                   prototypes_as_anchors: bool = False) -> float:
    """:func:`ncgeo.ufm.ufm_objective` of a candidate (default: one full batch), as a float.

    The inputs are those :func:`problem_candidate` and the problem have validated;
    they are not checked again."""
    from ..ufm import ufm_objective

    H = torch.as_tensor(np.asarray(H, dtype=np.float64))
    y = torch.as_tensor(np.array(y, dtype=np.int64))  # a writable copy (labels may be read-only)
    if batches is None:
        batches = [np.arange(H.shape[0])]
    return float(ufm_objective(H, y, W, n_w, tau, batches, prototypes_as_anchors, validate=False))


#: Largest deviation of a candidate row from the unit sphere (or below 0 for UFM+) that
#: :func:`feasible_candidate` accepts and projects away (float32 solutions are ~1e-7 off).
CANDIDATE_TOL = 1e-5


def feasible_candidate(H: np.ndarray, nonnegative: bool) -> tuple[np.ndarray, bool]:
    """Project a candidate onto the feasible set: unit rows (and ``H >= 0`` for UFM+).

    A certificate's upper bound must be the loss of a *feasible* point (a row of norm 2
    can have a lower loss than the UFM optimum). Rows off the sphere by more than
    ``CANDIDATE_TOL`` (or entries below ``-CANDIDATE_TOL`` for UFM+) raise ``ValueError``
    naming ``H``; smaller deviations (float32 round-off) are projected away. Returns
    ``(projected H, whether any entry moved by more than 1e-12)``.
    """
    norms = np.linalg.norm(H, axis=1)
    worst = int(np.argmax(np.abs(norms - 1.0))) if len(norms) else 0
    if len(norms) and abs(norms[worst] - 1.0) > CANDIDATE_TOL:
        raise ValueError(f"H must have unit rows (the UFM constraint ||h_i|| = 1); row {worst} has norm "
                         f"{norms[worst]:.6g}")
    projected = H
    if nonnegative:
        if H.size and H.min() < -CANDIDATE_TOL:
            raise ValueError(f"H must be entrywise non-negative for UFM+ (nonnegative=True), smallest entry "
                             f"{H.min():.3g}")
        projected = np.clip(projected, 0.0, None)
    projected = projected / np.linalg.norm(projected, axis=1, keepdims=True)
    return projected, bool(H.size and np.abs(projected - H).max() > 1e-12)


def realise_nonnegative(G: np.ndarray, N: int, W: np.ndarray | None, d: int,
                        iterations: int = 2000) -> np.ndarray:
    """A UFM+ point ``H`` (N, d) (non-negative unit rows) whose Gram with the prototypes
    ``W`` (d, k) fits a relaxation optimum ``G``: ``H H^T ~ G[:N, :N]`` and ``H W ~ G[:N, N:]``.

    A doubly non-negative ``G`` of rank ``<= d`` need not factor as ``H H^T`` with ``H >= 0``
    in ``d`` dimensions (complete positivity), so a UFM+ relaxation's value is an upper bound
    only once such an ``H`` is found. The squared Frobenius misfit is minimised from the
    top-``d`` eigenfactor of the sample block (folded to ``|.|``) or, with prototypes, the
    least-squares solution of ``H W = G[:N, N:]``, over
    non-negative unit rows by the project's Riemannian L-BFGS
    (:func:`ncgeo.ufm.optimiser.riemannian_lbfgs`, at most ``iterations`` steps). The result is
    always feasible; its loss is the upper bound (a poor fit only widens the gap).
    """
    Gss = (G[:N, :N] + G[:N, :N].T) / 2
    Gsp = None if W is None else G[:N, N:N + W.shape[1]]
    eigenvalues, vectors = np.linalg.eigh(Gss)
    top = np.argsort(eigenvalues)[::-1][:d]
    start = np.zeros((N, d))
    start[:, :len(top)] = np.abs(vectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0, None)))
    if W is not None:
        start = start + np.linalg.lstsq(W.T, Gsp.T, rcond=None)[0].T

    def project(H):
        H = np.clip(H, 0.0, None)
        norms = np.linalg.norm(H, axis=1)
        dead = norms == 0
        H[dead, 0], norms[dead] = 1.0, 1.0
        return H / norms[:, None]

    G_t = torch.as_tensor(Gss)
    P_t = None if W is None else torch.as_tensor(np.asarray(Gsp, dtype=np.float64))
    W_t = None if W is None else torch.tensor(np.asarray(W, dtype=np.float64))

    def misfit(H: torch.Tensor):
        H = H.detach().requires_grad_(True)
        value = ((H @ H.T - G_t) ** 2).sum()
        if W_t is not None:
            value = value + 2 * ((H @ W_t - P_t) ** 2).sum()
        (grad,) = torch.autograd.grad(value, H)
        return value.detach(), grad

    from ..ufm.optimiser import riemannian_lbfgs

    out = riemannian_lbfgs(misfit, torch.as_tensor(project(start)), nonnegative=True, grad_tol=1e-12,
                           max_iterations=iterations)
    return project(out.x.numpy().copy())


def tolerance_of(problem, rtol: float, atol: float) -> dict:
    """The verdict's inputs of :func:`~ncgeo.certify.result.make_result` for ``problem``:
    ``{"floor": F, "anchors": A, "rtol": rtol, "atol": atol}`` (``rtol``, ``atol`` checked)."""
    from .result import check_atol, check_rtol

    problem = check_problem(problem)
    return {"floor": problem.floor(), "anchors": problem.num_anchors(), "rtol": check_rtol(rtol),
            "atol": check_atol(atol)}
