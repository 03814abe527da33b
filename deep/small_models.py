"""Small networks that reach neural collapse on a CPU: a multilayer perceptron and a small CNN.

Both return L2-normalised features ``h`` of shape ``(B, feature_dim)`` from images
``(B, C, H, W)`` of the parameters' dtype (float32), like :class:`deep.models.ResNet`, and
have neither batch normalisation nor dropout (a full-batch step and the evaluation then see
the same function of the images). ``feature`` is ``"signed"`` (the last layer's output) or
``"nonnegative"`` (a ReLU on it, as the standard ResNet's final ReLU) or ``"abs"`` (``|z|``).
Both non-negative maps reach every unit vector ``h >= 0``, so the same UFM+ predicts them, but a
ReLU unit that is negative on every image gets no gradient and never recovers ("dead"), and the
UFM+ optimum (an orthogonal frame, each class on its own coordinate, with ``d = k``) needs every
unit alive; ``|z|`` passes a gradient of modulus 1 wherever ``z != 0``, so no unit dies (README
"Deep validation": measured on the full-batch Fashion-MNIST MLP).

* :class:`MLP` (``--arch mlp``): the image flattened to ``C H W`` numbers, then ``depth``
  linear layers ``C H W -> width -> ... -> width -> feature_dim`` with ReLU between them
  (``depth = 3``, ``width = 512`` on Fashion-MNIST is ``784-512-512-d``).
* :class:`SmallCNN` (``--arch cnn``): ``depth`` stages of ``conv3x3 - ReLU - maxpool 2x2``
  with ``width, 2 width, 4 width, ...`` channels (pooling only while the image is at least
  2 x 2), global average pooling and ``Linear(channels, feature_dim)``.

Initialisation is torch's default (Kaiming-uniform with ``a = sqrt(5)``), drawn from the
global generator: seed it (``torch.manual_seed``) for reproducible networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ncgeo._validation import check_choice, check_int

from .config import MAX_FEATURE_DIM, MAX_WIDTH

__all__ = ["SMALL_FEATURES", "MAX_DEPTH", "MLP", "SmallCNN"]

#: Feature options of the small networks (a projection head on top of them is not offered).
SMALL_FEATURES: tuple[str, ...] = ("signed", "nonnegative", "abs")
#: Most layers (MLP) or stages (CNN).
MAX_DEPTH = 64
#: Most input numbers of the MLP (``C H W``): a 4096 x 4096 RGB image.
MAX_INPUTS = 3 * 4096 * 4096


class _Features(nn.Module):
    """Shared input check and normalisation of the small networks."""

    feature: str
    feature_dim: int
    in_channels: int

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch tensor of images (B, C, H, W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")

    def raw(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``h = z / ||z||`` (``(B, feature_dim)``), ``z`` the last layer's output (after a ReLU
        for ``"nonnegative"``, ``|z|`` for ``"abs"``); ``normalize=False`` returns ``z``. Half precision is normalised
        in float32."""
        self._check_input(x)
        z = self.raw(x)
        if self.feature == "nonnegative":
            z = F.relu(z)
        elif self.feature == "abs":
            z = torch.abs(z)
        if not normalize:
            return z
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        return F.normalize(z, dim=1)


def _check_common(feature: str, feature_dim: int, width: int, depth: int, in_channels: int):
    feature = check_choice("feature", feature, SMALL_FEATURES)
    feature_dim = check_int("feature_dim", feature_dim, minimum=1, maximum=MAX_FEATURE_DIM)
    width = check_int("width", width, minimum=1, maximum=MAX_WIDTH)
    depth = check_int("depth", depth, minimum=1, maximum=MAX_DEPTH)
    in_channels = check_int("in_channels", in_channels, minimum=1)
    return feature, feature_dim, width, depth, in_channels


class MLP(_Features):
    """Multilayer perceptron on flattened images (module docstring).

    Parameters
    ----------
    image_shape : (C, H, W)
        Shape of one input image.
    feature_dim : int
        Output dimension ``d``.
    width : int
        Hidden units per layer (at most ``MAX_WIDTH``).
    depth : int
        Linear layers (``>= 1``; 1 is a linear map of the pixels).
    feature : {"signed", "nonnegative", "abs"}
    """

    def __init__(self, image_shape: tuple[int, int, int], feature_dim: int, width: int = 512, depth: int = 3,
                 feature: str = "signed") -> None:
        super().__init__()
        if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        shape = [check_int(f"image_shape[{i}]", s, minimum=1) for i, s in enumerate(image_shape)]
        inputs = shape[0] * shape[1] * shape[2]
        if inputs > MAX_INPUTS:
            raise ValueError(f"image_shape {tuple(shape)} has {inputs} numbers, more than an MLP takes ({MAX_INPUTS})")
        self.feature, self.feature_dim, width, self.depth, self.in_channels = _check_common(
            feature, feature_dim, width, depth, shape[0])
        self.image_shape = tuple(shape)
        sizes = [inputs] + [width] * (self.depth - 1) + [self.feature_dim]
        layers: list[nn.Module] = []
        for index in range(self.depth):
            layers.append(nn.Linear(sizes[index], sizes[index + 1]))
            if index < self.depth - 1:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))


class SmallCNN(_Features):
    """Small convolutional network (module docstring); any image size.

    Parameters
    ----------
    in_channels : int
    feature_dim : int
        Output dimension ``d``.
    width : int
        Channels of the first stage (doubling every stage).
    depth : int
        Convolution stages (``>= 1``).
    feature : {"signed", "nonnegative", "abs"}
    """

    def __init__(self, in_channels: int, feature_dim: int, width: int = 32, depth: int = 2,
                 feature: str = "signed") -> None:
        super().__init__()
        self.feature, self.feature_dim, width, self.depth, self.in_channels = _check_common(
            feature, feature_dim, width, depth, in_channels)
        channels = [self.in_channels] + [width * 2 ** stage for stage in range(self.depth)]
        if channels[-1] > 8 * MAX_WIDTH:
            raise ValueError(f"width {width} and depth {self.depth} give {channels[-1]} channels in the last stage, "
                             f"more than {8 * MAX_WIDTH}")
        self.convolutions = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], 3, padding=1)
                                          for i in range(self.depth))
        self.output = nn.Linear(channels[-1], self.feature_dim)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        for convolution in self.convolutions:
            x = F.relu(convolution(x))
            if x.shape[2] >= 2 and x.shape[3] >= 2:
                x = F.max_pool2d(x, 2)
        return self.output(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
