"""docs/theory.md is checked against the library: its formulas, transcribed here next to the
LaTeX they come from (each transcription asserts that its source text is still in the document),
and its numbers, parsed from the document, equal what ncgeo computes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ncgeo.classes import class_sizes
from ncgeo.closed_form import closed_form_loss, collapsed_loss
from ncgeo.geometry import etf_gram, orthogonal_frame, random_prototypes, simplex_etf
from ncgeo.losses import fixed_classifier_cross_entropy, scl_prototype_loss
from ncgeo import metrics

DOC = (Path(__file__).resolve().parents[1] / "docs" / "theory.md").read_text(encoding="utf-8")


def in_doc(*snippets: str) -> None:
    """The transcribed formula's source is still in docs/theory.md (else update both)."""
    for snippet in snippets:
        assert snippet in DOC, f"docs/theory.md no longer contains {snippet!r}"


def section(number: str) -> str:
    start = DOC.index(f"\n## {number}." if "." not in number else f"\n### {number} ")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end > 0 else None]


def test_sections_are_numbered_like_the_references_to_them():
    titles = re.findall(r"^## (\d+)\. ", DOC, flags=re.M)
    assert titles == [str(n) for n in range(1, 9)]
    assert "### 5.1 What \"certified\" means" in DOC and "### 5.2 Closed forms" in DOC


# --- section 1 ---------------------------------------------------------------------------------

def test_etf_gram_and_imbalance_definitions():
    in_doc(r"$G_{\mathrm{ETF}} = \frac{k}{k-1}\left(I - \frac{1}{k} J\right)$",
           r"the first $\lfloor k/2 \rfloor$ classes have $n$ samples, the others $\lfloor n/R \rfloor$",
           r"$n_c = \lfloor n R^{-c/(k-1)} \rfloor$")
    for k in (2, 3, 7):
        G = k / (k - 1) * (np.eye(k) - np.ones((k, k)) / k)
        np.testing.assert_allclose(G, etf_gram(k), atol=1e-15)
        W = simplex_etf(k)
        np.testing.assert_allclose(W.T @ W, G, atol=1e-12)
    for k, n, R in ((10, 100, 10), (5, 40, 3.5), (7, 1000, 100)):
        assert class_sizes(k, n, "step", R) == [n] * (k // 2) + [math.floor(n / R)] * (k - k // 2)
        assert class_sizes(k, n, "exp", R) == [math.floor(n * R ** (-c / (k - 1)) + 1e-9) for c in range(k)]


# --- section 2 ---------------------------------------------------------------------------------

def _naive_loss(H, y, W, n_w, tau, anchors=False):
    """Section 2 transcribed literally, one anchor at a time (numpy, float64)."""
    in_doc(r"$$P_i = \#\{j \in B : j \ne i,\ y_j = y_i\} + n_w ,$$",
           r"$$D_i = \sum_{j \in B,\, j \ne i} e^{h_i \cdot h_j/\tau} + n_w \sum_{c} e^{h_i \cdot w_c/\tau} ,$$",
           r"$$P_c = m_c + n_w - 1, \qquad D_c = \sum_{j \in B} e^{w_c \cdot h_j/\tau}")
    total, floor = 0.0, 0.0
    for i in range(len(y)):
        pos = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        P = len(pos) + n_w
        if P == 0:
            continue
        D = sum(np.exp(H[i] @ H[j] / tau) for j in range(len(y)) if j != i) + n_w * np.exp(H[i] @ W / tau).sum()
        total += np.log(D) - (sum(H[i] @ H[j] / tau for j in pos) + n_w * H[i] @ W[:, y[i]] / tau) / P
        floor += np.log(P)
    if anchors and n_w > 0:
        k = W.shape[1]
        for c in range(k):
            m = int(np.sum(y == c))
            P = m + n_w - 1
            if P <= 0:
                continue
            D = (np.exp(W[:, c] @ H.T / tau).sum() + n_w * sum(np.exp(W[:, c] @ W[:, c2] / tau) for c2 in range(k) if c2 != c)
                 + (n_w - 1) * np.exp(1 / tau))
            total += n_w * (np.log(D) - (sum(W[:, c] @ H[j] / tau for j in np.flatnonzero(y == c)) + (n_w - 1) / tau) / P)
            floor += n_w * np.log(P)
    return total, floor


@pytest.mark.parametrize("n_w, anchors", [
    (0.0, False), (1.5, False), (3.0, True), (1e6, False),
    (1.5, True),  # P_c = m_c + n_w - 1 in (0, 1) for an absent class: the loss divides by P_c itself
])
def test_loss_formula_and_floor(n_w, anchors):
    in_doc(r"$$F = \sum_{\text{anchors } a} \log P_a \qquad (\text{anchors with } P_a = 0 \text{ add } 0)$$")
    rng = np.random.default_rng(3)
    k, d = 4, 3
    W = random_prototypes(k, d, seed=1)
    for trial in range(5):
        y = rng.integers(0, k - 1, size=7)  # class k - 1 absent: m_c = 0 for prototype anchors
        H = rng.standard_normal((7, d))
        H /= np.linalg.norm(H, axis=1, keepdims=True)
        expected, floor = _naive_loss(H, y, W, n_w, 0.5, anchors)
        got = float(scl_prototype_loss(torch.tensor(H), torch.tensor(y), torch.tensor(W), n_w, 0.5,
                                       prototypes_as_anchors=anchors))
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-9)
        assert got >= floor - 1e-9 * abs(floor)  # the floor of section 2 holds at every point


# --- section 4 ---------------------------------------------------------------------------------

def test_samples_only_limit_is_fixed_classifier_cross_entropy():
    in_doc(r"\mathrm{CE}_i = -\log \frac{e^{h_i \cdot w_{y_i}/\tau}}{\sum_c e^{h_i \cdot w_c/\tau}}",
           r"$O(|B|/n_w)$")
    rng = np.random.default_rng(0)
    H = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((12, 5))), dim=1)
    y = torch.tensor(rng.integers(0, 4, size=12))
    W = torch.tensor(random_prototypes(4, 5, seed=2))
    ce = fixed_classifier_cross_entropy(H, y, W, 0.5, reduction="none")
    errors = []
    for n_w in (1e3, 1e4, 1e5):
        gap = scl_prototype_loss(H, y, W, n_w, 0.5, reduction="none") - math.log(n_w) - ce
        errors.append(float(gap.abs().max()))
    assert errors[0] < 12 * math.exp(4.0) / 1e3  # |B| e^{2/tau} / n_w
    assert errors[1] / errors[0] == pytest.approx(0.1, rel=0.05) and errors[2] / errors[1] == pytest.approx(0.1, rel=0.05)


def test_prototype_anchor_expansion():
    in_doc(r"$$n_w \ell_c = n_w\Big(\log n_w + \log A_c - \frac{1}{\tau}\Big) + \frac{1}{A_c}\Big(\sum_{j \in B} "
           r"e^{w_c \cdot h_j/\tau} - e^{1/\tau}\Big) - \sum_{j \in B:\, y_j = c} \frac{w_c \cdot h_j - 1}{\tau} + O(1/n_w) ,$$")
    rng = np.random.default_rng(1)
    tau, k = 0.5, 3
    H = rng.standard_normal((6, 4))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    y = np.array([0, 0, 1, 1, 2, 0])
    W = random_prototypes(k, 4, seed=5)
    errors = []
    for n_w in (1e3, 1e4):
        both = float(scl_prototype_loss(torch.tensor(H), torch.tensor(y), torch.tensor(W), n_w, tau,
                                        prototypes_as_anchors=True))
        samples = float(scl_prototype_loss(torch.tensor(H), torch.tensor(y), torch.tensor(W), n_w, tau))
        expansion = 0.0
        for c in range(k):
            A = np.exp(W[:, c] @ W / tau).sum()
            expansion += (n_w * (math.log(n_w) + math.log(A) - 1 / tau)
                          + (np.exp(W[:, c] @ H.T / tau).sum() - math.exp(1 / tau)) / A
                          - np.sum((W[:, c] @ H[y == c].T - 1) / tau))
        errors.append(abs(both - samples - expansion))
    assert errors[0] < 6 * math.exp(2 / tau) / 1e3  # (|B| e^{2/tau}) / n_w
    assert errors[1] == pytest.approx(errors[0] / 10, rel=0.1)  # O(1/n_w)


@pytest.mark.parametrize("k", [3, 4, 6])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_of_prototypes_give_an_etf_in_the_ce_limit(k, tau):
    in_doc(r"$h_y = \sqrt{\tfrac{k-1}{k}}\, w_y - \tfrac{1}{\sqrt{k(k-1)}} \sum_{c \ne y} w_c$")
    from ncgeo.certify import certify_ce_limit

    W = orthogonal_frame(k)
    Hs = np.stack([math.sqrt((k - 1) / k) * W[:, y] - (W.sum(axis=1) - W[:, y]) / math.sqrt(k * (k - 1))
                   for y in range(k)], axis=1)
    np.testing.assert_allclose(np.linalg.norm(Hs, axis=0), 1.0, atol=1e-15)
    np.testing.assert_allclose(Hs.T @ Hs, etf_gram(k), atol=1e-12)  # an ETF, not the OF
    result = certify_ce_limit(W, tau)
    assert result.certified, result.reason
    np.testing.assert_allclose(result.gram, Hs.T @ Hs, atol=1e-6)
    # and it is the CE optimum: the CE of the formula's means is the program's optimal value
    ce = fixed_classifier_cross_entropy(torch.tensor(Hs.T), torch.arange(k), torch.tensor(W), tau)
    assert float(ce) == pytest.approx(result.value, rel=1e-7)


def test_etf_prototypes_are_learnt_exactly_in_the_ce_limit():
    from ncgeo.certify import certify_ce_limit

    in_doc(r"the CE optimum of class $y$ is $h = w_y$ exactly")
    result = certify_ce_limit(simplex_etf(5), 0.2)
    np.testing.assert_allclose(result.gram, etf_gram(5), atol=1e-6)


# --- section 5 ---------------------------------------------------------------------------------

def _doc_closed_form(k, n, n_w, tau, gamma, anchors=False):
    """Section 5.2 transcribed (per-anchor values, plain exp: fine for tau >= 0.05)."""
    in_doc(r"$$\ell = \log\Big((n - 1)\, e^{1/\tau} + n (k - 1)\, e^{\gamma/\tau} + n_w \big(e^{1/\tau} + (k - 1)\, "
           r"e^{\gamma/\tau}\big)\Big) - \frac{1}{\tau},$$",
           r"$$\log\Big(n\, e^{1/\tau} + n (k - 1)\, e^{\gamma/\tau} + n_w (k - 1)\, e^{\gamma/\tau} + (n_w - 1)\, "
           r"e^{1/\tau}\Big) - \frac{1}{\tau}.$$", "and the loss is $k n \\ell$")
    e1, eg = math.exp(1 / tau), math.exp(gamma / tau)
    loss = k * n * (math.log((n - 1) * e1 + n * (k - 1) * eg + n_w * (e1 + (k - 1) * eg)) - 1 / tau)
    if anchors:
        loss += k * n_w * (math.log(n * e1 + n * (k - 1) * eg + n_w * (k - 1) * eg + (n_w - 1) * e1) - 1 / tau)
    return loss


@pytest.mark.parametrize("k, n, n_w, tau", [(2, 3, 0, 1.0), (4, 5, 100, 0.05), (10, 10, 1000, 0.1),
                                            (7, 20, 2.5, 0.3), (10, 100, 1e6, 0.2), (3, 1, 1, 0.5)])
@pytest.mark.parametrize("geometry", ["etf", "of"])
def test_closed_forms_equal_closed_form_loss(k, n, n_w, tau, geometry):
    in_doc(r"simplex ETF ($\gamma = -\frac{1}{k-1}$) or an orthogonal frame ($\gamma = 0$)")
    gamma = -1 / (k - 1) if geometry == "etf" else 0.0
    assert _doc_closed_form(k, n, n_w, tau, gamma) == pytest.approx(closed_form_loss(k, n, n_w, tau, geometry), rel=1e-12)
    if n_w >= 1:
        assert _doc_closed_form(k, n, n_w, tau, gamma, True) == pytest.approx(
            closed_form_loss(k, n, n_w, tau, geometry, prototypes_as_anchors=True), rel=1e-12)


@pytest.mark.parametrize("geometry", ["etf", "of"])
def test_closed_form_is_the_loss_of_the_collapsed_configuration(geometry):
    k, n, n_w, tau = 4, 3, 2.0, 0.5
    W = simplex_etf(k, k) if geometry == "etf" else orthogonal_frame(k)
    y = np.repeat(np.arange(k), n)
    gamma = -1 / (k - 1) if geometry == "etf" else 0.0
    for anchors in (False, True):
        direct = float(scl_prototype_loss(torch.tensor(W[:, y].T), torch.tensor(y), torch.tensor(W), n_w, tau,
                                          prototypes_as_anchors=anchors))
        assert direct == pytest.approx(_doc_closed_form(k, n, n_w, tau, gamma, anchors), rel=1e-12)


def test_the_closed_form_table_of_the_document():
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", section("5.2"), flags=re.M)
    assert len(rows) >= 4
    for k, n, n_w, tau, etf, of in rows:
        for text, geometry in ((etf, "etf"), (of, "of")):
            value = closed_form_loss(int(k), int(n), float(n_w), float(tau), geometry)
            digits = len(text.replace(".", "").lstrip("0"))
            assert float(text) == pytest.approx(value, rel=10 ** (1 - digits)), (k, n, n_w, tau, geometry)
            assert abs(float(text) - value) <= 1e-12 * abs(value) + 0.5 * 10 ** -len(text.split(".")[1])


def test_reduced_loss_formula_at_a_collapsed_point():
    in_doc(r"$$\ell_c = \log\Big((n_c - 1) e^{a_c/\tau} + \sum_{c' \ne c} n_{c'} e^{b_{cc'}/\tau} + n_w \sum_{c'} "
           r"e^{p_{cc'}/\tau}\Big) - \frac{(n_c - 1) a_c + n_w p_{cc}}{\tau\, P_c}, \qquad P_c = n_c - 1 + n_w .$$",
           r"$\sum_c n_c\, \ell_c(a, b, p)$")
    rng = np.random.default_rng(4)
    k, d, n_w, tau = 4, 5, 7.0, 0.3
    sizes = [9, 9, 2, 1]
    M = rng.standard_normal((d, k))
    M /= np.linalg.norm(M, axis=0)
    W = random_prototypes(k, d, seed=3)
    a, b, p = np.ones(k), M.T @ M, M.T @ W
    total = 0.0
    for c in range(k):
        D = (sizes[c] - 1) * math.exp(a[c] / tau) + sum(sizes[o] * math.exp(b[c, o] / tau) for o in range(k) if o != c)
        D += n_w * np.exp(p[c] / tau).sum()
        total += sizes[c] * (math.log(D) - ((sizes[c] - 1) * a[c] + n_w * p[c, c]) / (tau * (sizes[c] - 1 + n_w)))
    assert total == pytest.approx(float(collapsed_loss(M, sizes, W, n_w, tau)), rel=1e-12)


def test_certified_rule_is_the_decided_one():
    in_doc(r"\text{certified} \iff U - L \ \le\ \mathrm{rtol}\,(U - F) + \mathrm{atol}\cdot A",
           r"\mathrm{rtol} = 10^{-6},\ \mathrm{atol} = 10^{-12}", "`relative_gap` $= (U - L)/(U - F)$")
    # ... and it is the library's rule: its defaults, its tolerance and relative gap, on both sides of the line
    from ncgeo.certify.result import DEFAULT_ATOL, DEFAULT_RTOL, make_result

    assert (DEFAULT_RTOL, DEFAULT_ATOL) == (1e-6, 1e-12)
    F, A, U = 10.0, 50, 12.0
    accepted = 1e-6 * (U - F) + 1e-12 * A
    for gap, certified in ((0.99 * accepted, True), (1.01 * accepted, False)):
        result = make_result(U - gap, U, floor=F, anchors=A, method="reduced", status="optimal", seconds=0.0,
                             rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)
        assert result.certified == certified and result.tolerance == pytest.approx(accepted, rel=1e-12)
        assert result.relative_gap == pytest.approx(gap / (U - F), rel=1e-9)


# --- section 6 ---------------------------------------------------------------------------------

def test_metric_definitions():
    in_doc(r"\Delta(M, G^\ast) = \Big\lVert \frac{M^\top M}{\lVert M^\top M \rVert_F} - \frac{G^\ast}{\lVert G^\ast \rVert_F} \Big\rVert_F",
           r"$\mathrm{NC1} = \frac1k \mathrm{tr}(\Sigma_W \Sigma_B^{+})$",
           r"$\Sigma_W = \frac1N \sum_i (h_i - \mu_{y_i})(h_i - \mu_{y_i})^\top$",
           r"$\Sigma_B = \frac1k \sum_c (\mu_c - \mu_G)(\mu_c - \mu_G)^\top$",
           r"$\big|\cos(\mu_c - \mu_G, \mu_{c'} - \mu_G) + \frac{1}{k-1}\big|$",
           r"$\frac1k \sum_c \cos(\mu_c, w_c)$")
    rng = np.random.default_rng(7)
    k, d = 4, 6
    y = np.repeat(np.arange(k), [5, 3, 8, 2])
    H = rng.standard_normal((len(y), d)) + 2 * rng.standard_normal((k, d))[y]
    W = random_prototypes(k, d, seed=0)
    M = np.stack([H[y == c].mean(axis=0) for c in range(k)], axis=1)
    C = M - M.mean(axis=1, keepdims=True)

    def delta(A, G):
        X = A.T @ A
        return np.linalg.norm(X / np.linalg.norm(X) - G / np.linalg.norm(G))

    def cos(A):
        U = A / np.linalg.norm(A, axis=0)
        return U.T @ U

    off = ~np.eye(k, dtype=bool)
    assert metrics.gram_distance(M, W.T @ W) == pytest.approx(delta(M, W.T @ W), rel=1e-12)
    assert metrics.delta_to_etf(H, y) == pytest.approx(delta(C, etf_gram(k)), rel=1e-12)
    assert metrics.delta_to_orthogonal_frame(H, y) == pytest.approx(delta(M, np.eye(k)), rel=1e-12)
    assert metrics.delta_to_prototypes(H, y, W) == pytest.approx(delta(M, W.T @ W), rel=1e-12)
    R = H - M[:, y].T
    sigma_w = R.T @ R / len(y)
    sigma_b = C @ C.T / k
    assert metrics.nc1(H, y) == pytest.approx(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-12)) / k, rel=1e-9)
    norms = np.linalg.norm(C, axis=0)
    assert metrics.equinorm(H, y) == pytest.approx(norms.std() / norms.mean(), rel=1e-12)
    assert metrics.equiangularity(H, y) == pytest.approx(np.mean(np.abs(cos(C)[off] + 1 / (k - 1))), rel=1e-12)
    assert metrics.mean_pairwise_cosine(H, y) == pytest.approx(np.mean(cos(M)[off]), rel=1e-12)
    align = np.mean(np.sum(M * W, axis=0) / np.linalg.norm(M, axis=0))
    assert metrics.prototype_alignment(H, y, W) == pytest.approx(align, rel=1e-12)
    prediction = np.argmin(((H[:, None, :] - M.T[None]) ** 2).sum(-1), axis=1)
    balanced = np.mean([np.mean(prediction[y == c] == c) for c in range(k)])
    assert metrics.ncc_accuracy(H, y, M)[0] == pytest.approx(balanced, rel=1e-12)
    nearest = np.argmax(H @ W, axis=1)
    assert metrics.nearest_prototype_accuracy(H, y, W)[0] == pytest.approx(
        np.mean([np.mean(nearest[y == c] == c) for c in range(k)]), rel=1e-12)
