r"""Neural-collapse metrics and Gram distances (docs/theory.md section 6).

Inputs are embeddings ``H`` of shape ``(N, d)`` (numpy or torch, any float dtype, any
device), integer labels ``y`` of shape ``(N,)`` and, where needed, prototypes ``W`` of
shape ``(d, k)``. Class statistics are accumulated in float64 over chunks of samples
(:class:`ncgeo.statistics.ClassStatistics`), so ``N = 10^6`` embeddings of dimension 512 need only
``O(k d + d^2)`` extra memory. Class means are the columns of ``M`` (``d x k``).

Conventions (one definition each):

* ``gram_distance(M, G*) = || M^T M / ||M^T M||_F - G* / ||G*||_F ||_F``.
* Distance to the ETF uses the **centred** means ``mu_c - mu_G`` (``mu_G`` the unweighted
  mean of the class means); distances to the OF and to the prototypes use the
  **uncentred** means.
* ``NC1 = (1/k) tr(Sigma_W Sigma_B^+)`` with ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i -
  mu_{y_i})^T`` and ``Sigma_B = (1/k) sum_c (mu_c - mu_G)(mu_c - mu_G)^T``.
* Only classes that occur in ``y`` enter (``k`` is then their number).
* A quantity that is undefined for the data (e.g. NC1 when all class means coincide, a
  cosine with a zero mean or prototype) is NaN in :func:`geometry_metrics`; scalar
  functions whose docstring says so return NaN, the others raise ``ValueError`` saying why
  (wrap them in :func:`nan_if_undefined` for NaN).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ._io import jsonable
from ._validation import as_float_tensor, as_label_tensor, check_int
from .geometry import etf_gram
from .statistics import DEFAULT_CHUNK, ClassStatistics, as_rows

__all__ = [
    "GeometryMetrics",
    "class_means",
    "gram_distance",
    "delta_to_etf",
    "delta_to_orthogonal_frame",
    "delta_to_prototypes",
    "nc1",
    "equinorm",
    "equiangularity",
    "mean_pairwise_cosine",
    "prototype_alignment",
    "prototype_cosines",
    "ncc_accuracy",
    "nearest_prototype_accuracy",
    "class_mean_cosines",
    "geometry_metrics",
    "nan_if_undefined",
]

class _Undefined(ValueError):
    """A metric is undefined for these means (an all-zero Gram, a zero class mean);
    :func:`geometry_metrics` reports NaN for it, direct calls raise."""


def _stats(embeddings, labels, num_classes=None) -> ClassStatistics:
    if isinstance(embeddings, ClassStatistics):
        return embeddings
    return ClassStatistics.from_embeddings(embeddings, labels, num_classes)


def class_means(embeddings, labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class means and counts: ``(M, counts)`` with ``M`` of shape ``(d, k)``.

    Classes without samples get a zero mean and count 0.
    """
    stats = _stats(embeddings, labels, num_classes)
    M = torch.zeros(stats.dim, stats.num_classes, dtype=torch.float64, device=stats.device)
    M[:, stats.present] = stats.means()
    return M.cpu().numpy(), stats.counts.cpu().numpy()


def _matrix(name: str, value) -> np.ndarray:
    return as_float_tensor(name, value, ndim=2).detach().cpu().to(torch.float64).numpy()


def _prototypes(value) -> np.ndarray:
    """Prototypes ``W`` (``d x k``) as float64 numpy, with at least one column."""
    W = _matrix("prototypes", value)
    if W.shape[1] == 0:
        raise ValueError(f"prototypes must have at least one column (one per class), got shape {W.shape}")
    return W


def _scaled(A: np.ndarray) -> np.ndarray:
    """``A / max|A_ij|`` (``A`` itself when zero): squares of huge or tiny entries then
    neither overflow nor underflow."""
    largest = float(np.max(np.abs(A))) if A.size else 0.0
    return A / largest if largest > 0 else A


def gram_distance(means, target) -> float:
    r"""``Delta(M, G*) = || M^T M / ||M^T M||_F - G*/||G*||_F ||_F`` for ``M`` of shape ``(d, k)``.

    Scale-free: 0 when the Gram of the columns of ``M`` is proportional to ``target``,
    at most 2. No centring is done here. ``M`` and ``G*`` are divided by their largest
    entry first, so any finite scale (``1e-200`` or ``1e200``) gives the same value.
    """
    M = _scaled(_matrix("means", means))
    G = _scaled(_matrix("target", target))
    if G.shape != (M.shape[1], M.shape[1]):
        raise ValueError(f"target must be {M.shape[1]} x {M.shape[1]} to match the {M.shape[1]} "
                         f"columns of means, got shape {G.shape}")
    gram = M.T @ M
    norm_gram, norm_target = np.linalg.norm(gram), np.linalg.norm(G)
    if norm_gram == 0 or norm_target == 0:
        raise _Undefined("gram_distance is undefined for an all-zero means or target matrix")
    return float(np.linalg.norm(gram / norm_gram - G / norm_target))


def _centred(M: np.ndarray) -> np.ndarray:
    return M - M.mean(axis=1, keepdims=True)


def _present_means(embeddings, labels, num_classes=None) -> tuple[np.ndarray, np.ndarray]:
    stats = _stats(embeddings, labels, num_classes)
    return stats.means().cpu().numpy(), stats.present.cpu().numpy()


def delta_to_etf(embeddings, labels) -> float:
    """``Delta`` between the **centred** class means and the simplex-ETF Gram.

    ``ValueError`` when fewer than 2 classes are present in ``labels`` (a simplex ETF has
    ``k >= 2`` vertices) or all class means coincide (the centred means vanish).
    """
    M, _ = _present_means(embeddings, labels)
    if M.shape[1] < 2:
        raise ValueError(f"delta_to_etf needs at least 2 classes present in labels (a simplex ETF has "
                         f"k >= 2 vertices), got {M.shape[1]}")
    return gram_distance(_centred(M), etf_gram(M.shape[1]))


def delta_to_orthogonal_frame(embeddings, labels) -> float:
    """``Delta`` between the **uncentred** class means and the identity (OF) Gram."""
    M, _ = _present_means(embeddings, labels)
    return gram_distance(M, np.eye(M.shape[1]))


def _prototypes_and_means(embeddings, labels, prototypes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, M, present)``: prototypes ``(d, k)`` checked against the embedding dimension."""
    W = _prototypes(prototypes)
    stats = _stats(embeddings, labels, W.shape[1])
    if W.shape[0] != stats.dim:
        raise ValueError(f"prototypes must have shape (d, k) with d = {stats.dim} (the embedding "
                         f"dimension), got {W.shape}")
    if stats.num_classes > W.shape[1]:
        raise ValueError(f"prototypes has {W.shape[1]} columns but the statistics hold "
                         f"{stats.num_classes} classes")
    present = np.zeros(W.shape[1], dtype=bool)
    present[:stats.num_classes] = stats.present.cpu().numpy()
    return W, stats.means().cpu().numpy(), present


def delta_to_prototypes(embeddings, labels, prototypes) -> float:
    """``Delta`` between the **uncentred** class means and ``G_W = W^T W``."""
    W, M, present = _prototypes_and_means(embeddings, labels, prototypes)
    Wp = W[:, present]
    return gram_distance(M, Wp.T @ Wp)


def nc1(embeddings, labels) -> float:
    r"""``NC1 = (1/k) tr(Sigma_W Sigma_B^+)`` (Papyan et al. 2020).

    ``Sigma_B`` is the covariance of the class means around their unweighted mean; the
    pseudo-inverse drops eigenvalues below ``1e-12`` times the largest. ``Sigma_B`` has rank
    ``< k``, so it is handled through the thin SVD ``C = U S V^T`` of the ``d x k`` centred
    means: ``tr(Sigma_W Sigma_B^+) = sum_j k u_j^T Sigma_W u_j / s_j^2`` (``O(d^2 k)``, not
    the ``O(d^3)`` of a ``d x d`` pseudo-inverse).

    NaN (undefined) when fewer than two classes occur, or when all class means coincide
    (``Sigma_B = 0``: its largest singular value ``s_1 <= 1e-12 ||M||_F``), whether or not
    the samples spread around them -- also when all samples are one point. Collapsed
    samples around distinct class means give 0.
    """
    stats = _stats(embeddings, labels)
    M = stats.means()
    k = M.shape[1]
    if k < 2:
        return float("nan")  # Sigma_B vanishes: undefined for one class
    M = M.cpu().numpy()
    centred = _centred(M)
    U, s, _ = np.linalg.svd(centred, full_matrices=False)
    if not s[0] > 1e-12 * np.linalg.norm(M):
        return float("nan")  # Sigma_B = 0: no between-class spread to compare with
    eig = s**2 / k  # the non-zero eigenvalues of Sigma_B, eigenvectors U
    keep = eig > 1e-12 * eig[0]
    U, eig = U[:, keep], eig[keep]
    sigma_w = stats.within_covariance().cpu().numpy()
    return float(np.sum(np.sum(U * (sigma_w @ U), axis=0) / eig) / k)


def equinorm(embeddings, labels) -> float:
    """Coefficient of variation (std / mean, population std) of ``||mu_c - mu_G||``.

    NaN when fewer than two classes occur or all class means coincide.
    """
    M, _ = _present_means(embeddings, labels)
    if M.shape[1] < 2:
        return float("nan")  # a single centred mean is zero: undefined
    norms = np.linalg.norm(_centred(M), axis=0)
    if norms.mean() == 0:
        return float("nan")  # all class means coincide: no spread to compare
    return float(norms.std() / norms.mean())


def _directions(A: np.ndarray) -> np.ndarray:
    """Columns of ``A`` scaled to unit length (NaN for a zero column); divided by their
    largest entry first, so tiny or huge columns neither underflow nor overflow."""
    with np.errstate(invalid="ignore", divide="ignore"):
        A = A / np.max(np.abs(A), axis=0, initial=0.0)
        return A / np.linalg.norm(A, axis=0)


def _cosines(M: np.ndarray) -> np.ndarray:
    unit = _directions(M)
    if np.any(np.isnan(unit)):
        raise _Undefined("a class mean is zero; its cosine with other means is undefined")
    return unit.T @ unit


def equiangularity(embeddings, labels) -> float:
    """Mean over ``c != c'`` of ``|cos(mu_c - mu_G, mu_c' - mu_G) + 1/(k-1)|`` (centred means)."""
    M, _ = _present_means(embeddings, labels)
    k = M.shape[1]
    if k < 2:
        raise ValueError("equiangularity needs at least 2 classes")
    cos = _cosines(_centred(M))
    off = ~np.eye(k, dtype=bool)
    return float(np.mean(np.abs(cos[off] + 1.0 / (k - 1))))


def mean_pairwise_cosine(embeddings, labels) -> float:
    """Mean over ``c != c'`` of ``cos(mu_c, mu_c')`` of the **uncentred** class means."""
    M, _ = _present_means(embeddings, labels)
    k = M.shape[1]
    if k < 2:
        raise ValueError("mean_pairwise_cosine needs at least 2 classes")
    cos = _cosines(M)
    return float(np.mean(cos[~np.eye(k, dtype=bool)]))


def class_mean_cosines(embeddings, labels, num_classes: int | None = None) -> np.ndarray:
    """``k x k`` matrix of cosines between the uncentred class means (NaN for absent classes)."""
    stats = _stats(embeddings, labels, num_classes)
    k = stats.num_classes
    out = np.full((k, k), np.nan)
    present = stats.present.cpu().numpy()
    out[np.ix_(present, present)] = _cosines(stats.means().cpu().numpy())
    return out


def _present_prototype_cosines(embeddings, labels, prototypes) -> tuple[np.ndarray, np.ndarray]:
    """``(cosines, present)``: ``cos(mu_c, w_c)`` of all ``k`` classes and the present mask."""
    W, M, present = _prototypes_and_means(embeddings, labels, prototypes)
    out = np.full(W.shape[1], np.nan)
    out[present] = np.sum(_directions(M) * _directions(W[:, present]), axis=0)
    return out, present


def prototype_cosines(embeddings, labels, prototypes) -> np.ndarray:
    """``cos(mu_c, w_c)`` for every class ``c`` of ``prototypes``, shape ``(k,)``.

    NaN for absent classes and where the cosine is undefined: a present class whose mean
    ``mu_c`` or prototype column ``w_c`` is zero.
    """
    return _present_prototype_cosines(embeddings, labels, prototypes)[0]


def prototype_alignment(embeddings, labels, prototypes) -> float:
    """``mean_c cos(mu_c, w_c)`` over the present classes (see :func:`prototype_cosines`).

    NaN (undefined) when the cosine of any present class is undefined (its mean or its
    prototype column is zero): averaging the other classes would hide it.
    """
    cosines, present = _present_prototype_cosines(embeddings, labels, prototypes)
    return float(np.mean(cosines[present]))


def _accuracy_from_predictions(prediction: torch.Tensor, y: torch.Tensor, k: int) -> tuple[float, np.ndarray]:
    correct = torch.zeros(k, dtype=torch.float64, device=y.device)
    total = torch.zeros(k, dtype=torch.float64, device=y.device)
    total.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    correct.index_add_(0, y, (prediction == y).to(torch.float64))
    per_class = (correct / total).cpu().numpy()  # NaN where a class is absent
    present = total.cpu().numpy() > 0
    return float(np.mean(per_class[present])), per_class


def _nearest(embeddings, labels, centres: np.ndarray, chunk_size: int, name: str,
             allowed: np.ndarray | None = None):
    """Balanced and per-class accuracy of ``argmin_c ||h - centre_c||`` over allowed columns."""
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    H = as_rows("embeddings", embeddings)
    device = H.device if isinstance(H, torch.Tensor) else torch.device("cpu")
    num_classes = centres.shape[1]
    y = as_label_tensor("labels", labels, H.shape[0], num_classes, device=device)
    if centres.shape[0] != H.shape[1]:
        raise ValueError(f"{name} must have shape (d, k) with d = {H.shape[1]} (the embedding "
                         f"dimension), got {centres.shape}")
    C = torch.as_tensor(centres, dtype=torch.float64, device=device)
    excluded = None if allowed is None else torch.as_tensor(~allowed, device=device)
    predictions = []
    for start in range(0, H.shape[0], chunk_size):
        chunk = as_float_tensor("embeddings", H[start:start + chunk_size], ndim=2)
        chunk = chunk.detach().to(device=device, dtype=torch.float64)
        distance = (chunk**2).sum(1, keepdim=True) - 2 * chunk @ C + (C**2).sum(0)[None, :]
        if excluded is not None:
            distance = distance.masked_fill(excluded[None, :], float("inf"))
        predictions.append(distance.argmin(dim=1))
    prediction = torch.cat(predictions) if predictions else y.new_empty(0)
    return _accuracy_from_predictions(prediction, y, num_classes)


def ncc_accuracy(embeddings, labels, means, chunk_size: int = DEFAULT_CHUNK) -> tuple[float, np.ndarray]:
    """Nearest-class-centre accuracy: ``(balanced, per_class)``.

    Each sample is assigned to the class whose mean (a column of ``means``, ``d x k``,
    e.g. the training means from :func:`class_means`) is nearest in Euclidean distance.
    ``balanced`` is the mean of the per-class accuracies over the classes present in
    ``labels``; ``per_class`` has NaN for absent classes. Classes whose mean column is
    all-zero (absent from training) are never predicted.
    """
    M = _matrix("means", means)
    allowed = np.any(M != 0, axis=0)
    if not allowed.any():
        raise ValueError("means must have at least one non-zero column")
    return _nearest(embeddings, labels, M, chunk_size, "means", allowed)


def nearest_prototype_accuracy(embeddings, labels, prototypes,
                               chunk_size: int = DEFAULT_CHUNK) -> tuple[float, np.ndarray]:
    """Nearest-prototype accuracy ``(balanced, per_class)``: predict ``argmin_c ||h - w_c||``.

    For unit prototypes this equals ``argmax_c h.w_c``.
    """
    return _nearest(embeddings, labels, _prototypes(prototypes), chunk_size, "prototypes")


@dataclass(frozen=True)
class GeometryMetrics:
    """Summary of the class-mean geometry; see the module docstring for the definitions."""

    nc1: float
    delta_etf: float
    delta_of: float
    delta_prototypes: float | None
    equinorm: float
    equiangularity: float
    mean_cosine: float
    alignment: float | None
    ncc_accuracy: float
    nearest_prototype_accuracy: float | None
    gram_means: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary: NaN (undefined metric, absent class) becomes ``None``."""
        return jsonable(asdict(self))


def nan_if_undefined(metric, *args):
    """``metric(*args)``, or NaN when the metric is undefined at these means (e.g. Delta to
    the ETF when every class mean coincides, a cosine with a zero mean). Other errors
    (bad input) are raised as usual."""
    try:
        return metric(*args)
    except _Undefined:
        return float("nan")


def geometry_metrics(embeddings, labels, prototypes=None, num_classes: int | None = None) -> GeometryMetrics:
    """All the metrics of docs/theory.md section 6 for one set of embeddings (one pass + NCC pass).

    ``embeddings`` ``(N, d)`` and ``labels`` ``(N,)``; with ``prototypes`` ``(d, k)`` the
    number of classes is ``k`` and the prototype metrics are filled in (else ``None``).
    Metrics that need two classes (NC1, Delta to the ETF, equinorm, equiangularity, mean
    cosine) are NaN when fewer than two classes occur; metrics undefined for the means
    are NaN: Delta to the ETF, equinorm and NC1 when all class means coincide, cosines and
    ``alignment`` when a class mean (or its prototype) is zero. ``ncc_accuracy`` assigns each
    sample to the nearest mean of a present class. ``gram_means`` is the ``k x k`` cosine
    matrix of the uncentred class means (NaN rows/columns for absent classes).
    """
    H = as_rows("embeddings", embeddings)
    W = None if prototypes is None else _prototypes(prototypes)
    if W is not None:
        if W.shape[0] != H.shape[1]:
            raise ValueError(f"prototypes must have shape (d, k) with d = {H.shape[1]}, got {W.shape}")
        num_classes = W.shape[1]
    stats = ClassStatistics.from_embeddings(H, labels, num_classes)
    M_full, _ = class_means(stats, None)
    # NCC over the present classes (their means may be zero, e.g. all at the origin)
    ncc, _ = _nearest(H, labels, M_full, DEFAULT_CHUNK, "means", stats.present.cpu().numpy())
    several = int(stats.present.sum()) >= 2

    def defined(metric, *args):
        return nan_if_undefined(metric, stats, None, *args)

    def if_several(metric):
        return defined(metric) if several else float("nan")

    gram_means = defined(class_mean_cosines)
    return GeometryMetrics(
        nc1=if_several(nc1),
        delta_etf=if_several(delta_to_etf),
        delta_of=defined(delta_to_orthogonal_frame),
        delta_prototypes=None if W is None else defined(delta_to_prototypes, W),
        equinorm=if_several(equinorm),
        equiangularity=if_several(equiangularity),
        mean_cosine=if_several(mean_pairwise_cosine),
        alignment=None if W is None else prototype_alignment(stats, None, W),
        ncc_accuracy=ncc,
        nearest_prototype_accuracy=None if W is None else nearest_prototype_accuracy(H, labels, W)[0],
        gram_means=np.full((stats.num_classes,) * 2, np.nan) if np.isscalar(gram_means) else gram_means,
    )
