"""deep.evaluate: metrics of one split stay defined when the geometry is degenerate."""

import math

import numpy as np
import pytest
import torch

from deep.evaluate import embed, evaluate_run, evaluate_split
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


def _tiny_model_and_set():
    from helpers import synthetic_images

    from deep.models import resnet18

    return resnet18(1, width=2).eval(), synthetic_images(num_classes=3, per_class=2, size=8)


@pytest.mark.parametrize("batch_size, error, message", [
    (-1, ValueError, "batch_size must be an integer >= 1, got -1"),  # returned an empty (0, d) tensor
    (0, ValueError, "batch_size must be an integer >= 1, got 0"),    # "range() arg 3 must not be zero"
    (2.0, TypeError, "batch_size must be an integer"),
])
def test_embed_batch_size_is_an_integer_of_at_least_one(batch_size, error, message):
    model, data = _tiny_model_and_set()
    with pytest.raises(error, match=message):
        embed(model, data.images, data.mean, data.std, batch_size=batch_size)
    assert embed(model, data.images, data.mean, data.std, batch_size=4).shape == (6, 16)


def test_embed_argument_types():
    model, data = _tiny_model_and_set()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        embed(None, data.images, data.mean, data.std)
    with pytest.raises(TypeError, match="images must be a uint8 torch tensor"):
        embed(model, data.images.numpy(), data.mean, data.std)


def test_evaluate_split_prototypes_and_classes_are_checked():
    H = torch.nn.functional.normalize(torch.randn(6, 3), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(TypeError, match="prototypes must be a \\(d, k\\) array or tensor, got None"):
        evaluate_split(H, y, None, 3)
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        evaluate_split(H, y, simplex_etf(3, 3), None)
    with pytest.raises(ValueError, match="prototypes must have num_classes = 3 columns"):
        evaluate_split(H, y, simplex_etf(4, 3), 3)
    with pytest.raises(ValueError, match="prototypes must be a 2-D array"):
        evaluate_split(H, y, np.ones(3), 3)
    with pytest.raises(ValueError, match="prototypes must contain only finite values"):
        evaluate_split(H, y, np.full((3, 3), np.nan), 3)
    as_tensor = evaluate_split(H, y, torch.as_tensor(simplex_etf(3, 3), dtype=torch.float32), 3)
    assert as_tensor.delta_prototypes == pytest.approx(evaluate_split(H, y, simplex_etf(3, 3), 3).delta_prototypes,
                                                       abs=1e-6)


def test_evaluate_run_sets_must_be_image_datasets():
    model, data = _tiny_model_and_set()
    W = simplex_etf(3, 16)
    with pytest.raises(TypeError, match="train_set must be an ImageDataset, got NoneType"):
        evaluate_run(model, None, None, W)
    with pytest.raises(TypeError, match="test_set must be an ImageDataset or None, got list"):
        evaluate_run(model, data, [], W)
    train, test = evaluate_run(model, data, data, W, batch_size=4)
    assert train.samples == test.samples == 6
