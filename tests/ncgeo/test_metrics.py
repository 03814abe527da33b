"""Tests of ncgeo.metrics on exact inputs, hand-computed examples and streaming."""

from __future__ import annotations

import json
import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ncgeo.geometry import etf_gram, orthogonal_frame, random_prototypes, random_rotation, simplex_etf
from ncgeo.metrics import (
    GeometryMetrics,
    class_mean_cosines,
    class_means,
    delta_to_etf,
    delta_to_orthogonal_frame,
    delta_to_prototypes,
    equiangularity,
    equinorm,
    geometry_metrics,
    gram_distance,
    mean_pairwise_cosine,
    nc1,
    ncc_accuracy,
    nearest_prototype_accuracy,
    prototype_alignment,
    prototype_cosines,
)
from ncgeo.statistics import ClassStatistics


def collapsed(W, n):
    """``n`` copies of every column of ``W`` as rows, and their labels."""
    y = np.repeat(np.arange(W.shape[1]), n)
    return W[:, y].T.copy(), y


def noisy(W, n, scale, seed):
    rng = np.random.default_rng(seed)
    H, y = collapsed(W, n)
    return H + scale * rng.standard_normal(H.shape), y


# --------------------------------------------------------------------------------------
# exact geometries
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,d", [(3, 2), (5, 8), (10, 12)])
def test_collapsed_etf(k, d):
    W = simplex_etf(k, d, rotate=True, seed=k)
    H, y = collapsed(W, 4)
    assert nc1(H, y) == pytest.approx(0.0, abs=1e-20)
    assert delta_to_etf(H, y) == pytest.approx(0.0, abs=1e-12)
    assert equiangularity(H, y) == pytest.approx(0.0, abs=1e-12)
    assert equinorm(H, y) == pytest.approx(0.0, abs=1e-12)
    assert delta_to_prototypes(H, y, W) == pytest.approx(0.0, abs=1e-12)
    assert prototype_alignment(H, y, W) == pytest.approx(1.0, abs=1e-12)
    assert mean_pairwise_cosine(H, y) == pytest.approx(-1.0 / (k - 1), abs=1e-12)
    assert delta_to_orthogonal_frame(H, y) > 0.1  # an ETF is not an OF


@pytest.mark.parametrize("k,d,rotate", [(3, 3, False), (4, 9, True), (10, 10, True)])
def test_collapsed_orthogonal_frame(k, d, rotate):
    W = orthogonal_frame(k, d, rotate=rotate, seed=1)
    H, y = collapsed(W, 3)
    assert delta_to_orthogonal_frame(H, y) == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_cosine(H, y) == pytest.approx(0.0, abs=1e-12)
    assert nc1(H, y) == pytest.approx(0.0, abs=1e-20)
    assert delta_to_prototypes(H, y, W) == pytest.approx(0.0, abs=1e-12)
    # centred, an OF is an ETF (of its own centroid): equinorm and equiangularity vanish
    assert delta_to_etf(H, y) == pytest.approx(0.0, abs=1e-12)
    assert equiangularity(H, y) == pytest.approx(0.0, abs=1e-12)


def test_noise_makes_metrics_positive():
    W = simplex_etf(4, 5, rotate=True, seed=2)
    H, y = noisy(W, 20, 0.05, seed=3)
    assert nc1(H, y) > 1e-4
    assert delta_to_etf(H, y) > 1e-4
    assert equiangularity(H, y) > 1e-4
    assert equinorm(H, y) > 1e-4


# --------------------------------------------------------------------------------------
# hand-computed small examples
# --------------------------------------------------------------------------------------

# class 0: (2,1), (0,-1) -> mean (1,0); class 1: (-1,2), (-1,-2) -> mean (-1,0)
H2 = np.array([[2.0, 1.0], [0.0, -1.0], [-1.0, 2.0], [-1.0, -2.0]])
Y2 = np.array([0, 0, 1, 1])


def test_class_means_hand():
    M, counts = class_means(H2, Y2)
    np.testing.assert_allclose(M, [[1.0, -1.0], [0.0, 0.0]], atol=1e-15)
    np.testing.assert_array_equal(counts, [2, 2])
    M3, counts3 = class_means(H2, Y2, num_classes=3)  # an absent class gets a zero mean
    np.testing.assert_allclose(M3[:, 2], 0.0)
    np.testing.assert_array_equal(counts3, [2, 2, 0])


def test_nc1_hand():
    # deviations (1,1), (-1,-1), (0,2), (0,-2): Sigma_W = [[2, 2], [2, 10]] / 4
    # means +-(1,0) around 0: Sigma_B = diag(1, 0), pinv = diag(1, 0)
    # NC1 = (1/2) tr(Sigma_W Sigma_B^+) = (1/2) (2/4) = 0.25
    assert nc1(H2, Y2) == pytest.approx(0.25, abs=1e-14)
    stats = ClassStatistics.from_embeddings(H2, Y2)
    np.testing.assert_allclose(stats.within_covariance().numpy(), [[0.5, 0.5], [0.5, 2.5]], atol=1e-15)


def test_nc1_unequal_sizes_against_numpy_formula():
    rng = np.random.default_rng(4)
    y = np.array([0] * 5 + [1] * 2 + [2] * 9)
    H = rng.standard_normal((16, 3)) + 3 * np.eye(3)[y]
    means = np.stack([H[y == c].mean(0) for c in range(3)], axis=1)
    dev = H - means[:, y].T
    sigma_w = dev.T @ dev / 16
    centred = means - means.mean(1, keepdims=True)
    sigma_b = centred @ centred.T / 3
    expected = np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / 3
    assert nc1(H, y) == pytest.approx(expected, rel=1e-12)


# three class means e0*2, e1, e2 in R^3 (one sample each):
# mu_G = (2/3, 1/3, 1/3); centred c0 = (4/3,-1/3,-1/3), c1 = (-2/3,2/3,-1/3), c2 = (-2/3,-1/3,2/3)
# |c0|^2 = 2, |c1|^2 = |c2|^2 = 1, c0.c1 = c0.c2 = -1, c1.c2 = 0
H3 = np.diag([2.0, 1.0, 1.0])
Y3 = np.array([0, 1, 2])


def test_equiangularity_hand():
    # cos(c0, c1) = cos(c0, c2) = -1/sqrt(2), cos(c1, c2) = 0; k = 3 so the target is -1/2
    expected = (4 * (1 / math.sqrt(2) - 0.5) + 2 * 0.5) / 6
    assert equiangularity(H3, Y3) == pytest.approx(expected, abs=1e-14)
    assert expected == pytest.approx((2 * math.sqrt(2) - 1) / 6)


def test_equinorm_hand():
    norms = np.array([math.sqrt(2), 1.0, 1.0])
    mean = (math.sqrt(2) + 2) / 3
    std = math.sqrt((2 + 1 + 1) / 3 - mean**2)  # population std
    assert equinorm(H3, Y3) == pytest.approx(std / mean, abs=1e-14)
    assert std / mean == pytest.approx(norms.std() / norms.mean())


def test_delta_to_etf_hand():
    # centred Gram [[2,-1,-1],[-1,1,0],[-1,0,1]], ||.||_F = sqrt(10); ETF Gram has ||.||_F = sqrt(4.5)
    a, b = 1 / math.sqrt(10), 1 / math.sqrt(4.5)
    squares = ((2 * a - b) ** 2 + 2 * (a - b) ** 2  # diagonal
               + 4 * (-a + 0.5 * b) ** 2  # (0,1), (0,2) and transposes
               + 2 * (0.5 * b) ** 2)  # (1,2) and transpose
    assert delta_to_etf(H3, Y3) == pytest.approx(math.sqrt(squares), abs=1e-14)


# means (1,0) and (1,1) (one sample each, class 1 has two samples averaging to (1,1))
H4 = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 1.0], [1.5, 1.0]])
Y4 = np.array([0, 0, 1, 1])


def test_delta_to_orthogonal_frame_hand():
    # Gram [[1,1],[1,2]], ||.||_F = sqrt(7); I / sqrt(2)
    a, b = 1 / math.sqrt(7), 1 / math.sqrt(2)
    expected = math.sqrt((a - b) ** 2 + (2 * a - b) ** 2 + 2 * a**2)
    assert delta_to_orthogonal_frame(H4, Y4) == pytest.approx(expected, abs=1e-14)


def test_delta_to_prototypes_and_gram_distance_hand():
    # prototypes at 45 degrees: G_W = [[1, c], [c, 1]], c = 1/sqrt(2)
    W = np.array([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]])
    c = 1 / math.sqrt(2)
    a, b = 1 / math.sqrt(7), 1 / math.sqrt(2 + 2 * c**2)
    expected = math.sqrt((a - b) ** 2 + (2 * a - b) ** 2 + 2 * (a - c * b) ** 2)
    assert delta_to_prototypes(H4, Y4, W) == pytest.approx(expected, abs=1e-14)
    M = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert gram_distance(M, W.T @ W) == pytest.approx(expected, abs=1e-14)
    # scale-free in both arguments, 0 on proportional Grams
    assert gram_distance(3 * M, 5 * W.T @ W) == pytest.approx(expected, abs=1e-14)
    assert gram_distance(W, 2 * W.T @ W) == pytest.approx(0.0, abs=1e-15)


def test_mean_pairwise_cosine_and_class_mean_cosines_hand():
    # means (1,0), (1,1), (0,1): cosines 1/sqrt(2), 0, 1/sqrt(2)
    H = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    y = np.array([0, 1, 2])
    assert mean_pairwise_cosine(H, y) == pytest.approx(math.sqrt(2) / 3, abs=1e-14)
    c = 1 / math.sqrt(2)
    np.testing.assert_allclose(class_mean_cosines(H, y), [[1, c, 0], [c, 1, c], [0, c, 1]], atol=1e-14)
    with_absent = class_mean_cosines(H, y, num_classes=4)
    assert np.all(np.isnan(with_absent[3])) and np.all(np.isnan(with_absent[:, 3]))


def test_prototype_alignment_hand():
    # means (1,0), (1,1) vs prototypes e0, e1: cosines 1 and 1/sqrt(2)
    W = np.eye(2)
    np.testing.assert_allclose(prototype_cosines(H4, Y4, W), [1.0, 1 / math.sqrt(2)], atol=1e-14)
    assert prototype_alignment(H4, Y4, W) == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-14)
    # absent classes are left out of the mean
    W3 = np.eye(2, 3)
    W3[:, 2] = [c := 1 / math.sqrt(2), c]
    assert np.isnan(prototype_cosines(H4, Y4, W3)[2])
    assert prototype_alignment(H4, Y4, W3) == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-14)


def test_ncc_accuracy_hand():
    # means at -1 and +1 on the line; class 0 has 2 of 2 right, class 1 has 1 of 4 right
    means = np.array([[-1.0, 1.0]])
    H = np.array([[-2.0], [-0.1], [0.5], [-0.5], [-3.0], [-0.2]])
    y = np.array([0, 0, 1, 1, 1, 1])
    balanced, per_class = ncc_accuracy(H, y, means)
    np.testing.assert_allclose(per_class, [1.0, 0.25])
    assert balanced == pytest.approx(0.625)


def test_ncc_accuracy_never_predicts_a_class_absent_from_training():
    # class 2 has a zero mean column (absent from training); embeddings with mixed signs
    # used to give NaN distances that argmin picked up
    H = np.array([[1.0, -1.0, 0.0], [0.5, -0.2, 0.3], [0.0, 1.0, 0.0], [0.0, 1.0, 0.1]])
    y = np.array([0, 0, 1, 1])
    means = np.zeros((3, 3))
    means[:, 0] = [1, -1, 0]
    means[:, 1] = [0, 1, 0]
    balanced, per_class = ncc_accuracy(H, y, means)
    assert balanced == 1.0
    np.testing.assert_array_equal(per_class[:2], [1.0, 1.0])
    assert np.isnan(per_class[2])
    # a zero embedding is nearer to the zero column than to any mean, yet it is not predicted
    balanced, _ = ncc_accuracy(np.array([[0.3, -0.3, 0.0]]), [0], means)
    assert balanced == 1.0


def test_nearest_prototype_accuracy_hand():
    W = np.eye(2)
    H = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1, 1])  # class 0: 1/2, class 1: 2/3
    balanced, per_class = nearest_prototype_accuracy(H, y, W)
    np.testing.assert_allclose(per_class, [0.5, 2 / 3])
    assert balanced == pytest.approx((0.5 + 2 / 3) / 2)
    # chunking does not matter
    assert nearest_prototype_accuracy(H, y, W, chunk_size=2)[0] == pytest.approx(balanced)


def test_geometry_metrics_matches_the_individual_functions():
    W = simplex_etf(4, 6, rotate=True, seed=1)
    H, y = noisy(W, 10, 0.1, seed=2)
    result = geometry_metrics(H, y, W)
    assert isinstance(result, GeometryMetrics)
    assert result.nc1 == pytest.approx(nc1(H, y), rel=1e-12)
    assert result.delta_etf == pytest.approx(delta_to_etf(H, y), rel=1e-12)
    assert result.delta_of == pytest.approx(delta_to_orthogonal_frame(H, y), rel=1e-12)
    assert result.delta_prototypes == pytest.approx(delta_to_prototypes(H, y, W), rel=1e-12)
    assert result.equinorm == pytest.approx(equinorm(H, y), rel=1e-12)
    assert result.equiangularity == pytest.approx(equiangularity(H, y), rel=1e-12)
    assert result.mean_cosine == pytest.approx(mean_pairwise_cosine(H, y), rel=1e-12)
    assert result.alignment == pytest.approx(prototype_alignment(H, y, W), rel=1e-12)
    assert result.ncc_accuracy == pytest.approx(ncc_accuracy(H, y, class_means(H, y)[0])[0])
    assert result.nearest_prototype_accuracy == pytest.approx(nearest_prototype_accuracy(H, y, W)[0])
    np.testing.assert_allclose(result.gram_means, class_mean_cosines(H, y), atol=1e-14)
    without = geometry_metrics(H, y)
    assert without.delta_prototypes is None and without.alignment is None
    assert without.nearest_prototype_accuracy is None


def test_geometry_metrics_to_dict_is_json():
    W = simplex_etf(3, 3)
    H, y = noisy(W, 5, 0.1, seed=3)
    y[y == 2] = 1  # class 2 absent: NaN entries in gram_means
    data = geometry_metrics(H, y, W).to_dict()
    text = json.dumps(data)
    back = json.loads(text)
    assert set(back) == {"nc1", "delta_etf", "delta_of", "delta_prototypes", "equinorm", "equiangularity",
                         "mean_cosine", "alignment", "ncc_accuracy", "nearest_prototype_accuracy", "gram_means"}
    assert all(isinstance(back[key], float) for key in back if key != "gram_means")
    assert len(back["gram_means"]) == 3 and all(len(row) == 3 for row in back["gram_means"])


def test_one_class_metrics_are_nan_without_warnings():
    H = random_prototypes(4, 3, seed=1).T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(nc1(H, [0, 0, 0, 0]))
        assert math.isnan(equinorm(H, [0, 0, 0, 0]))


def test_geometry_metrics_with_one_class():
    H = random_prototypes(4, 3, seed=1).T
    result = geometry_metrics(H, [0, 0, 0, 0])
    assert math.isnan(result.nc1) and math.isnan(result.delta_etf) and math.isnan(result.equinorm)
    assert result.ncc_accuracy == 1.0


# --------------------------------------------------------------------------------------
# streaming statistics
# --------------------------------------------------------------------------------------

def numpy_statistics(H, y, k):
    counts = np.bincount(y, minlength=k)
    means = np.stack([H[y == c].mean(0) if counts[c] else np.zeros(H.shape[1]) for c in range(k)], axis=1)
    dev = H - means[:, y].T
    return counts, means, dev.T @ dev / len(y)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_streaming_equals_one_shot(chunk_size):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 6, size=300)
    y[y == 4] = 5  # class 4 absent
    # a large common offset: the shifted accumulation must not lose the small spread
    H = 1e4 + rng.standard_normal((300, 8))
    counts, means, sigma_w = numpy_statistics(H, y, 6)
    stats = ClassStatistics.from_embeddings(H, y, num_classes=6, chunk_size=chunk_size)
    np.testing.assert_array_equal(stats.counts.numpy(), counts)
    np.testing.assert_allclose(stats.means().numpy(), means[:, counts > 0], rtol=1e-14)
    np.testing.assert_allclose(stats.within_covariance().numpy(), sigma_w, atol=1e-8)
    assert stats.total == 300


def test_streaming_by_hand_updates_in_any_order():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, size=50)
    H = rng.standard_normal((50, 4))
    stats = ClassStatistics(3, 4)
    order = rng.permutation(50)
    for part in np.array_split(order, 5):
        stats.update(torch.tensor(H[part], dtype=torch.float32), torch.tensor(y[part]))
    stats.update(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))  # empty chunk is a no-op
    counts, means, sigma_w = numpy_statistics(H.astype(np.float32).astype(np.float64), y, 3)
    np.testing.assert_allclose(stats.means().numpy(), means, atol=1e-12)
    np.testing.assert_allclose(stats.within_covariance().numpy(), sigma_w, atol=1e-12)
    assert stats.counts.dtype == torch.float64


def test_class_statistics_memory_is_independent_of_sample_count():
    """N = 10^6 rows of dimension 512 fit: the state is 2 k d + d^2 + 2 k numbers.

    For k = 100, d = 512 that is 0.36 million numbers (2.9 MB as float64) whatever N is; the
    data itself streams through in chunks. Checked on the tensors the object holds.
    """
    k, d = 100, 512

    def state_numbers(stats):
        return sum(t.numel() for t in vars(stats).values() if isinstance(t, torch.Tensor))

    stats = ClassStatistics(k, d)
    before = state_numbers(stats)
    assert before == 2 * k * d + d * d + 2 * k
    rng = np.random.default_rng(7)
    for _ in range(3):
        stats.update(rng.standard_normal((256, d)).astype(np.float32), rng.integers(0, k, 256))
    assert state_numbers(stats) == before
    assert 8 * before < 4e6  # bytes


def test_from_embeddings_does_not_copy_numpy_input_whole():
    # float32 numpy input of 5.1 MB: a float64 copy of it would need 10.2 MB
    rng = np.random.default_rng(8)
    H = rng.standard_normal((40_000, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=40_000)
    tracemalloc.start()
    try:
        stats = ClassStatistics.from_embeddings(H, y, chunk_size=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4e6, f"peak numpy allocation {peak / 1e6:.1f} MB"
    np.testing.assert_allclose(stats.means().numpy()[:, 0], H[y == 0].mean(0, dtype=np.float64), atol=1e-10)


def test_metrics_accept_class_statistics():
    W = simplex_etf(3, 4, rotate=True, seed=1)
    H, y = noisy(W, 10, 0.1, seed=9)
    stats = ClassStatistics.from_embeddings(H, y, chunk_size=5)
    assert nc1(stats, None) == pytest.approx(nc1(H, y), rel=1e-12)
    assert delta_to_etf(stats, None) == pytest.approx(delta_to_etf(H, y), rel=1e-12)
    assert prototype_alignment(stats, None, W) == pytest.approx(prototype_alignment(H, y, W), rel=1e-12)


# --------------------------------------------------------------------------------------
# numpy / torch agreement and invariances
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_agree(dtype):
    W = simplex_etf(4, 5, rotate=True, seed=4)
    H, y = noisy(W, 8, 0.2, seed=10)
    H = H.astype(np.float32) if dtype == torch.float32 else H
    a = geometry_metrics(H, y, W).to_dict()
    b = geometry_metrics(torch.tensor(H, dtype=dtype), torch.tensor(y), torch.tensor(W)).to_dict()
    for key in a:
        np.testing.assert_allclose(np.asarray(b[key], dtype=float), np.asarray(a[key], dtype=float),
                                   rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_input_agrees():
    W = simplex_etf(4, 5, rotate=True, seed=4)
    H, y = noisy(W, 8, 0.2, seed=10)
    a = geometry_metrics(H, y, W).to_dict()
    b = geometry_metrics(torch.tensor(H).cuda(), torch.tensor(y).cuda(), W).to_dict()
    for key in a:
        np.testing.assert_allclose(np.asarray(b[key], dtype=float), np.asarray(a[key], dtype=float),
                                   rtol=1e-10, atol=1e-12, err_msg=key)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(2, 5))
def test_invariant_under_sample_permutation_and_rotation(seed, k):
    rng = np.random.default_rng(seed)
    W = random_prototypes(k, 4, seed=seed)
    H, y = noisy(W, 3, 0.3, seed=seed)
    perm = rng.permutation(len(y))
    Q = random_rotation(4, seed)
    ref = geometry_metrics(H, y, W)
    for H2, y2, W2 in ((H[perm], y[perm], W), (H @ Q.T, y, Q @ W)):
        got = geometry_metrics(H2, y2, W2)
        for name in ("nc1", "delta_etf", "delta_of", "delta_prototypes", "equinorm", "equiangularity",
                     "mean_cosine", "alignment", "ncc_accuracy", "nearest_prototype_accuracy"):
            assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-8, abs=1e-10), name


def test_gram_distance_bounds_and_target_shape():
    rng = np.random.default_rng(11)
    M = rng.standard_normal((5, 4))
    assert 0.0 <= gram_distance(M, etf_gram(4)) <= 2.0
    with pytest.raises(ValueError, match=r"target must be 4 x 4"):
        gram_distance(M, np.eye(3))
    with pytest.raises(ValueError, match=r"all-zero"):
        gram_distance(np.zeros((3, 2)), np.eye(2))


def test_geometry_metrics_of_coinciding_means_are_nan_not_an_error():
    # every class collapsed onto the same point (e.g. UFM+ in d = 1): the centred means
    # vanish, so Delta to the ETF and equiangularity are undefined, not a crash
    y = np.repeat(np.arange(3), 2)
    H = np.ones((6, 1))
    m = geometry_metrics(H, y, np.ones((1, 3)))
    assert np.isnan(m.delta_etf) and np.isnan(m.equiangularity) and np.isnan(m.equinorm)
    assert m.delta_of == pytest.approx(np.linalg.norm(np.ones((3, 3)) / 3 - np.eye(3) / np.sqrt(3)))
    assert m.delta_prototypes == pytest.approx(0.0) and np.allclose(m.gram_means, 1.0)
    with pytest.raises(ValueError, match="all-zero"):
        delta_to_etf(H, y)  # a direct call still says why


@pytest.mark.parametrize("d", [2, 7, 40])
def test_nc1_equals_the_dense_pseudo_inverse_formula(d):
    rng = np.random.default_rng(d)
    y = np.repeat(np.arange(4), [5, 3, 6, 2])
    H = rng.standard_normal((len(y), d)) + 2 * rng.standard_normal((4, d))[y]
    M = np.stack([H[y == c].mean(0) for c in range(4)], axis=1)
    C = M - M.mean(1, keepdims=True)
    R = H - M[:, y].T
    sigma_w, sigma_b = R.T @ R / len(y), C @ C.T / 4
    dense = np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-12, hermitian=True)) / 4
    assert nc1(H, y) == pytest.approx(dense, rel=1e-9)


# --------------------------------------------------------------------------------------
# undefined quantities and argument checks (input-handling audit)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["zero mean", "zero prototype", "all means zero"])
def test_prototype_alignment_is_nan_when_a_cosine_is_undefined(case):
    W = orthogonal_frame(3, 3)
    H, y = collapsed(W, 2)
    if case == "zero mean":
        H[y == 1] = 0.0
    elif case == "zero prototype":
        W = W.copy()
        W[:, 1] = 0.0
    else:
        H[:] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cosines = prototype_cosines(H, y, W)
        assert math.isnan(prototype_alignment(H, y, W))
        result = geometry_metrics(H, y, W)
    assert math.isnan(result.alignment) and result.to_dict()["alignment"] is None
    assert math.isnan(cosines[1])
    if case != "all means zero":
        np.testing.assert_allclose(cosines[[0, 2]], 1.0)


def test_prototype_alignment_skips_only_absent_classes_and_is_scale_free():
    W = orthogonal_frame(3, 3)
    H, y = collapsed(W, 2)
    keep = y != 2
    assert prototype_alignment(H[keep], y[keep], W) == pytest.approx(1.0)  # class 2 absent
    H[y == 1] = [0.0, 0.8, 0.6]
    for scale in (1e-200, 1.0, 1e200):
        assert prototype_alignment(H * scale, y, W * scale) == pytest.approx((1 + 0.8 + 1) / 3, rel=1e-14)


def test_nc1_is_nan_when_the_class_means_coincide():
    y = np.repeat(np.arange(2), 2)
    spread = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # both means at 0
    for H in (spread, spread + [5.0, -3.0], np.ones((4, 2)), np.zeros((4, 2))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert math.isnan(nc1(H, y)), H
            result = geometry_metrics(H, y)
        assert math.isnan(result.nc1) and result.ncc_accuracy == 0.5  # ties go to class 0
    # collapsed samples around distinct means: 0, also at a small separation
    for gap in (1.0, 1e-6):
        H = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, gap], [1.0, gap]])
        assert nc1(H, y) == 0.0


@pytest.mark.parametrize("call", [
    lambda H, y, k: class_means(H, y, num_classes=k),
    lambda H, y, k: class_mean_cosines(H, y, num_classes=k),
    lambda H, y, k: geometry_metrics(H, y, num_classes=k),
    lambda H, y, k: ClassStatistics.from_embeddings(H, y, num_classes=k),
])
def test_num_classes_is_checked_by_name(call):
    H, y = collapsed(orthogonal_frame(2, 2), 2)
    with pytest.raises(TypeError, match="num_classes must be an integer, got str"):
        call(H, y, "3")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        call(H, y, 0)


@pytest.mark.parametrize("call", [
    prototype_alignment, prototype_cosines, delta_to_prototypes, geometry_metrics,
    lambda H, y, W: nearest_prototype_accuracy(H, y, W),
])
def test_prototypes_without_columns_are_refused(call):
    H, y = collapsed(orthogonal_frame(2, 3), 2)
    with pytest.raises(ValueError, match=r"prototypes must have at least one column .*got shape \(3, 0\)"):
        call(H, y, np.zeros((3, 0)))


def test_delta_to_etf_with_one_class_says_two_classes_are_needed():
    H = random_prototypes(4, 3, seed=1).T
    with pytest.raises(ValueError, match="delta_to_etf needs at least 2 classes present in labels.*got 1"):
        delta_to_etf(H, [2, 2, 2, 2])


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e200, 1e300])
def test_gram_distance_is_scale_free_for_huge_and_tiny_finite_input(scale):
    M = np.array([[1.0, 0.5, -0.3], [0.2, 1.0, 0.7]])
    reference = gram_distance(M, etf_gram(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gram_distance(M * scale, etf_gram(3)) == pytest.approx(reference, rel=1e-13)
        assert gram_distance(M, etf_gram(3) * scale) == pytest.approx(reference, rel=1e-13)
        assert gram_distance(M * scale, np.eye(3) * scale) == pytest.approx(gram_distance(M, np.eye(3)), rel=1e-13)


@pytest.mark.parametrize("device,error,match", [
    ("gpu", ValueError, r"device must be a torch device such as 'cpu' or 'cuda', got 'gpu'"),
    (99, ValueError, r"device"),
    (-1, ValueError, r"device must be a torch device .*got -1"),
    (1.5, TypeError, r"device must be a torch device .*got float"),
    (True, TypeError, r"device must be a torch device .*got bool"),
    ("cuda:99", ValueError, r"device 'cuda:99'"),
])
def test_class_statistics_device_is_checked_by_name(device, error, match):
    with pytest.raises(error, match=match):
        ClassStatistics(3, 3, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_class_statistics_cuda_without_cuda_is_a_value_error():
    with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available"):
        ClassStatistics(3, 3, device="cuda")


def test_class_statistics_accepts_cpu_devices():
    for device in ("cpu", torch.device("cpu"), None):
        assert ClassStatistics(2, 2, device=device).device == torch.device("cpu")


def test_mean_cosines_of_tiny_means_are_defined():
    H, y = collapsed(simplex_etf(3, 3, rotate=True, seed=2), 2)
    reference = class_mean_cosines(H, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(class_mean_cosines(H * 1e-200, y), reference, rtol=1e-12, atol=1e-15)
        assert mean_pairwise_cosine(H * 1e-200, y) == pytest.approx(-0.5, rel=1e-12)
