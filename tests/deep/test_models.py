"""CIFAR-stem ResNets: shapes, unit-norm features, feature options, channels_last, gradients."""

from __future__ import annotations

import pytest
import torch

from deep.models import (
    ARCHITECTURES,
    MAX_FEATURE_DIM,
    MAX_WIDTH,
    BasicBlock,
    ResNet,
    build_model,
    resnet18,
    resnet34,
)

WIDTH = 8  # narrow networks keep these tests fast


@pytest.mark.parametrize("feature,dim", [("signed", 64), ("nonnegative", 64), ("linear", 128), ("mlp", 128)])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_feature_shapes_and_unit_norm(feature, dim, channels, size):
    torch.manual_seed(0)
    model = resnet18(in_channels=channels, width=WIDTH, feature=feature)
    h = model(torch.randn(4, channels, size, size))
    assert model.feature_dim == dim and h.shape == (4, dim)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(4))
    z = model(torch.randn(4, channels, size, size), normalize=False)
    assert z.shape == (4, dim) and not torch.allclose(z.norm(dim=1), torch.ones(4))


def test_nonnegative_vs_signed():
    torch.manual_seed(1)
    x = torch.randn(6, 3, 16, 16)
    nonnegative = resnet18(width=WIDTH, feature="nonnegative").train()
    assert (nonnegative(x) >= 0).all()
    signed = resnet18(width=WIDTH, feature="signed").train()
    signed.load_state_dict(nonnegative.state_dict())    # same weights, only the last ReLU differs
    h = signed(x)
    assert (h < 0).any()
    # the signed features are the pooled pre-activation of the last block: ReLU'ing that
    # before pooling reproduces the non-negative network exactly
    last = signed.layer4[-1]
    assert not last.final_relu and all(b.final_relu for b in list(signed.layer4)[:-1])
    assert all(b.final_relu for layer in (signed.layer1, signed.layer2, signed.layer3) for b in layer)
    last.final_relu = True
    torch.testing.assert_close(signed(x), nonnegative(x))


def test_feature_dim_options():
    model = resnet18(width=WIDTH, feature="linear", feature_dim=10)
    assert model.feature_dim == 10 and model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    mlp = resnet18(width=WIDTH, feature="mlp", feature_dim=5)
    assert [type(m).__name__ for m in mlp.head] == ["Linear", "ReLU", "Linear"]
    assert mlp.head[0].in_features == mlp.head[0].out_features == 64 and mlp.head[2].out_features == 5
    assert resnet18(width=WIDTH, feature="signed", feature_dim=64).feature_dim == 64
    with pytest.raises(ValueError, match="8 \\* width = 64"):
        resnet18(width=WIDTH, feature="signed", feature_dim=10)
    with pytest.raises(ValueError, match="feature must be one of"):
        resnet18(width=WIDTH, feature="relu")
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model("resnet50")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        resnet18(width=WIDTH)(torch.randn(2, 1, 8, 8))


def test_architecture_layout():
    for arch, counts in (("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))):
        model = build_model(arch, in_channels=1, width=WIDTH, feature="nonnegative", feature_dim=None)
        assert ARCHITECTURES[arch] == counts and model.num_blocks == counts
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        assert [len(s) for s in stages] == list(counts)
        assert all(isinstance(b, BasicBlock) for s in stages for b in s)
        assert [s[-1].conv2.out_channels for s in stages] == [8, 16, 32, 64]
        assert [s[0].conv1.stride[0] for s in stages] == [1, 2, 2, 2]
    # CIFAR stem: 3x3 stride 1, no max-pool
    stem = resnet34(width=WIDTH).conv1
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in resnet34(width=WIDTH).modules())


def test_standard_resnet18_parameter_count():
    # 11,168,832 backbone parameters: the CIFAR ResNet-18 of the SupCon code without its fc layer
    assert sum(p.numel() for p in resnet18().parameters()) == 11_168_832


def test_kaiming_init_and_batchnorm():
    model = resnet18(width=WIDTH)
    conv = model.layer2[0].conv1                                   # fan_out = 16 * 9
    std = conv.weight.std().item()
    assert abs(std - (2 / (16 * 9)) ** 0.5) < 0.25 * (2 / (16 * 9)) ** 0.5
    assert torch.equal(model.bn1.weight, torch.ones(8)) and torch.equal(model.bn1.bias, torch.zeros(8))


def test_channels_last_matches_and_gradients_flow():
    torch.manual_seed(2)
    model = resnet18(width=WIDTH, feature="mlp", feature_dim=16)
    x = torch.randn(4, 3, 16, 16)
    reference = model(x)
    model_cl = resnet18(width=WIDTH, feature="mlp", feature_dim=16)
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    for name, parameter in model_cl.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model_cl.conv1.weight.grad.abs().sum() > 0 and model_cl.head[2].weight.grad.abs().sum() > 0


def test_float64_and_unnormalised_alias():
    model = ResNet((1, 1, 1, 1), in_channels=1, width=4, feature="signed").double().eval()
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    h = model(x)
    assert h.dtype == torch.float64
    z = model.forward_unnormalised(x)
    torch.testing.assert_close(h, z / z.norm(dim=1, keepdim=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_channels_last_bf16_autocast():
    model = resnet18(width=WIDTH, feature="signed").cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = model(x)
    assert h.dtype == torch.float32 and h.shape == (8, 64)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(8, device="cuda"))
    h.sum().backward()
    assert torch.isfinite(model.conv1.weight.grad).all()


def test_num_blocks_must_be_a_sequence():
    with pytest.raises(TypeError, match="num_blocks must be a sequence of 4 block counts, got int"):
        ResNet(5)
    with pytest.raises(ValueError, match="num_blocks must list 4 stages, got 3"):
        ResNet((1, 1, 1))


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 10**6}, "width must be an integer <= 1024, got 1000000"),
    ({"width": MAX_WIDTH + 1}, "width must be an integer <= 1024"),
    ({"feature": "linear", "feature_dim": 10**11}, "feature_dim must be an integer <= 65536"),
    ({"feature": "mlp", "feature_dim": MAX_FEATURE_DIM + 1}, "feature_dim must be an integer <= 65536"),
    ({"in_channels": 10**9}, "in_channels must be an integer <= 4096"),
])
def test_sizes_are_capped_before_the_allocator_sees_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet((1, 1, 1, 1), **kwargs)
    with pytest.raises(ValueError, match=r"num_blocks\[2\] must be an integer <= 256"):
        ResNet((1, 1, 10**9, 1))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64, torch.float16, torch.int64])
def test_forward_refuses_images_of_another_dtype(dtype):
    model = ResNet((1, 1, 1, 1), in_channels=1, width=2).eval()
    with pytest.raises(TypeError, match=f"x must be float32 images of shape \\(B, C, H, W\\).*got {str(dtype)[6:]}"):
        model(torch.zeros(2, 1, 8, 8, dtype=dtype))
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        model([[0.0]])


def test_forward_under_autocast_takes_other_float_dtypes():
    model = ResNet((1, 1, 1, 1), in_channels=1, width=2).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model(torch.randn(2, 1, 8, 8, dtype=torch.bfloat16))
    assert h.dtype == torch.float32 and h.shape == (2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="got uint8"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_forward_needs_at_least_one_pixel():
    model = ResNet((1, 1, 1, 1), in_channels=1, width=2).eval()
    for shape in ((2, 1, 0, 8), (2, 1, 8, 0)):
        with pytest.raises(ValueError, match="x must have images of at least 1 x 1 pixels"):
            model(torch.zeros(shape))
    assert model(torch.zeros(2, 1, 1, 1)).shape == (2, 16)


def test_input_checks_never_read_tensor_values():
    # the meta device has no values: a check that read one back (a host synchronisation) would fail
    model = ResNet((1, 1, 1, 1), in_channels=3, width=2).to("meta")
    assert model(torch.empty(4, 3, 8, 8, device="meta")).shape == (4, 16)
