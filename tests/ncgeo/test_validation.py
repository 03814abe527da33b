"""Bad input across the public functions: ValueError/TypeError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncgeo import classes, geometry, losses, metrics, statistics
from ncgeo._validation import (
    as_float_array,
    as_float_tensor,
    as_label_tensor,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_real,
)

H = np.eye(3)[:, :2].copy()  # 3 samples in R^2
H[2] = [0.6, 0.8]
Y = np.array([0, 1, 1])
W = np.eye(2)
NAN_H = H.copy()
NAN_H[1, 0] = np.nan
INF_W = W.copy()
INF_W[0, 1] = np.inf

loss = losses.scl_prototype_loss
ce = losses.fixed_classifier_cross_entropy

CASES = [
    # --- the loss: shapes and dtypes
    ("loss 1-D embeddings", lambda: loss(H[0], [0], W, 1, 0.1), ValueError, r"embeddings must be a 2-D array"),
    ("loss int embeddings", lambda: loss(torch.ones(3, 2, dtype=torch.int64), Y, W, 1, 0.1), TypeError,
     r"embeddings must be a floating-point tensor"),
    ("loss string embeddings", lambda: loss([["a", "b"]], [0], W, 1, 0.1), TypeError, r"embeddings must be a numeric"),
    ("loss complex embeddings", lambda: loss(H.astype(complex), Y, W, 1, 0.1), TypeError, r"embeddings must be real"),
    ("loss prototypes wrong d", lambda: loss(H, Y, np.eye(3), 1, 0.1), ValueError,
     r"prototypes must have shape \(d, k\) with d = 2"),
    ("loss prototypes 1-D", lambda: loss(H, Y, np.ones(2), 1, 0.1), ValueError, r"prototypes must be a 2-D array"),
    ("loss prototypes missing", lambda: loss(H, Y, None, 1, 0.1), ValueError, r"prototypes are required"),
    # --- labels
    ("loss float labels", lambda: loss(H, Y.astype(float), W, 1, 0.1), TypeError, r"labels must hold integer"),
    ("loss bool labels", lambda: loss(H, torch.tensor([True, False, True]), W, 1, 0.1), TypeError,
     r"labels must hold integer"),
    ("loss labels too long", lambda: loss(H, [0, 1, 1, 0], W, 1, 0.1), ValueError, r"labels must have shape \(3,\)"),
    ("loss labels 2-D", lambda: loss(H, Y[:, None], W, 1, 0.1), ValueError, r"labels must have shape \(3,\)"),
    ("loss label too large", lambda: loss(H, [0, 1, 2], W, 1, 0.1), ValueError, r"labels must lie in \[0, 1\]"),
    ("loss negative label", lambda: loss(H, [0, -1, 1], W, 1, 0.1), ValueError, r"labels must lie in \[0, 1\]"),
    # --- parameters
    ("loss tau zero", lambda: loss(H, Y, W, 1, 0.0), ValueError, r"tau must be > 0"),
    ("loss tau negative", lambda: loss(H, Y, W, 1, -0.1), ValueError, r"tau must be > 0"),
    ("loss tau nan", lambda: loss(H, Y, W, 1, float("nan")), ValueError, r"tau must be finite"),
    ("loss tau string", lambda: loss(H, Y, W, 1, "0.1"), TypeError, r"tau must be a real number"),
    ("loss n_w negative", lambda: loss(H, Y, W, -1, 0.1), ValueError, r"n_w must be >= 0"),
    ("loss n_w inf", lambda: loss(H, Y, W, float("inf"), 0.1), ValueError, r"n_w must be finite"),
    ("loss n_w bool", lambda: loss(H, Y, W, True, 0.1), TypeError, r"n_w must be a real number"),
    ("loss n_w below one with prototype anchors",
     lambda: loss(H, Y, W, 0.5, 0.1, prototypes_as_anchors=True), ValueError, r"n_w must be 0 or >= 1"),
    ("loss reduction", lambda: loss(H, Y, W, 1, 0.1, reduction="avg"), ValueError, r"reduction must be one of"),
    ("loss none with prototype anchors", lambda: loss(H, Y, W, 1, 0.1, reduction="none", prototypes_as_anchors=True),
     ValueError, r"reduction=\"none\""),
    ("loss loss_scale", lambda: loss(H, Y, W, 1, 0.1, loss_scale=0), ValueError, r"loss_scale must be > 0"),
    # --- finiteness
    ("loss nan embeddings", lambda: loss(NAN_H, Y, W, 1, 0.1), ValueError, r"embeddings must contain only finite"),
    ("loss inf prototypes", lambda: loss(H, Y, INF_W, 1, 0.1), ValueError, r"prototypes must contain only finite"),
    # --- cross-entropy
    ("ce prototypes missing", lambda: ce(H, Y, None, 0.1), ValueError, r"prototypes are required"),
    ("ce tau", lambda: ce(H, Y, W, -2.0), ValueError, r"tau must be > 0"),
    ("ce labels", lambda: ce(H, [0, 1, 5], W, 0.1), ValueError, r"labels must lie in \[0, 1\]"),
    ("ce reduction", lambda: ce(H, Y, W, 0.1, reduction="max"), ValueError, r"reduction must be one of"),
    # --- geometry
    ("etf k=1", lambda: geometry.simplex_etf(1), ValueError, r"k must be an integer >= 2"),
    ("etf k float", lambda: geometry.simplex_etf(2.5), TypeError, r"k must be an integer"),
    ("etf k bool", lambda: geometry.simplex_etf(True), TypeError, r"k must be an integer"),
    ("etf d small", lambda: geometry.simplex_etf(4, 2), ValueError, r"d must be >= 3"),
    ("of d small", lambda: geometry.orthogonal_frame(4, 3), ValueError, r"d must be >= 4"),
    ("of d zero", lambda: geometry.orthogonal_frame(1, 0), ValueError, r"d must be an integer >= 1"),
    ("random d", lambda: geometry.random_prototypes(3, 0), ValueError, r"d must be an integer >= 1"),
    ("etf_gram k", lambda: geometry.etf_gram(1), ValueError, r"k must be an integer >= 2"),
    ("rotation d", lambda: geometry.random_rotation(0), ValueError, r"d must be an integer >= 1"),
    ("gram tol", lambda: geometry.prototypes_from_gram(np.eye(2), tol=0), ValueError, r"tol must be > 0"),
    ("gram string", lambda: geometry.prototypes_from_gram("eye"), TypeError, r"gram must be a numeric array"),
    ("gram d float", lambda: geometry.prototypes_from_gram(np.eye(2), d=2.0), TypeError, r"d must be an integer"),
    ("code k", lambda: geometry.spherical_code(1, 3), ValueError, r"k must be an integer >= 2"),
    ("code iterations", lambda: geometry.spherical_code(3, 3, iterations=0), ValueError,
     r"iterations must be an integer >= 1"),
    ("code energy", lambda: geometry.spherical_code(3, 3, energy_power=-1), ValueError, r"energy_power must be > 0"),
    ("load kind", lambda: geometry.load_prototypes("x.npy", kind="matrix"), ValueError, r"kind must be one of"),
    # --- metrics
    ("nc1 labels length", lambda: metrics.nc1(H, [0, 1]), ValueError, r"labels must have shape \(3,\)"),
    ("nc1 nan", lambda: metrics.nc1(NAN_H, Y), ValueError, r"embeddings must contain only finite"),
    ("equiangularity one class", lambda: metrics.equiangularity(H, [0, 0, 0]), ValueError,
     r"equiangularity needs at least 2 classes"),
    ("metrics float labels", lambda: metrics.delta_to_etf(H, [0.0, 1.0, 1.0]), TypeError, r"labels must hold integer"),
    ("metrics 3-D embeddings", lambda: metrics.equinorm(np.ones((2, 2, 2)), [0, 1]), ValueError,
     r"embeddings must be a 2-D array"),
    ("alignment prototypes d", lambda: metrics.prototype_alignment(H, Y, np.eye(3, 2)), ValueError,
     r"prototypes must have shape \(d, k\) with d = 2"),
    ("alignment labels beyond prototypes", lambda: metrics.prototype_alignment(H, [0, 1, 2], W), ValueError,
     r"labels must lie in \[0, 1\]"),
    ("delta prototypes d", lambda: metrics.delta_to_prototypes(H, Y, np.eye(3, 2)), ValueError,
     r"prototypes must have shape \(d, k\) with d = 2"),
    ("geometry_metrics prototypes d", lambda: metrics.geometry_metrics(H, Y, np.eye(3, 2)), ValueError,
     r"prototypes must have shape \(d, k\) with d = 2"),
    ("geometry_metrics torch int", lambda: metrics.geometry_metrics(torch.ones(3, 2, dtype=torch.int32), Y),
     TypeError, r"embeddings must be a floating-point tensor"),
    ("ncc means d", lambda: metrics.ncc_accuracy(H, Y, np.ones((3, 2))), ValueError,
     r"means must have shape \(d, k\) with d = 2"),
    ("ncc zero means", lambda: metrics.ncc_accuracy(H, Y, np.zeros((2, 2))), ValueError,
     r"means must have at least one non-zero column"),
    ("nearest prototype d", lambda: metrics.nearest_prototype_accuracy(H, Y, np.eye(3, 2)), ValueError,
     r"prototypes must have shape \(d, k\) with d = 2"),
    ("nearest prototype chunk", lambda: metrics.nearest_prototype_accuracy(H, Y, W, chunk_size=0), ValueError,
     r"chunk_size must be an integer >= 1"),
    ("nearest prototype nan", lambda: metrics.nearest_prototype_accuracy(NAN_H, Y, W), ValueError,
     r"embeddings must contain only finite"),
    ("gram_distance target", lambda: metrics.gram_distance(W, np.eye(3)), ValueError, r"target must be 2 x 2"),
    ("gram_distance nan", lambda: metrics.gram_distance(W, np.full((2, 2), np.nan)), ValueError,
     r"target must contain only finite"),
    ("stats num_classes", lambda: statistics.ClassStatistics(0, 3), ValueError, r"num_classes must be an integer >= 1"),
    ("stats dim", lambda: statistics.ClassStatistics(2, 3).update(H, Y), ValueError, r"embeddings must have 3 columns"),
    ("stats labels", lambda: statistics.ClassStatistics(2, 2).update(H, [0, 1, 2]), ValueError,
     r"labels must lie in \[0, 1\]"),
    ("stats empty", lambda: statistics.ClassStatistics(2, 2).means(), ValueError, r"no samples"),
    ("stats chunk", lambda: statistics.ClassStatistics.from_embeddings(H, Y, chunk_size=0), ValueError,
     r"chunk_size must be an integer >= 1"),
    # --- class sizes
    ("sizes classes", lambda: classes.class_sizes(0, 10), ValueError, r"num_classes must be an integer >= 1"),
    ("sizes n", lambda: classes.class_sizes(3, 0), ValueError, r"n must be an integer >= 1"),
    ("sizes imbalance", lambda: classes.class_sizes(3, 10, "linear", 2.0), ValueError, r"imbalance must be one of"),
    ("sizes ratio", lambda: classes.class_sizes(3, 10, "step", 0.5), ValueError, r"ratio must be >= 1"),
    ("sizes ratio too large", lambda: classes.class_sizes(3, 10, "step", 20.0), ValueError,
     r"ratio 20.0 leaves a class with no samples"),
    ("sizes ratio string", lambda: classes.class_sizes(3, 10, "step", "2"), TypeError, r"ratio must be a real number"),
    ("labels sizes", lambda: classes.labels_from_sizes([2, -1]), ValueError, r"sizes\[1\] must be an integer >= 0"),
]


@pytest.mark.parametrize("call,error,message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------
# the checks themselves
# --------------------------------------------------------------------------------------

def test_scalar_checks_accept_good_values():
    assert check_positive("x", np.float32(0.5)) == 0.5
    assert check_positive("x", torch.tensor(2.0)) == 2.0
    assert check_nonnegative("x", 0) == 0.0
    assert check_real("x", np.int64(3)) == 3.0
    assert check_real("x", np.array(0.25)) == 0.25  # 0-d arrays are scalars
    assert check_int("x", np.int32(4), minimum=1) == 4
    assert check_choice("x", "a", ("a", "b")) == "a"


@pytest.mark.parametrize("check,value,error,message", [
    (check_positive, 0, ValueError, r"x must be > 0, got 0.0"),
    (check_nonnegative, -1e-9, ValueError, r"x must be >= 0"),
    (check_real, float("inf"), ValueError, r"x must be finite"),
    (check_real, None, TypeError, r"x must be a real number, got NoneType"),
    (check_real, torch.tensor([1.0, 2.0]), TypeError, r"x must be a real number"),
    (check_real, torch.tensor(True), TypeError, r"x must be a real number"),
    (check_int, 2.0, TypeError, r"x must be an integer, got float"),
    (check_real, np.array([0.5]), TypeError, r"x must be a real number, got ndarray"),
    (check_real, np.array(True), TypeError, r"x must be a real number"),
])
def test_scalar_checks_reject(check, value, error, message):
    with pytest.raises(error, match=message):
        check("x", value)


def test_int_bounds_and_rank_checks():
    from ncgeo._validation import check_rank

    assert check_int("x", 5, minimum=1, maximum=5) == 5
    with pytest.raises(ValueError, match=r"x must be an integer <= 4, got 5"):
        check_int("x", 5, minimum=1, maximum=4)
    assert check_rank(np.int64(1), 2) == (1, 2)
    for rank, world, error, message in [(2, 2, ValueError, r"^shard rank must be < world_size = 2, got 2$"),
                                        (-1, 2, ValueError, r"shard rank must be an integer >= 0"),
                                        (0, 0, ValueError, r"shard world_size must be an integer >= 1"),
                                        (0.0, 2, TypeError, r"shard rank must be an integer, got float")]:
        with pytest.raises(error, match=message):
            check_rank(rank, world, prefix="shard ")


def test_array_conversions_keep_torch_and_convert_numpy():
    t = torch.ones(2, 3, dtype=torch.float32, requires_grad=True)
    assert as_float_tensor("a", t, ndim=2) is t
    converted = as_float_tensor("a", np.ones((2, 3), dtype=np.int32), ndim=2)
    assert converted.dtype == torch.float64
    assert as_float_array("a", torch.ones(2, dtype=torch.bfloat16)).dtype == np.float64
    labels = as_label_tensor("y", np.array([1, 0], dtype=np.uint8), 2, 2)
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 0]
    assert as_label_tensor("y", [], 0, 3).shape == (0,)
    # validate=False style: the range check can be skipped
    assert as_label_tensor("y", [5], 1, 2, check_range=False).tolist() == [5]
