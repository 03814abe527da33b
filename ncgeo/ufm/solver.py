r"""The UFM solver: minimise the SCL-with-prototypes objective over free unit embeddings.

.. math::

    \min_{H} \; \sum_{B \in \mathcal{B}} \sum_{i \in B} \ell_i(H_B; W, n_w, \tau)
    \quad \text{s.t. } \|h_i\| = 1 \;(\text{and } h_i \ge 0 \text{ for UFM+})

(docs/theory.md section 3), with the batches ``B`` of :func:`ncgeo.ufm.make_batches`.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_bool, check_choice, check_device, check_int, check_positive
from ..metrics import geometry_metrics
from ..problem import UFMProblem, check_problem
from .batching import make_batches, ufm_objective
from .collapsed import minimise_collapsed, solve_collapsed
from .optimiser import riemannian_lbfgs, stationarity_residual
from .progress import _Progress
from .result import UFMResult
from .streaming import available_memory, block_rows, streamed_loss_and_grad

__all__ = ["solve_ufm", "check_memory", "dense_fits", "METHODS", "OPTIONS"]

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


def _memory_need(num_samples: int, dim: int, num_classes: int, largest: int, size: int) -> tuple[int, int]:
    """``(embedding bytes, similarity bytes)`` of a solve (see :func:`check_memory`)."""
    embeddings = SOLVE_ARRAYS * num_samples * dim * size + 8 * (4 * dim * num_classes + 4 * dim * dim)
    return embeddings, BATCH_ARRAYS * largest * largest * size


def dense_fits(num_samples: int, dim: int, num_classes: int, *, dtype="float64", device="cpu") -> bool:
    """Whether a dense full-batch solve (``N x N`` similarities) fits in 90% of the free memory
    (``True`` when the free memory is unknown)."""
    size = torch.finfo(_resolve_dtype(dtype)).bits // 8
    free = available_memory(_resolve_device(device))
    return free is None or sum(_memory_need(num_samples, dim, num_classes, num_samples, size)) <= 0.9 * free


def check_memory(num_samples: int, dim: int, num_classes: int, *, batching: str = "full",
                 batch_size: int | None = None, dtype="float64", device="cpu", nonnegative: bool = False,
                 stream: bool = False) -> None:
    """Raise ``ValueError`` when a solve cannot fit in the free memory.

    The estimate is ``SOLVE_ARRAYS`` arrays of ``N x d`` numbers (embeddings, gradients,
    L-BFGS history), ``BATCH_ARRAYS`` arrays of ``B x B`` numbers for the largest batch
    ``B`` (similarities, masks, log-sum-exp and their gradients; none with ``stream``, whose
    blocks are sized from the memory left), ``4 d k`` float64 for the prototypes and ``4 d^2``
    for the within-class covariance of the metrics, against 90% of the memory available on
    ``device`` now; without a reading nothing is checked. The error starts with ``dim:`` or
    ``batch:`` after the larger part. Called by :func:`solve_ufm` before any allocation (and
    by the CLI, with the ``k`` class rows, before the prototypes are built), so an absurd
    ``dim`` or full batch is one error, not an out-of-memory kill.
    """
    dtype_t, device_t = _resolve_dtype(dtype), _resolve_device(device)
    size = torch.finfo(dtype_t).bits // 8
    largest = num_samples
    if batching != "full" and batch_size is not None:
        largest = min(num_samples, batch_size + (num_classes if batching == "bind" else 0))
    embeddings, similarities = _memory_need(num_samples, dim, num_classes, largest, size)
    if stream:
        similarities = 0
    need = embeddings + similarities
    free = available_memory(device_t)
    if free is None or need <= 0.9 * free:
        return
    if embeddings >= similarities:
        hint = "" if nonnegative else (f"; without ReLU any d >= N + k = {num_samples + num_classes} gives the "
                                       "same optimum as d = N + k")
        what = f"dim: a solve of N = {num_samples} samples in d = {dim} dimensions"
    else:
        hint = ("; use smaller batches (batching partition or bind), fewer samples, or (full batch) the "
                "collapsed path or the streamed loss")
        what = f"batch: a solve with a batch of {largest} samples ({largest} x {largest} similarities)"
    raise ValueError(f"{what} needs about {need / 1e9:.3g} GB, more than 90% of the {free / 1e9:.3g} GB free "
                     f"on {device_t}{hint}")


def _random_rows(rows: int, d: int, nonnegative: bool, generator: torch.Generator, dtype, device) -> torch.Tensor:
    x = torch.randn(rows, d, generator=generator, dtype=torch.float64)
    if nonnegative:
        x = x.abs()
    return torch.nn.functional.normalize(x, dim=1).to(dtype=dtype, device=device)


#: Solver methods of :func:`solve_ufm`.
METHODS = ("auto", "lbfgs", "collapsed", "adam")

#: Solver options of :func:`solve_ufm` and their defaults (``None``: chosen by the method).
OPTIONS = {
    "init": "auto", "restarts": 1, "seed": 0, "device": "cpu", "dtype": None, "grad_tol": None,
    "max_iterations": None, "time_limit": None, "learning_rate": 0.1, "batch_size": None,
    "progress": False, "num_threads": None, "stream": "auto", "block": None, "certify": True,
    "solver": "CLARABEL", "rtol": None, "atol": None,
}


@dataclass(frozen=True)
class _Problem:
    """A validated UFM instance and solver settings, as the private helpers below need them."""

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
    method: str
    batch_size: int | None
    batches: list[np.ndarray]
    seed: int
    grad_tol: float
    max_iterations: int
    learning_rate: float
    time_limit: float | None
    block: int | None  # anchors per block of the streamed full-batch loss, None: dense

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def objective(self, batches):
        """``x -> (ufm_objective, Euclidean gradient)`` over ``batches`` (streamed when ``block`` is set
        and the batch is full)."""
        if self.block is not None and len(batches) == 1 and len(batches[0]) == self.num_samples:
            def streamed(x):
                return streamed_loss_and_grad(x, self.y, self.W, self.n_w, self.tau,
                                              prototypes_as_anchors=self.anchors, block=self.block)
            return streamed

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


#: Options that a method never reads: given with another value than its default, they are refused
#: (``"auto"`` takes ``"lbfgs"`` or ``"collapsed"``, never ``"adam"``). The collapsed path runs in float64 on the CPU.
IGNORED_OPTIONS = {
    "auto": ("learning_rate", "batch_size"),
    "lbfgs": ("learning_rate", "batch_size", "certify", "solver", "rtol", "atol"),
    "adam": ("stream", "block", "certify", "solver", "rtol", "atol"),
    "collapsed": ("init", "restarts", "device", "dtype", "time_limit", "learning_rate", "batch_size", "num_threads",
                  "stream", "block"),
}
_COLLAPSED_RUNS_WITH = {"device": ("cpu",), "dtype": ("float64", "torch.float64")}


def _check_options(method: str, options) -> dict:
    """``OPTIONS`` updated by ``options`` (``TypeError``/``ValueError`` naming the key); options that
    ``method`` would ignore (:data:`IGNORED_OPTIONS`) are refused."""
    check_choice("method", method, METHODS)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"options has unknown keys {', '.join(map(repr, unknown))} (known: {', '.join(OPTIONS)})")
    for key in IGNORED_OPTIONS.get(method, ()):
        value = options.get(key, OPTIONS[key])
        if value is None or value is OPTIONS[key] or str(value) in _COLLAPSED_RUNS_WITH.get(key, ()):
            continue
        if not isinstance(value, bool) and isinstance(value, (numbers.Number, str)) and value == OPTIONS[key]:
            continue
        raise ValueError(f"options['{key}'] does not apply to method {method!r}, which would ignore it "
                         f"(got {value!r}; methods that use it: "
                         f"{', '.join(m for m in METHODS if key not in IGNORED_OPTIONS[m])})")
    o = {**OPTIONS, **options}
    check_choice("options['init']", o["init"], INIT_CHOICES)
    o["restarts"] = check_int("options['restarts']", o["restarts"], minimum=1, maximum=MAX_RESTARTS)
    o["seed"] = check_int("options['seed']", o["seed"], minimum=0)
    if o["seed"] > 2**63 - 1 - 2 * o["restarts"]:  # start r draws from seed + r (a signed 64-bit torch seed)
        raise ValueError(f"options['seed'] must be <= {2**63 - 1 - 2 * o['restarts']} (seed + restart is a 64-bit "
                         f"seed), got {o['seed']}")
    o["learning_rate"] = check_positive("options['learning_rate']", o["learning_rate"])
    if o["time_limit"] is not None:
        o["time_limit"] = check_positive("options['time_limit']", o["time_limit"])
    if o["batch_size"] is not None:
        o["batch_size"] = check_int("options['batch_size']", o["batch_size"], minimum=2)
    if method == "adam" and o["batch_size"] is None:
        raise ValueError("options['batch_size'] is required by method 'adam' (reshuffled batches of that size)")
    if o["stream"] not in ("auto", True, False):
        raise ValueError(f"options['stream'] must be 'auto', True or False, got {o['stream']!r}")
    if o["block"] is not None:
        o["block"] = check_int("options['block']", o["block"], minimum=1)
    o["progress"] = check_bool("options['progress']", o["progress"])
    o["certify"] = check_bool("options['certify']", o["certify"])
    if o["rtol"] is not None or o["atol"] is not None:
        from ..certify.result import check_atol, check_rtol

        for key, check in (("rtol", check_rtol), ("atol", check_atol)):
            if o[key] is not None:
                try:
                    o[key] = check(o[key])
                except (TypeError, ValueError) as exc:
                    raise type(exc)(str(exc).replace(key, f"options['{key}']", 1)) from exc
    o["dtype"] = _resolve_dtype(o["dtype"])
    o["device"] = _resolve_device(o["device"])
    if o["grad_tol"] is None:
        o["grad_tol"] = 1e-9 if o["dtype"] == torch.float64 else 1e-4
    o["grad_tol"] = check_positive("options['grad_tol']", o["grad_tol"])
    if o["max_iterations"] is None:
        o["max_iterations"] = 200 if method == "adam" else 20_000
    o["max_iterations"] = check_int("options['max_iterations']", o["max_iterations"], minimum=0)
    return o


def _resolve_method(problem: UFMProblem, method: str, o: dict) -> tuple[str, int | None]:
    """``(method, block)``: ``auto`` becomes ``lbfgs`` when the dense work fits (or the batch is not
    full), else ``collapsed``; the streamed block size when the full batch is streamed."""
    N, d, k = int(problem.num_samples), problem.dim, problem.num_classes
    full = problem.full_batch
    if method in ("collapsed", "adam") and not full:
        raise ValueError(f"method {method!r} needs a full-batch problem (problem.batches None)")
    if method == "auto":
        method = "lbfgs" if (not full or dense_fits(N, d, k, dtype=o["dtype"], device=o["device"])) else "collapsed"
    if method == "collapsed":
        check_memory(k, d, k, dtype=torch.float64, device="cpu")
        return method, None
    if method == "adam":
        check_memory(N, d, k, batching="partition", batch_size=o["batch_size"], dtype=o["dtype"],
                     device=o["device"], nonnegative=problem.nonnegative)
        # its final full-batch loss and gradient are streamed when the N x N similarities do not fit
        fits = dense_fits(N, d, k, dtype=o["dtype"], device=o["device"])
        return method, None if fits else block_rows(N, k, o["dtype"], o["device"])
    stream = o["stream"]
    if stream == "auto":
        stream = full and not dense_fits(N, d, k, dtype=o["dtype"], device=o["device"])
    if stream and not full:
        raise ValueError("options['stream'] applies to the full batch only")
    if not stream:
        largest = max(len(b) for b in problem.batches) if not full else N
        check_memory(N, d, k, batching="full" if full else "partition", batch_size=None if full else largest,
                     dtype=o["dtype"], device=o["device"], nonnegative=problem.nonnegative)
        return method, None
    check_memory(N, d, k, dtype=o["dtype"], device=o["device"], nonnegative=problem.nonnegative, stream=True)
    return method, o["block"] or block_rows(N, k, o["dtype"], o["device"])


def solve_ufm(problem: UFMProblem, method: str = "auto", *, options: dict | None = None,
              metadata: dict | None = None) -> UFMResult:
    r"""Minimise the UFM (or UFM+) objective of ``problem`` (docs/theory.md section 3).

    The problem (class sizes or labels, prototypes, ``n_w``, ``tau``, batches, non-negativity,
    prototype anchors, ``d``) is a :class:`ncgeo.UFMProblem`; how to solve it is ``method`` plus
    ``options`` (torchdiffeq's convention). Samples are those of ``problem.sample_labels()``
    (ordered by class unless labels are given); the objective is
    :func:`ncgeo.ufm.ufm_objective` over ``problem.batches`` (one full batch when ``None``).

    Methods
    -------
    ``"lbfgs"``
        Riemannian L-BFGS on the product of spheres (:func:`ncgeo.ufm.riemannian_lbfgs`; UFM+:
        projected steps on the non-negative part, which never produce an all-zero row) until
        the Riemannian gradient norm (UFM+: KKT residual norm) is ``<= grad_tol``. A full batch
        whose ``N x N`` similarities do not fit in memory is streamed in row blocks
        (:mod:`ncgeo.ufm.streaming`, same values to round-off, ``O(N d + b N)`` memory).
    ``"collapsed"`` (full batch)
        The class-space path :func:`ncgeo.ufm.collapsed.solve_collapsed`: orbit (or reduced)
        program, its collapsed optimum polished on the collapsed loss, certified; nothing of
        size ``N x N`` is formed and ``H`` is not stored (``UFMResult.class_means``), so
        ``N = 10^6`` costs what ``N = k`` does. ``result.certificate`` holds the certificate.
    ``"adam"`` (full-batch problem)
        Reshuffled mini-batches of ``options["batch_size"]``: ``max_iterations`` epochs of Adam
        (Riemannian gradient, rows re-projected after every step, cosine-decayed
        ``learning_rate``); ``loss`` and ``grad_norm`` are those of the full-batch objective.
    ``"auto"`` (default)
        ``"lbfgs"``, or ``"collapsed"`` for a full batch whose dense solve does not fit in memory.

    Starts of ``"lbfgs"``/``"adam"`` (``init``): ``"random"`` draws uniform rows on the
    (non-negative) sphere; ``"collapsed"`` first minimises the collapsed loss over ``k`` class
    directions and starts from every sample at its class direction (stationary for the full
    batch, so the polish needs few ``O(N^2 d)`` evaluations; it can be a saddle). ``"auto"``
    runs, for the full batch with L-BFGS, the collapsed start followed by ``restarts`` random
    starts when ``N <= 2000`` (``restarts - 1`` above); otherwise ``restarts`` random starts.
    Start ``r`` draws from ``torch.Generator().manual_seed(seed + r)``; the lowest loss is kept
    (ties within round-off keep the earlier start). Global optimality is the job of the
    certificates (:mod:`ncgeo.certify`).

    Options (``OPTIONS`` holds the defaults)
    ----------------------------------------
    A method refuses (``ValueError``) an option it never reads when it is given another value than its
    default (:data:`IGNORED_OPTIONS`, e.g. ``batch_size`` with ``"lbfgs"`` or ``"auto"``, ``restarts`` or
    ``dtype="float32"`` with ``"collapsed"``); ``"auto"`` accepts the options of both of its paths.

    init, restarts, seed
        Starts (above).
    device, dtype
        Torch device and ``float32``/``float64`` (default float64) of ``"lbfgs"``/``"adam"``;
        the collapsed path runs in float64 on the CPU (its work is ``k x k``).
    grad_tol : float
        Stopping tolerance (default ``1e-9`` in float64, ``1e-4`` in float32).
    max_iterations : int
        Iteration cap (default 20000), epochs of ``"adam"`` (default 200).
    time_limit : float
        Seconds per start after which the optimiser stops.
    learning_rate : float, batch_size : int
        Of ``"adam"``.
    progress : bool
        A progress line on stderr once a solve runs longer than 2 s.
    num_threads : int
        CPU threads of torch during the solve (restored afterwards); default 1 when the largest
        batch has at most 1024 samples, else torch's setting.
    stream : {"auto", True, False}, block : int
        Stream the full-batch loss (``"auto"``: when the dense one does not fit); anchors per
        block (default from the free memory, :func:`ncgeo.ufm.streaming.block_rows`).
    certify : bool, solver : str, rtol : float, atol : float
        Of ``"collapsed"``: certify the candidate, conic solver of its relaxation, accepted gap
        ``rtol (U - F) + atol A`` (defaults ``ncgeo.certify.DEFAULT_RTOL``, ``DEFAULT_ATOL``).

    Parameters
    ----------
    problem : UFMProblem
        Integer class sizes ``>= 1``, ``k >= 2`` classes.
    method : {"auto", "lbfgs", "collapsed", "adam"}
    options : dict, optional
    metadata : dict, optional
        Extra entries for ``settings`` (e.g. the name of the prototype geometry).

    Returns
    -------
    UFMResult
    """
    start_time = time.perf_counter()
    problem = check_problem(problem)
    o = _check_options(method, options)
    if metadata is not None:  # checked now, not after minutes of solving
        if not isinstance(metadata, dict) or not all(isinstance(key, str) for key in metadata):
            raise TypeError(f"metadata must be a dict with string keys, got {type(metadata).__name__}")
        clashes = sorted(set(metadata) & set(SETTINGS_KEYS))
        if clashes:
            raise ValueError(f"metadata must not redefine the solve's own settings: {', '.join(clashes)}")
    sizes_f = problem.class_sizes
    if problem.num_classes < 2 or not problem.integral or np.any(sizes_f < 1):
        raise ValueError(f"problem.class_sizes must be integers >= 1 for k >= 2 classes (samples to solve for), "
                         f"got {sizes_f.tolist()[:10]}")
    sizes = [int(s) for s in sizes_f]
    k, d = len(sizes), problem.dim
    resolved, block = _resolve_method(problem, method, o)
    labels = np.array(problem.sample_labels())  # a writable copy
    N = labels.shape[0]
    W = None if problem.prototypes is None else np.array(problem.prototypes)
    settings = dict(
        class_sizes=sizes, n_w=problem.n_w, tau=problem.tau, dim=d, nonnegative=problem.nonnegative,
        batching="shuffle" if resolved == "adam" else ("full" if problem.full_batch else "fixed"),
        batch_size=o["batch_size"] if resolved == "adam" else (
            None if problem.full_batch else max(len(b) for b in problem.batches)),  # fixed: the largest batch
        prototypes_as_anchors=problem.prototypes_as_anchors, method=resolved, requested_method=method,
        restarts=o["restarts"], seed=o["seed"], device=str(o["device"]), dtype=str(o["dtype"]).replace("torch.", ""),
        grad_tol=o["grad_tol"], max_iterations=o["max_iterations"], init=o["init"], learning_rate=o["learning_rate"],
        time_limit=o["time_limit"], stream_block=block, relaxation=None, certificate_note=None,
        **(metadata or {}))
    if resolved == "collapsed":
        return _collapsed_result(problem, o, labels, W, settings, start_time)
    batches = make_batches(labels, "full") if problem.full_batch else [np.array(b) for b in problem.batches]
    starts = _start_kinds(o["init"], "shuffle" if resolved == "adam" else ("full" if problem.full_batch else "fixed"),
                          o["restarts"], N)
    largest = min(N, o["batch_size"]) if resolved == "adam" else (
        min(N, block) if block is not None else max(len(b) for b in batches))
    previous_threads = torch.get_num_threads()
    num_threads = o["num_threads"]
    if num_threads is None:
        num_threads = 1 if largest <= 1024 else previous_threads
    torch.set_num_threads(check_int("options['num_threads']", num_threads, minimum=1))
    try:
        inner = _Problem(
            sizes=sizes, labels=labels, y=torch.as_tensor(labels, device=o["device"]),
            W=None if W is None else torch.as_tensor(W, dtype=o["dtype"], device=o["device"]), n_w=problem.n_w,
            tau=problem.tau, anchors=problem.prototypes_as_anchors, nonnegative=problem.nonnegative, dim=d,
            dtype=o["dtype"], device=o["device"], method=resolved, batch_size=o["batch_size"], batches=batches,
            seed=o["seed"], grad_tol=o["grad_tol"], max_iterations=o["max_iterations"],
            learning_rate=o["learning_rate"], time_limit=o["time_limit"], block=block)
        best, restart_losses = _run_restarts(inner, starts, _Progress(o["progress"], len(starts)))
    finally:
        torch.set_num_threads(previous_threads)
    H = best["x"].detach().to(dtype=torch.float64, device="cpu").numpy()
    settings.update(starts=starts, start=best["start"])
    return UFMResult(
        embeddings=H, labels=labels, W=W, class_sizes=sizes, loss=best["value"], loss_history=best["history"],
        iterations=best["iterations"], seconds=time.perf_counter() - start_time, stopping_reason=best["reason"],
        grad_norm=best["grad_norm"], metrics=geometry_metrics(H, labels, W, num_classes=k), settings=settings,
        restart_losses=restart_losses, batches=None if resolved == "adam" else batches,
    )


def _collapsed_result(problem: UFMProblem, o: dict, labels: np.ndarray, W, settings: dict,
                      start_time: float) -> UFMResult:
    """The collapsed path's :class:`UFMResult` (class means stored, ``H`` expanded on demand)."""
    grad_tol, max_iterations = min(o["grad_tol"], 1e-10), min(o["max_iterations"], 5000)
    settings.update(grad_tol=grad_tol, max_iterations=max_iterations)  # the values the collapsed path uses
    out = solve_collapsed(problem, grad_tol=grad_tol, max_iterations=max_iterations,
                          seed=o["seed"], certify=o["certify"], solver=o["solver"], rtol=o["rtol"], atol=o["atol"])
    k = problem.num_classes
    settings.update(starts=["collapsed"], start="collapsed", relaxation=out.relaxation,
                    certificate_note=out.certificate_note, device="cpu", dtype="float64")
    metrics = geometry_metrics(out.means.T, np.arange(k), W, num_classes=k)  # one row per class: H collapsed
    return UFMResult(
        embeddings=None, class_means=out.means, labels=labels, W=W, class_sizes=[int(s) for s in problem.class_sizes],
        loss=out.loss, loss_history=out.history, iterations=out.iterations,
        seconds=time.perf_counter() - start_time, stopping_reason=out.reason, grad_norm=out.grad_norm,
        metrics=metrics, settings=settings, restart_losses=[out.loss], batches=[np.arange(len(labels))],
        certificate=out.certificate)


#: The keys of ``UFMResult.settings`` that the solve itself writes (``metadata`` adds others).
SETTINGS_KEYS = ("class_sizes", "n_w", "tau", "dim", "nonnegative", "batching", "batch_size",
                 "prototypes_as_anchors", "method", "requested_method", "restarts", "seed", "device", "dtype",
                 "grad_tol", "max_iterations", "init", "starts", "start", "learning_rate", "time_limit",
                 "stream_block", "relaxation", "certificate_note")

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
        if p.method == "adam":
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
