"""UFM prediction of a deep run: expected per-batch counts, predicted Gram, Delta(measured, predicted)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import copy_run, pretend_read_only, refuse_to_solve, synthetic_images, tiny_config

from cli import main as cli_main
from deep.predict import (
    expected_batch_counts,
    load_run,
    predict_run,
    predicted_means_gram,
)
from deep.train import train
from ncgeo.metrics import gram_distance


def test_expected_batch_counts():
    assert np.allclose(expected_batch_counts([30, 30, 10, 10], 256), [96, 96, 32, 32])
    with pytest.raises(ValueError, match="class_counts"):
        expected_batch_counts([0, 0], 8)


def test_predicted_means_gram_reads_the_class_block():
    weights = np.array([4.0, 9.0])
    gram = np.array([[1.0, -0.5], [-0.5, 1.0]])
    R = np.zeros((4, 4))
    R[:2, :2] = gram * np.sqrt(np.outer(weights, weights))
    assert np.allclose(predicted_means_gram(R, weights), gram)


def test_prediction_of_the_tiny_run(tiny_run):
    record = load_run(tiny_run)
    counts = np.array(record.run["train_class_counts"], dtype=float)
    prediction = predict_run(tiny_run)
    assert prediction.model == "batch"
    assert np.allclose(prediction.weights, 32 * counts / counts.sum())
    assert (prediction.n_w, prediction.tau) == (10.0, 0.1)
    G = prediction.gram_predicted
    assert np.allclose(G, G.T) and np.all(np.linalg.eigvalsh(G) > -1e-6)
    assert prediction.delta_measured_predicted == pytest.approx(gram_distance(record.train_means, G))
    assert prediction.delta_measured_prototypes == record.metrics[-1]["train"]["delta_prototypes"]
    stored = json.loads((tiny_run / "prediction.json").read_text())
    assert stored["model"] == "batch" and stored["delta_measured_predicted"] == pytest.approx(
        prediction.delta_measured_predicted)
    dataset_model = predict_run(tiny_run, "dataset", write=False)
    assert np.allclose(dataset_model.weights, counts)


def test_many_prototypes_predict_the_prototype_gram(tiny_run):
    # docs/theory.md section 3, fact 5: with n_w -> infinity the learnt geometry is the prototypes'
    record = load_run(tiny_run)
    deltas = [predict_run(dataclasses.replace(record, config={**record.config, "protos": n_w}),
                          write=False).delta_predicted_prototypes for n_w in (1.0, 1e6)]
    assert deltas[1] < 0.01 and deltas[1] < deltas[0] / 5


def test_a_run_with_prototype_anchors_is_predicted_with_them(tmp_path):
    from ncgeo import UFMProblem
    from ncgeo.certify import solve_reduced

    datasets = (synthetic_images(), synthetic_images(per_class=8, seed=1))
    run = train(tiny_config(tmp_path / "anchors", proto_anchors=True, protos=10.0, epochs=1), datasets=datasets)
    record = load_run(run)
    assert record.config["proto_anchors"] is True
    prediction = predict_run(run, write=False)
    assert prediction.prototypes_as_anchors and "prototypes as anchors" in prediction.summary()
    direct = solve_reduced(UFMProblem.from_sizes(prediction.weights, record.prototypes, 10.0, 0.1,
                                                 prototypes_as_anchors=True))
    assert np.allclose(prediction.gram_predicted, predicted_means_gram(direct.solution["R"], prediction.weights))
    without = predict_run(dataclasses.replace(record, config={**record.config, "proto_anchors": False}), write=False)
    assert not without.prototypes_as_anchors
    # balanced classes and ETF prototypes: both optima are the ETF collapse (a difference of 1e-3 here came from
    # the solver's inaccuracy before the relaxations worked on the excess); the objective differs by the anchors
    assert prediction.certificate["floor"] > without.certificate["floor"]
    with pytest.raises(ValueError, match="--proto-anchors: its n_w -> infinity limit is not cross-entropy"):
        predict_run(run, "ce-limit")


def test_ce_baselines(tmp_path):
    datasets = (synthetic_images(), synthetic_images(per_class=8, seed=1))
    learnt = train(tiny_config(tmp_path / "ce", loss="ce", epochs=1), datasets=datasets)
    with pytest.raises(ValueError, match="--loss ce"):
        predict_run(learnt)
    fixed = train(tiny_config(tmp_path / "ce-fixed", loss="ce-fixed", epochs=1), datasets=datasets)
    with pytest.raises(ValueError, match="ce-limit"):
        predict_run(fixed, "batch")
    prediction = predict_run(fixed)
    # ETF prototypes without non-negativity: the CE-limit optimum is h_y = w_y (docs/theory.md section 4)
    assert prediction.model == "ce-limit" and prediction.delta_predicted_prototypes < 1e-4
    assert np.allclose(prediction.gram_predicted, load_run(fixed).prototypes.T @ load_run(fixed).prototypes,
                       atol=1e-4)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)


@pytest.mark.parametrize("name, corrupt", [
    ("config.json", lambda path: path.write_text("[1]")),
    ("config.json", lambda path: path.write_text("{")),
    ("run.json", lambda path: path.write_text("{}")),
    ("metrics.jsonl", lambda path: path.write_text('{"epoch": 0}\n')),
    ("metrics.jsonl", lambda path: path.write_text("[1]\n")),
    ("prototypes.npz", lambda path: path.write_bytes(b"junk")),
    ("prototypes.npz", lambda path: _write_npz(path, other=np.eye(3))),
    ("means.npz", lambda path: path.write_bytes(b"junk")),
])
def test_corrupt_run_files_are_one_line_naming_the_file(tiny_run, tmp_path, name, corrupt):
    run = copy_run(tiny_run, tmp_path)
    corrupt(run / name)
    with pytest.raises(ValueError, match=f"{name} is corrupt"):
        load_run(run)
    result = CliRunner().invoke(cli_main, ["deep", "predict", str(run)])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and name in result.output


def test_cli_predict(tiny_run, tmp_path):
    result = CliRunner().invoke(cli_main, ["deep", "predict", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert "expected per-batch class counts" in result.output and "Delta(measured, predicted) =" in result.output
    missing = CliRunner().invoke(cli_main, ["deep", "predict", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and missing.output.strip().count("\n") == 0 and "does not exist" in missing.output
    run = copy_run(tiny_run, tmp_path, "unwritten")
    printed = CliRunner().invoke(cli_main, ["deep", "predict", str(run), "--no-write"])
    assert printed.exit_code == 0 and "Delta(measured, predicted) =" in printed.output
    assert not (run / "prediction.json").exists()


def _edit_metrics(run, edit, line=2):
    """Apply ``edit`` to the record of ``line`` (1-based) of ``metrics.jsonl``."""
    path = run / "metrics.jsonl"
    records = [json.loads(text) for text in path.read_text().splitlines()]
    edit(records[line - 1])
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def _edit_json(run, name, edit):
    values = json.loads((run / name).read_text())
    edit(values)
    (run / name).write_text(json.dumps(values))


def _one_line_exit_2(args, *needles):
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0, result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["train"].pop("delta_prototypes"), "line 2 has no train.delta_prototypes"),
    (lambda r: r["train"].pop("ncc_accuracy"), "line 2 has no train.ncc_accuracy"),
    (lambda r: r["train"].update(nc1="x"), "line 2 train.nc1 must be a number or null"),
    (lambda r: r.update(test="x"), "line 2 test must be an object of metrics or null, got 'x'"),
    (lambda r: r["train"].update(class_counts=r["train"]["class_counts"] + [3]),
     "line 2 train.class_counts must be a list of 4 integers >= 0"),
    (lambda r: r["train"].update(ncc_per_class=[1.0]), "line 2 train.ncc_per_class must be a list of 4 numbers"),
    (lambda r: r["train"].pop("mean_inner_products"), "line 2 has no train.mean_inner_products"),
    (lambda r: r["train"].update(mean_inner_products=[[1.0]]), "line 2 train.mean_inner_products must be a 4 x 4"),
    (lambda r: r["test"].update(nearest_prototype_per_class=[0.5] * 5),
     "line 2 test.nearest_prototype_per_class must be a list of 4 numbers"),
    (lambda r: r["test"].pop("delta_of"), "line 2 has no test.delta_of"),
    (lambda r: r.update(epoch=[1]), "line 2 epoch must be an integer >= 0, got [1]"),
    (lambda r: r.update(epoch=True), "line 2 epoch must be an integer >= 0, got True"),
    (lambda r: r.update(train=None), "line 2 train must be an object of metrics, got None"),
])
def test_every_metrics_line_is_checked_and_the_first_bad_one_named(tiny_run, tmp_path, edit, message):
    run = copy_run(tiny_run, tmp_path)
    _edit_metrics(run, edit)
    with pytest.raises(ValueError, match=re.escape(f"'{run}': metrics.jsonl is corrupt ({message}")):
        load_run(run)
    _one_line_exit_2(["deep", "predict", str(run)], "metrics.jsonl", message)
    _one_line_exit_2(["deep", "report", str(run), "--out", str(tmp_path / "report"), "--no-predict"],
                     "metrics.jsonl", message)


def test_the_line_number_counts_blank_lines(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    _edit_metrics(run, lambda r: r["train"].pop("delta_etf"), line=3)
    path = run / "metrics.jsonl"
    path.write_text("\n" + path.read_text())
    with pytest.raises(ValueError, match="line 4 has no train.delta_etf"):
        load_run(run)


def test_a_run_written_before_the_rename_and_without_a_test_set_loads(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    for line in (1, 2, 3):
        _edit_metrics(run, lambda r: (r["train"].__setitem__("gram_means", r["train"].pop("mean_inner_products")),
                                      r.update(test=None)), line=line)
    record = load_run(run)
    assert "gram_means" in record.metrics[-1]["train"] and record.metrics[-1]["test"] is None


@pytest.mark.parametrize("name, edit, message", [
    ("config.json", lambda c: c.update(tau=None), "tau must be a finite number >= 1e-06, got None"),
    ("config.json", lambda c: c.update(tau=0), "tau must be a finite number >= 1e-06, got 0"),
    ("config.json", lambda c: c.update(tau=1e-8), "tau must be a finite number >= 1e-06, got 1e-08"),
    ("config.json", lambda c: c.pop("tau"), "no tau"),
    ("config.json", lambda c: c.update(protos=-1), "protos must be a finite number >= 0, got -1"),
    ("config.json", lambda c: c.update(protos="10"), "protos must be a finite number >= 0, got '10'"),
    ("config.json", lambda c: c.update(loss="bogus"), "loss must be one of scl, ce, ce-fixed, got 'bogus'"),
    ("config.json", lambda c: c.update(loss=["scl"]), "loss must be one of scl, ce, ce-fixed, got ['scl']"),
    ("config.json", lambda c: c.update(feature=1), "feature must be one of signed, nonnegative, abs, linear, mlp"),
    ("config.json", lambda c: c.update(proto_anchors="yes"), "proto_anchors must be true or false"),
    ("run.json", lambda r: r.update(train_class_counts=[24, 24, 12]),
     "train_class_counts must be a list of 4 integers >= 0, one per prototype column, got [24, 24, 12]"),
    ("run.json", lambda r: r.update(train_class_counts="many"), "train_class_counts must be a list of 4 integers"),
    ("run.json", lambda r: r.update(samples_per_batch=0), "samples_per_batch must be an integer >= 1, got 0"),
])
def test_config_and_run_json_values_are_checked(tiny_run, tmp_path, name, edit, message):
    run = copy_run(tiny_run, tmp_path)
    _edit_json(run, name, edit)
    with pytest.raises(ValueError, match=re.escape(f"{name} is corrupt ({message}")):
        load_run(run)
    _one_line_exit_2(["deep", "predict", str(run)], name)


@pytest.mark.parametrize("arrays, message", [
    (lambda m: {**m, "epoch": np.array([1, 2])}, r"epoch must be one integer >= 0, got int64 of shape \(2,\)"),
    (lambda m: {**m, "epoch": np.array(1.5)}, "epoch must be one integer >= 0, got float64"),
    (lambda m: {**m, "train": m["train"][:, :3]}, r"train means must be a finite d x k = \(16, 4\) matrix"),
    (lambda m: {**m, "train": np.full_like(m["train"], np.nan)}, "train means must be a finite"),
])
def test_means_npz_is_checked(tiny_run, tmp_path, arrays, message):
    run = copy_run(tiny_run, tmp_path)
    with np.load(run / "means.npz") as data:
        stored = {key: data[key] for key in data.files}
    np.savez(run / "means.npz", **arrays(stored))
    with pytest.raises(ValueError, match=f"means.npz is corrupt \\({message}"):
        load_run(run)
    _one_line_exit_2(["deep", "predict", str(run)], "means.npz")


def test_a_hand_made_record_with_an_unknown_loss_is_refused_not_predicted_as_scl(tiny_run):
    record = load_run(tiny_run)
    for loss in ("bogus", ["scl"], None):
        with pytest.raises(ValueError, match="config.json is corrupt \\(loss must be one of scl, ce, ce-fixed"):
            predict_run(dataclasses.replace(record, config={**record.config, "loss": loss}), write=False)


def test_load_run_needs_a_path():
    with pytest.raises(TypeError, match="run must be the path of a run folder, got NoneType"):
        load_run(None)


@pytest.mark.parametrize("samples", [-1, 0, float("nan"), float("inf")])
def test_expected_batch_counts_needs_a_positive_batch(samples):
    with pytest.raises(ValueError, match="samples_per_batch must be"):
        expected_batch_counts([2, 2], samples)
    with pytest.raises(ValueError, match="class_counts must contain only finite values"):
        expected_batch_counts([2, float("nan")], 8)


def test_predicted_means_gram_checks_its_arguments():
    with pytest.raises(ValueError, match="weights must be positive"):
        predicted_means_gram(np.eye(3), [-1.0, 1.0])  # returned NaN
    with pytest.raises(ValueError, match="weights must be positive"):
        predicted_means_gram(np.eye(3), [0.0, 1.0])
    with pytest.raises(ValueError, match="R must be a 2-D array"):
        predicted_means_gram(np.ones(2), [1, 1])  # IndexError
    with pytest.raises(ValueError, match=r"R must be a square matrix of size at least k = 3"):
        predicted_means_gram(np.eye(2), [1, 1, 1])
    with pytest.raises(ValueError, match="weights must be a 1-D array"):
        predicted_means_gram(np.eye(2), 1.0)


def test_a_read_only_run_is_refused_before_the_solve(tiny_run, tmp_path, monkeypatch):
    run = copy_run(tiny_run, tmp_path)
    pretend_read_only(monkeypatch, run)
    refuse_to_solve(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(f"run folder '{run}' is not writable: its prediction.json cannot")):
        predict_run(run)
    _one_line_exit_2(["deep", "predict", str(run)], "is not writable", str(run))
    monkeypatch.undo()
    assert predict_run(run, write=False).model == "batch"  # reading alone is fine


def test_a_failed_write_of_the_prediction_is_one_value_error_naming_the_file(tiny_run, tmp_path, monkeypatch):
    import deep.predict

    run = copy_run(tiny_run, tmp_path)

    def fail(path, value):  # what a folder made read-only during the solve gives
        raise PermissionError(13, "Permission denied", str(run / ".tmp-x-prediction.json"))

    monkeypatch.setattr(deep.predict, "atomic_write_json", fail)
    with pytest.raises(ValueError, match=re.escape(f"cannot write '{run}/prediction.json': Permission denied")):
        predict_run(run)
    _one_line_exit_2(["deep", "predict", str(run)], "cannot write", "prediction.json")


def test_abs_features_are_predicted_by_the_ufm_plus_like_the_relu(tiny_run, monkeypatch):
    import ncgeo.certify

    record, solved = load_run(tiny_run), {}

    class Solved(Exception):
        pass

    def solve_reduced(problem, **options):
        solved[problem_feature] = problem.nonnegative
        raise Solved

    monkeypatch.setattr(ncgeo.certify, "solve_reduced", solve_reduced)
    for problem_feature in ("abs", "nonnegative", "signed"):
        with pytest.raises(Solved):
            predict_run(dataclasses.replace(record, config={**record.config, "feature": problem_feature}), write=False)
    assert solved == {"abs": True, "nonnegative": True, "signed": False}
