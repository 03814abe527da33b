"""Streaming per-class statistics of embeddings: counts, means and the pooled within-class
covariance, accumulated in float64 chunk by chunk (:class:`ClassStatistics`), so that
``N = 10^6`` embeddings of dimension 512 need only ``O(k d + d^2)`` extra memory.

The metrics of :mod:`ncgeo.metrics` are computed from them; :mod:`deep.distributed` sums
them across processes.
"""

from __future__ import annotations

import numpy as np
import torch

from ._validation import as_float_tensor, as_label_tensor, as_real_array, check_device, check_int

__all__ = ["ClassStatistics", "DEFAULT_CHUNK", "as_rows"]

#: Rows converted to float64 at a time.
DEFAULT_CHUNK = 65536


class ClassStatistics:
    r"""Streaming per-class counts, means and pooled within-class covariance.

    Call :meth:`update` with chunks ``(H_chunk, y_chunk)``; all sums are float64 on
    ``device``. The within-class scatter is accumulated around a per-class shift (the
    first chunk's class mean) to avoid cancellation:
    ``N Sigma_W = sum_i (h_i - s_{y_i})(h_i - s_{y_i})^T - sum_c n_c (mu_c - s_c)(mu_c - s_c)^T``.
    State: ``2 k d + d^2 + 2 k`` numbers regardless of the number of samples; an update
    needs ``O(n d)`` more for a chunk of ``n`` rows (converted to float64 chunk by chunk,
    so numpy float32 input of ``N = 10^6`` rows of dimension 512 is never copied whole).
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str | None = None):
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.dim = check_int("dim", dim, minimum=1)
        self.device = check_device("device", device) if device is not None else torch.device("cpu")
        kw = dict(dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(self.num_classes, **kw)
        self._shift = torch.zeros(self.num_classes, self.dim, **kw)
        self._shift_set = torch.zeros(self.num_classes, dtype=torch.bool, device=self.device)
        self._shifted_sum = torch.zeros(self.num_classes, self.dim, **kw)
        self._scatter = torch.zeros(self.dim, self.dim, **kw)

    def update(self, embeddings, labels) -> "ClassStatistics":
        """Add a chunk of embeddings ``(n, d)`` with labels ``(n,)``; returns ``self``."""
        H = as_float_tensor("embeddings", embeddings, ndim=2)
        if H.shape[1] != self.dim:
            raise ValueError(f"embeddings must have {self.dim} columns, got shape {tuple(H.shape)}")
        H = H.detach().to(device=self.device, dtype=torch.float64)
        y = as_label_tensor("labels", labels, H.shape[0], self.num_classes, device=self.device)
        if H.shape[0] == 0:
            return self
        chunk_counts = torch.bincount(y, minlength=self.num_classes).to(torch.float64)
        new = (chunk_counts > 0) & ~self._shift_set
        if bool(new.any()):
            chunk_sums = torch.zeros_like(self._shift).index_add_(0, y, H)
            self._shift[new] = chunk_sums[new] / chunk_counts[new][:, None]
            self._shift_set |= new
        centred = H - self._shift[y]
        self.counts += chunk_counts
        self._shifted_sum.index_add_(0, y, centred)
        self._scatter += centred.T @ centred
        return self

    @classmethod
    def from_embeddings(cls, embeddings, labels, num_classes: int | None = None,
                        chunk_size: int = DEFAULT_CHUNK) -> "ClassStatistics":
        """Accumulate all of ``embeddings`` in chunks of ``chunk_size`` rows.

        Each chunk is converted to float64 (and checked for finiteness) on its own, so the
        input (numpy or torch, any float dtype) is never copied as a whole.
        """
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, minimum=1)
        H = as_rows("embeddings", embeddings)
        device = H.device if isinstance(H, torch.Tensor) else None
        y = as_label_tensor("labels", labels, H.shape[0], num_classes, device=device)
        if num_classes is None:
            num_classes = int(y.max()) + 1 if y.numel() else 1
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        stats = cls(num_classes, H.shape[1], device=device)
        for start in range(0, H.shape[0], chunk_size):
            stats.update(H[start:start + chunk_size], y[start:start + chunk_size])
        return stats

    @property
    def present(self) -> torch.Tensor:
        """Boolean mask of the classes seen so far."""
        return self.counts > 0

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def means(self) -> torch.Tensor:
        """Class means ``M`` of the present classes, shape ``(d, k_present)``, float64."""
        present = self.present
        if not bool(present.any()):
            raise ValueError("no samples were accumulated")
        offset = self._shifted_sum[present] / self.counts[present][:, None]
        return (self._shift[present] + offset).T

    def within_covariance(self) -> torch.Tensor:
        """Pooled within-class covariance ``Sigma_W`` (``d x d``), normalised by ``N``."""
        present = self.present
        if not bool(present.any()):
            raise ValueError("no samples were accumulated")
        offset = self._shifted_sum[present] / self.counts[present][:, None]
        correction = (offset * self.counts[present][:, None]).T @ offset
        sigma = (self._scatter - correction) / self.total
        return 0.5 * (sigma + sigma.T)


def as_rows(name: str, value) -> torch.Tensor | np.ndarray:
    """A 2-D torch tensor (kept as is) or real numpy array (not copied, not cast)."""
    if isinstance(value, torch.Tensor):
        return as_float_tensor(name, value, ndim=2, check_finite=False)
    return as_real_array(name, value, ndim=2)
