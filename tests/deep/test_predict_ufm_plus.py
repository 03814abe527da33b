"""Prediction of a UFM+ run whose prototypes have negative entries (the tiny run's simplex ETF): the
reduced program is solved (it ended ``optimal_inaccurate`` with every solver before the fix of
``solve_problem``'s warm start), its relaxation is not tight, the prediction is the best non-negative
collapsed point found, and the CLI says it is not certified."""

from __future__ import annotations

import json

import numpy as np

from click.testing import CliRunner
from helpers import copy_run

from cli import main as cli_main
from deep.predict import predict_run


def _relu_run(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path, "relu")
    config = json.loads((run / "config.json").read_text())
    config["feature"] = "nonnegative"
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_an_etf_ufm_plus_run_is_solved_and_reported_not_certified(tiny_run, tmp_path):
    prediction = predict_run(_relu_run(tiny_run, tmp_path), write=False)
    assert prediction.nonnegative and not prediction.certified
    assert prediction.certificate["solver_status"] == "optimal"
    assert "prototypes have negative entries" in prediction.verdict
    # the prediction is the best non-negative collapsed point found, not the relaxation's Gram: unit means
    # with non-negative cosines
    assert prediction.verdict.startswith("best non-negative point found, not certified")
    gram = prediction.gram_predicted
    assert np.allclose(np.diag(gram), 1.0) and gram.min() >= -1e-12


def test_cli_require_certificate_exits_1_without_a_traceback(tiny_run, tmp_path):
    run = _relu_run(tiny_run, tmp_path)
    plain = CliRunner().invoke(cli_main, ["deep", "predict", str(run), "--no-write"])
    assert plain.exit_code == 0, plain.output
    assert "certificate: best non-negative point found, not certified:" in plain.output
    required = CliRunner().invoke(cli_main, ["deep", "predict", str(run), "--no-write", "--require-certificate"])
    assert required.exit_code == 1 and "Traceback" not in required.output
    assert "certificate: best non-negative point found, not certified:" in required.output
