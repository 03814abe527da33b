"""ResNet-18/34 with the CIFAR stem and the feature options of docs/theory.md section 7
(:func:`build_model` also builds the small networks of :mod:`deep.small_models`).

Architecture (He et al. 2016, CIFAR variant used by the SupCon code): a 3x3 stride-1 stem
convolution with ``width`` channels, BatchNorm and ReLU, no max-pool; four stages of
:class:`BasicBlock` with ``width, 2 width, 4 width, 8 width`` channels (strides 1, 2, 2, 2;
``[2, 2, 2, 2]`` blocks for ResNet-18, ``[3, 4, 6, 3]`` for ResNet-34); global average
pooling to ``8 width`` numbers. Any input size >= 8x8 (smaller, down to 1x1, runs too) and 1
or 3 (or any) channels. Inputs are images ``(B, C, H, W)`` of the parameters' dtype (float32),
or of any float dtype under ``torch.autocast``; the check looks only at shapes and dtypes.

Sizes are bounded (``ValueError`` naming the argument, instead of an allocator error):
``width <= MAX_WIDTH`` (1024) and ``feature_dim <= MAX_FEATURE_DIM`` (65536), the caps of
``ncgeo deep train`` (:mod:`deep.config` gives the reasons), at most ``MAX_IN_CHANNELS``
(4096) image channels and ``MAX_BLOCKS`` (256) blocks per stage.

Feature options (the output ``h`` of :meth:`ResNet.forward` is always L2-normalised, shape
``(B, feature_dim)``):

* ``"nonnegative"``: the standard network; every block ends with ``ReLU(residual + shortcut)``,
  so the pooled features are >= 0. ``feature_dim = 8 width``.
* ``"signed"``: identical except that the *last* block of the *last* stage returns
  ``residual + shortcut`` without its final ReLU (the ReLU after the addition is dropped;
  the ReLU between its two convolutions stays), so the pooled features can take any sign.
  ``feature_dim = 8 width``.
* ``"linear"``: the non-negative pooled features followed by ``Linear(8 width, feature_dim)``.
* ``"mlp"``: ``Linear(8 width, 8 width) - ReLU - Linear(8 width, feature_dim)`` on the
  non-negative pooled features (the SupCon projection head). ``feature_dim`` defaults to 128
  for both heads.

Initialisation: Kaiming-normal (fan-out, ReLU gain) for convolutions, Kaiming-uniform with
``a = sqrt(5)`` (torch's default) for linear layers, BatchNorm weight 1 and bias 0.
Works in ``torch.channels_last`` memory format (``model.to(memory_format=torch.channels_last)``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ncgeo._validation import check_choice, check_int

from .config import MAX_FEATURE_DIM, MAX_WIDTH

__all__ = ["ARCHITECTURES", "ARCH_NAMES", "FEATURES", "MAX_BLOCKS", "MAX_FEATURE_DIM", "MAX_IN_CHANNELS", "MAX_WIDTH",
           "BasicBlock", "ResNet", "build_model", "resnet18", "resnet34"]

FEATURES: tuple[str, ...] = ("signed", "nonnegative", "linear", "mlp")
ARCHITECTURES: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
#: Every ``--arch``: the ResNets, and the small networks of :mod:`deep.small_models`.
ARCH_NAMES: tuple[str, ...] = (*ARCHITECTURES, "mlp", "cnn")
DEFAULT_HEAD_DIM = 128
#: Most image channels (multispectral images have tens to a few hundred).
MAX_IN_CHANNELS = 4096
#: Most blocks in one stage (the deepest CIFAR ResNet, ResNet-1202, has 200).
MAX_BLOCKS = 256


class BasicBlock(nn.Module):
    """``out = ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x))``; the shortcut is the
    identity, or a 1x1 strided convolution + BN when the shape changes. With
    ``final_relu=False`` the outer ReLU is omitted (signed output)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, final_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.final_relu = final_relu
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


class ResNet(nn.Module):
    """CIFAR-stem ResNet returning L2-normalised features (see the module docstring).

    Parameters
    ----------
    num_blocks : 4 ints
        Blocks per stage.
    in_channels : int
        Image channels (1 for MNIST/Fashion-MNIST, 3 for CIFAR).
    width : int
        Channels of the stem and first stage (64 in the standard network).
    feature : {"signed", "nonnegative", "linear", "mlp"}
    feature_dim : int, optional
        Output dimension d; must be ``None`` or ``8 width`` for "signed"/"nonnegative",
        default 128 for the heads.

    Attributes
    ----------
    feature_dim : int
        d, the dimension of the returned features.
    backbone_dim : int
        ``8 width``, the dimension of the pooled backbone output.
    """

    def __init__(self, num_blocks: tuple[int, int, int, int] | list[int], in_channels: int = 3,
                 width: int = 64, feature: Literal["signed", "nonnegative", "linear", "mlp"] = "signed",
                 feature_dim: int | None = None) -> None:
        super().__init__()
        if not isinstance(num_blocks, (tuple, list)):
            raise TypeError(f"num_blocks must be a sequence of 4 block counts, got {type(num_blocks).__name__}")
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks must list 4 stages, got {len(num_blocks)}")
        blocks = [check_int(f"num_blocks[{i}]", b, minimum=1, maximum=MAX_BLOCKS) for i, b in enumerate(num_blocks)]
        in_channels = check_int("in_channels", in_channels, minimum=1, maximum=MAX_IN_CHANNELS)
        width = check_int("width", width, minimum=1, maximum=MAX_WIDTH)
        self.feature = check_choice("feature", feature, FEATURES)
        self.backbone_dim = 8 * width
        if feature in ("signed", "nonnegative"):
            if feature_dim is not None and check_int("feature_dim", feature_dim, 1) != self.backbone_dim:
                raise ValueError(f"feature_dim must be None or 8 * width = {self.backbone_dim} for "
                                 f"feature={feature!r} (use 'linear' or 'mlp' for another d), got {feature_dim}")
            self.feature_dim = self.backbone_dim
        else:
            self.feature_dim = (DEFAULT_HEAD_DIM if feature_dim is None
                                else check_int("feature_dim", feature_dim, minimum=1, maximum=MAX_FEATURE_DIM))
        self.num_blocks = tuple(blocks)

        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, planes_in = [], width
        for stage, count in enumerate(blocks):
            planes = width * 2 ** stage
            layers = []
            for index in range(count):
                last = stage == 3 and index == count - 1
                layers.append(BasicBlock(planes_in, planes, stride=1 if stage == 0 or index > 0 else 2,
                                         final_relu=not (last and feature == "signed")))
                planes_in = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head: nn.Module
        if feature == "linear":
            self.head = nn.Linear(self.backbone_dim, self.feature_dim)
        elif feature == "mlp":
            self.head = nn.Sequential(nn.Linear(self.backbone_dim, self.backbone_dim), nn.ReLU(inplace=True),
                                      nn.Linear(self.backbone_dim, self.feature_dim))
        else:
            self.head = nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming initialisation (see the module docstring); BatchNorm to the identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone output ``(B, 8 width)`` (before the head and the normalisation)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch tensor of images (B, C, H, W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(f"x must have shape (B, {self.conv1.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"x must have images of at least 1 x 1 pixels, got shape {tuple(x.shape)}")
        expected = self.conv1.weight.dtype
        # metadata only (no value read-back); autocast is asked only on a mismatch
        if x.dtype != expected and not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
            raise TypeError(f"x must be {str(expected).replace('torch.', '')} images of shape (B, C, H, W) "
                            f"(normalised, e.g. by deep.augment.to_float), or float images under torch.autocast; "
                            f"got {str(x.dtype).replace('torch.', '')}")
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Features ``h = z / ||z||`` of shape ``(B, feature_dim)`` with ``z = head(backbone(x))``;
        ``normalize=False`` returns ``z`` itself (e.g. for a learned linear classifier on top).
        Half-precision ``z`` (under autocast) is normalised in float32."""
        z = self.head(self.backbone(x))
        if not normalize:
            return z
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        return F.normalize(z, dim=1)

    def forward_unnormalised(self, x: torch.Tensor) -> torch.Tensor:
        """``z = head(backbone(x))`` without the L2 normalisation (same as ``forward(x, False)``;
        call ``forward`` through a DDP wrapper instead of this method)."""
        return self(x, normalize=False)


def resnet18(in_channels: int = 3, width: int = 64,
             feature: Literal["signed", "nonnegative", "linear", "mlp"] = "signed",
             feature_dim: int | None = None) -> ResNet:
    """ResNet-18 (blocks ``[2, 2, 2, 2]``) with the CIFAR stem; see :class:`ResNet`."""
    return ResNet(ARCHITECTURES["resnet18"], in_channels, width, feature, feature_dim)


def resnet34(in_channels: int = 3, width: int = 64,
             feature: Literal["signed", "nonnegative", "linear", "mlp"] = "signed",
             feature_dim: int | None = None) -> ResNet:
    """ResNet-34 (blocks ``[3, 4, 6, 3]``) with the CIFAR stem; see :class:`ResNet`."""
    return ResNet(ARCHITECTURES["resnet34"], in_channels, width, feature, feature_dim)


def build_model(arch: Literal["resnet18", "resnet34", "mlp", "cnn"] = "resnet18", in_channels: int = 3,
                width: int = 64, feature: Literal["signed", "nonnegative", "linear", "mlp"] = "signed",
                feature_dim: int | None = None, *, depth: int | None = None,
                image_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """The network named ``arch``: a :class:`ResNet` (a key of :data:`ARCHITECTURES`), or a
    :class:`deep.small_models.MLP` (``"mlp"``, needs ``image_shape``) or
    :class:`deep.small_models.SmallCNN` (``"cnn"``), which need ``feature_dim`` and take
    ``depth`` (default 3 layers / 2 stages) and the features ``signed`` or ``nonnegative``."""
    check_choice("arch", arch, ARCH_NAMES)
    if arch in ARCHITECTURES:
        if depth is not None:
            raise ValueError(f"depth applies to the mlp and cnn architectures, not {arch} (got {depth})")
        return ResNet(ARCHITECTURES[arch], in_channels, width, feature, feature_dim)
    from .small_models import MLP, SmallCNN

    if feature_dim is None:
        raise ValueError(f"feature_dim (the output dimension d) is required for arch {arch!r}")
    if arch == "mlp":
        if image_shape is None:
            raise ValueError("image_shape (C, H, W) is required for arch 'mlp'")
        if check_int("in_channels", in_channels, minimum=1) != image_shape[0]:
            raise ValueError(f"in_channels {in_channels} differs from image_shape {tuple(image_shape)}")
        return MLP(image_shape, feature_dim, width, 3 if depth is None else depth, feature)
    return SmallCNN(in_channels, feature_dim, width, 2 if depth is None else depth, feature)
