"""Every study at its quick size: verdict against the theory, table schema, files, resume, CLI.

One module-scoped run of ``ncgeo sims all --quick`` (through click's CliRunner) feeds the
tests; reruns read every point back from the resume cache and compute nothing.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
from click.testing import CliRunner

from cli import main
from sims.registry import STUDIES, run_study

pytestmark = pytest.mark.slow

SCHEMAS = {
    "limit": {"variant", "n_w", "loss_per_sample", "lower_bound", "ce_value", "loss_gap", "geometry_gap",
              "delta_prototypes", "min_within_similarity", "certified", "source", "geometry_pinned", "gram_means"},
    "geometry": {"geometry", "relu", "ratio", "n_w", "loss_per_sample", "certified", "delta_prototypes",
                 "delta_etf", "delta_of", "delta_ce_limit", "ce_limit_delta_prototypes",
                 "min_within_similarity", "geometry_pinned", "ce_limit_geometry_pinned", "gram_means"},
    "batching": {"scheme", "seed", "delta_of", "delta_etf", "nc1", "loss", "grad_norm", "stopping_reason",
                 "iterations", "gram_means"},
    "temperature": {"tau", "n_w", "loss_per_sample", "ce_value", "loss_gap", "geometry_gap", "delta_prototypes",
                    "ce_saturated", "certified", "source", "geometry_pinned"},
    "inverse": {"model", "method", "delta", "certified", "geometry_pinned", "residual", "gram", "W"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sims")
    result = CliRunner().invoke(main, ["sims", "all", "--out", str(out), "--quick", "--workers", "2",
                                       "--no-progress"])
    return out, result


def test_all_prints_a_verdict_table_and_exits_zero(quick_run):
    out, result = quick_run
    assert result.exit_code == 0, result.output
    for name in STUDIES:
        assert any(line.startswith(name) and ("PASS" in line or "FAIL" in line) for line in result.output.splitlines())
    assert "5/5 studies PASS" in result.output, result.output


@pytest.mark.parametrize("name", list(STUDIES))
def test_quick_study_passes_its_verdict_with_the_table_schema(quick_run, name):
    out, _ = quick_run
    with open(out / f"{name}.json", encoding="utf-8") as handle:
        summary = json.load(handle)
    assert summary["verdict"]["passed"], summary["verdict"]["reason"]
    assert summary["settings"]["quick"] is True and summary["seconds"] > 0
    with open(out / f"{name}.csv", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table and set(table[0]) == SCHEMAS[name]
    assert len(table) == len(summary["rows"])
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        with open(out / f"{name}{suffix}", "rb") as handle:
            assert handle.read(4) == magic
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


def test_rerun_reads_every_point_from_the_cache(quick_run):
    out, _ = quick_run
    before = {p: os.path.getmtime(out / "limit.points" / p) for p in os.listdir(out / "limit.points")}
    result = run_study("limit", out, quick=True, workers=1, progress=False)
    assert result.summary["sweep"]["computed"] == 0
    assert result.summary["sweep"]["cached"] == len(before) > 0
    after = {p: os.path.getmtime(out / "limit.points" / p) for p in os.listdir(out / "limit.points")}
    assert after == before
    assert result.verdict.passed


def test_limit_numbers_match_the_theory(quick_run):
    out, _ = quick_run
    with open(out / "limit.json", encoding="utf-8") as handle:
        summary = json.load(handle)["summary"]
    assert -1.3 <= summary["loss_gap_slope"] <= -0.7
    assert summary["geometry_gap_at_largest"] < 1e-3
    assert summary["anchors_geometry_gap_at_largest"] > 1e-2  # prototypes as anchors: no CE limit


def test_single_study_command_with_options_and_bad_input(quick_run, tmp_path):
    out, _ = quick_run
    runner = CliRunner()
    result = runner.invoke(main, ["sims", "inverse", "--out", str(out), "--quick", "--workers", "1",
                                  "--no-progress"])
    assert result.exit_code == 0 and "inverse: PASS" in result.output, result.output
    bad = runner.invoke(main, ["sims", "limit", "--out", str(tmp_path), "--quick", "--n-w", "1,x"])
    assert bad.exit_code == 2 and bad.output == "Error: --n-w expects floats, got '1,x'\n"
    unknown = runner.invoke(main, ["sims", "nosuch", "--out", str(tmp_path)])
    assert unknown.exit_code == 2
    helped = runner.invoke(main, ["sims", "--help"])
    assert helped.exit_code == 0 and "full sizes" in helped.output


def test_geometry_figure_names_its_markers_in_the_legend(quick_run):
    """Each panel's legend shows the o (to G_W, solid) and x (to G_CE, dashed) markers of its curves."""
    from sims.geometry_study import plot_geometry

    data = json.loads((quick_run[0] / "geometry.json").read_text())
    figure = plot_geometry(data["rows"], data["settings"])
    panels = [axis for axis in figure.axes if axis.get_legend() is not None]
    assert panels
    for axis in panels:
        entries = dict(zip([t.get_text() for t in axis.get_legend().get_texts()], axis.get_legend().get_lines()))
        solid, dashed = entries["o: to $G_W$ (prototypes)"], entries["x: to $G_{CE}$ (CE limit)"]
        assert (solid.get_marker(), solid.get_linestyle()) == ("o", "-")
        assert (dashed.get_marker(), dashed.get_linestyle()) == ("x", "--")
