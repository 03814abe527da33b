"""Sweep runner (parallel, resumable) and atomic writers of sims."""

from __future__ import annotations

import csv
import json
import os

import matplotlib
import pytest

from sims.io import save_figure_atomic, write_csv_atomic, write_json_atomic
from sims.runner import grid, point_key, run_sweep
from sims.study import Option, resolve_settings


def square_with_marker(point):
    """Count computations: every call appends a line to the marker file named in the point."""
    with open(point["marker"], "a", encoding="utf-8") as handle:
        handle.write(f"{point['x']}\n")
    return {"square": point["x"] ** 2}


def cube(point):
    return {"cube": point["x"] ** 3, "pid": os.getpid()}


def test_resumed_sweep_recomputes_nothing(tmp_path):
    marker = str(tmp_path / "marker.txt")
    points = grid(x=[1, 2, 3, 4], marker=[marker])
    first = run_sweep("demo", tmp_path, points, square_with_marker, workers=1, progress=False)
    assert first.computed == 4 and first.cached == 0
    assert [row["square"] for row in first.rows()] == [1, 4, 9, 16]
    again = run_sweep("demo", tmp_path, points, square_with_marker, workers=1, progress=False)
    assert again.computed == 0 and again.cached == 4
    assert again.rows() == first.rows()
    with open(marker) as handle:
        assert len(handle.read().split()) == 4  # nothing recomputed
    # a new point is the only one computed; a truncated file is recomputed
    extended = points + [{"x": 5, "marker": marker}]
    store = tmp_path / "demo.points"
    with open(store / f"{point_key(points[0])}.json", "w") as handle:
        handle.write('{"point": ')
    third = run_sweep("demo", tmp_path, extended, square_with_marker, workers=1, progress=False)
    assert third.computed == 2 and third.cached == 3
    assert [row["square"] for row in third.rows()] == [1, 4, 9, 16, 25]
    assert not [p for p in os.listdir(store) if p.startswith(".tmp")]


def test_parallel_sweep_matches_and_resumes(tmp_path, capsys):
    points = grid(x=[0, 1, 2, 3, 4, 5])
    outcome = run_sweep("par", tmp_path, points, cube, workers=2, progress=True)
    assert [row["cube"] for row in outcome.rows()] == [x**3 for x in range(6)]
    err = capsys.readouterr().err.splitlines()  # progress on stderr: the start and the end at least
    assert err[0].startswith("par:   0% 0/6 [") and err[-1].startswith("par: 100% 6/6 ["), err
    assert run_sweep("par", tmp_path, points, cube, workers=2, progress=False).computed == 0
    more = grid(x=[0, 1, 2, 3, 4, 5, 6])
    assert run_sweep("par", tmp_path, more, cube, workers=1, progress=True).computed == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("par (6 cached):  86% 6/7 [") and err[-1].startswith("par (6 cached): 100% 7/7 ["), err


def huge(point):
    if point["x"] == "numpy":
        raise MemoryError("Unable to allocate 74.5 GiB for an array")
    if point["x"] == "torch":
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8e10 bytes")
    raise RuntimeError("a bug, not memory")


@pytest.mark.parametrize("workers", [1, 2])
def test_out_of_memory_is_a_value_error_naming_the_point(tmp_path, workers):
    for kind in ("numpy", "torch"):
        points = [{"x": kind}, {"x": kind, "y": 1}]
        with pytest.raises(ValueError, match=rf'sweep point .*"x": "{kind}".* not enough memory .*choose smaller ones'):
            run_sweep("oom", tmp_path, points, huge, workers=workers, progress=False)
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not disguised
        run_sweep("oom", tmp_path, [{"x": "other"}], huge, workers=1, progress=False)


def test_point_key_is_order_independent():
    assert point_key({"a": 1, "b": 2.5}) == point_key({"b": 2.5, "a": 1})
    assert point_key({"a": 1}) != point_key({"a": 2})


def test_bad_arguments_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        run_sweep("x", tmp_path, [{"x": 1}], cube, workers=0)
    with pytest.raises(TypeError, match="points"):
        run_sweep("x", tmp_path, [{"x": object()}], cube, workers=1)
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ValueError, match="out_dir .* cannot create"):
        run_sweep("x", tmp_path / "afile", [{"x": 1}], cube, workers=1)
    with pytest.raises(ValueError, match="no option bogus"):
        resolve_settings("demo", [Option("k", "int", 2, 3, "classes")], True, {"bogus": 1})
    with pytest.raises(ValueError, match="option k expects int"):
        resolve_settings("demo", [Option("k", "int", 2, 3, "classes")], True, {"k": "two"})


@pytest.mark.parametrize("name, options, match", [
    ("limit", {"n_w": ""}, r"option n_w must hold at least 2 values >= fit_min = 100 .*got \[\]"),
    ("limit", {"n_w": "0"}, "option n_w must hold at least 2 values >= fit_min = 100"),
    ("limit", {"n_w": "1,2,100"}, r"option n_w must hold at least 2 values >= fit_min = 100 .*got \[1.0, 2.0, 100.0\]"),
    ("limit", {"n_w": "10,20", "fit_min": 20}, "option n_w must hold at least 2 values >= fit_min = 20"),
    ("temperature", {"taus": ""}, "option taus must hold at least 1 distinct value"),
    ("temperature", {"n_w": ""}, "option n_w must hold at least 2 distinct values"),
    ("temperature", {"n_w": "100,100"}, "option n_w must hold at least 2 distinct values"),
    ("geometry", {"ratios": ""}, "option ratios must hold at least 1 distinct value"),
    ("geometry", {"n_w": "", "heatmap_n_w": ""}, "option n_w must hold at least 1 distinct value"),
    ("inverse", {"restarts": 0}, "option restarts must be an integer >= 1, got 0"),
    ("geometry", {"geometries": "etf,bogus"}, "option geometries must be one of .* got 'bogus'"),
    ("geometry", {"relu_geometries": "of,nope"}, "option relu_geometries must be one of .* got 'nope'"),
    ("geometry", {"gram": "missing.npy"}, "option gram must be one of .* got 'missing.npy'"),
    ("limit", {"geometry": "bogus"}, "option geometry must be one of .* got 'bogus'"),
    ("temperature", {"geometry": "bogus"}, "option geometry must be one of .* got 'bogus'"),
])
def test_empty_grids_are_refused_naming_the_option(tmp_path, name, options, match):
    from sims.registry import run_study

    with pytest.raises(ValueError, match=match):  # before any point is computed
        run_study(name, tmp_path, quick=True, workers=1, progress=False, **options)
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_changed_prototype_file_is_not_read_from_the_cache(tmp_path):
    import numpy as np

    from ncgeo.geometry import etf_gram
    from sims.registry import run_study

    gram = tmp_path / "gram.npy"
    options = dict(quick=True, workers=1, progress=False, k=3, n=1, ratio=1.0, n_w="10,20", fit_min=10,
                   anchors=False, geometry=str(gram))
    np.save(gram, etf_gram(3))
    first = run_study("limit", tmp_path / "out", **options)
    assert run_study("limit", tmp_path / "out", **options).summary["sweep"]["computed"] == 0
    np.save(gram, np.eye(3))  # same path, other prototypes
    second = run_study("limit", tmp_path / "out", **options)
    assert second.summary["sweep"]["computed"] == 3  # the CE limit, n_w = 10 and 20
    assert first.rows[-1]["delta_prototypes"] != pytest.approx(second.rows[-1]["delta_prototypes"])


def test_atomic_writers(tmp_path):
    rows = [{"a": 1, "b": 0.1}, {"a": 2, "c": float("nan")}]
    path = write_csv_atomic(tmp_path / "t.csv", rows)
    with open(path) as handle:
        table = list(csv.DictReader(handle))
    assert [r["a"] for r in table] == ["1", "2"] and table[0]["b"] == "0.1" and table[1]["b"] == ""
    write_json_atomic(tmp_path / "t.json", {"x": float("nan"), "y": [1, 2]}, strict=True)
    with open(tmp_path / "t.json") as handle:
        assert json.load(handle) == {"x": None, "y": [1, 2]}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    paths = save_figure_atomic(figure, tmp_path / "fig")
    plt.close(figure)
    assert [os.path.basename(p) for p in paths] == ["fig.png", "fig.pdf"]
    with open(paths[0], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_failed_write_leaves_old_file(tmp_path):
    target = tmp_path / "keep.json"
    write_json_atomic(target, {"old": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    with open(target) as handle:
        assert json.load(handle) == {"old": 1}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_option_ranges_are_checked_and_worded():
    k = Option("k", "int", 2, 3, "classes", low=2)
    assert k.parse("5") == 5 and k.range_text == ">= 2"
    with pytest.raises(ValueError, match=r"^option k must be an integer >= 2, got 1$"):
        k.parse(1)
    tau = Option("tau", "float", 0.1, 0.1, "temperature", low=0, low_open=True)
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match=r"option tau must be a finite number > 0, got"):
            tau.parse(bad)
    grid = Option("n_w", "floats", [0], [0], "grid", low=0)
    assert grid.parse("0,1e6") == [0.0, 1e6]
    with pytest.raises(ValueError, match=r"every value of option n_w must be a finite number >= 0, got -5.0"):
        grid.parse("1,-5")
    strength = Option("s", "float", 0.1, 0.1, "strength", low=0, high=1, high_open=True)
    assert strength.range_text == "in [0, 1)" and strength.parse(0) == 0.0
    with pytest.raises(ValueError, match=r"in \[0, 1\), got 1.0"):
        strength.parse(1)
    assert Option("x", "float", 1.0, 1.0, "unbounded").parse("-3") == -3.0  # no range: any finite number
    with pytest.raises(ValueError, match="finite"):
        Option("x", "float", 1.0, 1.0, "unbounded").parse("nan")


def test_every_numeric_study_option_has_a_range_its_defaults_satisfy():
    from sims.registry import STUDIES

    for study in STUDIES.values():
        for spec in study.options:
            if spec.kind in ("int", "float", "ints", "floats"):
                assert spec.range_text, f"{study.name}: option {spec.name} has no range"
                for default in (spec.quick, spec.full):
                    assert spec.parse(default) == default, (study.name, spec.name)


@pytest.mark.parametrize("name, options, match", [
    ("limit", {"k": 1}, r"option k must be an integer in \[2, 10000\], got 1"),
    ("limit", {"seed": -1}, "option seed must be an integer >= 0"),
    ("limit", {"fit_min": 0}, "option fit_min must be a finite number > 0"),
    ("limit", {"n_w": "1,-5"}, "every value of option n_w must be a finite number >= 0, got -5.0"),
    ("geometry", {"tolerance": -1}, "option tolerance must be a finite number > 0"),
    ("geometry", {"heatmap_n_w": "-1"}, "every value of option heatmap_n_w must be"),
    ("geometry", {"ratios": "1,0.5"}, "every value of option ratios must be a finite number >= 1, got 0.5"),
    ("batching", {"k": 1}, r"option k must be an integer in \[2, 10000\]"),
    ("batching", {"epochs": 0}, "option epochs must be an integer >= 1"),
    ("batching", {"time_limit": 0}, "option time_limit must be a finite number > 0"),
    ("batching", {"seeds": 0}, r"option seeds must be an integer in \[1, 10000\]"),
    ("temperature", {"taus": "0.1,0"}, "every value of option taus must be a finite number > 0, got 0.0"),
    ("temperature", {"n_w": "0"}, "every value of option n_w must be a finite number > 0"),
    ("temperature", {"converged_tau": -1}, "option converged_tau must be a finite number > 0"),
    ("inverse", {"n_w": 0}, "option n_w must be a finite number > 0"),
    ("inverse", {"strength": 1}, r"option strength must be a finite number in \[0, 1\)"),
    ("inverse", {"cuts": -1}, "option cuts must be an integer >= 0"),
    ("inverse", {"tau": "nan"}, "option tau must be a finite number > 0, got nan"),
    ("limit", {"k": 10_000_000}, r"option k must be an integer in \[2, 10000\], got 10000000"),
    ("batching", {"seeds": 10**7}, r"option seeds must be an integer in \[1, 10000\]"),
    ("geometry", {"geometries": "", "relu_geometries": ""}, "both empty: nothing to study"),
])
def test_out_of_range_options_are_refused_before_any_point(tmp_path, name, options, match):
    from sims.registry import run_study

    with pytest.raises(ValueError, match=match):
        run_study(name, tmp_path, quick=True, workers=1, progress=False, **options)
    assert not os.listdir(tmp_path)


def test_cli_out_of_range_option_is_one_line_with_status_2(tmp_path):
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["sims", "limit", "--out", str(tmp_path), "--quick", "--k", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == "Error: Invalid value for '--k': must be an integer in [2, 10000], got '1'"
    helped = CliRunner().invoke(main, ["sims", "limit", "--help"])
    text = " ".join(helped.output.split()).replace("comma- separated", "comma-separated")  # help wraps at '-'
    assert "number of classes k (in [2, 10000]) [quick: 4; full: 10]" in text
    assert "grid of prototype multiplicities n_w (comma-separated, each >= 0)" in text


def test_cache_entries_that_are_not_objects_are_recomputed(tmp_path):
    points = [{"x": 2}]
    run_sweep("sq", tmp_path, points, cube, workers=1, progress=False)
    (entry,) = (tmp_path / "sq.points").iterdir()
    for text in ("null", "[1, 2]", '"text"'):
        entry.write_text(text)
        outcome = run_sweep("sq", tmp_path, points, cube, workers=1, progress=False)
        assert outcome.computed == 1 and outcome.results[0]["result"] == cube({"x": 2})


def test_a_study_killed_while_writing_leaves_no_old_verdict(tmp_path):
    from sims.study import Verdict, finish_study

    (tmp_path / "demo.json").write_text('{"verdict": "an earlier run"}')

    def broken_plot(rows, settings):
        raise KeyboardInterrupt  # stands for a signal arriving after the table was written

    with pytest.raises(KeyboardInterrupt):
        finish_study("demo", tmp_path, [{"a": 1}], Verdict(True, "ok"), {}, 0.0, broken_plot)
    assert (tmp_path / "demo.csv").is_file() and not (tmp_path / "demo.json").exists()


def test_stale_temporaries_in_the_points_cache_are_swept(tmp_path):
    import time

    run_sweep("sq", tmp_path, [{"x": 1}], cube, workers=1, progress=False)
    stale, live = tmp_path / "sq.points" / ".tmp-abc-x.json", tmp_path / "sq.points" / ".tmp-def-y.json"
    stale.write_text("{")
    live.write_text("{")
    past = time.time() - 3600
    os.utime(stale, (past, past))
    run_sweep("sq", tmp_path, [{"x": 1}], cube, workers=1, progress=False)
    assert not stale.exists() and live.exists()  # a young one may belong to a concurrent sweep


def test_an_empty_output_folder_is_refused(tmp_path, monkeypatch):
    """`--out ""` wrote the study's files into the current folder."""
    from click.testing import CliRunner

    from cli import main
    from sims.registry import run_all, run_study

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"option out_dir must not be empty"):
        run_study("limit", "", quick=True)
    with pytest.raises(TypeError, match="names must be a list of study names, got the string 'limit'"):
        run_all(tmp_path, quick=True, names="limit")
    result = CliRunner().invoke(main, ["sims", "limit", "--out", "", "--quick"])
    assert result.exit_code == 2 and result.output.strip() == "Error: --out must not be empty (a folder for the study's files)"
    assert os.listdir(tmp_path) == []


def test_list_and_flag_options_do_not_round_or_guess():
    ints, flag = Option("s", "ints", [1], [1], "seeds"), Option("a", "bool", True, True, "anchors")
    assert ints.parse("1,2") == [1, 2] and ints.parse([3.0]) == [3]
    with pytest.raises(ValueError, match="option s expects ints"):
        ints.parse([1.5, 2.7])  # was [1, 2]
    assert flag.parse("no") is False and flag.parse(True) is True
    with pytest.raises(ValueError, match="option a expects bool, got 5"):
        flag.parse(5)  # was True
