"""UFM prediction of a deep run: expected per-batch counts, predicted Gram, Delta(measured, predicted)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_images, tiny_config

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
    # THEORY.md section 3, fact 5: with n_w -> infinity the learnt geometry is the prototypes'
    record = load_run(tiny_run)
    deltas = [predict_run(dataclasses.replace(record, config={**record.config, "protos": n_w}),
                          write=False).delta_predicted_prototypes for n_w in (1.0, 1e6)]
    assert deltas[1] < 0.01 and deltas[1] < deltas[0] / 5


def test_a_run_with_prototype_anchors_is_predicted_with_them(tmp_path):
    from ncgeo.certify import solve_reduced

    datasets = (synthetic_images(), synthetic_images(per_class=8, seed=1))
    run = train(tiny_config(tmp_path / "anchors", proto_anchors=True, protos=10.0, epochs=1), datasets=datasets)
    record = load_run(run)
    assert record.config["proto_anchors"] is True
    prediction = predict_run(run, write=False)
    assert prediction.prototypes_as_anchors and "prototypes as anchors" in prediction.summary()
    direct = solve_reduced(prediction.weights, record.prototypes, 10.0, 0.1, prototypes_as_anchors=True,
                           dim=record.prototypes.shape[0])
    assert np.allclose(prediction.gram_predicted, predicted_means_gram(direct.solution["R"], prediction.weights))
    without = predict_run(dataclasses.replace(record, config={**record.config, "proto_anchors": False}), write=False)
    assert not without.prototypes_as_anchors
    assert np.abs(prediction.gram_predicted - without.gram_predicted).max() > 1e-3  # anchors change the optimum
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
    # ETF prototypes without non-negativity: the CE-limit optimum is h_y = w_y (THEORY.md section 4)
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
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
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
