"""Tests of the ncgeo.testing assertion helpers: pass on good input, informative failures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncgeo.geometry import etf_gram, orthogonal_frame, simplex_etf
from ncgeo.testing import (
    assert_aligned_with_prototypes,
    assert_collapsed,
    assert_gram_close,
    assert_orthogonal_frame,
    assert_simplex_etf,
)


def collapsed(W, n, classes=None):
    """``n`` copies of column ``c`` of ``W`` as rows, labelled ``classes[c]`` (default ``c``)."""
    columns = np.repeat(np.arange(W.shape[1]), n)
    labels = columns if classes is None else np.asarray(classes)[columns]
    return W[:, columns].T.copy(), labels


def delta(M, target):
    """Independent Gram distance: || M^T M/||M^T M|| - T/||T|| ||_F."""
    G = M.T @ M
    return math.sqrt(np.sum((G / math.sqrt(np.sum(G**2)) - target / math.sqrt(np.sum(target**2))) ** 2))


def assert_pair(message, a, b):
    assert f"({a}, {b})" in message or f"({b}, {a})" in message, message


# --------------------------------------------------------------------------------------
# assert_collapsed
# --------------------------------------------------------------------------------------

def test_assert_collapsed_passes():
    H, y = collapsed(simplex_etf(4, 5, rotate=True, seed=1), 3)
    assert assert_collapsed(H, y) is None
    assert_collapsed(torch.tensor(H), torch.tensor(y), atol=0.0)


def test_assert_collapsed_fails_with_distance_tolerance_and_class():
    H, y = collapsed(simplex_etf(4, 5, rotate=True, seed=1), 3)
    H[7] += np.array([0.0, 0.03, 0.0, 0.04, 0.0])  # a sample of class 2 moved by 0.05
    # the class-2 mean moves by 0.05/3, so the moved sample sits 0.05 * 2/3 from it
    expected = 0.05 * 2 / 3
    with pytest.raises(AssertionError) as info:
        assert_collapsed(H, y, atol=1e-3)
    message = str(info.value)
    assert f"{expected:.3e}" in message
    assert "atol = 1.0e-03" in message
    assert "worst class 2" in message
    assert_collapsed(H, y, atol=0.04)  # within a looser tolerance


# --------------------------------------------------------------------------------------
# assert_simplex_etf
# --------------------------------------------------------------------------------------

def test_assert_simplex_etf_passes():
    W = simplex_etf(5, 7, rotate=True, seed=2)
    H, y = collapsed(W, 2)
    assert_simplex_etf(H, y)
    # any common translation and scale of the means is allowed (centred, scale-free)
    assert_simplex_etf(3 * H + 0.5, y)
    assert_simplex_etf(1e-200 * H, y)  # any finite scale, as delta_to_etf (no underflow to "undefined")
    assert_orthogonal_frame(1e-200 * np.repeat(np.eye(4), 2, axis=0), np.repeat(np.arange(4), 2))


def test_assert_simplex_etf_fails_with_delta_and_pair():
    W = simplex_etf(4, 4, rotate=True, seed=3)
    W[:, 1] = W[:, 1] + 0.2 * W[:, 3]  # pulls class 1 towards class 3
    H, y = collapsed(W, 2, classes=[0, 1, 3, 5])  # labels 0, 1, 3, 5: classes 2, 4 absent
    centred = W - W.mean(axis=1, keepdims=True)
    expected = delta(centred, etf_gram(4))
    unit = centred / np.linalg.norm(centred, axis=0)
    diff = np.abs(unit.T @ unit - etf_gram(4))
    i, j = np.unravel_index(np.argmax(diff), diff.shape)
    labels = [0, 1, 3, 5]
    with pytest.raises(AssertionError) as info:
        assert_simplex_etf(H, y, atol=1e-4)
    message = str(info.value)
    assert f"Delta = {expected:.3e}" in message
    assert "atol = 1.0e-04" in message
    assert_pair(message, labels[i], labels[j])


def test_assert_simplex_etf_with_a_mean_at_the_centroid_fails_cleanly():
    # class 2 sits at the centroid of the three means: its centred mean is zero
    H = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(AssertionError, match=r"not a simplex ETF: Delta = [0-9.e+-]+ > atol") as info:
        assert_simplex_etf(H, [0, 1, 2], atol=1e-3)
    assert "nan" not in str(info.value)


def test_assert_simplex_etf_rejects_an_orthogonal_frame_of_means_in_general_position():
    W = orthogonal_frame(3, 3)
    W[:, 0] *= 2  # uncentred OF with unequal norms is not an ETF after centring
    H, y = collapsed(W, 1)
    with pytest.raises(AssertionError, match="not a simplex ETF"):
        assert_simplex_etf(H, y, atol=1e-3)


# --------------------------------------------------------------------------------------
# assert_orthogonal_frame
# --------------------------------------------------------------------------------------

def test_assert_orthogonal_frame_passes():
    H, y = collapsed(orthogonal_frame(4, 6, rotate=True, seed=4), 3)
    assert_orthogonal_frame(H, y)
    assert_orthogonal_frame(torch.tensor(2 * H, dtype=torch.float32), torch.tensor(y), atol=1e-6)


def test_assert_orthogonal_frame_fails_with_delta_and_pair():
    W = orthogonal_frame(4, 4)
    W[:, 2] = np.array([0.0, 0.0, 0.8, 0.6])  # class 2 leans towards class 3
    H, y = collapsed(W, 2)
    expected = delta(W, np.eye(4))
    with pytest.raises(AssertionError) as info:
        assert_orthogonal_frame(H, y, atol=1e-2)
    message = str(info.value)
    assert f"Delta = {expected:.3e}" in message
    assert "atol = 1.0e-02" in message
    assert_pair(message, 2, 3)
    assert "+6.000e-01" in message  # the entry cos(mu_2, mu_3) - 0


def test_assert_orthogonal_frame_rejects_an_etf():
    H, y = collapsed(simplex_etf(3, 3), 2)
    with pytest.raises(AssertionError, match="not an orthogonal frame"):
        assert_orthogonal_frame(H, y)


# --------------------------------------------------------------------------------------
# assert_gram_close
# --------------------------------------------------------------------------------------

def test_assert_gram_close_passes():
    W = simplex_etf(5, 4)
    assert_gram_close(W.T @ W, etf_gram(5), atol=1e-12)
    assert_gram_close(torch.tensor(W.T @ W), etf_gram(5), atol=1e-12)


def test_assert_gram_close_fails_with_distance_and_pair():
    G = etf_gram(4)
    G[1, 3] = G[3, 1] = G[1, 3] + 0.01
    G[0, 2] = G[2, 0] = G[0, 2] - 0.002
    with pytest.raises(AssertionError) as info:
        assert_gram_close(G, etf_gram(4), atol=1e-3)
    message = str(info.value)
    assert "max |G - G*| = 1.000e-02" in message
    assert "atol = 1.0e-03" in message
    assert_pair(message, 1, 3)
    assert_gram_close(G, etf_gram(4), atol=0.011)


def test_assert_gram_close_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="same shape"):
        assert_gram_close(np.eye(3), np.eye(4))


# --------------------------------------------------------------------------------------
# assert_aligned_with_prototypes
# --------------------------------------------------------------------------------------

def test_assert_aligned_passes():
    W = simplex_etf(4, 6, rotate=True, seed=5)
    H, y = collapsed(W, 3)
    assert_aligned_with_prototypes(H, y, W)
    assert_aligned_with_prototypes(torch.tensor(0.5 * H), torch.tensor(y), torch.tensor(W))  # scale-free
    # absent classes are not judged
    H2, y2 = collapsed(W[:, [0, 2]], 2)
    y2 = np.where(y2 == 1, 2, 0)
    assert_aligned_with_prototypes(H2, y2, W)


def test_assert_aligned_fails_with_distance_and_class():
    W = orthogonal_frame(3, 3)
    H, y = collapsed(W, 2)
    H[y == 1] = np.array([0.0, 0.8, 0.6])  # class 1 at cos 0.8 from its prototype
    with pytest.raises(AssertionError) as info:
        assert_aligned_with_prototypes(H, y, W, atol=1e-6)
    message = str(info.value)
    assert f"{0.2:.3e}" in message
    assert "atol = 1.0e-06" in message
    assert "worst class 1" in message
    assert_aligned_with_prototypes(H, y, W, atol=0.25)


def test_assert_aligned_fails_when_a_class_mean_is_zero():
    # class 1 sits at the origin: cos(mu_1, w_1) is undefined, which is not alignment
    W = orthogonal_frame(3, 3)
    H, y = collapsed(W, 2)
    H[y == 1] = 0.0
    with pytest.raises(AssertionError, match=r"undefined for class 1 \(its class mean mu_c is zero\)"):
        assert_aligned_with_prototypes(H, y, W, atol=1.0)
    H[y == 2] = [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]  # a mean that is zero although no sample is
    with pytest.raises(AssertionError, match=r"undefined for class 1 .*also undefined for classes \[2\]"):
        assert_aligned_with_prototypes(H, y, W, atol=1.0)


def test_assert_aligned_fails_when_a_prototype_is_zero_and_ignores_it_when_absent():
    W = orthogonal_frame(3, 3)
    H, y = collapsed(W, 2)
    W0 = W.copy()
    W0[:, 2] = 0.0
    with pytest.raises(AssertionError, match=r"undefined for class 2 \(its prototype column w_c is zero\)"):
        assert_aligned_with_prototypes(H, y, W0, atol=1.0)
    keep = y != 2  # class 2 absent: its zero prototype is not judged
    assert_aligned_with_prototypes(H[keep], y[keep], W0)


def test_assert_aligned_wrong_prototype_dimension_is_a_value_error():
    W = orthogonal_frame(3, 3)
    H, y = collapsed(W, 2)
    with pytest.raises(ValueError, match=r"prototypes must have shape \(d, k\) with d = 3"):
        assert_aligned_with_prototypes(H, y, np.eye(4, 3))


# --------------------------------------------------------------------------------------
# tolerances
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("helper,args", [
    (assert_collapsed, (np.eye(2), [0, 1])),
    (assert_simplex_etf, (np.eye(2), [0, 1])),
    (assert_orthogonal_frame, (np.eye(2), [0, 1])),
    (assert_gram_close, (np.eye(2), np.eye(2))),
    (assert_aligned_with_prototypes, (np.eye(2), [0, 1], np.eye(2))),
])
@pytest.mark.parametrize("atol,error", [(-1e-3, ValueError), (float("nan"), ValueError), ("0.1", TypeError)])
def test_bad_tolerance(helper, args, atol, error):
    with pytest.raises(error, match="atol"):
        helper(*args, atol=atol)


def test_all_classes_at_one_point_fail_as_an_assertion():
    # the centred means vanish: Delta is undefined, which is a failed ETF check, not a ValueError
    H = np.tile([1.0, 0.0, 0.0], (6, 1))
    y = np.repeat(np.arange(3), 2)
    with pytest.raises(AssertionError, match="not a simplex ETF"):
        assert_simplex_etf(H, y)
    with pytest.raises(AssertionError, match="not an orthogonal frame"):
        assert_orthogonal_frame(H, y)
