"""deep report: curves, Gram heatmaps, accuracy tables from run folders."""

from __future__ import annotations

import csv
import json
import re

import pytest
from click.testing import CliRunner

from cli import main as cli_main
from deep.predict import load_run
from deep.report import cosines, report
from helpers import copy_run, pretend_read_only, refuse_to_solve

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_files_and_table(tiny_run, tmp_path):
    result = report([tiny_run], tmp_path / "report")
    names = sorted(path.name for path in result.files)
    assert names == ["accuracy.csv", "accuracy.md", "delta_curves.png", "grams.png", "per_class.csv"]
    for path in result.files:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG
    last = load_run(tiny_run).metrics[-1]
    with open(tmp_path / "report" / "accuracy.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 1 and rows[0]["run"] == tiny_run.name
    assert float(rows[0]["test_ncc"]) == pytest.approx(last["test"]["ncc_accuracy"])
    assert float(rows[0]["train_delta_prototypes"]) == pytest.approx(last["train"]["delta_prototypes"])
    assert rows[0]["prediction_model"] == "batch" and float(rows[0]["delta_measured_predicted"]) >= 0
    markdown = (tmp_path / "report" / "accuracy.md").read_text().splitlines()
    assert markdown[0].startswith("| run | loss | n_w") and len(markdown) == 3
    with open(tmp_path / "report" / "per_class.csv") as stream:
        assert len(list(csv.DictReader(stream))) == 4


def test_cosines():
    import numpy as np

    gram = np.array([[4.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert np.allclose(cosines(gram), [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_cli_report(tiny_run, tmp_path):
    result = CliRunner().invoke(cli_main, ["deep", "report", str(tiny_run), str(tiny_run), "--out",
                                           str(tmp_path / "two"), "--no-predict"])
    assert result.exit_code == 0, result.output
    assert "| run |" in result.output and (tmp_path / "two" / "grams.png").is_file()
    bad = CliRunner().invoke(cli_main, ["deep", "report", str(tmp_path), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "has no config.json" in bad.output and bad.output.strip().count("\n") == 0
    (tmp_path / "afile").write_text("not a folder")
    blocked = CliRunner().invoke(cli_main, ["deep", "report", str(tiny_run), "--out", str(tmp_path / "afile" / "x"),
                                            "--no-predict"])
    assert blocked.exit_code == 2 and "cannot be created as a folder" in blocked.output
    assert blocked.output.strip().count("\n") == 0


def test_a_read_only_run_is_refused_before_any_solve(tiny_run, tmp_path, monkeypatch):
    first, second = copy_run(tiny_run, tmp_path, "first"), copy_run(tiny_run, tmp_path, "second")
    pretend_read_only(monkeypatch, second)
    refuse_to_solve(monkeypatch)  # not even the first, writable, run is solved
    with pytest.raises(ValueError, match=re.escape(f"run folder '{second}' is not writable")):
        report([first, second], tmp_path / "out")
    result = CliRunner().invoke(cli_main, ["deep", "report", str(first), str(second), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "is not writable" in result.output
    assert report([second], tmp_path / "plain", predict=False).rows[0]["prediction_model"] is None


def test_an_empty_out_is_refused(tiny_run, tmp_path, monkeypatch):
    """`--out ""` wrote the report into the current folder."""
    monkeypatch.chdir(tmp_path)
    refuse_to_solve(monkeypatch)
    with pytest.raises(ValueError, match="--out must not be empty"):
        report([tiny_run], "")
    result = CliRunner().invoke(cli_main, ["deep", "report", str(tiny_run), "--out", ""])
    assert result.exit_code == 2 and "--out must not be empty" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_out_folder_is_refused_before_any_solve(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    pretend_read_only(monkeypatch, out)
    refuse_to_solve(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(f"--out '{out}' is not writable")):
        report([tiny_run], out)


def test_a_failed_write_is_one_value_error_naming_the_file(tiny_run, tmp_path, monkeypatch):
    import deep.report

    def fail(path, data, **options):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deep.report, "atomic_write_bytes", fail)
    with pytest.raises(ValueError, match=re.escape(f"cannot write '{tmp_path / 'out' / 'delta_curves.png'}': No space")):
        report([tiny_run], tmp_path / "out", predict=False)
    result = CliRunner().invoke(cli_main, ["deep", "report", str(tiny_run), "--out", str(tmp_path / "o"),
                                           "--no-predict"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "No space left" in result.output


def test_report_of_a_run_written_before_the_rename_without_test_set(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    path = run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["train"]["gram_means"] = record["train"].pop("mean_inner_products")
        record["test"] = None
    records[-1]["train"]["ncc_per_class"][0] = None  # NaN is written as null
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    result = report([run], tmp_path / "report", predict=False)
    assert result.rows[0]["test_ncc"] is None and (tmp_path / "report" / "grams.png").is_file()
    with open(tmp_path / "report" / "per_class.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert rows[0]["train_ncc"] == "" and rows[0]["test_ncc"] == ""


def test_report_arguments(tiny_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="runs must be a non-empty list of run folders, got NoneType"):
        report(None, "x")
    with pytest.raises(TypeError, match="runs must be a non-empty list of run folders, got str"):
        report(str(tiny_run), "x")
    refuse_to_solve(monkeypatch)
    with pytest.raises(ValueError, match="model must be one of"):
        report([tiny_run], "x", model="bogus")
    with pytest.raises(ValueError, match="runs must be a non-empty list"):
        report([], "x")
    with pytest.raises(TypeError, match="out must be the path of a folder, got NoneType"):
        report(["x"], None)
    assert list(tmp_path.iterdir()) == []  # no refused call created the folder "x"
    # a model that does not fit the LAST run is refused before the first run is solved
    anchored = copy_run(tiny_run, tmp_path / "runs", "anchored")
    config = json.loads((anchored / "config.json").read_text())
    (anchored / "config.json").write_text(json.dumps({**config, "proto_anchors": True}))
    with pytest.raises(ValueError, match="--proto-anchors: its n_w -> infinity limit is not cross-entropy"):
        report([tiny_run, anchored], tmp_path / "out", model="ce-limit")


def test_figures_name_runs_by_what_they_trained_and_show_every_curve(tiny_run, tmp_path, monkeypatch):
    """Two copies of one run, runs/a and x/a: one legend naming them apart, a y-label on every panel,
    an overall title, y-limits holding every curve; Gram panels with class ticks and the Deltas."""
    import deep.report

    first, second = copy_run(tiny_run, tmp_path / "runs", "a"), copy_run(tiny_run, tmp_path / "x", "a")
    figures = {}
    monkeypatch.setattr(deep.report, "save_png", lambda figure, path: figures.__setitem__(path.name, figure))
    report([first, second], tmp_path / "report")
    name = "SCL n_w = 10"
    assert deep.report.run_labels([load_run(first), load_run(second)]) == [f"{name} (runs/a)", f"{name} (x/a)"]
    curves = figures["delta_curves.png"]
    assert curves._suptitle.get_text() == "Gram distance Delta of the class means during training"
    assert [text.get_text() for text in curves.legends[0].get_texts()] == [
        f"{name} (runs/a)", f"{name} (x/a)", "training set", "test set"]
    metrics = load_run(first).metrics
    for axis, key in zip(curves.axes, ("delta_prototypes", "delta_etf", "delta_of")):
        assert axis.get_ylabel() == "Delta" and not axis.get_legend()
        values = [m[split][key] for m in metrics for split in ("train", "test")]
        low, high = axis.get_ylim()
        assert low == 0 and high >= max(values)
    grams = figures["grams.png"]
    heatmaps = [axis for axis in grams.axes if axis.get_label() != "<colorbar>"]
    last = metrics[-1]["train"]["delta_prototypes"]
    assert heatmaps[0].get_title() == f"{name} (runs/a): learnt (epoch 2)\nDelta to G_W = {last:.4f}"
    prediction = json.loads((first / "prediction.json").read_text())
    assert heatmaps[2].get_title().endswith(f"Delta to the learnt = {prediction['delta_measured_predicted']:.4f}")
    for axis in heatmaps:
        assert list(axis.get_xticks()) == [0, 1, 2, 3] and axis.get_xlabel() == "class"


def test_runs_with_different_settings_need_no_folder_names(tiny_run, tmp_path):
    from deep.predict import load_run as load
    from deep.report import run_labels

    record = load(tiny_run)
    variants = [record, type(record)(**{**record.__dict__, "config": {**record.config, "protos": 1000.0}}),
                type(record)(**{**record.__dict__, "config": {**record.config, "loss": "ce-fixed"}}),
                type(record)(**{**record.__dict__, "config": {**record.config, "loss": "ce"}})]
    assert run_labels(variants) == ["SCL n_w = 10", "SCL n_w = 1000", "CE, fixed W", "CE, learnt W"]
