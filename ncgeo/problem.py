r"""The problem object: one frozen description of a UFM / UFM+ instance (docs/theory.md sections 2, 3, 5.1).

A :class:`UFMProblem` holds what defines the objective -- class sizes (or labels), prototypes,
``n_w``, ``tau``, the batches, non-negativity and whether prototypes are anchors -- once, so that
the solver, the certificates, the closed forms and the CLI take the same object, while solver
settings (method, tolerances, devices) are passed apart.

It also knows the objective's **floor** (docs/theory.md section 5.1): every anchor ``a`` has loss
``l_a >= log P_a`` whatever ``H`` is (``D_a`` contains the ``P_a`` positive terms, and by Jensen the
log of their sum is at least ``log P_a`` plus their mean logit), so

.. math::

    F = \sum_{B} \sum_{a \in B,\ P_a > 0} \log P_a

bounds the objective from below independently of the geometry. The **excess** ``U - F`` of a
loss ``U`` is the part that depends on ``H``; a gap is judged against it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._validation import as_float_array, as_label_tensor, check_bool, check_int, check_nonnegative, check_tau
from .geometry import check_gram

__all__ = ["UFMProblem", "UNIT_TOL"]

#: How far prototypes may be from unit length (float32 round-off).
UNIT_TOL = 1e-6


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


def _class_weights(class_sizes) -> np.ndarray:
    if class_sizes is None or isinstance(class_sizes, (str, bytes)) or not hasattr(class_sizes, "__len__"):
        raise TypeError(f"class_sizes must be a sequence of class sizes, got {type(class_sizes).__name__}")
    w = as_float_array("class_sizes", class_sizes, ndim=1)
    if len(w) < 1 or np.any(w < 0):
        raise ValueError(f"class_sizes must be a non-empty 1-D sequence of sizes >= 0, got {w.tolist()}")
    if not np.any(w > 0):
        raise ValueError("class_sizes must give at least one class a positive size")
    return w


@dataclass(frozen=True, eq=False)
class UFMProblem:
    r"""A UFM (or UFM+) instance: minimise the SCL-with-prototypes objective over unit embeddings.

    The objective is the sum over batches ``B`` and anchors ``a`` of the loss of docs/theory.md section 2
    (:func:`ncgeo.ufm.ufm_objective`); samples are ordered by class unless ``labels`` are given.

    Build it with :meth:`from_sizes` (full batch, real-valued class weights allowed, e.g. expected
    per-batch counts) or :meth:`from_labels` (any batching); the fields are validated and arrays
    are stored read-only.

    Attributes
    ----------
    class_sizes : (k,) float array
        ``n_c`` per class (integers when ``labels`` are given; real weights allowed without).
    labels : (N,) int64 array or None
        Sample labels; ``None`` means the samples are ordered by class (``[0]*n_0 + [1]*n_1 ...``),
        which requires integer sizes whenever the samples themselves are needed.
    prototypes : (d, k) float array or None
        Unit prototype columns ``W``; required when ``n_w > 0``.
    n_w : float
        Copies of each prototype in every batch (real, ``>= 0``; ``0`` or ``>= 1`` with prototype anchors).
    tau : float
        Temperature.
    batches : tuple of int64 arrays or None
        Sample indices of each batch; ``None`` is one full batch.
    nonnegative : bool
        UFM+ (``h_i >= 0``).
    prototypes_as_anchors : bool
        The ``k n_w`` prototype copies are anchors too.
    dim : int
        Embedding dimension ``d`` (default: rows of ``prototypes``, else ``k``).
    """

    class_sizes: np.ndarray
    labels: np.ndarray | None = None
    prototypes: np.ndarray | None = None
    n_w: float = 0.0
    tau: float = 0.1
    batches: tuple | None = None
    nonnegative: bool = False
    prototypes_as_anchors: bool = False
    dim: int | None = None

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        weights = _class_weights(self.class_sizes)
        k = len(weights)
        anchors = check_bool("prototypes_as_anchors", self.prototypes_as_anchors)
        n_w = check_nonnegative("n_w", self.n_w)
        if anchors and 0 < n_w < 1:
            raise ValueError(f"n_w must be 0 or >= 1 when prototypes_as_anchors is set, got {n_w}")
        W = gram = None
        if self.prototypes is not None:
            W = as_float_array("prototypes", self.prototypes, ndim=2)
            if W.shape[1] != k:
                raise ValueError(f"prototypes must have shape (d, {k}) (one column per class), got {W.shape}")
            gram = W.T @ W  # O(k^2 d): computed once, kept for prototype_gram
            check_gram(gram, "prototypes' Gram W^T W", tol=UNIT_TOL, psd=False)
        elif n_w > 0:
            raise ValueError("prototypes are required when n_w > 0")
        dim = self.dim
        if dim is None:
            dim = W.shape[0] if W is not None else k
        dim = check_int("dim", dim, minimum=1)
        if W is not None and W.shape[0] != dim:
            raise ValueError(f"dim must equal the prototypes' dimension {W.shape[0]}, got {dim}")
        labels = self.labels
        if labels is not None:
            labels = as_label_tensor("labels", labels, len(np.asarray(labels)), k).numpy().astype(np.int64)
            counts = np.bincount(labels, minlength=k).astype(float)
            if not np.array_equal(counts, weights):
                raise ValueError(f"class_sizes {weights.tolist()} do not match the label counts {counts.tolist()}")
            labels = _readonly(labels)
        batches = self.batches
        if batches is not None:
            if labels is None:
                if not np.all(weights == np.round(weights)):
                    raise ValueError("batches need integer class sizes (or labels)")
            N = int(round(weights.sum()))
            from .ufm.batching import check_batches  # local: ncgeo.ufm imports this module

            batches = tuple(_readonly(b) for b in check_batches(batches, N))
            if len(batches) == 1 and np.array_equal(np.sort(batches[0]), np.arange(N)):
                batches = None  # one batch of every sample: the full batch
        setattr_(self, "class_sizes", _readonly(weights))
        setattr_(self, "labels", labels)
        setattr_(self, "prototypes", None if W is None else _readonly(W))
        setattr_(self, "_prototype_gram", None if gram is None else _readonly(gram))  # not a field
        setattr_(self, "n_w", n_w)
        setattr_(self, "tau", check_tau(self.tau))
        setattr_(self, "batches", batches)
        setattr_(self, "nonnegative", check_bool("nonnegative", self.nonnegative))
        setattr_(self, "prototypes_as_anchors", anchors)
        setattr_(self, "dim", dim)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_sizes(cls, class_sizes: Sequence[float], prototypes=None, n_w: float = 0.0, tau: float = 0.1, *,
                   nonnegative: bool = False, prototypes_as_anchors: bool = False,
                   dim: int | None = None) -> "UFMProblem":
        """A full-batch problem from class sizes (real-valued weights allowed)."""
        return cls(class_sizes, None, prototypes, n_w, tau, None, nonnegative, prototypes_as_anchors, dim)

    @classmethod
    def from_labels(cls, labels, prototypes=None, n_w: float = 0.0, tau: float = 0.1, *, batches=None,
                    num_classes: int | None = None, nonnegative: bool = False,
                    prototypes_as_anchors: bool = False, dim: int | None = None) -> "UFMProblem":
        """A problem from sample labels (``k`` = prototypes' columns, else ``num_classes``, else
        ``max(labels) + 1``) and optional batches (index arrays into the samples)."""
        y = np.asarray(labels)
        if prototypes is not None:
            k = as_float_array("prototypes", prototypes, ndim=2).shape[1]
        elif num_classes is not None:
            k = check_int("num_classes", num_classes, minimum=1)
        else:
            k = int(as_label_tensor("labels", y, len(y), None).max()) + 1 if len(y) else 1
        y = as_label_tensor("labels", y, len(y), k).numpy()
        sizes = np.bincount(y, minlength=k).astype(float)
        return cls(sizes, y, prototypes, n_w, tau, batches, nonnegative, prototypes_as_anchors, dim)

    def replace(self, **changes: Any) -> "UFMProblem":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- derived quantities -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_sizes)

    @property
    def num_samples(self) -> float:
        """``N = sum_c n_c`` (a float when the class weights are real)."""
        total = float(self.class_sizes.sum())
        return int(round(total)) if self.integral else total

    @property
    def integral(self) -> bool:
        """Whether every class size is an integer (so that samples exist)."""
        return bool(np.all(self.class_sizes == np.round(self.class_sizes)))

    @property
    def full_batch(self) -> bool:
        return self.batches is None

    @property
    def prototype_gram(self) -> np.ndarray | None:
        """``W^T W`` (read-only, computed once when the problem is built), None without prototypes."""
        return self._prototype_gram

    def sample_labels(self) -> np.ndarray:
        """The labels of the samples (``labels``, or the class-ordered labels of integer sizes)."""
        if self.labels is not None:
            return self.labels
        if not self.integral:
            raise ValueError("the problem has real-valued class weights: it has no samples")
        return np.repeat(np.arange(self.num_classes, dtype=np.int64), self.class_sizes.astype(np.int64))

    def batch_class_counts(self) -> list[np.ndarray]:
        """Per batch, the (k,) counts of each class (the class sizes for the full batch)."""
        if self.batches is None:
            return [np.asarray(self.class_sizes, dtype=float)]
        y = self.sample_labels()
        return [np.bincount(y[b], minlength=self.num_classes).astype(float) for b in self.batches]

    def num_anchors(self) -> float:
        r"""``A``: the number of anchors summed over batches (samples, plus ``k n_w`` prototype
        copies per batch with prototypes as anchors)."""
        total = 0.0
        for counts in self.batch_class_counts():
            total += float(counts.sum())
            if self.prototypes_as_anchors and self.n_w > 0:
                total += self.num_classes * self.n_w
        return total

    def floor(self) -> float:
        r"""The floor ``F = sum over anchors of log P_a`` (docs/theory.md section 5.1).

        A sample anchor of class ``c`` in a batch holding ``m_c`` samples of ``c`` has
        ``P = (m_c - 1)_+ + n_w`` positives; a prototype anchor (one of ``n_w`` copies of ``w_c``)
        has ``P = m_c + n_w - 1``. Anchors with ``P = 0`` contribute 0 to the loss and to ``F``.
        The objective is ``>= F`` at every feasible point.
        """
        total = 0.0
        for counts in self.batch_class_counts():
            positives = np.maximum(counts - 1.0, 0.0) + self.n_w
            present = (counts > 0) & (positives > 0)
            total += float(np.sum(counts[present] * np.log(positives[present])))
            if self.prototypes_as_anchors and self.n_w > 0:
                proto_positives = counts + self.n_w - 1.0
                has = proto_positives > 0
                total += float(self.n_w * np.sum(np.log(proto_positives[has])))
        return total

    def __repr__(self) -> str:
        sizes = self.class_sizes
        shown = ", ".join(f"{s:g}" for s in sizes[:6]) + (", ..." if len(sizes) > 6 else "")
        batches = "full" if self.batches is None else f"{len(self.batches)} batches"
        protos = "none" if self.prototypes is None else f"{self.prototypes.shape[0]}x{self.prototypes.shape[1]}"
        return (f"UFMProblem(k={self.num_classes}, sizes=[{shown}], prototypes={protos}, n_w={self.n_w:g}, "
                f"tau={self.tau:g}, batching={batches}, nonnegative={self.nonnegative}, "
                f"prototypes_as_anchors={self.prototypes_as_anchors}, dim={self.dim})")


def check_problem(problem: Any) -> UFMProblem:
    """``problem`` as a :class:`UFMProblem` (``TypeError`` naming it otherwise)."""
    if not isinstance(problem, UFMProblem):
        raise TypeError(f"problem must be an ncgeo.UFMProblem, got {type(problem).__name__}")
    return problem
