"""Small helpers shared by the studies: prototype geometries by name, Gram distances
between Gram matrices, and class sizes from settings. Everything numeric is delegated
to :mod:`ncgeo` (geometry constructors, :func:`ncgeo.metrics.gram_distance`)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from ncgeo.classes import class_sizes
from ncgeo.geometry import PROTOTYPE_NAMES, etf_gram, named_prototypes, prototypes_from_gram
from ncgeo.metrics import gram_distance

from .study import OptionError

__all__ = ["GEOMETRIES", "hierarchical_gram", "prototypes_for", "check_geometry_names", "gram_factor", "gram_delta",
           "gram_delta_etf", "geometry_fingerprint",
           "sizes_from_settings", "target_gram", "certified_optimum", "ce_limit_optimum", "unpinned_note"]

#: Built-in prototype geometries (anything else is read as a file path).
GEOMETRIES = PROTOTYPE_NAMES + ("hierarchical",)


def hierarchical_gram(k: int, group: int = 2) -> np.ndarray:
    r"""A non-symmetric (not permutation-invariant) target Gram: superclasses of ``group`` classes.

    ``G = (G_ETF + B) / 2`` where ``B_cc' = 1`` when ``c`` and ``c'`` belong to the same
    superclass (consecutive blocks of ``group`` classes) and 0 otherwise. Unit diagonal,
    PSD (a sum of PSD matrices); for ``k = 4`` the within-superclass cosine is ``1/3`` and
    the between-superclass cosine ``-1/6``.
    """
    block = np.zeros((k, k))
    for start in range(0, k, group):
        block[start:start + group, start:start + group] = 1.0
    return 0.5 * (etf_gram(k) + block)


def prototypes_for(geometry: str, k: int, d: int | None = None, seed: int = 0) -> np.ndarray:
    """Prototypes ``W`` (``d x k``) named by ``geometry``.

    ``"etf"`` (simplex ETF, ``d >= k-1``), ``"of"`` (orthogonal frame = standard basis,
    non-negative, ``d >= k``), ``"random"`` (uniform on the sphere), ``"random+"`` (uniform
    on the non-negative orthant), ``"hierarchical"`` (a factor of :func:`hierarchical_gram`),
    or a path to a Gram/vector file read by :func:`ncgeo.geometry.load_prototypes`.
    ``d`` defaults to ``k``. All but ``"hierarchical"`` are :func:`ncgeo.geometry.named_prototypes`.
    """
    d = k if d is None else d  # the names were checked before the sweep (check_geometry_names)
    if geometry == "hierarchical":
        return prototypes_from_gram(hierarchical_gram(k), d)
    return named_prototypes(geometry, k, d, seed=seed)


def check_geometry_names(option: str, names) -> None:
    """Raise :class:`sims.study.OptionError` naming the study option ``option`` (e.g.
    ``"geometry"``) unless every name is a built-in geometry (:data:`GEOMETRIES`) or an
    existing file; called before a sweep starts its workers."""
    for name in names:
        if name not in GEOMETRIES and not (isinstance(name, str) and os.path.isfile(name)):
            raise OptionError(option, f"must be one of {', '.join(GEOMETRIES)} or an existing file, got {name!r}")


def geometry_fingerprint(geometry: str) -> dict[str, str]:
    """``{"geometry_sha256": ...}`` (SHA-256 of the file's bytes) when ``geometry`` is a file, else ``{}``.

    Added to the sweep points that use the file, so that the resume cache
    (:mod:`sims.runner`, keyed by the point) is not reused after the file's content changes.
    """
    if geometry in GEOMETRIES or not (isinstance(geometry, str) and os.path.isfile(geometry)):
        return {}
    with open(geometry, "rb") as handle:
        return {"geometry_sha256": hashlib.sha256(handle.read()).hexdigest()}


def target_gram(target: str, k: int, seed: int = 0) -> np.ndarray:
    """A target Gram ``G*`` (``k x k``): ``"hierarchical"``, ``"etf"``, ``"random"`` or a file path."""
    if target == "hierarchical":
        return hierarchical_gram(k)
    W = prototypes_for(target, k, None if target != "etf" else k, seed=seed)
    return W.T @ W


def gram_factor(gram: np.ndarray) -> np.ndarray:
    """``M`` (``r x k``) with ``M^T M = G`` for a PSD ``G`` (negative eigenvalues clipped)."""
    G = 0.5 * (np.asarray(gram, dtype=float) + np.asarray(gram, dtype=float).T)
    eigenvalues, vectors = np.linalg.eigh(G)
    return np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * vectors.T


def gram_delta(gram: np.ndarray, target: np.ndarray) -> float:
    r"""``Delta = || G / ||G||_F - G* / ||G*||_F ||_F`` between two Gram matrices.

    Uses :func:`ncgeo.metrics.gram_distance` on a factor of ``G`` (uncentred convention);
    NaN when ``G`` has non-finite entries (a failed solve).
    """
    gram = np.asarray(gram, dtype=float)
    if not np.all(np.isfinite(gram)):
        return float("nan")
    return gram_distance(gram_factor(gram), np.asarray(target, dtype=float))


def gram_delta_etf(gram: np.ndarray) -> float:
    r"""``Delta`` of the **centred** class means to the simplex-ETF Gram (docs/theory.md section 6).

    :func:`ncgeo.metrics.delta_to_etf` on a factor of ``G`` (each class mean as its one sample),
    so the name ``delta_etf`` has one formula across ncgeo, sims and deep; NaN when ``G`` has
    non-finite entries.
    """
    from ncgeo.metrics import delta_to_etf

    gram = np.asarray(gram, dtype=float)
    if not np.all(np.isfinite(gram)):
        return float("nan")
    return delta_to_etf(gram_factor(gram).T, np.arange(gram.shape[0]))


def sizes_from_settings(settings: dict[str, Any], ratio: float | None = None) -> list[int]:
    """Class sizes from ``k``, ``n``, ``imbalance`` and ``ratio`` settings (docs/theory.md section 1)."""
    R = settings.get("ratio", 1.0) if ratio is None else ratio
    imbalance = settings.get("imbalance", "step") if R > 1 else "none"
    return class_sizes(settings["k"], settings["n"], imbalance, R)


def certified_optimum(sizes, W: np.ndarray, n_w: float, tau: float, *, nonnegative: bool = False,
                      prototypes_as_anchors: bool = False, dim: int | None = None, polish: bool = True,
                      time_limit: float = 60.0) -> dict[str, Any]:
    r"""Certified full-batch UFM optimum: reduced SDP bound, polished by the torch solver.

    1. :func:`ncgeo.certify.reduced.solve_reduced` with embedding dimension ``dim``
       (default ``N + k``: every relaxation optimum is realisable, so the relaxation
       optimum is the UFM optimum) gives the lower bound and a Gram ``R``.
    2. With ``polish``, :func:`ncgeo.ufm.solve_ufm` (full batch, collapsed start,
       Riemannian gradient ``<= 1e-9``) gives a feasible point; when its loss is within the
       certificate tolerance of the bound (``rtol (U - F) + atol A``, docs/theory.md section 5.1,
       :data:`ncgeo.certify.result.DEFAULT_RTOL`) its geometry and loss are used
       (``source = "solver"``): a conic solver's Gram is only accurate to about the square
       root of its tolerance where the loss is flat, the solver's to its gradient norm.
       Otherwise (e.g. no within-class collapse) the SDP's ``R`` is used (``source = "sdp"``).

    Returns plain values: ``loss`` (loss per sample ``L/N``, ``L`` summed over anchors),
    ``lower_bound`` and ``floor`` (per sample; docs/theory.md section 5.1), ``relative_gap`` (gap over
    the excess ``loss - floor``), ``certified``, ``reason``, ``source``,
    ``min_within_similarity`` (``min_c a_c`` of the SDP; 1 at within-class collapse) and
    ``gram``: the uncentred class-mean Gram ``(G_M)_cc' = mu_c . mu_c'`` as nested lists, and,
    when the optimum is realised in the frame of ``W``, ``means`` (``d x k`` class means).
    ``geometry_pinned`` (bool) and ``geometry_verdict`` (one line) are the geometry verdict of the reduced
    certificate (:func:`ncgeo.certify.face.geometry_summary`, docs/theory.md section 5.1): a Delta of
    ``gram`` describes *the* optimal geometry only when ``geometry_pinned`` is True.
    """
    from ncgeo.certify.reduced import solve_reduced
    from ncgeo.certify.result import DEFAULT_ATOL, DEFAULT_RTOL, make_result
    from ncgeo.problem import UFMProblem

    sizes = [int(s) for s in sizes]
    k = len(sizes)
    N = float(sum(sizes))
    dim = int(N) + k if dim is None else dim
    W = W if n_w > 0 else None  # without prototype copies the loss does not involve W
    # the prototypes in R^dim (zero rows appended): the same objective, realisable up to rank dim
    W_dim = None if W is None else np.vstack([W, np.zeros((max(dim - W.shape[0], 0), k))])
    problem = UFMProblem.from_sizes(sizes, W_dim, n_w, tau, nonnegative=nonnegative,
                                    prototypes_as_anchors=prototypes_as_anchors, dim=dim)
    floor, anchors = problem.floor(), problem.num_anchors()
    try:
        result = solve_reduced(problem)
    except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError) as exc:
        # a failure of the certificate is a result (not certified), not a crash of the study
        result = f"reduced SDP raised {type(exc).__name__}: {exc}"
    if isinstance(result, str):
        geometry = {"pinned": False, "line": f"geometry not examined: {result}"}
    else:
        from ncgeo.certify.face import geometry_summary

        geometry = geometry_summary(result)
    if isinstance(result, str) or "R" not in result.solution:
        out = {"loss": float("nan"), "lower_bound": float("nan"), "floor": floor / N, "relative_gap": float("nan"),
               "certified": False, "source": "none",
               "reason": result if isinstance(result, str) else result.reason,
               "min_within_similarity": float("nan"), "gram": np.full((k, k), np.nan).tolist()}
    else:
        s = np.sqrt(np.asarray(sizes, dtype=float))
        R = np.asarray(result.solution["R"], dtype=float)
        out = {"loss": float(result.upper_bound) / N, "lower_bound": float(result.lower_bound) / N,
               "floor": floor / N, "relative_gap": float(result.relative_gap),
               "certified": bool(result.certified), "reason": result.reason, "source": "sdp",
               "min_within_similarity": float(np.min(result.solution["a"])),
               "gram": (R[:k, :k] / np.outer(s, s)).tolist()}
        means = result.solution.get("means")
        if W is not None and means is not None and np.abs(means[W.shape[0]:]).max(initial=0.0) <= 1e-9:
            out["means"] = np.asarray(means[:W.shape[0]], dtype=float).tolist()  # in the frame of W
    out.update(geometry_pinned=bool(geometry["pinned"]), geometry_verdict=geometry["line"])
    if polish:
        from ncgeo.metrics import class_means
        from ncgeo.ufm import solve_ufm

        # the collapsed start only: the polish is accepted against the SDP bound, so the extra random
        # starts of init="auto" cost 2.5-4x the study's time and changed no accepted point
        problem = UFMProblem.from_sizes(sizes, W, n_w, tau, dim=k if W is None else W.shape[0],
                                        nonnegative=nonnegative, prototypes_as_anchors=prototypes_as_anchors)
        solved = solve_ufm(problem, "lbfgs", options=dict(time_limit=time_limit, init="collapsed"))
        loss = solved.loss / N
        lower = out["lower_bound"]
        M, _ = class_means(solved.H, solved.labels, k)
        # docs/theory.md section 5.1: ncgeo's verdict on the solver's loss against the rigorous bound
        judged = make_result(lower * N if np.isfinite(lower) else None, solved.loss, floor=floor, anchors=anchors,
                             method="reduced", status="optimal", seconds=0.0, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)
        if judged.certified:
            relative = max(judged.relative_gap, 0.0)
            out.update(loss=loss, certified=True, source="solver", gram=(M.T @ M).tolist(), means=M.tolist(),
                       relative_gap=relative,
                       reason=f"solver loss within {relative:.1e} of the excess (relative) of the reduced-SDP bound")
        elif out["source"] == "none":  # no bound: the solver's point, reported as not certified
            out.update(loss=loss, source="solver", gram=(M.T @ M).tolist())
    return out


def ce_limit_optimum(sizes, W: np.ndarray, tau: float, *, nonnegative: bool = False,
                     polish: bool = True) -> dict[str, Any]:
    r"""Certified optimum of cross-entropy with the fixed classifier ``W`` (docs/theory.md section 4).

    :func:`ncgeo.certify.ce_limit.certify_ce_limit` (per-class ``(k+1) x (k+1)`` SDP) gives the
    per-class optima ``CE_c`` and the learnt Gram ``G_CE``. With ``polish`` (and without
    non-negativity) the per-class problems ``min_{||h_c|| = 1} CE(h_c; W)`` are re-solved
    by :func:`ncgeo.ufm.riemannian_lbfgs` (float64, gradient ``<= 1e-12``) from the SDP's
    solution or from ``w_c``; the polished point replaces the SDP's when its value is
    within ``1e-9`` (absolute, per class) of the certified one. Returns ``ce_value`` =
    ``(1/N) sum_c n_c CE_c`` (per-sample CE optimum for these class sizes), ``certified``,
    ``reason``, ``source``, ``gram`` (nested lists), ``geometry_pinned`` and ``geometry_verdict``
    (:func:`ncgeo.certify.ce_geometry_pinned`).
    """
    from ncgeo.certify.ce_limit import ce_geometry_pinned, certify_ce_limit

    result = certify_ce_limit(W, tau, nonnegative=nonnegative)
    values = np.asarray(result.values, dtype=float)
    gram = np.asarray(result.gram, dtype=float)
    source = "sdp"
    if polish and not nonnegative:
        polished = _polish_ce(W, tau)
        if polished is not None and np.all(polished[0] <= values + 1e-9):
            values, gram, source = polished[0], polished[1], "solver"
    sizes = np.asarray(sizes, dtype=float)
    pinned, line = ce_geometry_pinned(result, W, tau, nonnegative)
    return {"ce_value": float(sizes @ values / sizes.sum()), "certified": bool(result.certified),
            "reason": result.reason, "source": source, "gram": gram.tolist(), "geometry_pinned": pinned,
            "geometry_verdict": line}


def unpinned_note(rows, what: str = "Delta") -> str:
    """``""`` when every row's ``geometry_pinned`` is True, else a clause naming how many rows'
    geometries are not pinned (a verdict relying on their Delta says so)."""
    rows = list(rows)
    loose = [r for r in rows if not r.get("geometry_pinned", False)]
    if not loose:
        return ""
    return f" [{what} of a geometry NOT pinned (loss certified, optimal Gram not unique) at {len(loose)}/{len(rows)} points]"


def _polish_ce(W: np.ndarray, tau: float):
    """Per-class CE optima on the sphere by Riemannian L-BFGS; ``(values (k,), Gram)`` or None."""
    import torch

    from ncgeo.losses import fixed_classifier_cross_entropy
    from ncgeo.ufm import riemannian_lbfgs

    Wt = torch.as_tensor(W, dtype=torch.float64)
    k = W.shape[1]
    labels = torch.arange(k)

    def objective(x):
        x = x.detach().requires_grad_(True)
        value = fixed_classifier_cross_entropy(x, labels, Wt, tau, validate=False)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad

    # start from w_c pushed away from the other prototypes (inside the CE basin)
    start = Wt.T - 0.5 * (Wt.T.sum(dim=0, keepdim=True) - Wt.T) / max(k - 1, 1)
    start = torch.nn.functional.normalize(start, dim=1)
    out = riemannian_lbfgs(objective, start, grad_tol=1e-12, max_iterations=5000)
    if not np.isfinite(out.value):
        return None
    X = out.x.detach()
    values = fixed_classifier_cross_entropy(X, labels, Wt, tau, reduction="none").numpy()
    X = X.numpy()
    return values, X @ X.T
