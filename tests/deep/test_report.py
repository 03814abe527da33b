"""deep report: curves, Gram heatmaps, accuracy tables from run folders."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from cli import main as cli_main
from deep.predict import load_run
from deep.report import cosines, report

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
