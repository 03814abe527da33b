"""deep.evaluate: metrics of one split stay defined when the geometry is degenerate."""

import math

import torch

from deep.evaluate import evaluate_split
from ncgeo.geometry import simplex_etf


def test_all_class_means_equal_gives_nan_not_an_error():
    # e.g. a network with dead features early in training: every class mean is the same vector
    H = torch.zeros(6, 3)
    H[:, 0] = 1.0
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = evaluate_split(H, y, simplex_etf(3, 3), 3)
    assert math.isnan(metrics.delta_etf) and math.isnan(metrics.equiangularity)
    assert metrics.delta_of == metrics.delta_of  # defined: the uncentred Gram is all ones
    assert metrics.ncc_accuracy == metrics.ncc_accuracy
