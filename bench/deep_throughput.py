r"""Training throughput of deep: the ncgeo step against a SupCon-style reference pipeline.

Both pipelines train the same network (a fresh instance each) on the same device with the
same global batch of ``b`` images, each seen in two augmented views (random crop with
4-pixel zero padding + horizontal flip, then per-channel normalisation), with ``n_w``
copies of each of the ``k`` class prototypes:

(a) **ncgeo**: :func:`deep.train.train_step`: the training set resident on the device as
    ``uint8``, the crops and flips of the whole batch done there in one gather,
    ``channels_last`` on CUDA, bf16 autocast (``--precision``), optional ``torch.compile``,
    fused SGD on CUDA, the prototypes as the log-weight ``log(n_w)`` of ``k`` logits
    (:func:`ncgeo.losses.scl_prototype_loss`), no host synchronisation inside the loop.
(b) **reference**, written in the style of the widely used public SupCon training code: a
    CPU ``torch.utils.data.DataLoader`` with ``--workers`` processes applying per-image
    transforms (two views per image; crop, flip and normalise in plain torch, one image at
    a time), pinned host batches copied to the device every step, fp32 (PyTorch's defaults,
    so cuDNN convolutions may use TF32), ``n_w`` explicit copies of every prototype appended
    to the batch (:func:`ncgeo.losses.materialise_prototypes`) and the plain SupCon loss
    over the enlarged batch (:func:`ncgeo.losses.supcon_loss_materialised`, sample anchors
    only), ``loss.item()`` every step for the running average.

Printed: images/s of each (images per second, each image in two views), their ratio, the
training FLOP/s and the fraction of the device's dense peak. FLOPs are counted, not
estimated from the clock: forward hooks count the multiply-accumulates (MACs) of every
``Conv2d`` and ``Linear`` for one sample; a training image costs
``2 views x 3 (forward + backward ~ 3 forwards) x 2 FLOP/MAC x MACs`` (the loss, batch-norm and
element-wise work are not counted). Peaks come from a table of vendor datasheet numbers
(dense, SXM parts); an unlisted device prints ``unknown``.

Data are synthetic (seeded uniform ``uint8`` pixels, ``--classes`` balanced labels):
throughput does not depend on pixel values. Targets on one H200 for ResNet-18 at 32x32,
batch 128: ncgeo at least 25,000 images/s and at least 5x the reference.

Usage::

    python bench/deep_throughput.py                      # ResNet-18, 32x32x3, b=128, n_w=100
    python bench/deep_throughput.py --compile --json out/throughput.json
    python bench/deep_throughput.py --quick              # tiny CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deep.config import TrainConfig  # noqa: E402
from deep.models import build_model  # noqa: E402
from deep.objective import Objective  # noqa: E402
from deep.optim import build_optimizer  # noqa: E402
from deep.data import NORMALIZATION  # noqa: E402
from deep.train import PADDING, VIEWS, train_step  # noqa: E402
from ncgeo._io import atomic_write_bytes  # noqa: E402
from ncgeo.geometry import simplex_etf  # noqa: E402
from ncgeo.losses import materialise_prototypes, supcon_loss_materialised  # noqa: E402

#: dense peak TFLOP/s by precision from the vendors' datasheets (SXM parts; "fp32" is the
#: plain CUDA-core rate, "tf32" the tensor-core rate cuDNN uses for fp32 convolutions)
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}
MEAN, STD = NORMALIZATION["cifar10"]  # CIFAR-10 training statistics


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """Dense peak of ``device`` for ``precision`` (``bf16``, ``tf32``, ``fp32``), or None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(precision)
    return None


def fp32_peak_precision(device: torch.device) -> str:
    """The peak an fp32 network is measured against: TF32 tensor cores where cuDNN uses them."""
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def count_macs_per_sample(model: torch.nn.Module, sample_shape: tuple[int, ...],
                          device: torch.device) -> int:
    """Multiply-accumulates of ``Conv2d`` and ``Linear`` layers for one sample (forward hooks)."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, torch.nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((2, *sample_shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total // 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(steps, args, device: torch.device) -> dict[str, Any]:
    """Run ``steps(args.warmup)`` untimed, then time ``steps(args.steps)`` (device synchronised)."""
    started = time.perf_counter()
    steps(args.warmup)
    synchronize(device)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    last = steps(args.steps)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"images_per_second": args.steps * args.batch_size / seconds, "seconds": seconds,
            "warmup_seconds": warm, "last": last}


class TwoViewCrops(torch.utils.data.Dataset):
    """Reference dataset: per-image transforms applied twice in ``__getitem__`` (TwoCropTransform).

    Each view: zero padding by ``padding`` pixels, a random ``H x W`` crop, a horizontal flip
    with probability 1/2, conversion to float in [0, 1] and per-channel normalisation, one
    image at a time, with the DataLoader workers' torch random state (as torchvision does).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, padding: int):
        self.images, self.labels, self.padding = images, labels, padding  # images: uint8 (N, C, H, W)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def view(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        p = self.padding
        padded = F.pad(image, (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        crop = padded[:, top:top + height, left:left + width]
        if torch.rand(1).item() < 0.5:
            crop = crop.flip(-1)
        return (crop.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, index: int):
        image = self.images[index]
        return [self.view(image), self.view(image)], self.labels[index]


def synthetic_data(num_images: int, shape: tuple[int, int, int], classes: int, device: torch.device,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.arange(num_images) % classes
    labels = labels[torch.randperm(num_images, generator=generator)]
    return images.to(device), labels.to(device)


def run_ncgeo(args, device: torch.device, prototypes: torch.Tensor, config: TrainConfig) -> dict[str, Any]:
    """Images/s of the engine's ``train_step`` on device-resident data."""
    shape = (args.channels, args.image_size, args.image_size)
    images, labels = synthetic_data(args.num_images, shape, args.classes, device)
    torch.manual_seed(0)
    model = build_model(args.arch, args.channels, args.width).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    objective = Objective("scl", prototypes, args.protos, args.tau, autocast_dtype=autocast).to(device)
    optimizer = build_optimizer(list(model.parameters()), config)
    network = torch.compile(model, mode=args.compile_mode) if args.compile else model
    generator = torch.Generator(device=device).manual_seed(1)
    b = args.batch_size

    def batches():
        while True:  # one permutation per epoch, drawn on the device
            order = torch.randperm(images.shape[0], device=device, generator=generator)
            for position in range(images.shape[0] // b):
                yield order[position * b:(position + 1) * b]

    stream = batches()

    def steps(count: int) -> torch.Tensor:
        loss = torch.zeros((), device=device)
        for _ in range(count):
            index = next(stream)
            loss = train_step(network, objective, optimizer, images[index], labels[index], MEAN, STD,
                              generator, channels_last=channels_last)
        return loss

    timing = timed(steps, args, device)
    last = timing.pop("last")
    return {**timing, "final_loss": float(last), "precision": args.precision, "channels_last": channels_last,
            "compile": args.compile, "fused_sgd": bool(optimizer.defaults.get("fused")),
            "peak_precision": "bf16" if args.precision == "bf16" else fp32_peak_precision(device)}


def run_reference(args, device: torch.device, prototypes: torch.Tensor, config: TrainConfig) -> dict[str, Any]:
    """Images/s of the DataLoader + fp32 + materialised-prototype pipeline."""
    shape = (args.channels, args.image_size, args.image_size)
    cpu_images, cpu_labels = synthetic_data(args.num_images, shape, args.classes, torch.device("cpu"))
    dataset = TwoViewCrops(cpu_images, cpu_labels, MEAN, STD, PADDING)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = build_model(args.arch, args.channels, args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    W = prototypes.to(device)
    n_w = int(args.protos)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def steps(count: int) -> float:
        loss_value = float("nan")
        for _ in range(count):
            (view_a, view_b), y = next(stream)
            x = torch.cat([view_a, view_b]).to(device, non_blocking=True)
            y = y.to(device, non_blocking=True).repeat(VIEWS)
            features = model(x)
            # no value checks: they read back from the device, which the SupCon code does not do
            rows, row_labels, is_prototype = materialise_prototypes(features, y, W, n_w, validate=False)
            loss = supcon_loss_materialised(rows, row_labels, args.tau, anchor_mask=~is_prototype,
                                            validate=False) / x.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = loss.item()  # the reference's running average reads the loss every step
        return loss_value

    timing = timed(steps, args, device)
    last = timing.pop("last")
    return {**timing, "final_loss": last, "precision": "fp32", "workers": args.workers,
            "materialised_rows": VIEWS * args.batch_size + args.classes * n_w,
            "peak_precision": fp32_peak_precision(device)}


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet34"))
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--num-images", type=int, default=50000, help="synthetic training-set size")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (two views each)")
    parser.add_argument("--protos", type=int, default=100, help="n_w, copies of every prototype")
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per pipeline")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation, workers)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="reference DataLoader workers")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="ncgeo step precision; auto: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--compile", action="store_true", help="torch.compile the ncgeo model")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode (e.g. default, reduce-overhead, max-autotune)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a CPU smoke run (as defaults: explicit options win)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(width=4, image_size=16, num_images=64, batch_size=8, steps=3, warmup=1,
                            workers=min(args.workers, 1), protos=10)
        args = parser.parse_args(argv)
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    config = TrainConfig(batch_size=args.batch_size, tau=args.tau, protos=float(args.protos))
    prototypes = torch.as_tensor(simplex_etf(args.classes, 8 * args.width), dtype=torch.float32)
    shape = (args.channels, args.image_size, args.image_size)
    probe = build_model(args.arch, args.channels, args.width).to(device)
    macs = count_macs_per_sample(probe, shape, device)
    del probe
    flops_per_image = VIEWS * 3 * 2 * macs
    results: dict[str, Any] = {
        "device": device_name(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "arch": args.arch, "width": args.width, "image_shape": list(shape), "batch_size": args.batch_size,
        "views": VIEWS, "n_w": args.protos, "classes": args.classes, "steps": args.steps,
        "macs_per_sample": macs, "training_flops_per_image": flops_per_image,
    }
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as deep.train and the SupCon code do (fixed shapes)
    pipelines = [("ncgeo", run_ncgeo)] + ([] if args.skip_reference else [("reference", run_reference)])
    for name, run in pipelines:
        try:
            result = run(args, device, prototypes, config)
        except Exception as exc:  # keep what was measured: the JSON records the failure
            results[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
            print(f"{name:>9}: FAILED ({results[f'{name}_error']})", flush=True)
            write_json(args.json, results)
            continue
        result["tflops"] = result["images_per_second"] * flops_per_image / 1e12
        peak = peak_tflops(device, result["peak_precision"])
        result["peak_tflops"] = peak
        result["fraction_of_peak"] = None if peak is None else result["tflops"] / peak
        results[name] = result
        share = "unknown" if peak is None else f"{100 * result['fraction_of_peak']:.1f}% of {peak:g}"
        print(f"{name:>9}: {result['images_per_second']:10.0f} images/s (x{VIEWS} views)  "
              f"{result['tflops']:8.3g} TFLOP/s  peak {result['peak_precision']}: {share}", flush=True)
        write_json(args.json, results)  # after every pipeline: a later failure or time-out loses nothing
    if "ncgeo" in results and "reference" in results:
        results["ratio"] = results["ncgeo"]["images_per_second"] / results["reference"]["images_per_second"]
        print(f"    ratio: {results['ratio']:.2f}x (ncgeo / reference)")
    print(f"   device: {results['device']}, torch {results['torch']}, {args.arch} width {args.width}, "
          f"{shape}, batch {args.batch_size} x {VIEWS} views, n_w {args.protos}, "
          f"{macs / 1e6:.1f} MMAC/sample")
    write_json(args.json, results)
    if any(key.endswith("_error") for key in results):
        raise SystemExit(1)
    return results


def write_json(path: str | None, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` (when given) atomically (:func:`ncgeo._io.atomic_write_bytes`)."""
    if not path:
        return
    atomic_write_bytes(path, json.dumps(results, indent=2).encode(), make_folder=True)


if __name__ == "__main__":
    main()
