"""Tests of ncgeo.geometry: prototype constructors and target Grams."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ncgeo.geometry import (
    etf_gram,
    load_prototypes,
    orthogonal_frame,
    orthogonal_frame_gram,
    prototypes_from_gram,
    random_prototypes,
    random_rotation,
    simplex_etf,
    spherical_code,
)


def assert_unit_columns(W, d, k):
    assert isinstance(W, np.ndarray) and W.dtype == np.float64
    assert W.shape == (d, k)
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1.0, atol=1e-12)


# --------------------------------------------------------------------------------------
# target Grams
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_etf_gram_entries(k):
    G = etf_gram(k)
    off = ~np.eye(k, dtype=bool)
    np.testing.assert_allclose(np.diag(G), 1.0, atol=1e-15)
    np.testing.assert_allclose(G[off], -1.0 / (k - 1), atol=1e-15)
    np.testing.assert_allclose(G.sum(axis=1), 0.0, atol=1e-13)  # columns of an ETF sum to zero
    eig = np.linalg.eigvalsh(G)
    assert abs(eig[0]) < 1e-12 and np.allclose(eig[1:], k / (k - 1))  # rank k-1


def test_orthogonal_frame_gram_is_identity():
    np.testing.assert_array_equal(orthogonal_frame_gram(4), np.eye(4))


# --------------------------------------------------------------------------------------
# constructors
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,d", [(2, 1), (2, 5), (3, 2), (5, 4), (5, 9), (10, 9), (10, 32)])
@pytest.mark.parametrize("rotate", [False, True])
def test_simplex_etf_gram(k, d, rotate):
    W = simplex_etf(k, d, rotate=rotate, seed=7)
    assert_unit_columns(W, d, k)
    np.testing.assert_allclose(W.T @ W, etf_gram(k), atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=1), 0.0, atol=1e-12)


def test_simplex_etf_default_dimension():
    assert simplex_etf(6).shape == (5, 6)


def test_simplex_etf_rotation_is_seeded():
    a = simplex_etf(5, 8, rotate=True, seed=3)
    np.testing.assert_array_equal(a, simplex_etf(5, 8, rotate=True, seed=3))
    assert not np.allclose(a, simplex_etf(5, 8, rotate=True, seed=4))
    assert not np.allclose(a, simplex_etf(5, 8))
    # the unrotated frame spans only the first k-1 coordinates; the rotated one does not
    assert np.all(simplex_etf(5, 8)[4:] == 0)
    assert np.linalg.norm(a[4:]) > 1e-3


@pytest.mark.parametrize("k,d", [(1, 1), (3, 3), (4, 7)])
def test_orthogonal_frame_standard_basis(k, d):
    W = orthogonal_frame(k, d)
    assert_unit_columns(W, d, k)
    assert np.all(W >= 0)
    np.testing.assert_array_equal(W, np.eye(d, k))


@pytest.mark.parametrize("k,d", [(3, 3), (4, 7)])
def test_orthogonal_frame_rotated(k, d):
    W = orthogonal_frame(k, d, rotate=True, seed=5)
    assert_unit_columns(W, d, k)
    np.testing.assert_allclose(W.T @ W, np.eye(k), atol=1e-12)
    assert np.any(W < 0)
    np.testing.assert_array_equal(W, orthogonal_frame(k, d, rotate=True, seed=5))
    assert not np.allclose(W, orthogonal_frame(k, d, rotate=True, seed=6))


def test_random_rotation_is_orthogonal_and_seeded():
    Q = random_rotation(6, seed=1)
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-12)
    np.testing.assert_array_equal(Q, random_rotation(6, seed=1))
    assert not np.allclose(Q, random_rotation(6, seed=2))


@pytest.mark.parametrize("nonnegative", [False, True])
def test_random_prototypes(nonnegative):
    W = random_prototypes(7, 4, seed=9, nonnegative=nonnegative)
    assert_unit_columns(W, 4, 7)
    np.testing.assert_array_equal(W, random_prototypes(7, 4, seed=9, nonnegative=nonnegative))
    assert not np.allclose(W, random_prototypes(7, 4, seed=10, nonnegative=nonnegative))
    assert np.all(W >= 0) == nonnegative


@pytest.mark.parametrize("make,k,d", [
    (simplex_etf, 5, 3),
    (orthogonal_frame, 5, 4),
])
def test_dimension_too_small_names_d(make, k, d):
    with pytest.raises(ValueError, match=r"\bd must be >= "):
        make(k, d)


# --------------------------------------------------------------------------------------
# from a Gram
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("G,d", [
    (etf_gram(4), None),
    (etf_gram(4), 6),
    (np.eye(3), None),
    (np.eye(3), 5),
])
def test_prototypes_from_gram_round_trip(G, d):
    W = prototypes_from_gram(G, d)
    rank = np.linalg.matrix_rank(G)
    assert_unit_columns(W, rank if d is None else d, G.shape[0])
    np.testing.assert_allclose(W.T @ W, G, atol=1e-12)


def test_prototypes_from_gram_random_low_rank():
    V = random_prototypes(6, 3, seed=2)  # rank 3 Gram of 6 unit vectors
    G = V.T @ V
    W = prototypes_from_gram(G)
    assert W.shape == (3, 6)
    np.testing.assert_allclose(W.T @ W, G, atol=1e-10)
    W5 = prototypes_from_gram(G, d=5)
    assert W5.shape == (5, 6) and np.all(W5[3:] == 0)
    np.testing.assert_allclose(W5.T @ W5, G, atol=1e-10)


def test_prototypes_from_gram_accepts_torch():
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(prototypes_from_gram(torch.tensor(etf_gram(3))).T @ prototypes_from_gram(etf_gram(3)),
                               etf_gram(3), atol=1e-12)


@pytest.mark.parametrize("G,d,message", [
    (np.array([[1.0, 0.2], [0.3, 1.0]]), None, r"gram must be symmetric.*0\.1"),
    (np.array([[1.0, 0.2], [0.2, 0.9]]), None, r"gram must have a unit diagonal.*0\.1"),
    (np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]), None, r"gram must be positive semidefinite"),
    (np.eye(4), 3, r"rank 4.*d = 3"),
    (etf_gram(5), 3, r"rank 4.*d = 3"),
    (np.ones((2, 3)), None, r"gram must be a square"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), None, r"gram must contain only finite values"),
    (np.ones(3), None, r"gram must be a 2-D array"),
])
def test_prototypes_from_gram_rejects(G, d, message):
    with pytest.raises(ValueError, match=message):
        prototypes_from_gram(G, d)


def test_prototypes_from_gram_tolerance():
    G = etf_gram(3) + 1e-9 * np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(prototypes_from_gram(G).T @ prototypes_from_gram(G), G, atol=1e-8)
    with pytest.raises(ValueError, match="symmetric"):
        prototypes_from_gram(etf_gram(3) + 1e-4 * np.triu(np.ones((3, 3)), 1))


# --------------------------------------------------------------------------------------
# from a file
# --------------------------------------------------------------------------------------

def _save(path, matrix):
    if path.suffix == ".npy":
        np.save(path, matrix)
    elif path.suffix == ".csv":
        np.savetxt(path, matrix, delimiter=",", fmt="%.17g")
    else:
        np.savetxt(path, matrix, fmt="%.17g")


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_load_gram_auto_and_explicit(tmp_path, suffix):
    path = tmp_path / f"gram{suffix}"
    G = etf_gram(4)
    _save(path, G)
    for kind in ("auto", "gram"):
        W = load_prototypes(path, kind=kind)
        assert W.shape == (3, 4)
        np.testing.assert_allclose(W.T @ W, G, atol=1e-12)
    W = load_prototypes(str(path), d=5)
    assert W.shape == (5, 4)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_load_vectors_auto_and_explicit(tmp_path, suffix):
    path = tmp_path / f"vectors{suffix}"
    V = random_prototypes(5, 3, seed=4)  # 3 x 5: not square, so auto reads vectors
    _save(path, V)
    for kind in ("auto", "vectors"):
        np.testing.assert_allclose(load_prototypes(path, kind=kind), V, atol=1e-14)
    padded = load_prototypes(path, d=6)
    assert padded.shape == (6, 5) and np.all(padded[3:] == 0)
    np.testing.assert_allclose(padded[:3], V, atol=1e-14)


def test_load_square_vectors_need_explicit_kind(tmp_path):
    # a square d x d matrix of unit columns that is not symmetric is read as vectors by auto
    V = orthogonal_frame(3, 3, rotate=True, seed=1)
    path = tmp_path / "square.npy"
    np.save(path, V)
    np.testing.assert_allclose(load_prototypes(path), V, atol=1e-14)
    np.testing.assert_allclose(load_prototypes(path, kind="vectors"), V, atol=1e-14)
    # forcing a Gram reading of a non-Gram fails with the file named
    with pytest.raises(ValueError, match=r"square\.npy.*gram must"):
        load_prototypes(path, kind="gram")


def test_load_gram_read_as_vectors_fails_on_norms(tmp_path):
    path = tmp_path / "g.npy"
    np.save(path, etf_gram(3))
    with pytest.raises(ValueError, match=r"read as vectors \(d x k, one prototype per column\), column 0 has norm 1.22474 \(each needs unit norm\)"):
        load_prototypes(path, kind="vectors")


def test_load_non_unit_vectors(tmp_path):
    path = tmp_path / "v.csv"
    V = random_prototypes(4, 3, seed=1)
    V[:, 2] *= 1.5
    _save(path, V)
    with pytest.raises(ValueError, match=r"v\.csv.*column 2 has norm 1\.5"):
        load_prototypes(path)


def test_load_vectors_too_long_for_d(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, random_prototypes(4, 3, seed=1))
    with pytest.raises(ValueError, match=r"dimension 3 > d = 2"):
        load_prototypes(path, d=2)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist"):
        load_prototypes(tmp_path / "nope.npy")


def test_load_unknown_suffix(tmp_path):
    path = tmp_path / "w.json"
    path.write_text("[[1, 0], [0, 1]]")
    with pytest.raises(ValueError, match=r"\.npy, \.csv or \.txt"):
        load_prototypes(path)


@pytest.mark.parametrize("name,content", [
    ("ragged.csv", "1,0\n0\n"),
    ("letters.txt", "1 a\n0 1\n"),
    ("garbage.npy", "not a numpy file"),
    ("nan.csv", "1,nan\nnan,1\n"),
])
def test_load_malformed(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_prototypes(path)


@pytest.mark.parametrize("name", ["empty.csv", "blank.txt", "empty.npy", "zero-bytes.npy"])
def test_load_empty_file(tmp_path, name):
    path = tmp_path / name
    if name == "zero-bytes.npy":
        path.write_bytes(b"")
    elif name.endswith(".npy"):
        np.save(path, np.zeros((0, 3)))
    else:
        path.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"is empty"):
        load_prototypes(path)


def test_load_unreadable_files_say_what_is_wrong(tmp_path):
    text = tmp_path / "text.npy"
    text.write_text("1 0\n0 1\n")  # numpy alone reports "pickled (object) data"
    with pytest.raises(ValueError, match=r"'.*text.npy' is not a NumPy .npy file .*numpy.save.*\.csv or \.txt"):
        load_prototypes(text)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.eye(3))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"'.*truncated.npy' could not be read as a numeric matrix"):
        load_prototypes(truncated)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe1,2")
    with pytest.raises(ValueError, match=r"'.*binary.csv' could not be read as a numeric matrix"):
        load_prototypes(binary)


def test_load_wrong_ndim_npy(tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"cube\.npy.*2-D"):
        load_prototypes(path)


def test_load_bad_kind(tmp_path):
    with pytest.raises(ValueError, match=r"kind must be one of"):
        load_prototypes(tmp_path / "x.npy", kind="vector")


# --------------------------------------------------------------------------------------
# spherical codes
# --------------------------------------------------------------------------------------

def min_angle_degrees(W):
    G = W.T @ W
    np.fill_diagonal(G, -1.0)
    return math.degrees(math.acos(min(1.0, G.max())))


def test_spherical_code_twelve_points_in_r3_is_icosahedron():
    W = spherical_code(12, 3, seed=0)
    assert_unit_columns(W, 3, 12)
    icosahedron = math.degrees(math.atan(2.0))  # 63.435 degrees between neighbouring vertices
    assert abs(min_angle_degrees(W) - icosahedron) < 0.2
    # each vertex has 5 neighbours at that angle and one antipode
    G = W.T @ W
    np.testing.assert_allclose(np.sort(G, axis=1)[:, 0], -1.0, atol=1e-3)


def test_spherical_code_is_seeded():
    a = spherical_code(7, 3, seed=1, iterations=50)
    np.testing.assert_array_equal(a, spherical_code(7, 3, seed=1, iterations=50))
    assert not np.allclose(a, spherical_code(7, 3, seed=2, iterations=50))


def test_spherical_code_small_k_approaches_etf():
    W = spherical_code(4, 3, seed=0)  # tetrahedron
    np.testing.assert_allclose(W.T @ W, etf_gram(4), atol=1e-4)


def test_spherical_code_beats_random_start():
    W = spherical_code(20, 4, seed=3, iterations=300)
    assert min_angle_degrees(W) > min_angle_degrees(random_prototypes(20, 4, seed=3)) + 10


def test_named_prototypes_are_the_constructors_or_a_file(tmp_path):
    from ncgeo.geometry import named_prototypes

    np.testing.assert_array_equal(named_prototypes("etf", 4), simplex_etf(4, 4))
    np.testing.assert_array_equal(named_prototypes("of", 3, 5), orthogonal_frame(3, 5))
    np.testing.assert_array_equal(named_prototypes("random", 3, 4, seed=2), random_prototypes(3, 4, seed=2))
    np.testing.assert_array_equal(named_prototypes("random", 3, 4, seed=2, nonnegative=True),
                                  named_prototypes("random+", 3, 4, seed=2))
    assert named_prototypes("random+", 3, 4).min() >= 0
    assert named_prototypes("spherical", 6, 2).shape == (2, 6)
    path = tmp_path / "gram.npy"
    np.save(path, etf_gram(3))
    W = named_prototypes(str(path), 3, 5)
    assert W.shape == (5, 3) and np.allclose(W.T @ W, etf_gram(3))
    assert named_prototypes(path, 3).shape[1] == 3  # a path object too
    with pytest.raises(ValueError, match="holds 3 prototypes, expected k = 4"):
        named_prototypes(str(path), 4)
    with pytest.raises(ValueError, match="d must be >= 3"):
        named_prototypes("etf", 4, 2)
    with pytest.raises(ValueError, match="'nowhere.npy' does not exist"):
        named_prototypes("nowhere.npy", 3)
    with pytest.raises(ValueError, match="is a folder"):
        named_prototypes(str(tmp_path), 3)


# --------------------------------------------------------------------------------------
# argument checks: seeds and the Riesz exponent
# --------------------------------------------------------------------------------------

def _named(geometry):
    from ncgeo.geometry import named_prototypes

    return lambda seed: named_prototypes(geometry, 3, 4, seed=seed)


SEEDED = {
    "random_prototypes": lambda seed: random_prototypes(3, 4, seed=seed),
    "simplex_etf": lambda seed: simplex_etf(3, 4, rotate=True, seed=seed),
    "orthogonal_frame": lambda seed: orthogonal_frame(3, 4, rotate=True, seed=seed),
    "random_rotation": lambda seed: random_rotation(3, seed),
    "spherical_code": lambda seed: spherical_code(3, 3, seed=seed, iterations=5),
    "named random": _named("random"),
    "named spherical": _named("spherical"),
    "named etf": _named("etf"),  # the seed is unused there, but a bad one is still an error
}


@pytest.mark.parametrize("name", sorted(SEEDED))
@pytest.mark.parametrize("seed,error,match", [
    (-1, ValueError, r"seed must be an integer >= 0, got -1"),
    ("x", TypeError, r"seed must be an integer, got str"),
    (1.5, TypeError, r"seed must be an integer, got float"),
    (True, TypeError, r"seed must be an integer, got bool"),
])
def test_bad_seeds_are_errors_naming_seed(name, seed, error, match):
    with pytest.raises(error, match=match):
        SEEDED[name](seed)


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_good_seeds_are_accepted(name):
    np.testing.assert_array_equal(SEEDED[name](3), SEEDED[name](np.int64(3)))
    assert np.all(np.isfinite(SEEDED[name](None)))


@pytest.mark.parametrize("power,error,match", [
    (200, ValueError, r"energy_power must be in \(0, 16\]"),
    (16.5, ValueError, r"energy_power must be in \(0, 16\]"),
    (float("inf"), ValueError, r"energy_power must be finite"),
    (0, ValueError, r"energy_power must be > 0"),
    ("2", TypeError, r"energy_power must be a real number"),
])
def test_spherical_code_energy_power_range(power, error, match):
    with pytest.raises(error, match=match):
        spherical_code(20, 3, energy_power=power)


def test_spherical_code_largest_energy_power_is_finite_and_spread():
    W = spherical_code(20, 3, seed=0, energy_power=16, iterations=300)
    assert_unit_columns(W, 3, 20)
    assert min_angle_degrees(W) > 40  # the best 20-point code has 47.4 degrees


def test_spherical_code_non_finite_result_is_a_value_error(monkeypatch):
    import ncgeo.geometry as geometry

    # coinciding starting points make the Riesz energy infinite and the iteration NaN
    monkeypatch.setattr(geometry, "random_prototypes", lambda k, d, seed=None: np.ones((d, k)) / np.sqrt(d))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"spherical_code\(k=3, d=3, energy_power=2\) produced non-finite"):
            spherical_code(3, 3, iterations=5)


def test_unreadable_and_oversized_prototype_files_are_value_errors(tmp_path, monkeypatch):
    """A file without read permission and a .npy header claiming a 300000 x 300000 array gave a
    PermissionError and a MemoryError traceback from the CLIs."""
    huge = tmp_path / "huge.npy"
    header = {"descr": "<f8", "fortran_order": False, "shape": (300000, 300000)}
    with open(huge, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
    with pytest.raises(ValueError, match="too large to load|could not be read as a numeric matrix"):
        load_prototypes(huge)
    locked = tmp_path / "locked.csv"
    locked.write_text("1,0\n0,1\n")

    def refuse(*args, **kwargs):  # what open() does without read permission (root reads anything)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("ncgeo.geometry.open", refuse, raising=False)
    with pytest.raises(ValueError, match=r"'.*locked.csv' cannot be read: Permission denied"):
        load_prototypes(locked)
