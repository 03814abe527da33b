"""Result of a UFM solve, and its ``.npz`` file format.

An ``.npz`` written by :meth:`UFMResult.save_npz` holds

* ``y`` ``(N,)`` int64 labels and either ``H`` ``(N, d)`` float64 embeddings or, in the
  compact form of a collapsed solution (``h_i = m_{y_i}``), ``M`` ``(d, k)`` float64 class
  means (``H`` too only when asked: it is ``N x d``),
* ``W`` ``(d, k)`` float64 prototypes (``(d, 0)`` when the solve had none),
* ``settings``: the solver settings as a JSON string (class sizes, n_w, tau, batching,
  batch size, seed, ... and any caller metadata such as the prototype geometry),
* ``summary``: :meth:`UFMResult.to_dict` as a JSON string (loss, gradient norm, metrics),
* ``batch_indices`` / ``batch_offsets``: the batches of the objective, concatenated
  (batch ``j`` is ``batch_indices[batch_offsets[j]:batch_offsets[j + 1]]``); absent for
  the reshuffled scheme, whose batches change every epoch.

:func:`load_npz` reads it back as a :class:`SavedSolution`.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._io import atomic_write
from ..metrics import GeometryMetrics

__all__ = ["UFMResult", "SavedSolution", "load_npz", "size_runs"]


@dataclass(frozen=True)
class UFMResult:
    """Minimiser found by :func:`ncgeo.ufm.solve_ufm`.

    Attributes
    ----------
    embeddings : (N, d) numpy float64 or None
        Unit-norm embeddings (non-negative for UFM+); ``None`` for a collapsed result, whose
        embeddings are ``class_means[:, labels].T`` (the property :attr:`H` expands them).
    labels : (N,) numpy int64
    W : (d, k) numpy float64 or None
        Prototypes (``None`` when solved without).
    class_sizes : list of int
    loss : float
        Objective at ``H``: sum over batches of the batch loss, summed over anchors
        (docs/theory.md section 2). For ``batching="shuffle"`` the full-batch objective.
    loss_history : list of float
        Objective after every iteration (per epoch for ``"shuffle"``: the sum of that
        epoch's batch losses) of the best restart.
    iterations : int
        Optimiser iterations (epochs for ``"shuffle"``) of the best restart.
    seconds : float
        Wall time of the whole solve, restarts included.
    stopping_reason : str
    grad_norm : float
        Frobenius norm of the Riemannian gradient (UFM) or of the KKT residual (UFM+)
        of the objective at ``H``.
    metrics : GeometryMetrics
        :func:`ncgeo.metrics.geometry_metrics` of ``H``.
    settings : dict
        Everything needed to reproduce the solve, plus caller metadata.
    restart_losses : list of float
        Final objective of every start, in the order of ``settings["starts"]`` (the best is kept).
    batches : list of numpy arrays or None
        Batches of the objective (``None`` for ``"shuffle"``).
    class_means : (d, k) numpy float64 or None
        Unit class means of a collapsed result (the collapsed path), else ``None``.
    certificate : CertificateResult or None
        The certificate computed by the solve itself (the collapsed path), else ``None``.
    """

    embeddings: np.ndarray | None
    labels: np.ndarray
    W: np.ndarray | None
    class_sizes: list[int]
    loss: float
    loss_history: list[float]
    iterations: int
    seconds: float
    stopping_reason: str
    grad_norm: float
    metrics: GeometryMetrics
    settings: dict[str, Any]
    restart_losses: list[float] = field(default_factory=list)
    batches: list[np.ndarray] | None = None
    class_means: np.ndarray | None = None
    certificate: Any = None

    def __post_init__(self) -> None:
        if (self.embeddings is None) == (self.class_means is None):
            raise ValueError("a UFMResult holds either embeddings (N, d) or class_means (d, k)")

    @property
    def H(self) -> np.ndarray:
        """``(N, d)`` embeddings; a collapsed result expands ``class_means[:, labels].T`` at every
        access (``N x d`` floats: keep the array rather than reading the property twice)."""
        if self.embeddings is not None:
            return self.embeddings
        return np.ascontiguousarray(self.class_means.T[self.labels])

    @property
    def num_classes(self) -> int:
        return len(self.class_sizes)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1] if self.embeddings is not None else self.class_means.shape[0])

    def closed_form(self) -> tuple[float, str] | None:
        """``(value, geometry)`` of :func:`ncgeo.closed_form.closed_form_for_setup`, or ``None``."""
        from ..closed_form import closed_form_for_setup

        s = self.settings
        W = self.W if self.W is not None else np.eye(self.dim, self.num_classes)
        return closed_form_for_setup(self.class_sizes, W, s["n_w"], s["tau"], nonnegative=s["nonnegative"],
                                     batching=s["batching"], prototypes_as_anchors=s["prototypes_as_anchors"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: scalars, class sizes, geometry metrics, settings, closed form (and the
        certificate of a collapsed-path solve)."""
        closed = self.closed_form()
        out = {
            "loss": self.loss,
            "class_sizes": list(self.class_sizes),
            "num_samples": self.num_samples,
            "dim": self.dim,
            "iterations": self.iterations,
            "grad_norm": self.grad_norm,
            "seconds": self.seconds,
            "stopping_reason": self.stopping_reason,
            "restart_losses": list(self.restart_losses),
            "closed_form": None if closed is None else {"value": closed[0], "geometry": closed[1],
                                                        "difference": self.loss - closed[0]},
            "geometry": self.metrics.to_dict(),
            "settings": dict(self.settings),
            "loss_history": list(self.loss_history),
        }
        if self.certificate is not None:  # the collapsed path's own certificate
            out["certificate"] = self.certificate.to_dict()
        return out

    def report(self) -> str:
        """Short human-readable report: set-up, loss, closed form, iterations, gradient norm, geometry."""
        s = self.settings
        size_text = size_runs(self.class_sizes)
        scheme = s.get("scheme") or s["batching"]  # e.g. partition / bind (ncgeo solve), else fixed
        batching = scheme if s["batching"] == "full" else (
            f"{scheme} (batch size {s['batch_size']})" if s["batching"] == "shuffle"
            else f"{scheme} (largest batch {s['batch_size']})")
        geometry = s.get("geometry", "given" if self.W is not None else "none")
        m = self.metrics
        stationarity = "KKT residual" if s["nonnegative"] else "Riemannian gradient"
        lines = [
            f"set-up       k = {self.num_classes} classes, N = {self.num_samples:,} (sizes {size_text}), "
            f"d = {self.dim}, n_w = {s['n_w']:g}, tau = {s['tau']:g}",
            f"             prototypes {geometry}, {'UFM+ (ReLU, h >= 0)' if s['nonnegative'] else 'UFM (no ReLU)'}, "
            f"batching {batching}, prototypes as anchors: {'yes' if s['prototypes_as_anchors'] else 'no'}",
            f"loss         {self.loss:.12g}  (sum over anchors of all batches)",
        ]
        closed = self.closed_form()
        if closed is not None:
            what = "simplex ETF" if closed[1] == "etf" else "orthogonal frame"
            lines.append(f"closed form  {closed[0]:.12g}  (collapse to a {what}; loss - closed form = "
                         f"{self.loss - closed[0]:.2e})")
        kinds = s.get("starts", [])
        restarts = "" if len(self.restart_losses) <= 1 else (
            f", best of {len(self.restart_losses)} starts" + (f" ({', '.join(kinds)})" if kinds else ""))
        if self.class_means is not None:
            lines.append(f"path         collapsed path: N = {self.num_samples:,} never materialised "
                         f"({s.get('relaxation', 'no')} relaxation, polished on the collapsed loss over k = "
                         f"{self.num_classes} class means)")
            if s.get("certificate_note"):
                lines.append(f"             certificate: {s['certificate_note']}")
        lines += [
            f"iterations   {self.iterations} from a {s.get('start', 'random')} start in {self.seconds:.2f} s ({self.stopping_reason}{restarts})",
            f"grad norm    {self.grad_norm:.2e}  ({stationarity}, Frobenius norm)",
            f"geometry     NC1 {m.nc1:.2e}, Delta to ETF {m.delta_etf:.2e}, to OF {m.delta_of:.2e}"
            + ("" if m.delta_prototypes is None else f", to prototypes {m.delta_prototypes:.2e}"),
        ]
        if m.alignment is not None:
            lines.append(f"             prototype alignment {m.alignment:.6f}, mean cosine of class means "
                         f"{m.mean_cosine:+.4f}")
        return "\n".join(lines)

    def save_npz(self, path: str | os.PathLike, *, embeddings: bool | None = None) -> None:
        """Write ``y``, ``W``, settings, summary and ``H`` or (collapsed) the class means ``M``
        to ``path`` atomically (see module doc). ``embeddings``: also write ``H`` for a
        collapsed result (default: only when the result holds ``H`` itself)."""
        W = self.W if self.W is not None else np.zeros((self.dim, 0))
        arrays = {}
        if self.class_means is not None:
            arrays["M"] = np.asarray(self.class_means, dtype=np.float64)
        if self.embeddings is not None or embeddings:
            arrays["H"] = np.asarray(self.H, dtype=np.float64)
        arrays.update({
            "y": np.asarray(self.labels, dtype=np.int64),
            "W": np.asarray(W, dtype=np.float64),
            "settings": np.array(json.dumps(self.settings)),
            "summary": np.array(json.dumps(self.to_dict())),
        })
        if self.batches is not None and self.settings.get("batching", "full") != "full":
            arrays["batch_indices"] = np.concatenate(self.batches).astype(np.int64)
            arrays["batch_offsets"] = np.cumsum([0] + [len(b) for b in self.batches]).astype(np.int64)
        atomic_write(path, lambda handle: np.savez(handle, **arrays))


@dataclass(frozen=True)
class SavedSolution:
    """Contents of a UFM ``.npz``: ``H`` (N, d; expanded from the class means ``M`` of a compact
    file), ``labels`` (N,), ``W`` (d, k) or None, ``settings`` and ``summary`` dicts, ``batches``
    (list of index arrays) or None, ``class_means`` (d, k) of a compact file or None."""

    H: np.ndarray
    labels: np.ndarray
    W: np.ndarray | None
    settings: dict[str, Any]
    summary: dict[str, Any]
    batches: list[np.ndarray] | None
    class_means: np.ndarray | None = None


def size_runs(sizes) -> str:
    """Class sizes as runs of equal values, e.g. ``"500 x 1000, 500 x 100"`` (``count x size``)."""
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][1] == size:
            runs[-1][0] += 1
        else:
            runs.append([1, size])
    return ", ".join(f"{count} x {size}" if count > 1 else f"{size}" for count, size in runs)


def load_npz(path: str | os.PathLike) -> SavedSolution:
    """Read a file written by :meth:`UFMResult.save_npz`; a compact file (class means ``M``
    and labels, no ``H``) is expanded to ``H = M[:, y]^T``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"solution file {path!r} does not exist")
    if not zipfile.is_zipfile(path):  # else numpy reports any other file as "pickled data"
        raise ValueError(f"solution file {path!r} is not an .npz archive (written by ncgeo solve --save)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"solution file {path!r} could not be read as an .npz archive: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"solution file {path!r} is not an .npz archive (written by ncgeo solve --save)")
    with data:
        missing = [key for key in ("y", "W", "settings") if key not in data.files]
        if "H" not in data.files and "M" not in data.files:
            missing.insert(0, "H (or the class means M)")
        if missing:
            raise ValueError(f"solution file {path!r} lacks {', '.join(missing)} (not written by ncgeo solve --save)")
        try:
            y, W = data["y"], data["W"]
            M = data["M"] if "M" in data.files else None
            if "H" in data.files:
                H = data["H"]
            else:
                if (M.ndim != 2 or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer)
                        or (len(y) and (y.min() < 0 or y.max() >= M.shape[1]))):
                    raise ValueError(f"class means M {M.shape} and labels y {y.shape} do not match")
                H = np.ascontiguousarray(M.T[y])
            settings = json.loads(str(data["settings"]))
            summary = json.loads(str(data["summary"])) if "summary" in data.files else {}
            batches = None
            if "batch_indices" in data.files:
                index, offsets = data["batch_indices"], data["batch_offsets"]
                if (offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer)
                        or offsets[0] != 0 or offsets[-1] != len(index) or np.any(np.diff(offsets) < 0)):
                    raise ValueError("batch_offsets must be non-decreasing integers from 0 to the length of "
                                     f"batch_indices ({len(index)}), got {offsets.tolist()}")
                batches = [index[offsets[j]:offsets[j + 1]] for j in range(len(offsets) - 1)]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(f"solution file {path!r} could not be read: {exc}") from exc
        except MemoryError as exc:  # a header claiming a huge array
            raise ValueError(f"solution file {path!r} holds arrays too large to load ({exc})") from exc
    if H.ndim != 2 or y.shape != (H.shape[0],) or W.ndim != 2 or W.shape[0] != H.shape[1]:
        raise ValueError(f"solution file {path!r} has inconsistent shapes H {H.shape}, y {y.shape}, W {W.shape}")
    return SavedSolution(H=H, labels=y, W=None if W.shape[1] == 0 else W, settings=settings,
                         summary=summary, batches=batches, class_means=M)
