r"""Loss + gradient of SCL with prototypes: log-weight ``n_w`` against materialised copies.

Same embeddings, labels and prototypes; both compute the sum over the sample anchors of
docs/theory.md section 2 and its gradient with respect to the embeddings:

(a) :func:`ncgeo.losses.scl_prototype_loss`: the ``n_w`` copies enter as the log-weight
    ``log(n_w)`` of ``k`` logits, cost ``O(B (B + k) d)``;
(b) reference: ``n_w`` explicit copies of every prototype appended to the batch
    (:func:`ncgeo.losses.materialise_prototypes`) and the plain SupCon loss over the
    ``B + k n_w`` rows, sample anchors only (:func:`ncgeo.losses.supcon_loss_materialised`),
    cost ``O((B + k n_w)^2 d)``.

Prints the median wall time of each (``--repeats`` runs after a warm-up), their ratio,
and the relative difference of values and gradients. Target at ``N = 100``, ``k = 10``,
``n_w = 1000`` (float64, CPU): ratio >= 500 with equal values.

Usage::

    python bench/bench_loss.py                     # N=100, k=10, n_w=1000
    python bench/bench_loss.py --samples 1000 --protos 100 --dtype float32
    python bench/bench_loss.py --threads 1         # avoids thread contention on a busy machine
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ncgeo.classes import labels_from_sizes
from ncgeo.geometry import simplex_etf
from ncgeo.losses import materialise_prototypes, scl_prototype_loss, supcon_loss_materialised


def _timed(function, repeats):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="batch size N (default 100)")
    parser.add_argument("--classes", type=int, default=10, help="k (default 10)")
    parser.add_argument("--protos", type=int, default=1000, help="n_w (default 1000)")
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    k = args.classes
    y = torch.as_tensor(labels_from_sizes([args.samples // k] * k))
    generator = torch.Generator().manual_seed(0)
    H0 = torch.nn.functional.normalize(torch.randn(len(y), k, generator=generator, dtype=dtype), dim=1)
    W = torch.tensor(simplex_etf(k, k), dtype=dtype)

    def ours():
        H = H0.clone().requires_grad_(True)
        value = scl_prototype_loss(H, y, W, args.protos, args.tau)
        (grad,) = torch.autograd.grad(value, H)
        return value.detach(), grad

    def reference():
        H = H0.clone().requires_grad_(True)
        features, labels, is_prototype = materialise_prototypes(H, y, W, args.protos)
        value = supcon_loss_materialised(features, labels, args.tau, ~is_prototype)
        (grad,) = torch.autograd.grad(value, H)
        return value.detach(), grad

    t_ours, (v_ours, g_ours) = _timed(ours, args.repeats)
    t_ref, (v_ref, g_ref) = _timed(reference, max(1, min(args.repeats, 3)))
    value_error = abs(float(v_ours - v_ref)) / abs(float(v_ref))
    grad_error = float((g_ours - g_ref).norm() / g_ref.norm())
    rows = len(y) + k * args.protos
    print(f"loss + gradient, N = {len(y)}, k = {k}, n_w = {args.protos}, tau = {args.tau}, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<34}{'median s':>12}{'loss':>22}")
    print(f"{'log-weight (scl_prototype_loss)':<34}{t_ours:>12.2e}{float(v_ours):>22.12f}")
    print(f"{f'materialised ({rows} rows)':<34}{t_ref:>12.2e}{float(v_ref):>22.12f}")
    print(f"ratio {t_ref / t_ours:.0f}x (target >= 500x); relative difference: value {value_error:.1e}, "
          f"gradient {grad_error:.1e}")
    return dict(seconds=t_ours, reference_seconds=t_ref, ratio=t_ref / t_ours, value_error=value_error,
                grad_error=grad_error)


if __name__ == "__main__":
    main()
