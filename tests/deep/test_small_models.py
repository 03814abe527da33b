"""The small networks of deep.small_models (--arch mlp / cnn) and their build through build_model."""

from __future__ import annotations

import pytest
import torch

from deep.models import build_model
from deep.small_models import MLP, SmallCNN


def test_mlp_is_the_layer_stack_it_names_with_unit_features():
    torch.manual_seed(0)
    model = MLP((1, 28, 28), feature_dim=10, width=512, depth=3)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(512, 784), (512,), (512, 512), (512,), (10, 512), (10,)]  # 784-512-512-10
    x = torch.randn(5, 1, 28, 28)
    h = model(x)
    assert h.shape == (5, 10)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(5))
    z = model(x, normalize=False)
    torch.testing.assert_close(h, z / z.norm(dim=1, keepdim=True))
    # the last layer's output is signed; one linear layer is a linear map of the pixels
    assert (z < 0).any()
    linear = MLP((1, 2, 2), feature_dim=3, width=7, depth=1)
    torch.testing.assert_close(linear(torch.ones(1, 1, 2, 2), normalize=False),
                               linear.layers[0](torch.ones(1, 4)))


@pytest.mark.parametrize("network", [lambda f: MLP((3, 8, 8), 6, 16, 2, f), lambda f: SmallCNN(3, 6, 4, 3, f)])
def test_nonnegative_features_and_any_image_size(network):
    torch.manual_seed(1)
    model = network("nonnegative")
    h = model(torch.randn(4, 3, 8, 8))
    assert h.shape == (4, 6) and (h >= 0).all()
    torch.testing.assert_close(h.norm(dim=1)[h.norm(dim=1) > 0], torch.ones(int((h.norm(dim=1) > 0).sum())))
    if isinstance(model, SmallCNN):  # pools only while the image is at least 2 x 2
        assert model(torch.randn(2, 3, 1, 1)).shape == (2, 6)
        assert model(torch.randn(2, 3, 32, 20)).shape == (2, 6)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="feature"):
        MLP((1, 4, 4), 3, feature="linear")
    with pytest.raises(ValueError, match="depth"):
        SmallCNN(1, 3, depth=0)
    with pytest.raises(ValueError, match="shape"):
        MLP((1, 4, 4), 3)(torch.zeros(2, 1, 5, 4))
    with pytest.raises(ValueError, match="feature_dim"):
        build_model("mlp", 1, 8, "signed", None, image_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="image_shape"):
        build_model("mlp", 1, 8, "signed", 3)
    with pytest.raises(ValueError, match="depth"):
        build_model("resnet18", 1, 2, depth=3)
    assert isinstance(build_model("cnn", 1, 4, "signed", 5), SmallCNN)
    assert build_model("mlp", 1, 4, "signed", 5, depth=2, image_shape=(1, 4, 4)).depth == 2


@pytest.mark.parametrize("network", [lambda f: MLP((1, 4, 4), 3, 8, 2, f), lambda f: SmallCNN(1, 3, 4, 1, f)])
def test_abs_features_are_nonnegative_and_keep_a_gradient_where_the_relu_is_dead(network):
    grads = {}
    for feature in ("abs", "nonnegative"):
        torch.manual_seed(2)
        model = network(feature)
        x = torch.randn(6, 1, 4, 4)
        last = model.layers[-1] if isinstance(model, MLP) else model.output
        with torch.no_grad():
            last.bias[0] -= model.raw(x)[:, 0].max() + 0.5  # unit 0 negative on every image: a dead ReLU unit
        z = model.raw(x)
        h = model(x)
        assert (z[:, 0] < 0).all() and (h >= 0).all()
        if feature == "abs":
            torch.testing.assert_close(h, z.abs() / z.abs().norm(dim=1, keepdim=True))
            torch.testing.assert_close(model(x, normalize=False), z.abs())
        h[:, 0].sum().backward()
        grads[feature] = float(last.bias.grad[0])
    assert grads["nonnegative"] == 0.0 and grads["abs"] < -1e-3  # |z| pulls the dead unit back
