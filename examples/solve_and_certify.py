"""Solve a UFM set-up, certify the optimum, and compare with the closed form and the CE limit.

    python examples/solve_and_certify.py [--quick]

Step imbalance (half the classes with n samples, half with n / 10), ETF prototypes with
multiplicity n_w, tau = 0.2 (docs/theory.md sections 2-5). At tau = 0.1 the same set-up is not
certified: the relaxation's optimum spreads the classes slightly (a_c = 0.99997 < 1), so the
collapsed optimum is only its neighbour (docs/theory.md section 5), and the script says so.

1. ``solve_ufm`` minimises the full-batch loss over unit embeddings; ``certify_result``
   proves (or refuses) global optimality and prints one verdict line.
2. ``realise_and_certify`` gets the same optimum without a candidate, from the reduced
   program: it scales to N = 10^5 because nothing of size N x N is formed.
3. For balanced classes the optimum is the ETF collapse of the closed form.
4. ``certify_ce_limit``: as n_w grows the learnt geometry tends to the optimum of
   cross-entropy with the fixed classifier W (for ETF prototypes, W itself).
"""

from __future__ import annotations

import argparse

import numpy as np

from ncgeo import UFMProblem
from ncgeo.certify import certify_ce_limit, certify_result, realise_and_certify
from ncgeo.classes import class_sizes
from ncgeo.closed_form import closed_form_loss
from ncgeo.geometry import etf_gram, simplex_etf
from ncgeo.ufm import solve_ufm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="solve and certify a UFM set-up")
    parser.add_argument("--quick", action="store_true", help="4 classes instead of 10")
    args = parser.parse_args(argv)
    k, n, n_w, tau = (4, 10, 100.0, 0.2) if args.quick else (10, 20, 100.0, 0.2)
    W = simplex_etf(k)
    sizes = class_sizes(k, n, "step", 10)

    # 1. solve and certify (sum over anchors, float64, Riemannian L-BFGS)
    problem = UFMProblem.from_sizes(sizes, W, n_w, tau)
    result = solve_ufm(problem)
    cert = certify_result(result)
    print(f"sizes {sizes}, n_w = {n_w:g}, tau = {tau:g}")
    print(f"UFM loss {result.loss:.10g}, NC1 {result.metrics.nc1:.2e}, "
          f"Delta to G_W {result.metrics.delta_prototypes:.4f}")
    print(cert.verdict())

    # 2. the same optimum from the reduced program, realised and checked with the dual bound
    H, labels, realised = realise_and_certify(problem)
    print(f"realised optimum: loss {realised.upper_bound:.10g} ({realised.verdict()})")
    assert cert.certified and realised.certified, (cert.reason, realised.reason)
    # the same optimum: equal losses up to the accepted gap on the excess over the floor
    assert abs(realised.upper_bound - result.loss) <= cert.tolerance + realised.tolerance

    # 3. balanced classes: the optimum is the closed-form ETF collapse
    balanced = solve_ufm(UFMProblem.from_sizes([n] * k, W, n_w, tau))
    exact = closed_form_loss(k, n, n_w, tau, "etf")
    print(f"balanced: loss {balanced.loss:.12g}, closed form {exact:.12g}")
    assert abs(balanced.loss - exact) <= 1e-9 * abs(exact)

    # 4. the many-prototype limit: CE with the fixed classifier W; for an ETF, G_CE = G_W
    limit = certify_ce_limit(W, tau)
    difference = float(np.abs(limit.gram - etf_gram(k)).max())
    print(f"CE limit: max |G_CE - G_W| = {difference:.1e} ({limit.verdict()})")
    assert difference <= 1e-6


if __name__ == "__main__":
    main()
