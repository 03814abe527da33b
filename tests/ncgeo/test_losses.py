"""Tests of ncgeo.losses: the SCL-with-prototypes loss (docs/theory.md sections 2, 4, 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ncgeo.geometry import orthogonal_frame, random_prototypes, random_rotation, simplex_etf
from ncgeo.losses import (
    fixed_classifier_cross_entropy,
    materialise_prototypes,
    scl_prototype_loss,
    supcon_loss_materialised,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# --------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------

def naive_supcon(H, y, W, n_w: int, tau: float, prototypes_as_anchors: bool, reduction: str) -> float:
    """Plain-python SupCon over an explicit batch: samples plus ``n_w`` copies of every prototype.

    Every row of the explicit batch is a list of floats; sums use ``math.fsum``. Anchors
    are the samples (and, if asked, every prototype copy). An anchor without positives
    contributes 0 and is counted by the mean.
    """
    H = np.asarray(H, dtype=float)
    W = None if W is None else np.asarray(W, dtype=float)
    rows = [list(map(float, h)) for h in H]
    labels = [int(c) for c in y]
    is_proto = [False] * len(rows)
    if n_w > 0:
        for _ in range(n_w):
            for c in range(W.shape[1]):
                rows.append(list(map(float, W[:, c])))
                labels.append(c)
                is_proto.append(True)
    anchors = [a for a in range(len(rows)) if prototypes_as_anchors or not is_proto[a]]
    total = []
    for a in anchors:
        dots = {j: math.fsum(u * v for u, v in zip(rows[a], rows[j])) / tau
                for j in range(len(rows)) if j != a}
        positives = [j for j in dots if labels[j] == labels[a]]
        if not positives:
            total.append(0.0)
            continue
        log_denominator = math.log(math.fsum(math.exp(v) for v in dots.values()))
        total.append(log_denominator - math.fsum(dots[j] for j in positives) / len(positives))
    value = math.fsum(total)
    return value / max(len(anchors), 1) if reduction == "mean" else value


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    X = rng.standard_normal((n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def batch(seed: int, labels, d: int, k: int, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    H = torch.tensor(unit_rows(rng, len(labels), d), dtype=dtype)
    W = torch.tensor(random_prototypes(k, d, seed=seed + 1), dtype=dtype)
    return H, torch.tensor(labels, dtype=torch.int64), W


# --------------------------------------------------------------------------------------
# equal to the naive materialised loss
# --------------------------------------------------------------------------------------

# compositions with singleton classes, a class absent from the batch (class 3 of k=4),
# a batch with a single class and a batch of size 1
COMPOSITIONS = [
    [0, 0, 1, 1, 2, 2],
    [0, 1, 2, 0, 0, 1, 2],  # all present, unequal sizes
    [0, 0, 0, 1, 2],  # singletons 1 and 2, class 3 absent
    [2, 2, 2],
    [1],
    [0, 2, 1, 0],
]


@pytest.mark.parametrize("labels", COMPOSITIONS)
@pytest.mark.parametrize("n_w", [0, 1, 2, 3])
@pytest.mark.parametrize("prototypes_as_anchors", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_equals_naive_materialised(labels, n_w, prototypes_as_anchors, reduction):
    H, y, W = batch(len(labels) + 10 * n_w, labels, d=5, k=4)
    tau = 0.3
    fast = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau, prototypes_as_anchors=prototypes_as_anchors,
                              reduction=reduction)
    expected = naive_supcon(H.numpy(), labels, W.numpy(), n_w, tau, prototypes_as_anchors, reduction)
    assert fast.dtype == torch.float64
    assert abs(float(fast) - expected) <= 1e-10 * max(1.0, abs(expected))

    # the torch reference of ncgeo agrees with both
    features, all_labels, is_proto = materialise_prototypes(H, y, W, n_w)
    anchors = torch.ones_like(is_proto) if prototypes_as_anchors else ~is_proto
    reference = supcon_loss_materialised(features, all_labels, tau, anchor_mask=anchors)
    if reduction == "mean":
        reference = reference / max(int(anchors.sum()), 1)
    assert abs(float(reference) - expected) <= 1e-10 * max(1.0, abs(expected))


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=7),
    n_w=st.integers(0, 3),
    prototypes_as_anchors=st.booleans(),
    reduction=st.sampled_from(["sum", "mean"]),
    tau=st.sampled_from([0.1, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_equals_naive_random_compositions(labels, n_w, prototypes_as_anchors, reduction, tau, seed):
    H, y, W = batch(seed, labels, d=4, k=4)
    fast = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau, prototypes_as_anchors=prototypes_as_anchors,
                              reduction=reduction)
    expected = naive_supcon(H.numpy(), labels, W.numpy(), n_w, tau, prototypes_as_anchors, reduction)
    assert abs(float(fast) - expected) <= 1e-10 * max(1.0, abs(expected))


def test_reduction_none_is_per_sample_anchor():
    labels = [0, 0, 1, 2, 2, 2]
    H, y, W = batch(3, labels, d=5, k=3)
    per = scl_prototype_loss(H, y, W, n_w=2, tau=0.4, reduction="none")
    assert per.shape == (6,)
    for i in range(6):
        # anchor i alone: its loss is the sum-loss restricted to anchor i of the explicit batch
        features, all_labels, is_proto = materialise_prototypes(H, y, W, 2)
        mask = torch.zeros_like(is_proto)
        mask[i] = True
        assert float(per[i]) == pytest.approx(float(supcon_loss_materialised(features, all_labels, 0.4, mask)),
                                              abs=1e-12)
    assert float(per.sum()) == pytest.approx(float(scl_prototype_loss(H, y, W, n_w=2, tau=0.4)), abs=1e-12)


# --------------------------------------------------------------------------------------
# closed forms at collapse (docs/theory.md section 5)
# --------------------------------------------------------------------------------------

def etf_sample_anchor(n, k, n_w, tau):
    """docs/theory.md section 5: sample anchor at collapse onto ETF prototypes (full batch)."""
    cross = math.exp(-1.0 / ((k - 1) * tau))
    return math.log((n - 1) * math.exp(1 / tau) + n * (k - 1) * cross
                    + n_w * (math.exp(1 / tau) + (k - 1) * cross)) - 1 / tau


def etf_prototype_anchor(n, k, n_w, tau):
    """A prototype copy of class c as anchor: n same-class samples and n_w - 1 own copies
    at similarity 1 (all positives), n (k-1) samples and n_w (k-1) copies at -1/(k-1)."""
    cross = math.exp(-1.0 / ((k - 1) * tau))
    return math.log((n + n_w - 1) * math.exp(1 / tau) + (n + n_w) * (k - 1) * cross) - 1 / tau


def of_sample_anchor(n, k, n_w, tau):
    """The OF analogue (derived here): cross similarities are 0, so they weigh e^0 = 1.

    D = (n-1) e^{1/tau} + n (k-1) + n_w (e^{1/tau} + (k-1)); every positive has similarity 1.
    """
    return math.log((n - 1) * math.exp(1 / tau) + n * (k - 1) + n_w * (math.exp(1 / tau) + (k - 1))) - 1 / tau


def of_prototype_anchor(n, k, n_w, tau):
    return math.log((n + n_w - 1) * math.exp(1 / tau) + (n + n_w) * (k - 1)) - 1 / tau


@pytest.mark.parametrize("k,d,n", [(2, 1, 3), (4, 3, 2), (5, 7, 3), (10, 9, 2)])
@pytest.mark.parametrize("n_w", [0, 1, 2.5, 1000.0])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_closed_form_etf_collapse(k, d, n, n_w, tau):
    W = simplex_etf(k, d, rotate=d > k - 1, seed=1)
    y = np.repeat(np.arange(k), n)
    H = W[:, y].T
    loss = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau)
    assert float(loss) == pytest.approx(k * n * etf_sample_anchor(n, k, n_w, tau), rel=1e-12)
    mean = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau, reduction="mean")
    assert float(mean) == pytest.approx(etf_sample_anchor(n, k, n_w, tau), rel=1e-12)
    if n_w == 0 or n_w >= 1:
        both = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau, prototypes_as_anchors=True)
        expected = k * n * etf_sample_anchor(n, k, n_w, tau) + n_w * k * etf_prototype_anchor(n, k, n_w, tau)
        assert float(both) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k,d,n", [(2, 2, 3), (4, 4, 2), (5, 8, 3)])
@pytest.mark.parametrize("n_w", [0, 1, 2.5, 1000.0])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_closed_form_of_collapse(k, d, n, n_w, tau):
    W = orthogonal_frame(k, d, rotate=True, seed=2)
    y = np.repeat(np.arange(k), n)
    H = torch.tensor(W[:, y].T)
    loss = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau)
    assert float(loss) == pytest.approx(k * n * of_sample_anchor(n, k, n_w, tau), rel=1e-12)
    both = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau, prototypes_as_anchors=True)
    expected = k * n * of_sample_anchor(n, k, n_w, tau) + n_w * k * of_prototype_anchor(n, k, n_w, tau)
    assert float(both) == pytest.approx(expected, rel=1e-12)


def test_closed_form_distinguishes_etf_from_of():
    # the two forms are different numbers: the closed-form tests are able to fail
    assert etf_sample_anchor(3, 4, 2, 0.1) < of_sample_anchor(3, 4, 2, 0.1)


# --------------------------------------------------------------------------------------
# P_i = 0 anchors
# --------------------------------------------------------------------------------------

def test_batch_of_one_without_prototypes_is_zero_and_not_nan():
    H = torch.tensor([[0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    for reduction in ("sum", "mean"):
        loss = scl_prototype_loss(H, [0], n_w=0, tau=0.1, reduction=reduction)
        assert float(loss.detach()) == 0.0
        (grad,) = torch.autograd.grad(loss, H)
        assert torch.all(grad == 0)
    assert scl_prototype_loss(H, [0], n_w=0, tau=0.1, reduction="none").tolist() == [0.0]


def test_anchor_without_positive_counts_in_mean():
    labels = [0, 1, 1]  # anchor 0 has no positive when n_w = 0
    H, y, W = batch(5, labels, d=3, k=2)
    H.requires_grad_(True)
    per = scl_prototype_loss(H, y, n_w=0, tau=0.2, reduction="none").detach()
    assert float(per[0]) == 0.0
    assert torch.all(torch.isfinite(per))
    mean = scl_prototype_loss(H, y, n_w=0, tau=0.2, reduction="mean")
    assert float(mean.detach()) == pytest.approx(float(per[1] + per[2]) / 3, abs=1e-14)
    mean.backward()
    assert torch.all(torch.isfinite(H.grad))


def test_prototype_anchor_without_positive_counts_in_mean():
    # n_w = 1: the copy of an absent class has no positive (no samples, no other copy)
    labels = [0, 0]
    H, y, W = batch(6, labels, d=3, k=3)
    mean = scl_prototype_loss(H, y, W, n_w=1, tau=0.2, prototypes_as_anchors=True, reduction="mean")
    expected = naive_supcon(H.numpy(), labels, W.numpy(), 1, 0.2, True, "mean")
    assert float(mean) == pytest.approx(expected, abs=1e-12)
    assert math.isfinite(float(mean))


def test_empty_batch_is_zero():
    H = torch.zeros((0, 3), dtype=torch.float64)
    W = simplex_etf(3, 3)
    assert float(scl_prototype_loss(H, [], W, n_w=2, tau=0.5)) == 0.0
    assert float(scl_prototype_loss(H, [], W, n_w=2, tau=0.5, reduction="mean")) == 0.0


# --------------------------------------------------------------------------------------
# numerics: tau = 0.01, n_w = 1e9
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prototypes_as_anchors", [False, True])
def test_finite_at_extreme_temperature_and_multiplicity(dtype, prototypes_as_anchors):
    labels = [0, 0, 1, 2, 2, 3, 0]  # class 4 of k=5 is absent, 1 and 3 are singletons
    H64, y, W64 = batch(11, labels, d=6, k=5)
    # include a collapsed pair: similarity exactly 1 at tau = 0.01 is e^100
    H64[1] = H64[0]
    H = H64.to(dtype).clone().requires_grad_(True)
    W = W64.to(dtype).clone().requires_grad_(True)
    for reduction in ("sum", "mean"):
        loss = scl_prototype_loss(H, y, W, n_w=1e9, tau=0.01, prototypes_as_anchors=prototypes_as_anchors,
                                  reduction=reduction)
        assert loss.dtype == dtype
        assert torch.isfinite(loss)
        gH, gW = torch.autograd.grad(loss, (H, W))
        assert torch.all(torch.isfinite(gH)) and torch.all(torch.isfinite(gW))
    # float32 agrees with float64 to float32 accuracy
    ref = scl_prototype_loss(H64, y, W64, n_w=1e9, tau=0.01, prototypes_as_anchors=prototypes_as_anchors)
    got = scl_prototype_loss(H.detach(), y, W.detach(), n_w=1e9, tau=0.01,
                             prototypes_as_anchors=prototypes_as_anchors)
    assert float(got) == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("dtype, n_w", [(torch.float32, 1e-35), (torch.float32, 1e-60), (torch.float64, 1e-305)])
def test_tiny_real_multiplicity_follows_the_formula(dtype, n_w):
    """n_w may be any real > 0 (docs/theory.md section 1). An anchor whose only positives are the
    copies has P_i = n_w and positive term h_i.w_{y_i}/tau exactly; the loss used to clamp P_i
    at 1e-30 / 1e-300 (float32: 5.708 instead of 9.111) and to drop the anchor once
    0 + n_w rounded to 0 in the dtype."""
    labels = [0, 1, 1, 2]  # anchors 0 and 3: no same-class sample
    H64, y, W64 = batch(3, labels, d=4, k=3)
    tau = 0.1
    S, P = (H64 @ H64.T / tau).numpy(), (H64 @ W64 / tau).numpy()
    expected = []
    for i, c in enumerate(labels):
        others = [j for j in range(len(labels)) if j != i]
        positives = [j for j in others if labels[j] == c]
        log_d = np.logaddexp.reduce(np.concatenate([S[i, others], P[i] + math.log(n_w)]))
        # (sum_pos S + n_w P_own) / (|pos| + n_w), with n_w dropped where it is below round-off
        expected.append(log_d - (np.mean(S[i, positives]) if positives else P[i, c]))
    got = scl_prototype_loss(H64.to(dtype), y, W64.to(dtype), n_w, tau, reduction="none")
    single = dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5 if single else 1e-12,
                               atol=1e-5 if single else 1e-12)


# --------------------------------------------------------------------------------------
# the many-prototype limit: cross-entropy with the fixed classifier (section 4)
# --------------------------------------------------------------------------------------

def test_fixed_classifier_cross_entropy_matches_torch():
    labels = [0, 1, 2, 2, 1]
    H, y, W = batch(13, labels, d=4, k=3)
    logits = H @ W / 0.2
    for reduction in ("sum", "mean", "none"):
        expected = torch.nn.functional.cross_entropy(logits, y, reduction=reduction)
        got = fixed_classifier_cross_entropy(H, y, W, tau=0.2, reduction=reduction)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_sample_anchor_loss_minus_log_nw_is_cross_entropy(tau):
    labels = [0, 0, 1, 2, 2, 3, 1]
    H, y, W = batch(14, labels, d=6, k=4)
    n_w = 1e8
    N = len(labels)
    loss = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau)
    ce = fixed_classifier_cross_entropy(H, y, W, tau=tau)
    assert abs(float(loss) - N * math.log(n_w) - float(ce)) <= 1e-6
    per = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau, reduction="none") - math.log(n_w)
    torch.testing.assert_close(per, fixed_classifier_cross_entropy(H, y, W, tau=tau, reduction="none"),
                               rtol=0, atol=1e-6)
    # at moderate n_w the sample-sample terms still matter: the test can fail
    small = scl_prototype_loss(H, y, W, n_w=10.0, tau=tau)
    assert abs(float(small) - N * math.log(10.0) - float(ce)) > 1e-3


def test_prototype_anchors_keep_an_h_dependent_term():
    """With prototypes as anchors the loss minus constants is NOT the CE: the dependence
    on H differs (compare two embedding sets, which removes every H-independent term)."""
    labels = [0, 0, 1, 2, 2, 3, 1]
    H1, y, W = batch(15, labels, d=6, k=4)
    H2, _, _ = batch(16, labels, d=6, k=4)
    n_w, tau = 1e8, 1.0

    def change(fn, **kw):
        return float(fn(H1, y, W, tau=tau, **kw)) - float(fn(H2, y, W, tau=tau, **kw))

    ce_change = change(fixed_classifier_cross_entropy)
    sample_change = change(scl_prototype_loss, n_w=n_w)
    proto_change = change(scl_prototype_loss, n_w=n_w, prototypes_as_anchors=True)
    assert abs(sample_change - ce_change) <= 1e-6
    assert abs(proto_change - ce_change) > 1e-2
    # and in absolute terms loss - N log n_w is far from the CE
    both = scl_prototype_loss(H1, y, W, n_w=n_w, tau=tau, prototypes_as_anchors=True)
    assert abs(float(both) - len(labels) * math.log(n_w) - float(fixed_classifier_cross_entropy(H1, y, W, tau=tau))) > 1.0


# --------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("prototypes_as_anchors", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradcheck(prototypes_as_anchors, reduction):
    labels = [0, 0, 1, 2, 3, 3]  # singletons and (k=5) an absent class
    H, y, W = batch(17, labels, d=4, k=5)
    H.requires_grad_(True)
    W.requires_grad_(True)

    def fn(h, w):
        return scl_prototype_loss(h, y, w, n_w=2.5, tau=0.7, prototypes_as_anchors=prototypes_as_anchors,
                                  reduction=reduction)

    assert torch.autograd.gradcheck(fn, (H, W), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (H, W), eps=1e-6, atol=1e-6)


def test_gradcheck_plain_scl_with_anchor_without_positive():
    H, y, _ = batch(18, [0, 1, 1, 2, 2], d=3, k=3)
    H.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: scl_prototype_loss(h, y, n_w=0, tau=0.5), (H,), eps=1e-6, atol=1e-7)


def test_gradcheck_normalize_and_cross_entropy():
    rng = np.random.default_rng(19)
    H = torch.tensor(rng.standard_normal((5, 3)) * 2, requires_grad=True)
    y = torch.tensor([0, 1, 1, 2, 0])
    W = torch.tensor(simplex_etf(3, 3, rotate=True, seed=3))
    assert torch.autograd.gradcheck(
        lambda h: scl_prototype_loss(h, y, W, n_w=1.5, tau=0.5, normalize=True), (H,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda h: fixed_classifier_cross_entropy(h, y, W, tau=0.5, normalize=True), (H,), eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_loss_scale_is_an_explicit_factor(reduction):
    H, y, W = batch(20, [0, 1, 1, 2], d=3, k=3)
    base = scl_prototype_loss(H, y, W, n_w=2, tau=0.1, reduction=reduction)
    scaled = scl_prototype_loss(H, y, W, n_w=2, tau=0.1, reduction=reduction, loss_scale=0.1 / 0.07)
    torch.testing.assert_close(scaled, base * (0.1 / 0.07), rtol=1e-14, atol=0)
    assert not torch.allclose(scaled, base)


def test_loss_scale_with_prototype_anchors():
    H, y, W = batch(21, [0, 1, 1, 2], d=3, k=3)
    base = scl_prototype_loss(H, y, W, n_w=2, tau=0.1, prototypes_as_anchors=True)
    scaled = scl_prototype_loss(H, y, W, n_w=2, tau=0.1, prototypes_as_anchors=True, loss_scale=3.0)
    assert float(scaled) == pytest.approx(3 * float(base), rel=1e-14)


def test_normalize_flag():
    H, y, W = batch(22, [0, 0, 1, 2], d=3, k=3)
    scales = torch.tensor([[2.0], [0.5], [3.0], [1.7]], dtype=torch.float64)
    unit = scl_prototype_loss(H, y, W, n_w=2, tau=0.3)
    assert float(scl_prototype_loss(H * scales, y, W, n_w=2, tau=0.3, normalize=True)) == pytest.approx(
        float(unit), rel=1e-13)
    # without the flag the rows are used as given
    assert float(scl_prototype_loss(H * scales, y, W, n_w=2, tau=0.3)) != pytest.approx(float(unit), rel=1e-3)
    ce = fixed_classifier_cross_entropy(H, y, W, tau=0.3)
    assert float(fixed_classifier_cross_entropy(H * scales, y, W, tau=0.3, normalize=True)) == pytest.approx(
        float(ce), rel=1e-13)


def test_n_w_zero_ignores_prototypes_and_equals_plain_supcon():
    labels = [0, 0, 1, 1, 2]
    H, y, W = batch(23, labels, d=3, k=3)
    with_w = scl_prototype_loss(H, y, W, n_w=0, tau=0.3)
    without = scl_prototype_loss(H, y, n_w=0, tau=0.3)
    assert float(with_w) == float(without)
    assert float(without) == pytest.approx(naive_supcon(H.numpy(), labels, None, 0, 0.3, False, "sum"), abs=1e-12)


def real_multiplicity_reference(H, labels, W, n_w: float, tau: float) -> list[float]:
    """Per-sample-anchor loss of section 2 for a real ``n_w``, written term by term.

    ``D_i`` holds each prototype term with weight ``n_w``; the largest exponent is
    factored out by hand so that ``tau = 0.01, n_w = 1e9`` does not overflow.
    """
    out = []
    for i, c in enumerate(labels):
        others = [j for j in range(len(labels)) if j != i]
        exponents = [H[i] @ H[j] / tau for j in others] + [H[i] @ W[:, cc] / tau for cc in range(W.shape[1])]
        weights = [1.0] * len(others) + [n_w] * W.shape[1]
        top = max(exponents)
        log_d = top + math.log(math.fsum(w * math.exp(e - top) for w, e in zip(weights, exponents)))
        pos = [H[i] @ H[j] / tau for j in others if labels[j] == c]
        out.append(log_d - (math.fsum(pos) + n_w * (H[i] @ W[:, c]) / tau) / (len(pos) + n_w))
    return out


@pytest.mark.parametrize("tau,n_w", [(0.5, 2.5), (0.2, 0.3), (0.01, 1e9)])
def test_real_multiplicity_matches_formula(tau, n_w):
    labels = [0, 1, 1, 2]
    H, y, W = batch(24, labels, d=4, k=3)
    got = scl_prototype_loss(H, y, W, n_w=n_w, tau=tau, reduction="none")
    expected = real_multiplicity_reference(H.numpy(), labels, W.numpy(), n_w, tau)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-9)


# --------------------------------------------------------------------------------------
# invariances (hypothesis)
# --------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(0, 2), min_size=1, max_size=8),
    n_w=st.sampled_from([0.0, 1.0, 2.5, 7.0]),
    prototypes_as_anchors=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_invariant_under_batch_permutation_relabelling_and_rotation(labels, n_w, prototypes_as_anchors, seed):
    H, y, W = batch(seed, labels, d=4, k=3)
    kw = dict(n_w=n_w, tau=0.4, prototypes_as_anchors=prototypes_as_anchors)
    ref = float(scl_prototype_loss(H, y, W, **kw))
    rng = np.random.default_rng(seed)
    perm = torch.tensor(rng.permutation(len(labels)))
    assert float(scl_prototype_loss(H[perm], y[perm], W, **kw)) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    classes = rng.permutation(3)  # class c is renamed classes[c]
    W_renamed = torch.empty_like(W)
    W_renamed[:, torch.tensor(classes)] = W
    y_renamed = torch.tensor(classes)[y]
    assert float(scl_prototype_loss(H, y_renamed, W_renamed, **kw)) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    Q = torch.tensor(random_rotation(4, seed))
    assert float(scl_prototype_loss(H @ Q.T, y, Q @ W, **kw)) == pytest.approx(ref, rel=1e-11, abs=1e-11)


# --------------------------------------------------------------------------------------
# dtype / device
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    H, y, W = batch(25, [0, 1, 1], d=3, k=2, dtype=dtype)
    for reduction in ("sum", "mean", "none"):
        assert scl_prototype_loss(H, y, W, n_w=2, tau=0.1, reduction=reduction).dtype == dtype
        assert fixed_classifier_cross_entropy(H, y, W, tau=0.1, reduction=reduction).dtype == dtype
    # float64 prototypes are cast to the embedding dtype
    assert scl_prototype_loss(H, y, W.double(), n_w=2, tau=0.1).dtype == dtype


def test_numpy_input_gives_float64_cpu_tensor():
    H, y, W = batch(26, [0, 1, 1], d=3, k=2)
    loss = scl_prototype_loss(H.numpy(), y.numpy(), W.numpy(), n_w=2, tau=0.1)
    assert loss.dtype == torch.float64 and loss.device.type == "cpu"
    assert float(loss) == float(scl_prototype_loss(H, y, W, n_w=2, tau=0.1))


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prototypes_as_anchors", [False, True])
def test_cuda_matches_cpu(dtype, prototypes_as_anchors):
    H, y, W = batch(27, [0, 0, 1, 2, 2, 3], d=5, k=4, dtype=dtype)
    cpu = scl_prototype_loss(H, y, W, n_w=3.5, tau=0.1, prototypes_as_anchors=prototypes_as_anchors)
    Hc = H.cuda().requires_grad_(True)
    gpu = scl_prototype_loss(Hc, y.cuda(), W.cuda(), n_w=3.5, tau=0.1, prototypes_as_anchors=prototypes_as_anchors)
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    torch.testing.assert_close(gpu.cpu(), cpu)
    gpu.backward()
    assert Hc.grad.device.type == "cuda"
    # CPU prototypes and labels are moved to the embeddings' device
    mixed = scl_prototype_loss(H.cuda(), y, W, n_w=3.5, tau=0.1, prototypes_as_anchors=prototypes_as_anchors)
    assert mixed.device.type == "cuda"
    ce = fixed_classifier_cross_entropy(H.cuda(), y.cuda(), W.cuda(), tau=0.1)
    torch.testing.assert_close(ce.cpu(), fixed_classifier_cross_entropy(H, y, W, tau=0.1))


# --------------------------------------------------------------------------------------
# the materialising helpers
# --------------------------------------------------------------------------------------

def test_materialise_prototypes_layout():
    H, y, W = batch(28, [1, 0], d=3, k=2)
    features, labels, is_proto = materialise_prototypes(H, y, W, 2)
    assert features.shape == (6, 3)
    assert labels.tolist() == [1, 0, 0, 1, 0, 1]
    assert is_proto.tolist() == [False, False, True, True, True, True]
    torch.testing.assert_close(features[2], W[:, 0])
    torch.testing.assert_close(features[5], W[:, 1])


@pytest.mark.parametrize("n_w", [2.5, -1, True])
def test_materialise_prototypes_needs_integer_copies(n_w):
    H, y, W = batch(29, [1, 0], d=3, k=2)
    with pytest.raises(ValueError, match="n_w"):
        materialise_prototypes(H, y, W, n_w)


def test_temperatures_below_the_round_off_floor_are_refused():
    """At tau = 1e-17 the loss of an ETF collapse came out 0 (true 22.364) and `ncgeo solve`
    printed it; every entry point now refuses tau < MIN_TAU."""
    from ncgeo._validation import MIN_TAU
    from ncgeo.certify import certify_ce_limit
    from ncgeo.closed_form import closed_form_loss
    from ncgeo.ufm import scheme_problem, solve_ufm

    H64, y, W64 = batch(0, [0, 1, 2], d=3, k=3)
    for call in (lambda t: scl_prototype_loss(H64, y, W64, 10.0, t),
                 lambda t: closed_form_loss(3, 3, 10.0, t, "etf"),
                 lambda t: certify_ce_limit(W64.numpy(), t),
                 lambda t: solve_ufm(scheme_problem([2, 2], None, 0.0, t))):
        with pytest.raises(ValueError, match=r"tau must be >= 1e-06"):
            call(MIN_TAU / 10)
    assert torch.isfinite(scl_prototype_loss(H64, y, W64, 10.0, MIN_TAU))


def test_materialised_reference_checks_its_multiplicity_and_dimension():
    H64, y, W64 = batch(0, [0, 1, 2], d=3, k=3)
    for bad in (float("inf"), float("nan"), 2.5, -1, "3"):
        with pytest.raises(ValueError, match="n_w must be a non-negative integer"):
            materialise_prototypes(H64, y, W64, bad)
    with pytest.raises(ValueError, match=r"prototypes must have shape \(d, k\) with d = 3"):
        materialise_prototypes(H64, y, torch.ones(4, 3, dtype=torch.float64), 2)


def naive_real_multiplicity(H, y, W, n_w: float, tau: float) -> float:
    """A loop over anchors for REAL ``n_w`` (docs/theory.md section 2), prototypes as anchors: each
    sample anchor has ``P = #same - 1 + n_w``; each of the ``n_w`` copies of ``w_c`` has
    ``P = m_c + n_w - 1`` (``m_c`` samples of class c and ``n_w - 1`` other copies); an anchor
    with ``P = 0`` contributes 0, every other divides its positive sum by ``P`` itself."""
    H, W = np.asarray(H, float), np.asarray(W, float)
    k = W.shape[1]
    total = []
    for i, h in enumerate(H):
        same = [j for j in range(len(H)) if j != i and y[j] == y[i]]
        P = len(same) + n_w
        D = math.fsum([math.exp(h @ H[j] / tau) for j in range(len(H)) if j != i]
                      + [n_w * math.exp(h @ W[:, c] / tau) for c in range(k)])
        positive = math.fsum([h @ H[j] / tau for j in same] + [n_w * (h @ W[:, y[i]]) / tau])
        total.append(math.log(D) - positive / P if P > 0 else 0.0)
    for c in range(k):
        w = W[:, c]
        members = [j for j in range(len(H)) if y[j] == c]
        P = len(members) + n_w - 1.0
        if P <= 0:
            continue
        D = math.fsum([math.exp(w @ h / tau) for h in H] + [(n_w - 1.0) * math.exp(w @ w / tau)]
                      + [n_w * math.exp(w @ W[:, c2] / tau) for c2 in range(k) if c2 != c])
        positive = math.fsum([w @ H[j] / tau for j in members] + [(n_w - 1.0) * (w @ w) / tau])
        total.append(n_w * (math.log(D) - positive / P))
    return math.fsum(total)


@pytest.mark.parametrize("n_w", [1.0, 1.1, 1.5, 1.93])
@pytest.mark.parametrize("labels", [[0, 0, 1], [0, 2, 2, 2], [1]])
def test_prototype_anchors_of_absent_classes_with_real_multiplicity(labels, n_w):
    """Issue 13: with 1 < n_w < 2 the copies of an absent class have P = n_w - 1 in (0, 1);
    the loss divided by max(P, 1) (11.460 instead of 8.460 in one case)."""
    k = 3
    H, y, W = batch(31, labels, d=3, k=k)
    fast = float(scl_prototype_loss(H, y, W, n_w=n_w, tau=0.5, prototypes_as_anchors=True))
    expected = naive_real_multiplicity(H.numpy(), labels, W.numpy(), n_w, 0.5)
    assert fast == pytest.approx(expected, rel=1e-12, abs=1e-12)
