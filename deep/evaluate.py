r"""Evaluation of a feature network: the docs/theory.md section 6 metrics on a train and a test set.

The network embeds the un-augmented images in chunks of ``batch_size`` (eval mode, no
gradient, on the images' device); the embeddings ``H`` (``N x d``, float32) stay on that
device and the class statistics are accumulated in float64 with
:class:`ncgeo.statistics.ClassStatistics`. Every number comes from :mod:`ncgeo.metrics`
(one definition each):

* ``delta_prototypes``: ``Delta(M, G_W)`` with uncentred class means ``M`` (``d x k``);
* ``delta_etf``: ``Delta`` of the centred means to the simplex-ETF Gram;
* ``delta_of``: ``Delta`` of the uncentred means to the identity;
* ``nc1 = (1/k) tr(Sigma_W Sigma_B^+)``; ``equinorm``, ``equiangularity``, ``mean_cosine``;
* ``alignment = mean_c cos(mu_c, w_c)``;
* ``ncc_accuracy``: nearest class mean, with the **training** class means for both sets;
* ``nearest_prototype_accuracy``: ``argmax_c h.w_c``;

accuracies balanced (mean over present classes) and per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ncgeo._validation import as_float_array, check_int
from ncgeo.metrics import (
    class_means,
    delta_to_etf,
    delta_to_orthogonal_frame,
    delta_to_prototypes,
    equiangularity,
    equinorm,
    mean_pairwise_cosine,
    nan_if_undefined,
    nc1,
    ncc_accuracy,
    nearest_prototype_accuracy,
    prototype_alignment,
)
from ncgeo.progress import Progress
from ncgeo.statistics import ClassStatistics

from .augment import to_float
from .data import ImageDataset
from .distributed import gather_rows, rank, world_size
from .sampler import shard_range

__all__ = ["SplitMetrics", "embed", "evaluate_split", "evaluate_run"]


@dataclass(frozen=True)
class SplitMetrics:
    """Geometry and accuracy of one set of embeddings (see the module docstring).

    ``means`` (``d x k``, zero columns for absent classes) and ``mean_inner_products``
    (``M^T M``: ``mu_c . mu_c'`` of the uncentred means, ``k x k``; not cosines, unlike
    :attr:`ncgeo.metrics.GeometryMetrics.gram_means`) are kept for reports; ``to_dict``
    includes ``mean_inner_products`` but not ``means``.
    """

    samples: int
    delta_prototypes: float
    delta_etf: float
    delta_of: float
    nc1: float
    equinorm: float
    equiangularity: float
    mean_cosine: float
    alignment: float
    ncc_accuracy: float
    nearest_prototype_accuracy: float
    ncc_per_class: np.ndarray
    nearest_prototype_per_class: np.ndarray
    class_counts: np.ndarray
    mean_inner_products: np.ndarray
    means: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "delta_prototypes": self.delta_prototypes,
            "delta_etf": self.delta_etf,
            "delta_of": self.delta_of,
            "nc1": self.nc1,
            "equinorm": self.equinorm,
            "equiangularity": self.equiangularity,
            "mean_cosine": self.mean_cosine,
            "alignment": self.alignment,
            "ncc_accuracy": self.ncc_accuracy,
            "nearest_prototype_accuracy": self.nearest_prototype_accuracy,
            "ncc_per_class": self.ncc_per_class.tolist(),
            "nearest_prototype_per_class": self.nearest_prototype_per_class.tolist(),
            "class_counts": self.class_counts.astype(int).tolist(),
            "mean_inner_products": self.mean_inner_products.tolist(),
        }


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, mean, std, batch_size: int = 512,
          progress: Progress | None = None) -> torch.Tensor:
    """Features ``(N, d)`` (float32, on the images' device) of ``uint8`` images ``(N, C, H, W)``.

    The model is put in eval mode for the pass and restored to its previous mode. Under
    ``torch.distributed`` every process embeds its contiguous share of the images
    (:func:`deep.sampler.shard_range`) and the rows are gathered in order, so every
    process returns the features of all ``N`` images. ``batch_size`` is an integer >= 1;
    ``progress`` advances by the images of this process's share, chunk by chunk.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 torch tensor (N, C, H, W), got {type(images).__name__}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    part = shard_range(images.shape[0], rank(), world_size())
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(part.start, part.stop, batch_size):
            chunks.append(model(to_float(images[start:min(start + batch_size, part.stop)], mean, std)).float())
            if progress is not None:
                progress.update(len(chunks[-1]))
    finally:
        model.train(was_training)
    local = torch.cat(chunks) if chunks else torch.empty(0, getattr(model, "feature_dim", 0),
                                                         device=images.device)
    return gather_rows(local)


def evaluate_split(embeddings: torch.Tensor, labels: torch.Tensor, prototypes, num_classes: int,
                   reference_means: np.ndarray | None = None) -> SplitMetrics:
    """Metrics of ``embeddings`` ``(N, d)`` with ``labels`` ``(N,)`` against ``prototypes`` ``(d, k)``.

    ``reference_means`` (``d x k``) are the class means used by the NCC classifier (the
    training means); by default the means of these embeddings. ``prototypes`` is a finite
    ``(d, num_classes)`` array or tensor (``TypeError`` / ``ValueError`` naming it otherwise).
    """
    num_classes = check_int("num_classes", num_classes, minimum=1)
    if prototypes is None:
        raise TypeError("prototypes must be a (d, k) array or tensor, got None")
    W = as_float_array("prototypes", prototypes, ndim=2)
    if W.shape[1] != num_classes:
        raise ValueError(f"prototypes must have num_classes = {num_classes} columns (d x k), got shape {W.shape}")
    stats = ClassStatistics.from_embeddings(embeddings, labels, num_classes)
    means, counts = class_means(stats, None)
    present = int(stats.present.sum())
    reference = means if reference_means is None else reference_means
    ncc, ncc_per_class = ncc_accuracy(embeddings, labels, reference)
    proto, proto_per_class = nearest_prototype_accuracy(embeddings, labels, W)
    several = present >= 2
    return SplitMetrics(
        samples=int(embeddings.shape[0]),
        delta_prototypes=nan_if_undefined(delta_to_prototypes, stats, None, W),
        delta_etf=nan_if_undefined(delta_to_etf, stats, None) if several else float("nan"),
        delta_of=nan_if_undefined(delta_to_orthogonal_frame, stats, None),
        nc1=nc1(stats, None),
        equinorm=equinorm(stats, None),
        equiangularity=nan_if_undefined(equiangularity, stats, None) if several else float("nan"),
        mean_cosine=nan_if_undefined(mean_pairwise_cosine, stats, None) if several else float("nan"),
        alignment=nan_if_undefined(prototype_alignment, stats, None, W),
        ncc_accuracy=ncc,
        nearest_prototype_accuracy=proto,
        ncc_per_class=ncc_per_class,
        nearest_prototype_per_class=proto_per_class,
        class_counts=counts,
        mean_inner_products=means.T @ means,
        means=means,
    )


def evaluate_run(model: torch.nn.Module, train_set, test_set, prototypes: torch.Tensor,
                 batch_size: int = 512, progress: str | None = None) -> tuple[SplitMetrics, SplitMetrics | None]:
    """Evaluate on the training set (its own means) and the test set (training means for NCC).

    ``train_set``/``test_set`` are :class:`deep.data.ImageDataset` on the model's device;
    ``test_set`` may be ``None``. ``progress``: the description of a progress bar on stderr
    over the images this process embeds (``None``: no bar). Returns ``(train_metrics,
    test_metrics)``.
    """
    if not isinstance(train_set, ImageDataset):
        raise TypeError(f"train_set must be an ImageDataset, got {type(train_set).__name__}")
    if test_set is not None and not isinstance(test_set, ImageDataset):
        raise TypeError(f"test_set must be an ImageDataset or None, got {type(test_set).__name__}")
    k = train_set.num_classes
    splits = [train_set] + ([test_set] if test_set is not None and len(test_set) > 0 else [])
    share = sum(len(shard_range(len(split), rank(), world_size())) for split in splits)
    with Progress(progress or "", share, unit="images", enabled=progress is not None) as bar:
        H = embed(model, train_set.images, train_set.mean, train_set.std, batch_size, bar)
        train = evaluate_split(H, train_set.labels, prototypes, k)
        del H
        test = None
        if len(splits) > 1:
            H = embed(model, test_set.images, train_set.mean, train_set.std, batch_size, bar)
            test = evaluate_split(H, test_set.labels, prototypes, k, reference_means=train.means)
    return train, test
