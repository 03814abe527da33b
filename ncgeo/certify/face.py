r"""Certify the geometry, not only the loss (docs/theory.md section 5.1, issue 13 item 5).

From the dual matrix ``S`` of a rigorous Lagrangian bound ``L`` (:mod:`ncgeo.certify.lagrangian`),
every feasible ``Z`` satisfies

.. math::

    f(Z) - L \;\ge\; \langle S, Z\rangle - T\min(0, \lambda_{\min}(S))
            \;\ge\; \lambda_+(S)\, \mathrm{tr}(P Z P),

``P`` the projector onto the eigenvectors of ``S`` with eigenvalue ``>= lambda_+`` (the smallest
eigenvalue above the null threshold), in the coordinates ``diag(I_m, Q)`` where ``S`` lives.
So the **margin** ``lambda_+`` bounds how far any point within the gap ``U - L`` of the bound
(the candidate among them) leaves the optimal face: ``tr(P Z P) <= (U - L) / lambda_+``.

Inside the face ``{Z = V Delta V^T}`` (``V`` a basis of the numerical null space of ``S``), the
optimal Gram is unique when

* the face is a single point: the linear map ``Delta -> (diag entries fixed by the constraints
  or by non-zero diagonal multipliers, prototype block)`` is injective on symmetric
  ``r x r`` ``Delta`` (face dimension 0); or
* the loss is strictly convex along the face: its Hessian at ``Z0`` restricted to the face's
  directions is positive definite (two optima would make ``f`` constant on the segment joining
  them, so its second derivative along it would vanish at the optimum).

The verdict is ``"geometry certified (unique optimal Gram)"`` or plainly
``"loss certified, geometry not pinned"``. Numerical decisions (stated in the output): the null
threshold ``null_tol * ||S||_2`` and the curvature threshold ``curvature_tol`` relative to the
largest curvature; the margin and the leave bound themselves are rigorous given the bound.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["geometry_certificate", "geometry_verdict", "geometry_summary", "PINNED", "NOT_PINNED"]

PINNED = "geometry certified (unique optimal Gram)"
NOT_PINNED = "loss certified, geometry not pinned"
#: Largest face dimension / matrix order for which the curvature along the face is computed.
CURVATURE_MAX_DIRECTIONS = 300
CURVATURE_MAX_ORDER = 600


def _free_map(P: np.ndarray, Qn: np.ndarray) -> np.ndarray:
    """The diagonal rows ``v_u^T Delta v_u`` on the symmetric ``Delta`` with ``V_P Delta V_P^T = 0``, in the
    coordinates ``(X, C)`` of ``Delta = Rb X Nb^T + Nb X^T Rb^T + Nb C Nb^T`` (``C`` symmetric, its upper
    triangle; ``Rb``, ``Nb`` orthonormal bases of the row space and null space of ``V_P``), given
    ``P = V_rows Rb`` and ``Qn = V_rows Nb``."""
    iu, ju = np.triu_indices(Qn.shape[1])
    X_part = 2 * (P[:, :, None] * Qn[:, None, :]).reshape(P.shape[0], -1)
    C_part = Qn[:, iu] * Qn[:, ju] * np.where(iu == ju, 1.0, 2.0)
    return np.concatenate([X_part, C_part], axis=1)


def _free_delta(coefficients: np.ndarray, Rb: np.ndarray, Nb: np.ndarray) -> np.ndarray:
    """The ``Delta`` of coordinates ``coefficients`` (:func:`_free_map`)."""
    rho, nu = Rb.shape[1], Nb.shape[1]
    X = coefficients[:rho * nu].reshape(rho, nu)
    C = np.zeros((nu, nu))
    iu, ju = np.triu_indices(nu)
    C[iu, ju] = coefficients[rho * nu:]
    C = C + C.T - np.diag(np.diag(C))
    RX = Rb @ X @ Nb.T
    return RX + RX.T + Nb @ C @ Nb.T


def geometry_certificate(bound, Z0: np.ndarray, gap: float, *,
                         null_tol: float = 1e-6, multiplier_tol: float = 1e-9,
                         curvature_tol: float = 1e-9) -> dict:
    """The geometry certificate of the module docstring from a :class:`LagrangianBound`.

    Parameters
    ----------
    bound : ncgeo.certify.lagrangian.LagrangianBound
        Its ``objective`` (``Z -> excess``, torch) gives the curvature along the face; without it only
        a zero-dimensional face pins the geometry.
    Z0 : (n, n) array
        The point the bound was computed at (the optimum's Gram, grouped or not).
    gap : float
        ``U - L``: how far above the bound the points of interest lie (the candidate's gap).
    null_tol, multiplier_tol, curvature_tol : float
        Relative thresholds: null eigenvalues of ``S``, non-zero diagonal multipliers, and the
        smallest curvature along the face relative to the largest.

    Returns
    -------
    dict
        ``margin`` (``lambda_+``), ``leave_bound`` (``gap / margin``: largest ``tr(P Z P)`` of a point
        within the gap), ``face_rank`` (``r``), ``face_dimension`` (dimension of the face's
        affine hull, an upper bound on the optimal set's), ``curvature`` (smallest
        curvature of the loss along the face, None when not computed), ``pinned`` (bool),
        ``verdict`` (str), ``reason`` (str).
    """
    S = (bound.S + bound.S.T) / 2
    eig, vec = np.linalg.eigh(S)
    size = max(float(np.abs(eig).max(initial=0.0)), 1e-300)
    threshold = null_tol * size
    out = {"margin": None, "leave_bound": None, "face_rank": None, "face_dimension": None, "curvature": None,
           "pinned": False, "verdict": NOT_PINNED, "null_threshold": threshold}
    if not math.isfinite(bound.lambda_min) or bound.lambda_min < -threshold:
        out["reason"] = f"the dual matrix is not positive semidefinite (lambda_min {bound.lambda_min:.2e})"
        return out
    null = eig <= threshold
    margin = float(eig[~null].min()) if np.any(~null) else math.inf
    out["margin"] = margin
    out["leave_bound"] = max(gap, 0.0) / margin if margin > 0 else math.inf
    V = vec[:, null]
    r = V.shape[1]
    out["face_rank"] = r
    m = len(bound.y)
    y_scale = max(float(np.abs(bound.y).max(initial=0.0)), size, 1e-300)
    # the diagonal rows fixed on the face: an equality, or a non-zero multiplier (complementary slackness)
    lo_hi_equal = np.isclose(np.asarray(bound.lo), np.asarray(bound.hi))
    rows = np.flatnonzero(lo_hi_equal | (np.abs(bound.y) > multiplier_tol * y_scale))
    if r == 0:
        out.update(face_dimension=0, pinned=True, verdict=PINNED, reason="the dual matrix is positive definite")
        return out
    # the prototype block first: V_P Delta V_P^T = 0 (V_P = V[m:], of rank rho) leaves exactly the symmetric
    # Delta = Rb X Nb^T + Nb X^T Rb^T + Nb C Nb^T (Rb, Nb: bases of the row space and null space of V_P),
    # so only the diagonal rows act on (X, C): a small map where the prototypes pin most of the face
    _, sv_p, Vt = np.linalg.svd(V[m:], full_matrices=True) if V.shape[0] > m else (None, np.zeros(0), np.eye(r))
    rho = int(np.sum(sv_p > 1e-9 * max(1.0, float(sv_p.max(initial=0.0)))))
    Rb, Nb = Vt[:rho].T, Vt[rho:].T
    A = _free_map(V[rows] @ Rb, V[rows] @ Nb)
    sv = np.linalg.svd(A, compute_uv=False) if A.size else np.zeros(0)
    rank = int(np.sum(sv > 1e-9 * max(1.0, float(sv.max(initial=0.0)))))
    dimension = A.shape[1] - rank
    out["face_dimension"] = dimension
    if dimension == 0:
        out.update(pinned=True, verdict=PINNED, reason="the optimal face is a single point")
        return out
    objective = bound.objective  # Z (torch) -> excess, for the curvature test
    if objective is None or dimension > CURVATURE_MAX_DIRECTIONS or Z0.shape[0] > CURVATURE_MAX_ORDER:
        out["reason"] = (f"the optimal face has dimension {dimension}; the curvature along it was not computed")
        return out
    kernel = np.linalg.svd(A if A.size else np.zeros((1, A.shape[1])), full_matrices=True)[2][rank:]
    directions = []
    for coefficients in kernel:
        Delta = _free_delta(coefficients, Rb, Nb)
        D = bound.basis @ (V @ Delta @ V.T) @ bound.basis.T
        directions.append(D / max(np.linalg.norm(D), 1e-300))
    Dt = torch.as_tensor(np.array(directions))
    Z0t = torch.as_tensor(np.asarray(Z0, dtype=np.float64))

    def along(t):
        return objective(Z0t + torch.einsum("p,pij->ij", t, Dt))

    hessian = torch.autograd.functional.hessian(along, torch.zeros(len(directions), dtype=torch.float64)).numpy()
    curvatures = np.linalg.eigvalsh((hessian + hessian.T) / 2)
    smallest = float(curvatures.min())
    out["curvature"] = smallest
    if smallest > curvature_tol * max(float(np.abs(curvatures).max()), 1e-300):
        out.update(pinned=True, verdict=PINNED,
                   reason=f"the loss is strictly convex along the optimal face (dimension {dimension}, "
                          f"smallest curvature {smallest:.2e})")
    else:
        out["reason"] = (f"the optimal face has dimension {dimension} and the loss is flat along it "
                         f"(smallest curvature {smallest:.2e})")
    return out


def geometry_verdict(result) -> str:
    """One line for ``ncgeo solve`` beside the loss verdict: the stored geometry verdict of a
    certified result (``solution["geometry"]``), else why there is none."""
    geometry = result.solution.get("geometry") if hasattr(result, "solution") else None
    if not result.certified:
        return "geometry not certified: the loss is not certified"
    if not geometry:
        return "loss certified, geometry not examined (no dual matrix)"
    detail = geometry.get("reason", "")
    margin = geometry.get("margin")
    extra = f"; margin {margin:.2e}, leave bound {geometry['leave_bound']:.2e}" if margin not in (None, math.inf) \
        else ""
    return f"{geometry['verdict']}: {detail}{extra}"


def geometry_summary(result) -> dict:
    """JSON-ready geometry verdict of a certificate (``ncgeo solve --json``, the sims tables):
    ``line`` (:func:`geometry_verdict`), ``pinned`` (True only for a certified loss whose optimal
    Gram is unique), ``margin``, ``leave_bound``, ``face_dimension`` and ``reason`` (None where not
    computed or not finite)."""
    geometry = (result.solution.get("geometry") if hasattr(result, "solution") else None) or {}

    def finite(x):
        return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None

    return {"line": geometry_verdict(result), "pinned": bool(result.certified and geometry.get("pinned", False)),
            "margin": finite(geometry.get("margin")), "leave_bound": finite(geometry.get("leave_bound")),
            "face_dimension": geometry.get("face_dimension"), "reason": geometry.get("reason")}
