r"""The UFM solver: minimise the SCL-with-prototypes objective over free unit embeddings.

.. math::

    \min_{H} \; \sum_{B \in \mathcal{B}} \sum_{i \in B} \ell_i(H_B; W, n_w, \tau)
    \quad \text{s.t. } \|h_i\| = 1 \;(\text{and } h_i \ge 0 \text{ for UFM+})

(THEORY.md section 3), with the batches ``B`` of :func:`ncgeo.ufm.make_batches`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .._validation import (
    as_float_array,
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_nonnegative,
    check_positive, check_tau)
from ..classes import check_class_sizes, labels_from_sizes
from ..metrics import geometry_metrics
from ..progress import Progress
from .batching import BATCHING_SCHEMES, make_batches, ufm_objective
from .collapsed import minimise_collapsed
from .optimiser import riemannian_lbfgs, stationarity_residual
from .result import UFMResult

__all__ = ["solve_ufm", "check_memory"]

INIT_CHOICES = ("auto", "collapsed", "random")
AUTO_RANDOM_START_MAX_SAMPLES = 2000  # init="auto": add a random start up to this N


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float64
    names = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        return names[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def _resolve_device(device) -> torch.device:
    resolved = check_device("device", device)
    if resolved.type == "meta":  # shapes only: there is no value to minimise
        raise ValueError(f"device {device!r} holds no values; a solve needs a real device such as 'cpu' or 'cuda'")
    return resolved


#: Arrays of N x d numbers a solve holds at once: point, gradients and trial points, and
#: the L-BFGS history (20 pairs, projected again in every two-loop recursion).
SOLVE_ARRAYS = 100
#: Arrays of B x B numbers one loss and gradient of a batch of B samples holds at once
#: (4.1 measured as peak memory of a full-batch solve at B = 6000, float64; a small margin,
#: so that the check stops absurd sizes without refusing ones that fit).
BATCH_ARRAYS = 5


def _available_memory(device: torch.device) -> int | None:
    """Bytes free for a solve on ``device`` (``MemAvailable`` on Linux), ``None`` if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(num_samples: int, dim: int, num_classes: int, *, batching: str = "full",
                 batch_size: int | None = None, dtype="float64", device="cpu", nonnegative: bool = False) -> None:
    """Raise ``ValueError`` when a solve cannot fit in the free memory.

    The estimate is ``SOLVE_ARRAYS`` arrays of ``N x d`` numbers (embeddings, gradients,
    L-BFGS history), ``BATCH_ARRAYS`` arrays of ``B x B`` numbers for the largest batch
    ``B`` (similarities, masks, log-sum-exp and their gradients), ``4 d k`` float64 for the
    prototypes and ``4 d^2`` for the within-class covariance of the metrics, against 90% of
    the memory available on ``device`` now; without a reading nothing is checked. The
    error starts with ``dim:`` or ``batch:`` after the larger part. Called by
    :func:`solve_ufm` before any allocation (and by the CLI before the prototypes are
    built), so an absurd ``dim`` or full batch is one error, not an out-of-memory kill.
    """
    dtype_t, device_t = _resolve_dtype(dtype), _resolve_device(device)
    size = torch.finfo(dtype_t).bits // 8
    largest = num_samples
    if batching != "full" and batch_size is not None:
        largest = min(num_samples, batch_size + (num_classes if batching == "bind" else 0))
    embeddings = SOLVE_ARRAYS * num_samples * dim * size + 8 * (4 * dim * num_classes + 4 * dim * dim)
    similarities = BATCH_ARRAYS * largest * largest * size
    need = embeddings + similarities
    free = _available_memory(device_t)
    if free is None or need <= 0.9 * free:
        return
    if embeddings >= similarities:
        hint = "" if nonnegative else (f"; without ReLU any d >= N + k = {num_samples + num_classes} gives the "
                                       "same optimum as d = N + k")
        what = f"dim: a solve of N = {num_samples} samples in d = {dim} dimensions"
    else:
        hint = "; use smaller batches (batching partition or bind) or fewer samples"
        what = f"batch: a solve with a batch of {largest} samples ({largest} x {largest} similarities)"
    raise ValueError(f"{what} needs about {need / 1e9:.3g} GB, more than 90% of the {free / 1e9:.3g} GB free "
                     f"on {device_t}{hint}")


def _resolve_prototypes(prototypes, k: int, dim: int | None, n_w: float) -> tuple[np.ndarray | None, int]:
    if prototypes is None:
        if n_w > 0:
            raise ValueError("prototypes are required when n_w > 0")
        return None, (k if dim is None else check_int("dim", dim, minimum=1))
    W = as_float_array("prototypes", prototypes, ndim=2)
    if W.shape[1] != k:
        raise ValueError(f"prototypes must have k = {k} columns (one per class), got shape {W.shape}")
    norms = np.linalg.norm(W, axis=0)
    if np.any(np.abs(norms - 1.0) > 1e-6):
        raise ValueError(f"prototypes must have unit columns; column {int(np.argmax(np.abs(norms - 1)))} "
                         f"has norm {norms[int(np.argmax(np.abs(norms - 1)))]:.6g}")
    if dim is not None and check_int("dim", dim, minimum=1) != W.shape[0]:
        raise ValueError(f"dim must equal the number of rows of prototypes ({W.shape[0]}), got {dim}")
    return W / norms, W.shape[0]


class _Progress:
    """The solve's progress on stderr (:class:`ncgeo.progress.Progress`, one bar per restart),
    shown once a restart runs longer than ``after`` seconds."""

    def __init__(self, enabled: bool, restarts: int, after: float = 2.0):
        self.enabled, self.restarts, self.after = enabled, restarts, after
        self.restart = 0
        self._bar, self._bar_restart = None, None

    def _label(self) -> str:
        return f"solving, restart {self.restart + 1}/{self.restarts}"

    def _current(self, unit: str) -> Progress:
        if self._bar_restart != self.restart:  # a new restart: a new bar
            self.close()
            self._bar = Progress(self._label(), unit=f"{unit}s", enabled=self.enabled, delay=self.after)
            self._bar_restart = self.restart
        return self._bar

    def __call__(self, iteration: int, value: float, grad_norm: float, unit: str = "iteration") -> None:
        gradient = {} if grad_norm != grad_norm else {"grad_norm": f"{grad_norm:.2e}"}  # NaN: not computed
        self._current(unit).moveto(iteration, loss=f"{value:.10g}", **gradient)

    def stage(self, message: str) -> None:
        """Announce a long step (used before O(N^2 d) work on large problems)."""
        self._current("iteration").message(f"{self._label()}: {message}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._bar_restart = None, None


def _random_rows(rows: int, d: int, nonnegative: bool, generator: torch.Generator, dtype, device) -> torch.Tensor:
    x = torch.randn(rows, d, generator=generator, dtype=torch.float64)
    if nonnegative:
        x = x.abs()
    return torch.nn.functional.normalize(x, dim=1).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class _Problem:
    """A validated UFM instance, as the private helpers below need it."""

    sizes: list[int]
    labels: np.ndarray
    y: torch.Tensor
    W: torch.Tensor | None
    n_w: float
    tau: float
    anchors: bool
    nonnegative: bool
    dim: int
    dtype: torch.dtype
    device: torch.device
    batching: str
    batch_size: int | None
    batches: list[np.ndarray] | None
    seed: int
    grad_tol: float
    max_iterations: int
    learning_rate: float
    time_limit: float | None

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def objective(self, batches):
        """``x -> (ufm_objective, Euclidean gradient)`` over ``batches``."""
        def evaluate(x):
            x = x.detach().requires_grad_(True)
            value = ufm_objective(x, self.y, self.W, self.n_w, self.tau, batches, self.anchors, validate=False)
            (grad,) = torch.autograd.grad(value, x)
            return value.detach(), grad
        return evaluate


def _collapsed_start(problem: _Problem, generator: torch.Generator) -> torch.Tensor:
    """Solve the reduced problem over the k class directions (``collapsed_loss``); returns ``(k, d)`` rows."""
    p = problem
    x0 = _random_rows(len(p.sizes), p.dim, p.nonnegative, generator, p.dtype, p.device)
    tol = max(p.grad_tol * 1e-2, 10 * torch.finfo(p.dtype).eps)
    return minimise_collapsed(x0, p.sizes, p.W, p.n_w, p.tau, nonnegative=p.nonnegative,
                              prototypes_as_anchors=p.anchors, grad_tol=tol, max_iterations=5000,
                              single_thread=True).x


def solve_ufm(
    class_sizes: Sequence[int],
    prototypes=None,
    n_w: float = 0.0,
    tau: float = 0.1,
    dim: int | None = None,
    nonnegative: bool = False,
    batching: str = "full",
    batch_size: int | None = None,
    prototypes_as_anchors: bool = False,
    restarts: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    grad_tol: float | None = None,
    max_iterations: int | None = None,
    init: str = "auto",
    learning_rate: float = 0.1,
    time_limit: float | None = None,
    progress: bool = False,
    metadata: dict | None = None,
    num_threads: int | None = None,
) -> UFMResult:
    r"""Minimise the UFM (or UFM+) objective of THEORY.md section 3.

    Samples ``0..N-1`` are ordered by class (``labels = [0]*n_0 + [1]*n_1 + ...``). The
    objective is :func:`ncgeo.ufm.ufm_objective` over the batches of
    :func:`ncgeo.ufm.make_batches`.

    * ``"full"``, ``"partition"``, ``"bind"``: the batches are fixed, the objective is
      deterministic and is minimised by Riemannian L-BFGS on the product of spheres
      (:func:`ncgeo.ufm.optimiser.riemannian_lbfgs`; for UFM+ projected steps on the
      non-negative part of the sphere, which never produce an all-zero row) until the
      Riemannian gradient norm (UFM+: KKT residual norm) is ``<= grad_tol``.
    * ``"shuffle"``: ``max_iterations`` epochs of Adam (Riemannian gradient, rows
      re-projected after every step, cosine-decayed ``learning_rate``) over freshly
      shuffled batches; ``loss`` and ``grad_norm`` are then those of the full-batch
      objective (one batch holding every sample) at the final point.

    Starts (``init``): ``"random"`` draws uniform rows on the (non-negative) sphere;
    ``"collapsed"`` first minimises the reduced problem over ``k`` class directions
    (:func:`ncgeo.closed_form.collapsed_loss`, cost independent of ``N``) and starts
    from every sample at its class direction. That point is stationary for the full
    batch (the objective is symmetric under permutations within a class), so the
    full-batch polish needs a handful of ``O(N^2 d)`` evaluations even at ``N = 10^4``.
    It can be a saddle when collapse is not optimal (e.g. some imbalanced set-ups with
    prototypes, where a random start ends slightly lower), so ``"auto"`` (default) runs,
    for the full batch, the collapsed start followed by ``restarts`` random starts when
    ``N <= 2000`` (``restarts - 1`` above, where each evaluation is expensive); for
    other batchings ``restarts`` random starts. ``"collapsed"`` / ``"random"`` use that
    kind for all ``restarts`` starts. Start ``r`` draws from
    ``torch.Generator().manual_seed(seed + r)``; the lowest loss is kept (ties within
    round-off keep the earlier start), and
    ``settings["starts"]`` / ``settings["start"]`` record the kinds and the winner.
    Global optimality is the job of the certificates (:mod:`ncgeo.certify`).

    Parameters
    ----------
    class_sizes : sequence of int
        ``n_c >= 1`` per class, ``k >= 2`` classes.
    prototypes : (d, k) array, optional
        Unit prototypes ``W``; required when ``n_w > 0``, also used for the metrics.
    n_w : float
        Copies of each prototype in every batch (``>= 0``).
    tau : float
        Temperature ``> 0``.
    dim : int, optional
        Embedding dimension ``d``; defaults to the rows of ``prototypes``, else ``k``.
    nonnegative : bool
        UFM+ (``h_i >= 0``, a final ReLU).
    batching : {"full", "partition", "shuffle", "bind"}
    batch_size : int, optional
        Required unless ``batching="full"``.
    prototypes_as_anchors : bool
        Prototype copies are anchors too (:func:`ncgeo.losses.scl_prototype_loss`).
    restarts : int
        Number of starts (``>= 1``; see ``init`` for the extra collapsed start of ``"auto"``).
    seed : int
        Seed of the starts and of the batches.
    device, dtype
        Torch device and ``float32``/``float64`` (default float64 on every device).
    grad_tol : float, optional
        Stopping tolerance (default ``1e-9`` in float64, ``1e-4`` in float32).
    max_iterations : int, optional
        Iteration cap (default 20000), or number of epochs for ``"shuffle"`` (default 200).
    init : {"auto", "collapsed", "random"}
    learning_rate : float
        Initial Adam step size for ``"shuffle"`` (cosine-decayed to 0 over the epochs).
    time_limit : float, optional
        Seconds per restart after which the optimiser stops.
    progress : bool
        Print a progress line on stderr when the solve takes longer than 2 s.
    metadata : dict, optional
        Extra entries for ``settings`` (e.g. the name of the prototype geometry).
    num_threads : int, optional
        CPU threads of torch during the solve (restored afterwards). Default: 1 when the
        largest batch has at most 1024 samples (small kernels gain nothing from threads and
        lose much to them on a busy machine), else torch's setting.

    Returns
    -------
    UFMResult
    """
    start_time = time.perf_counter()
    sizes = check_class_sizes(class_sizes, min_classes=2)
    k = len(sizes)
    n_w = check_nonnegative("n_w", n_w)
    tau = check_tau(tau)
    check_choice("batching", batching, BATCHING_SCHEMES)
    check_choice("init", init, INIT_CHOICES)
    restarts = check_int("restarts", restarts, minimum=1, maximum=MAX_RESTARTS)
    seed = check_int("seed", seed, minimum=0)
    if seed > 2**63 - 1 - 2 * restarts:  # start r draws from seed + r (a signed 64-bit torch seed)
        raise ValueError(f"seed must be <= {2**63 - 1 - 2 * restarts} (seed + restart is a 64-bit seed), got {seed}")
    learning_rate = check_positive("learning_rate", learning_rate)
    nonnegative = check_bool("nonnegative", nonnegative)
    prototypes_as_anchors = check_bool("prototypes_as_anchors", prototypes_as_anchors)
    if time_limit is not None:
        time_limit = check_positive("time_limit", time_limit)
    if metadata is not None:  # checked now, not after minutes of solving
        if not isinstance(metadata, dict) or not all(isinstance(key, str) for key in metadata):
            raise TypeError(f"metadata must be a dict with string keys, got {type(metadata).__name__}")
        clashes = sorted(set(metadata) & set(SETTINGS_KEYS))
        if clashes:
            raise ValueError(f"metadata must not redefine the solve's own settings: {', '.join(clashes)}")
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=2)
    if prototypes_as_anchors and 0 < n_w < 1:
        raise ValueError(f"n_w must be 0 or >= 1 when prototypes_as_anchors is set, got {n_w}")
    dtype_t = _resolve_dtype(dtype)
    device_t = _resolve_device(device)
    grad_tol = (1e-9 if dtype_t == torch.float64 else 1e-4) if grad_tol is None else check_positive("grad_tol", grad_tol)
    shuffle = batching == "shuffle"
    if max_iterations is None:
        max_iterations = 200 if shuffle else 20_000
    max_iterations = check_int("max_iterations", max_iterations, minimum=0)
    W, d = _resolve_prototypes(prototypes, k, dim, n_w)
    check_memory(sum(sizes), d, k, batching=batching, batch_size=batch_size, dtype=dtype_t, device=device_t,
                 nonnegative=nonnegative)
    labels = labels_from_sizes(sizes)
    N = labels.shape[0]
    batches = None if shuffle else make_batches(labels, batching, batch_size, seed)
    if shuffle:
        make_batches(labels, batching, batch_size, seed)  # validates batch_size
    y_t = torch.as_tensor(labels, device=device_t)
    W_t = None if W is None else torch.as_tensor(W, dtype=dtype_t, device=device_t)
    starts = _start_kinds(init, batching, restarts, N)

    largest = min(N, batch_size) if shuffle else max(len(b) for b in batches)
    previous_threads = torch.get_num_threads()
    if num_threads is None:
        num_threads = 1 if largest <= 1024 else previous_threads
    torch.set_num_threads(check_int("num_threads", num_threads, minimum=1))
    try:
        problem = _Problem(
            sizes=sizes, labels=labels, y=y_t, W=W_t, n_w=n_w, tau=tau, anchors=prototypes_as_anchors,
            nonnegative=nonnegative, dim=d, dtype=dtype_t, device=device_t, batching=batching,
            batch_size=batch_size, batches=batches, seed=seed, grad_tol=grad_tol, max_iterations=max_iterations,
            learning_rate=learning_rate, time_limit=time_limit)
        best, restart_losses = _run_restarts(problem, starts, _Progress(progress, len(starts)))
    finally:
        torch.set_num_threads(previous_threads)
    H = best["x"].detach().to(dtype=torch.float64, device="cpu").numpy()
    settings = dict(
        class_sizes=sizes, n_w=n_w, tau=tau, dim=d, nonnegative=nonnegative, batching=batching,
        batch_size=batch_size, prototypes_as_anchors=prototypes_as_anchors, restarts=restarts, seed=seed,
        device=str(device_t), dtype=str(dtype_t).replace("torch.", ""), grad_tol=grad_tol,
        max_iterations=max_iterations, init=init,
        starts=starts, start=best["start"], learning_rate=learning_rate, time_limit=time_limit,
        **(metadata or {}),
    )
    return UFMResult(
        H=H, labels=labels, W=W, class_sizes=sizes, loss=best["value"], loss_history=best["history"],
        iterations=best["iterations"], seconds=time.perf_counter() - start_time, stopping_reason=best["reason"],
        grad_norm=best["grad_norm"], metrics=geometry_metrics(H, labels, W, num_classes=k), settings=settings,
        restart_losses=restart_losses, batches=batches,
    )


#: The keys of ``UFMResult.settings`` that the solve itself writes (``metadata`` adds others).
SETTINGS_KEYS = ("class_sizes", "n_w", "tau", "dim", "nonnegative", "batching", "batch_size",
                 "prototypes_as_anchors", "restarts", "seed", "device", "dtype", "grad_tol", "max_iterations",
                 "init", "starts", "start", "learning_rate", "time_limit")

#: More starts than this are a typo, not a search (each is a full solve).
MAX_RESTARTS = 10_000


def _start_kinds(init: str, batching: str, restarts: int, num_samples: int) -> list[str]:
    """Kind of every start: ``"collapsed"`` or ``"random"`` (see :func:`solve_ufm`, ``init``)."""
    if init != "auto":
        return [init] * restarts
    if batching != "full":
        return ["random"] * restarts
    extra = restarts if num_samples <= AUTO_RANDOM_START_MAX_SAMPLES else restarts - 1
    return ["collapsed"] + ["random"] * extra


def _run_restarts(problem: _Problem, starts: list[str], reporter: _Progress):
    """Run every start; returns ``(best run dict, final loss of every start)``."""
    p = problem
    large = p.num_samples >= 2000
    best = None
    restart_losses = []
    for restart, kind in enumerate(starts):
        reporter.restart = restart
        generator = torch.Generator().manual_seed(p.seed + restart)
        use_collapsed = kind == "collapsed"
        if use_collapsed:
            if large:
                reporter.stage("reduced problem over the k class directions")
            x0 = _collapsed_start(p, generator)[p.y]
        else:
            x0 = _random_rows(p.num_samples, p.dim, p.nonnegative, generator, p.dtype, p.device)
        if p.batching == "shuffle":
            run = _adam_epochs(p, x0, reporter)
            value, grad = p.objective(make_batches(p.labels, "full"))(run["x"])
            run.update(value=float(value), grad_norm=float(stationarity_residual(run["x"], grad, p.nonnegative).norm()))
        else:
            if large:
                reporter.stage(f"{'full-batch polish' if use_collapsed else 'L-BFGS'} on N = {p.num_samples} "
                               f"samples (each loss + gradient costs O(N^2 d))")
            out = riemannian_lbfgs(p.objective(p.batches), x0, nonnegative=p.nonnegative, grad_tol=p.grad_tol,
                                   max_iterations=p.max_iterations, time_limit=p.time_limit, callback=reporter)
            run = dict(x=out.x, value=out.value, grad_norm=out.grad_norm, iterations=out.iterations,
                       history=out.history, reason=out.reason)
        run["start"] = kind
        restart_losses.append(run["value"])
        # a later start wins only when lower by more than round-off (ties keep the earlier one)
        if best is None or run["value"] < best["value"] - 100 * torch.finfo(p.dtype).eps * abs(best["value"]):
            best = run
    reporter.close()
    return best, restart_losses


def _adam_epochs(problem: _Problem, x0: torch.Tensor, reporter: _Progress) -> dict:
    """Reshuffled mini-batches: Adam on the Riemannian gradient, rows re-projected after each step."""
    p = problem
    start = time.perf_counter()
    X = x0.clone()
    optimiser = torch.optim.Adam([X], lr=p.learning_rate)
    epochs = p.max_iterations
    steps_per_epoch = len(make_batches(p.labels, "shuffle", p.batch_size, p.seed, 0))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, epochs * steps_per_epoch))
    history = []
    reason = f"completed {epochs} epochs"
    for epoch in range(epochs):
        epoch_loss = 0.0
        for index in make_batches(p.labels, "shuffle", p.batch_size, p.seed, epoch):
            value, grad = p.objective([index])(X)
            with torch.no_grad():
                previous = X.clone()
                X.grad = grad - (grad * X).sum(dim=1, keepdim=True) * X
                optimiser.step()
                projected = X.clamp(min=0.0) if p.nonnegative else X
                norms = projected.norm(dim=1, keepdim=True)
                dead = norms <= torch.finfo(X.dtype).tiny * 1e6  # a row would vanish: keep it where it was
                X.copy_(torch.where(dead, previous, projected / norms.clamp_min(torch.finfo(X.dtype).tiny)))
            schedule.step()
            epoch_loss += float(value)
        history.append(epoch_loss)
        reporter(epoch + 1, epoch_loss, float("nan"), unit="epoch")
        if p.time_limit is not None and time.perf_counter() - start > p.time_limit:
            reason = f"time limit reached after {epoch + 1} epochs"
            break
    return dict(x=X.detach(), iterations=len(history), history=history, reason=reason)
