"""The training loss of :mod:`deep.train` as a module, and the prototypes it uses.

* :func:`build_prototypes`: ``W`` (``d x k``, unit columns) for ``--geometry`` in the
  model's feature dimension;
* :class:`Objective`: ``scl`` (SCL with ``n_w`` implicit prototype copies, mean over the
  anchors), ``ce`` (learnt linear classifier) or ``ce-fixed`` (the prototypes as fixed
  classifier), optionally under bf16 autocast (docs/theory.md sections 2, 4 and 7).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncgeo.geometry import named_prototypes
from ncgeo.losses import fixed_classifier_cross_entropy

from .distributed import distributed_scl_prototype_loss

__all__ = ["build_prototypes", "Objective"]


def build_prototypes(geometry: str, num_classes: int, dim: int, seed: int = 0,
                     nonnegative: bool = False) -> np.ndarray:
    """Prototypes ``W`` (``dim x num_classes``, unit columns) for ``--geometry``, in the model's
    feature dimension: :func:`ncgeo.geometry.named_prototypes` (``etf``, ``of``, ``random``,
    non-negative when the features are, ``spherical`` for more classes than ``dim + 1``, or a
    Gram/vector file); errors name ``--geometry``, the classes and the dimension.
    """
    try:
        return named_prototypes(geometry, num_classes, dim, seed=seed, nonnegative=nonnegative)
    except ValueError as exc:
        raise ValueError(f"--geometry {geometry!r} with {num_classes} classes in dimension {dim}: {exc}") from exc


class Objective(nn.Module):
    """The training loss as a module of ``(model, images, labels)`` (see the module docstring).

    Holds the prototypes as a buffer and, for ``ce``, the learnt classifier; its state is
    checkpointed with the model. With ``autocast_dtype`` (e.g. ``torch.bfloat16``) the network
    runs under autocast; its output is brought back to float32 and the loss computed there.
    The SCL loss goes through :func:`deep.distributed.distributed_scl_prototype_loss`, which is
    ``scl_prototype_loss`` itself in a single process.
    """

    def __init__(self, loss: str, prototypes: torch.Tensor, n_w: float, tau: float,
                 autocast_dtype: torch.dtype | None = None, prototypes_as_anchors: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.prototypes_as_anchors = bool(prototypes_as_anchors)
        self.n_w = float(n_w)
        self.tau = float(tau)
        self.autocast_dtype = autocast_dtype
        self.register_buffer("prototypes", prototypes.clone())
        dim, classes = prototypes.shape
        self.classifier = nn.Linear(dim, classes) if loss == "ce" else None

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of float images ``(B, C, H, W)`` with labels ``(B,)``; no host synchronisation."""
        with torch.autocast(images.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            output = model(images, normalize=self.loss != "ce")
        if output.dtype in (torch.float16, torch.bfloat16):
            output = output.float()
        if self.loss == "ce":
            return F.cross_entropy(self.classifier(output), labels)
        if self.loss == "ce-fixed":
            return fixed_classifier_cross_entropy(output, labels, self.prototypes, self.tau,
                                                  reduction="mean", validate=False)
        return distributed_scl_prototype_loss(output, labels, self.prototypes, self.n_w, self.tau,
                                              reduction="mean", prototypes_as_anchors=self.prototypes_as_anchors)
