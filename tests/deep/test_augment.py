"""Batched crop/flip/normalisation on hand-made images against per-image references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deep.augment import (
    MAX_VIEWS,
    augment_batch,
    augment_views,
    random_crop,
    random_crop_flip,
    random_horizontal_flip,
    to_float,
)


def _images(n: int = 5, c: int = 3, h: int = 6, w: int = 7) -> torch.Tensor:
    # every pixel distinct and non-zero so that content and zero padding are told apart
    return (torch.arange(n * c * h * w) % 250 + 1).to(torch.uint8).view(n, c, h, w)


def _reference_window(image: torch.Tensor, top: int, left: int, padding: int, flip: bool) -> torch.Tensor:
    """Per-image reference: zero-pad, slice the window, optionally mirror."""
    h, w = image.shape[-2:]
    window = F.pad(image, (padding,) * 4)[:, top:top + h, left:left + w]
    return window.flip(-1) if flip else window


def test_crop_padding_zero_is_identity():
    x = _images()
    out = random_crop(x, padding=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x) and out.dtype == x.dtype


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flip", [False, True])
def test_crop_flip_matches_per_image_reference(flip, device):
    x, padding = _images().to(device), 2
    generator = torch.Generator(device=device).manual_seed(3)
    out = random_crop_flip(x, padding, flip=flip, generator=generator, views=2)
    assert out.device.type == device
    x, out = x.cpu(), out.cpu()
    # replay the documented draw order: tops, lefts, then flip uniforms (view-major, length 2N)
    replay = torch.Generator(device=device).manual_seed(3)
    tops = torch.randint(0, 2 * padding + 1, (10,), generator=replay, device=device).cpu()
    lefts = torch.randint(0, 2 * padding + 1, (10,), generator=replay, device=device).cpu()
    mirrored = (torch.rand(10, generator=replay, device=device).cpu() < 0.5 if flip
                else torch.zeros(10, dtype=torch.bool))
    assert out.shape == (10, 3, 6, 7) and out.dtype == torch.uint8
    for j in range(10):
        expected = _reference_window(x[j % 5], int(tops[j]), int(lefts[j]), padding, bool(mirrored[j]))
        assert torch.equal(out[j], expected), j
    # offsets vary, some windows include zero padding and some are flipped
    assert (out == 0).any() and len(set(tops.tolist())) > 1
    if flip and device == "cpu":  # this seed's 10 draws flip some images, not all (on CUDA: unknown)
        assert 0 < int(mirrored.sum()) < 10


def test_crop_shifted_content_with_zeros():
    x = _images(n=64, c=1, h=4, w=4)
    out = random_crop(x, padding=1, generator=torch.Generator().manual_seed(0))
    seen = set()
    for j in range(64):
        matches = [(a, b) for a in range(3) for b in range(3)
                   if torch.equal(out[j], _reference_window(x[j], a, b, 1, False))]
        assert len(matches) == 1
        seen.add(matches[0])
        a, b = matches[0]
        # content is shifted by (1 - a, 1 - b); the uncovered strip is exactly zero padding
        assert int((out[j] == 0).sum()) == 16 - (4 - abs(a - 1)) * (4 - abs(b - 1))
        assert torch.equal(out[j, 0, max(0, 1 - a):4 - max(0, a - 1), max(0, 1 - b):4 - max(0, b - 1)],
                           x[j, 0, max(0, a - 1):4 - max(0, 1 - a), max(0, b - 1):4 - max(0, 1 - b)])
    assert len(seen) == 9             # all 3 x 3 offsets occur


def test_flip_equals_torch_flip():
    x = _images(n=40)
    out = random_horizontal_flip(x, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], torch.flip(x[i], [-1])) for i in range(40)]
    kept = [torch.equal(out[i], x[i]) for i in range(40)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 40
    assert torch.equal(random_horizontal_flip(x, probability=1.0), torch.flip(x, [-1]))
    assert torch.equal(random_horizontal_flip(x, probability=0.0), x)


def test_generator_determinism():
    x = _images(n=16)
    a = augment_batch(x, (0.5,) * 3, (0.25,) * 3, generator=torch.Generator().manual_seed(7))
    b = augment_batch(x, (0.5,) * 3, (0.25,) * 3, generator=torch.Generator().manual_seed(7))
    c = augment_batch(x, (0.5,) * 3, (0.25,) * 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_to_float_formula_and_layout():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 2, 1, 3).contiguous()
    mean, std = (0.2, 0.5), (0.4, 0.25)
    out = to_float(x, mean, std, dtype=torch.float64)
    expected = torch.stack([(x[:, c].double() / 255 - mean[c]) / std[c] for c in range(2)], dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out.dtype == torch.float64 and out.is_contiguous()
    last = to_float(x, mean, std, channels_last=True)
    assert last.dtype == torch.float32 and last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(last, expected.float())
    with pytest.raises(ValueError, match="2 entries"):
        to_float(x, (0.1,), (0.2,))
    with pytest.raises(TypeError, match="floating"):
        to_float(x, mean, std, dtype=torch.int32)
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        to_float(x, mean, (0.4, 0.0))
    with pytest.raises(ValueError, match="finite"):
        to_float(x, (0.2, float("nan")), std)
    with pytest.raises(TypeError, match="mean must be a sequence of numbers"):
        to_float(x, ("a", "b"), std)
    # tensors are accepted as well, and the same constants (made once) serve repeated calls
    torch.testing.assert_close(to_float(x, torch.tensor(mean), torch.tensor(std), dtype=torch.float64), expected)


def test_augment_views_shapes_and_content():
    x = _images(n=8)
    mean, std = (0.1, 0.2, 0.3), (0.3, 0.2, 0.1)
    views = augment_views(x, mean, std, views=2, padding=3, generator=torch.Generator().manual_seed(2),
                          channels_last=True)
    assert len(views) == 2
    for v in views:
        assert v.shape == (8, 3, 6, 7) and v.dtype == torch.float32
    batch = augment_batch(x, mean, std, views=2, padding=3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(torch.cat(views), batch)
    crops = random_crop_flip(x, 3, generator=torch.Generator().manual_seed(2), views=2)
    torch.testing.assert_close(batch, to_float(crops, mean, std))
    assert not torch.equal(views[0], views[1])     # two independent views


def test_argument_errors():
    with pytest.raises(ValueError, match="padding must be an integer >= 0"):
        random_crop(_images(), padding=-1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="probability"):
        random_horizontal_flip(_images(), probability=2.0)


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_augment_exactly_like_one_process_on_the_global_batch(world):
    b, views = 4, 2
    images = torch.randint(0, 256, (world * b, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    single = torch.Generator().manual_seed(11)
    whole = augment_batch(images, mean, std, views, 2, single).view(views, world * b, 3, 8, 8)
    for rank in range(world):
        generator = torch.Generator().manual_seed(11)  # every rank seeds alike
        part = augment_batch(images[rank * b:(rank + 1) * b], mean, std, views, 2, generator,
                             shard=(rank, world)).view(views, b, 3, 8, 8)
        torch.testing.assert_close(part, whole[:, rank * b:(rank + 1) * b], rtol=0, atol=0)
        assert torch.equal(generator.get_state(), single.get_state())  # the generators stay in step
    with pytest.raises(ValueError, match="shard rank must be < world_size = 2"):
        augment_batch(images, mean, std, shard=(2, 2))
    with pytest.raises(TypeError, match="pair"):
        augment_batch(images, mean, std, shard=1)


def test_generator_must_be_a_torch_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        random_crop_flip(_images(), generator=5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        random_horizontal_flip(_images(), generator="seed")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        augment_batch(_images(), (0.5,) * 3, (0.25,) * 3, generator=0)


@pytest.mark.parametrize("padding", [6, 7, 10**5])
def test_padding_must_be_smaller_than_the_image(padding):
    # _images() is 6 x 7: padding 6 already allows crops of pure zero padding; 10**5 asked for 160 GB
    with pytest.raises(ValueError, match=r"padding must be smaller than the image height and width \(min\(H, W\) = 6\)"):
        random_crop_flip(_images(), padding=padding)


def test_largest_padding_and_views_are_accepted():
    out = random_crop_flip(_images(n=2), padding=5, views=MAX_VIEWS, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2 * MAX_VIEWS, 3, 6, 7)
    empty = torch.zeros(2, 1, 0, 3, dtype=torch.uint8)  # no rows: only padding 0 is possible
    assert torch.equal(random_crop_flip(empty, padding=0), empty)


@pytest.mark.parametrize("views", [MAX_VIEWS + 1, 10**12])
def test_views_are_capped(views):
    with pytest.raises(ValueError, match=f"views must be an integer <= {MAX_VIEWS}"):
        random_crop_flip(_images(), views=views)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int8])
def test_to_float_takes_uint8_only(dtype):
    # float images used to be divided by 255 again, silently
    with pytest.raises(TypeError, match=f"images must be uint8 \\(pixel values 0..255\\), got {dtype}"):
        to_float(_images().to(dtype), (0.5,) * 3, (0.25,) * 3)


def test_checks_never_read_tensor_values():
    # the meta device has shapes and dtypes but no values: any read-back (a host synchronisation on a GPU) fails
    images = torch.empty(4, 3, 8, 8, dtype=torch.uint8, device="meta")
    out = augment_batch(images, (0.5,) * 3, (0.25,) * 3, views=2, padding=4, channels_last=True)
    assert out.shape == (8, 3, 8, 8) and out.device.type == "meta" and out.dtype == torch.float32
