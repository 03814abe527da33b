"""Tests of ncgeo.classes: class sizes under imbalance and the label vector."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncgeo.classes import class_sizes, labels_from_sizes


def test_balanced():
    assert class_sizes(4, 7) == [7, 7, 7, 7]
    assert class_sizes(3, 5, "none", ratio=10.0) == [5, 5, 5]  # ratio is ignored without imbalance


@pytest.mark.parametrize("k,n,ratio,expected", [
    (4, 10, 5.0, [10, 10, 2, 2]),  # the docs/theory.md example n = [10, 10, 2, 2]
    (5, 100, 10.0, [100, 100, 10, 10, 10]),  # floor(k/2) = 2 majority classes
    (10, 100, 10.0, [100] * 5 + [10] * 5),
    (3, 7, 2.0, [7, 3, 3]),  # floor(7/2)
    (1, 4, 3.0, [1]),  # no majority class: floor(1/2) = 0
])
def test_step(k, n, ratio, expected):
    assert class_sizes(k, n, "step", ratio) == expected


@pytest.mark.parametrize("k,n,ratio,expected", [
    (3, 100, 100.0, [100, 10, 1]),  # 100 * 100^(-c/2)
    (3, 100, 10.0, [100, 31, 10]),  # floor(100 / sqrt(10)) = 31
    (5, 16, 16.0, [16, 8, 4, 2, 1]),
    (1, 9, 4.0, [9]),
])
def test_exponential(k, n, ratio, expected):
    assert class_sizes(k, n, "exp", ratio) == expected


def test_exponential_matches_formula_and_is_monotone():
    sizes = class_sizes(10, 500, "exp", 50.0)
    assert sizes == [math.floor(500 * 50.0 ** (-c / 9) + 1e-9) for c in range(10)]
    assert sizes[0] == 500 and sizes[-1] == 10
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))


def test_ratio_one_is_balanced():
    assert class_sizes(4, 6, "step", 1.0) == [6] * 4
    assert class_sizes(4, 6, "exp", 1.0) == [6] * 4


def test_labels_from_sizes():
    labels = labels_from_sizes([2, 0, 3])
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 0, 2, 2, 2]
    assert labels_from_sizes([]).shape == (0,)
    assert np.bincount(labels_from_sizes(class_sizes(4, 10, "step", 5.0))).tolist() == [10, 10, 2, 2]
