r"""Prototype constructors and target Gram matrices.

Every constructor returns a ``(d, k)`` float64 numpy array whose ``k`` columns are unit
vectors in ``R^d`` (the convention of :mod:`ncgeo.losses`: ``W = [w_0 .. w_{k-1}]``).
Randomness only enters through an explicit ``seed``: ``None`` (fresh entropy) or an
integer ``>= 0`` (anything else is a ``TypeError``/``ValueError`` naming ``seed``).
"""

from __future__ import annotations

import os
from typing import Literal

import math

import numpy as np

from ._validation import as_float_array, check_bool, check_choice, check_int, check_positive

__all__ = [
    "simplex_etf",
    "orthogonal_frame",
    "random_prototypes",
    "check_gram",
    "prototypes_from_gram",
    "load_prototypes",
    "spherical_code",
    "etf_gram",
    "orthogonal_frame_gram",
    "random_rotation",
    "named_prototypes",
    "PROTOTYPE_NAMES",
]

#: Names accepted by :func:`named_prototypes` (anything else is read as a file).
PROTOTYPE_NAMES = ("etf", "of", "random", "random+", "spherical")


def etf_gram(k: int) -> np.ndarray:
    r"""Gram matrix of a ``k``-point simplex ETF: ``k/(k-1) (I - J/k)``.

    Unit diagonal, off-diagonal entries ``-1/(k-1)``.
    """
    k = check_int("k", k, minimum=2)
    return (k / (k - 1)) * (np.eye(k) - np.full((k, k), 1.0 / k))


def orthogonal_frame_gram(k: int) -> np.ndarray:
    """Gram matrix of an orthogonal frame: the ``k x k`` identity."""
    k = check_int("k", k, minimum=1)
    return np.eye(k)


#: Largest Riesz exponent ``energy_power`` accepted by :func:`spherical_code`: beyond it
#: ``||w_c - w_c'||^{-s}`` of close random starting points overflows float64.
MAX_ENERGY_POWER = 16.0


def _check_seed(seed) -> int | None:
    """``seed`` checked to be None or an integer ``>= 0`` (errors name ``seed``)."""
    return None if seed is None else check_int("seed", seed, minimum=0)


def _rng(seed: int | None) -> np.random.Generator:
    """``numpy.random.default_rng`` of a checked ``seed``."""
    return np.random.default_rng(_check_seed(seed))


def random_rotation(d: int, seed: int | None = None) -> np.ndarray:
    """Haar-distributed random ``d x d`` orthogonal matrix (QR of a Gaussian, signs fixed)."""
    d = check_int("d", d, minimum=1)
    rng = _rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))


def _resolve_dim(d: int | None, default: int, minimum: int, what: str) -> int:
    if d is None:
        return default
    d = check_int("d", d, minimum=1)
    if d < minimum:
        raise ValueError(f"d must be >= {minimum} for {what}, got {d}")
    return d


def simplex_etf(k: int, d: int | None = None, *, rotate: bool = False, seed: int | None = None) -> np.ndarray:
    r"""Simplex equiangular tight frame of ``k`` unit vectors in ``R^d`` (``d >= k-1``).

    Columns satisfy ``w_c . w_c' = -1/(k-1)`` for ``c != c'`` and ``sum_c w_c = 0``.
    Built from an orthonormal basis of the complement of the all-ones vector,
    ``W = sqrt(k/(k-1)) U^T`` with ``U`` (``k x (k-1)``), padded with zero rows to ``d``;
    with ``rotate=True`` a seeded Haar rotation of ``R^d`` is applied.

    Parameters
    ----------
    k : int
        Number of classes, ``>= 2``.
    d : int, optional
        Dimension, ``>= k - 1`` (default ``k - 1``).
    rotate : bool
        Apply a random rotation drawn from ``seed``.
    seed : int, optional
        Seed of the rotation.
    """
    k = check_int("k", k, minimum=2)
    d = _resolve_dim(d, k - 1, k - 1, f"a simplex ETF of k={k} points (needs d >= k-1)")
    seed = _check_seed(seed)
    # orthonormal basis of 1^perp: last k-1 eigenvectors of the centring projector
    centring = np.eye(k) - np.full((k, k), 1.0 / k)
    _, vectors = np.linalg.eigh(centring)
    basis = vectors[:, 1:]  # eigenvalue 0 first, then the k-1 unit eigenvalues
    W = np.zeros((d, k))
    W[: k - 1] = np.sqrt(k / (k - 1)) * basis.T
    if check_bool("rotate", rotate):
        W = random_rotation(d, seed) @ W
    return _unit_columns(W)


def orthogonal_frame(k: int, d: int | None = None, *, rotate: bool = False, seed: int | None = None) -> np.ndarray:
    r"""Orthogonal frame: ``k`` orthonormal vectors in ``R^d`` (``d >= k``).

    Without rotation these are the standard basis vectors ``e_0 .. e_{k-1}``, the
    non-negative variant needed with non-negative (post-ReLU) features. With
    ``rotate=True`` a seeded Haar rotation of ``R^d`` is applied (signed entries).
    """
    k = check_int("k", k, minimum=1)
    d = _resolve_dim(d, k, k, f"an orthogonal frame of k={k} vectors (needs d >= k)")
    seed = _check_seed(seed)
    W = np.eye(d, k)
    if check_bool("rotate", rotate):
        W = random_rotation(d, seed) @ W
    return W


def random_prototypes(k: int, d: int, *, seed: int | None = None, nonnegative: bool = False) -> np.ndarray:
    """``k`` independent uniformly random unit vectors in ``R^d`` (normalised Gaussians).

    With ``nonnegative=True`` the absolute values are taken first (uniform on the
    non-negative orthant of the sphere).
    """
    k = check_int("k", k, minimum=1)
    d = check_int("d", d, minimum=1)
    rng = _rng(seed)
    W = rng.standard_normal((d, k))
    if nonnegative:
        W = np.abs(W)
    return _unit_columns(W)


def check_gram(gram, name: str = "gram", *, tol: float = 1e-8,
               psd: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Check that ``gram`` is a Gram of unit vectors: square, symmetric and with unit
    diagonal (within ``tol``), positive semidefinite (smallest eigenvalue ``>= -tol *
    max(1, ||G||_2)``). Returns ``(G symmetrised, eigenvalues ascending, eigenvectors)``;
    ``ValueError`` naming ``name`` otherwise. ``psd=False`` skips the eigendecomposition
    (``W^T W`` is PSD by construction) and returns ``None`` for the eigenpairs."""
    G = as_float_array(name, gram, ndim=2)
    tol = check_positive("tol", tol)
    k = G.shape[0]
    if G.shape != (k, k) or k == 0:
        raise ValueError(f"{name} must be a square k x k matrix, got shape {G.shape}")
    asym = float(np.max(np.abs(G - G.T)))
    if asym > tol:
        raise ValueError(f"{name} must be symmetric, largest |G - G^T| entry is {asym:.3g}")
    diag_err = float(np.max(np.abs(np.diag(G) - 1.0)))
    if diag_err > tol:
        raise ValueError(f"{name} must have a unit diagonal (unit prototypes), largest |G_cc - 1| is {diag_err:.3g}")
    G = 0.5 * (G + G.T)
    if not psd:
        return G, None, None
    eigenvalues, vectors = np.linalg.eigh(G)
    scale = max(1.0, float(np.max(np.abs(eigenvalues))))
    if eigenvalues[0] < -tol * scale:
        raise ValueError(f"{name} must be positive semidefinite, its smallest eigenvalue is {eigenvalues[0]:.3g}")
    return G, eigenvalues, vectors


def prototypes_from_gram(gram, d: int | None = None, *, tol: float = 1e-8) -> np.ndarray:
    r"""Factorise a prototype Gram matrix: return ``W`` (``d x k``) with ``W^T W = G``.

    Checks that ``G`` is square, symmetric and has unit diagonal (within ``tol``), is
    positive semidefinite (smallest eigenvalue ``>= -tol * max(1, ||G||_2)``) and has
    numerical rank ``<= d``. Uses the eigendecomposition ``G = V diag(lambda) V^T``:
    ``W = diag(sqrt(lambda_+)) V^T`` on the largest ``rank`` eigenvalues, padded with zero
    rows to ``d`` (default: the rank), with columns renormalised to unit length.
    """
    G, eigenvalues, vectors = check_gram(gram, tol=tol)
    k = G.shape[0]
    scale = max(1.0, float(np.max(np.abs(eigenvalues))))
    keep = eigenvalues > tol * scale
    rank = int(keep.sum())
    if d is None:
        d = rank
    d = check_int("d", d, minimum=1)
    if rank > d:
        raise ValueError(f"gram has rank {rank}, which does not fit in d = {d} dimensions (d must be >= {rank})")
    factor = np.sqrt(eigenvalues[keep])[:, None] * vectors[:, keep].T
    W = np.zeros((d, k))
    W[:rank] = factor[::-1]
    return _unit_columns(W)


def load_prototypes(path: str | os.PathLike, d: int | None = None,
                    kind: Literal["auto", "gram", "vectors"] = "auto", *, tol: float = 1e-6) -> np.ndarray:
    r"""Read prototypes from ``.npy``, ``.csv`` or ``.txt`` and return ``W`` (``d x k``).

    The file holds one matrix, either a Gram ``k x k`` or vectors ``d x k`` (one
    prototype per column). ``kind="auto"`` (default) reads a square matrix that is a Gram
    of unit vectors (symmetric, unit diagonal within ``tol``, positive semidefinite) as a
    Gram and any other matrix as vectors; a square matrix that fits neither reading is
    refused with what each reading needs. Pass ``kind="gram"`` or ``kind="vectors"`` to
    decide explicitly. Grams are factorised with
    :func:`prototypes_from_gram`; vectors must have unit columns (within ``tol``; they are
    then renormalised exactly) and are padded with zero rows up to ``d``.
    CSV/TXT files are read with comma or whitespace separators.
    """
    check_choice("kind", kind, ("auto", "gram", "vectors"))
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"prototype file {path!r} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npy", ".csv", ".txt"):
        raise ValueError(f"prototype file {path!r} must end in .npy, .csv or .txt")
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
            empty = not head or (suffix != ".npy" and not (head + handle.read()).strip())
    except OSError as exc:  # no permission, a special file, ...
        raise ValueError(f"prototype file {path!r} cannot be read: {exc.strerror or exc}") from exc
    if empty:
        raise ValueError(f"prototype file {path!r} is empty")
    if suffix == ".npy" and head != np.lib.format.MAGIC_PREFIX:
        raise ValueError(f"prototype file {path!r} is not a NumPy .npy file (it lacks the .npy header); "
                         "write it with numpy.save, or give a text matrix a .csv or .txt name")
    try:
        if suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as handle:
                delimiter = "," if "," in handle.read() else None
            matrix = np.loadtxt(path, delimiter=delimiter, ndmin=2)
    except (ValueError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise ValueError(f"prototype file {path!r} could not be read as a numeric matrix: {exc}") from exc
    except MemoryError as exc:  # e.g. a .npy header claiming a huge array
        raise ValueError(f"prototype file {path!r} holds a matrix too large to load ({exc})") from exc
    matrix = as_float_array(f"the matrix in {path!r}", matrix, ndim=2)
    if matrix.size == 0:
        raise ValueError(f"prototype file {path!r} is empty")
    norms = np.linalg.norm(matrix, axis=0)
    worst = int(np.argmax(np.abs(norms - 1.0)))
    unit_columns = abs(norms[worst] - 1.0) <= tol
    as_vectors = (f"read as vectors (d x k, one prototype per column), column {worst} has norm {norms[worst]:.6g} "
                  "(each needs unit norm)")
    if kind == "auto":  # a square matrix is a Gram when it is one, else vectors when they are unit
        square = matrix.shape[0] == matrix.shape[1]
        gram_problem = _gram_problem(matrix, tol) if square else "not square"
        if square and gram_problem is not None and not unit_columns:  # neither reading fits: explain both
            raise ValueError(f"prototype file {path!r} holds a {matrix.shape[0]} x {matrix.shape[1]} matrix that is "
                             f"neither a Gram nor vectors of unit prototypes: read as a k x k Gram, {gram_problem} "
                             f"(a Gram needs a unit diagonal, symmetry and positive semidefiniteness); {as_vectors}")
        kind = "gram" if gram_problem is None else "vectors"
    if kind == "gram":
        try:
            return prototypes_from_gram(matrix, d, tol=tol)
        except ValueError as exc:
            raise ValueError(f"prototype file {path!r}: {exc}") from exc
    if not unit_columns:
        gram = "; a Gram would be a square k x k matrix" if matrix.shape[0] != matrix.shape[1] else ""
        raise ValueError(f"prototype file {path!r}: {as_vectors}{gram}")
    rows = matrix.shape[0]
    if d is None:
        d = rows
    d = check_int("d", d, minimum=1)
    if rows > d:
        raise ValueError(f"prototype file {path!r} holds vectors of dimension {rows} > d = {d}")
    W = np.zeros((d, matrix.shape[1]))
    W[:rows] = matrix
    return _unit_columns(W)


def _gram_problem(matrix: np.ndarray, tol: float) -> str | None:
    """What keeps a square ``matrix`` from being a Gram of unit vectors (:func:`check_gram`'s
    reason, without the name), or ``None`` when it is one."""
    try:
        check_gram(matrix, "it", tol=tol)
    except ValueError as exc:
        return str(exc)
    return None


def spherical_code(k: int, d: int, *, seed: int | None = 0, iterations: int = 2000,
                   energy_power: float = 2.0) -> np.ndarray:
    r"""Numerical spherical code: ``k`` well-separated unit vectors in ``R^d``.

    Minimises the Riesz ``s``-energy ``sum_{c < c'} ||w_c - w_{c'}||^{-s}`` (``s =
    energy_power``) over the product of spheres with the project's Riemannian L-BFGS
    (:func:`ncgeo.ufm.optimiser.riemannian_lbfgs`, at most ``iterations`` steps, Riemannian
    gradient ``<= 1e-12`` times the starting energy), from a seeded random start. Useful when ``k > d + 1`` (no ETF
    exists); for ``k <= d + 1`` it approaches the simplex ETF.

    ``energy_power`` must be a finite number in ``(0, 16]`` (:data:`MAX_ENERGY_POWER`):
    larger exponents overflow float64 at close random starting points (``s = 1`` is the
    Thomson problem; larger ``s`` moves towards the best packing). ``ValueError`` if the
    iteration still leaves non-finite vectors (e.g. coinciding starting points).
    """
    k = check_int("k", k, minimum=2)
    d = check_int("d", d, minimum=2)
    iterations = check_int("iterations", iterations, minimum=1)
    s = check_positive("energy_power", energy_power)
    if s > MAX_ENERGY_POWER:
        raise ValueError(f"energy_power must be in (0, {MAX_ENERGY_POWER:g}] (larger Riesz exponents "
                         f"overflow float64), got {s!r}")
    import torch

    from .ufm.optimiser import riemannian_lbfgs  # local: ncgeo.ufm imports this module

    off = ~torch.eye(k, dtype=torch.bool)

    def log_energy_and_grad(X: torch.Tensor):
        # the logarithm of the energy: the same minimiser, scale-free (s = 16 starts near 1e30)
        X = X.detach().requires_grad_(True)
        dist2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)[off]
        log_energy = torch.logsumexp(-(s / 2) * torch.log(dist2), dim=0) - math.log(2.0)
        (grad,) = torch.autograd.grad(log_energy, X)
        return log_energy.detach(), grad

    start = torch.as_tensor(random_prototypes(k, d, seed=seed).T.copy())  # rows
    W = np.full((d, k), np.nan)
    if math.isfinite(float(log_energy_and_grad(start)[0])):  # coinciding starting points: infinite
        out = riemannian_lbfgs(log_energy_and_grad, start, grad_tol=1e-12, max_iterations=iterations)
        W = _unit_columns(out.x.numpy().T)
    if not np.all(np.isfinite(W)):
        raise ValueError(f"spherical_code(k={k}, d={d}, energy_power={s:g}) produced non-finite vectors "
                         f"(the Riesz energy overflowed); use a smaller energy_power or another seed")
    return W


def _unit_columns(W: np.ndarray) -> np.ndarray:
    return W / np.linalg.norm(W, axis=0, keepdims=True)


def named_prototypes(geometry: str, k: int, d: int | None = None, *, seed: int | None = 0,
                     nonnegative: bool = False) -> np.ndarray:
    """Prototypes ``W`` (``d x k``, unit columns) named by ``geometry``, or read from a file.

    ``"etf"``: :func:`simplex_etf` (``d >= k - 1``); ``"of"``: :func:`orthogonal_frame`
    (the standard basis, non-negative; ``d >= k``); ``"random"``: :func:`random_prototypes`
    (on the non-negative orthant when ``nonnegative``); ``"random+"``: always non-negative;
    ``"spherical"``: :func:`spherical_code` (seeded, for ``k > d + 1``); anything else is a
    ``.npy``/``.csv``/``.txt`` file read by :func:`load_prototypes` (a Gram or vectors) that
    must hold ``k`` prototypes. ``d`` defaults to ``k`` for the names and to the file's own
    dimension for a file. Errors are ``ValueError`` naming ``d``, the file or ``geometry``;
    ``seed`` (None or an integer ``>= 0``) is checked whatever the geometry.
    """
    seed = _check_seed(seed)
    if geometry in PROTOTYPE_NAMES:
        d = k if d is None else d
        if geometry == "etf":
            return simplex_etf(k, d)
        if geometry == "of":
            return orthogonal_frame(k, d)
        if geometry == "spherical":
            return spherical_code(k, d, seed=seed)
        return random_prototypes(k, d, seed=seed, nonnegative=nonnegative or geometry == "random+")
    if not isinstance(geometry, (str, os.PathLike)) or not os.path.isfile(geometry):
        state = "is a folder" if isinstance(geometry, (str, os.PathLike)) and os.path.isdir(geometry) \
            else "does not exist"
        raise ValueError(f"geometry must be one of {', '.join(PROTOTYPE_NAMES)} or an existing .npy/.csv/.txt "
                         f"file holding a k x k Gram or d x k vectors; {geometry!r} {state}")
    W = load_prototypes(geometry, d)
    if W.shape[1] != k:
        raise ValueError(f"prototype file {os.fspath(geometry)!r} holds {W.shape[1]} prototypes, expected k = {k}")
    return W
