"""The command line's rough edges (issue 15): bare groups print their help, numbers and sims
options are refused in words naming the flag, --batch-size and --save say what they accept,
and a prototype file that is neither a Gram nor vectors says what each reading needs."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("group, commands", [
    ([], ("solve", "certify", "deep", "sims")),
    (["deep"], ("train", "report", "predict")),
    (["sims"], ("all", "limit", "geometry", "batching", "temperature", "inverse")),
])
def test_a_bare_group_prints_its_help_and_exits_0(group, commands):
    result = CliRunner().invoke(main, group)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ") and "Error" not in result.output
    assert "\nCommands:\n" in result.stdout  # the normal layout, one command a line
    listed = [line.split()[0] for line in result.stdout.split("\nCommands:\n")[1].splitlines() if line.strip()]
    assert set(commands) <= set(listed), listed


_SOLVE = ["solve", "--classes", "3"]


@pytest.mark.parametrize("args, expected", [
    ([*_SOLVE, "--tau", "abc"], "Invalid value for '--tau': must be a finite number > 0, got 'abc'"),
    ([*_SOLVE, "--tau", "-1"], "Invalid value for '--tau': must be a finite number > 0, got '-1'"),
    ([*_SOLVE, "--tau", "nan"], "Invalid value for '--tau': must be a finite number > 0, got 'nan'"),
    ([*_SOLVE, "--protos", "inf"], "Invalid value for '--protos': must be a finite number >= 0, got 'inf'"),
    ([*_SOLVE, "--samples", "2.5"], "Invalid value for '--samples': must be an integer >= 1, got '2.5'"),
    ([*_SOLVE, "--restarts", "0"], "Invalid value for '--restarts': must be an integer in [1, 10000], got '0'"),
    (["certify", "x.npz", "--rtol", "1"], "Invalid value for '--rtol': must be a finite number in (0, 1), got '1'"),
    (["certify", "x.npz", "--atol", "inf"], "Invalid value for '--atol': must be a finite number in [0, 1], got 'inf'"),
])
def test_a_bad_number_says_what_is_needed(args, expected):
    assert _one_error_line(CliRunner().invoke(main, args)) == f"Error: {expected}"


@pytest.mark.parametrize("args, expected", [
    (["--tau", "-1"], "Invalid value for '--tau': must be a finite number > 0, got '-1'"),
    (["--k", "x"], "Invalid value for '--k': must be an integer in [2, 10000], got 'x'"),
    (["--n-w", "1,-5"], "every value of --n-w must be a finite number >= 0, got -5.0"),
    (["--n-w", "1,x"], "--n-w expects floats, got '1,x'"),
    (["--geometry", "bogus"], "--geometry must be one of"),
    (["--n-w", "1,2,100"], "--n-w must hold at least 2 values >= fit_min = 100"),
])
def test_sims_errors_name_the_flags(args, expected, tmp_path):
    result = CliRunner().invoke(main, ["sims", "limit", "--out", str(tmp_path), "--quick", "--no-progress", *args])
    line = _one_error_line(result)
    assert expected in line and "option " not in line and "out_dir" not in line, line


def test_sims_empty_geometry_lists_and_bad_out_folders_name_the_flags(tmp_path):
    both = CliRunner().invoke(main, ["sims", "geometry", "--out", str(tmp_path), "--quick", "--geometries", "",
                                     "--relu-geometries", ""])
    assert _one_error_line(both) == "Error: --geometries and --relu-geometries are both empty: nothing to study"
    empty = CliRunner().invoke(main, ["sims", "all", "--out", " ", "--quick"])
    assert _one_error_line(empty) == "Error: --out must not be empty (a folder for the study's files)"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    under_a_file = _one_error_line(CliRunner().invoke(main, ["sims", "limit", "--out", str(blocker / "o"), "--quick"]))
    assert under_a_file.startswith(f"Error: --out '{blocker / 'o'}': cannot create"), under_a_file


@pytest.mark.parametrize("batching", ["partition", "shuffle", "bind"])
def test_collapsed_method_needs_the_full_batch(batching):
    line = _one_error_line(CliRunner().invoke(main, ["solve", "--classes", "3", "--method", "collapsed",
                                                     "--batching", batching, "--batch-size", "4"]))
    assert line == f"Error: Invalid value for '--method': collapsed needs --batching full (got {batching})"


def test_lbfgs_is_refused_with_reshuffled_batches():
    line = _one_error_line(CliRunner().invoke(main, ["solve", "--classes", "3", "--method", "lbfgs",
                                                     "--batching", "shuffle", "--batch-size", "4"]))
    assert line.startswith("Error: Invalid value for '--method': lbfgs needs fixed batches")


@pytest.mark.parametrize("args, expected", [
    (["--method", "collapsed", "--restarts", "3"], "Error: Invalid value for '--restarts': does not apply to method "
                                                   "'collapsed', which would ignore it"),
    (["--method", "collapsed", "--dtype", "float32"], "Error: Invalid value for '--dtype': does not apply"),
    (["--method", "collapsed", "--init", "random"], "Error: Invalid value for '--init': does not apply"),
    (["--learning-rate", "0.5"], "Error: Invalid value for '--learning-rate': applies only to --batching shuffle"),
])
def test_an_option_the_method_would_ignore_is_refused(args, expected):
    """Options that the chosen solver never reads used to be accepted and silently ignored."""
    line = _one_error_line(CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "4", *args]))
    assert line.startswith(expected), line


def test_batch_size_without_batching_is_refused(monkeypatch):
    import ncgeo.ufm

    monkeypatch.setattr(ncgeo.ufm, "solve_ufm", lambda *a, **k: pytest.fail("solved a refused set-up"))
    line = _one_error_line(CliRunner().invoke(main, ["solve", "--classes", "3", "--batch-size", "4"]))
    assert "'--batch-size': applies only to --batching partition, shuffle or bind" in line


@pytest.mark.parametrize("batching, batch_size, one_batch", [
    ("partition", 6, True), ("shuffle", 9, True), ("partition", 5, False),
    ("bind", 3, True),  # 3 bound samples + the other 3 in one batch: all 6
    ("bind", 2, False),
])
def test_a_batch_of_all_samples_is_announced(batching, batch_size, one_batch):
    result = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "2", "--batching", batching,
                                       "--batch-size", str(batch_size), "--certify", "none", "--max-iterations", "3"])
    assert result.exit_code == 0, result.output
    note = (f"note: --batch-size {batch_size} with N = 6 samples gives one batch of all samples: "
            "the full-batch problem")
    assert (note in result.stderr) == one_batch, result.stderr
    quiet = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "2", "--batching", batching,
                                      "--batch-size", str(batch_size), "--certify", "none", "--max-iterations", "3",
                                      "--json", "-"])
    assert quiet.exit_code == 0 and "note:" not in quiet.output.split("{", 1)[0]


def test_save_must_name_an_npz_file(tmp_path, monkeypatch):
    import ncgeo.ufm

    monkeypatch.setattr(ncgeo.ufm, "solve_ufm", lambda *a, **k: pytest.fail("solved before checking --save"))
    line = _one_error_line(CliRunner().invoke(main, ["solve", "--classes", "3", "--save", str(tmp_path / "out.txt")]))
    assert "'--save': must name an .npz file" in line and "out.txt" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("matrix, expected", [
    (2 * np.eye(3), ["neither a Gram nor vectors of unit prototypes",
                     "read as a k x k Gram, it must have a unit diagonal", "largest |G_cc - 1| is 1",
                     "a Gram needs a unit diagonal, symmetry and positive semidefiniteness",
                     "read as vectors (d x k, one prototype per column), column 0 has norm 2"]),
    (np.array([[1.0, 0.5, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]]),
     ["neither a Gram nor vectors", "it must be symmetric, largest |G - G^T| entry is 0.3", "column 1 has norm 1.11803"]),
    (np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]),
     ["neither a Gram nor vectors", "it must be positive semidefinite"]),
    (np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
     ["read as vectors (d x k, one prototype per column), column 0 has norm 2 (each needs unit norm); "
      "a Gram would be a square k x k matrix"]),
])
def test_a_prototype_file_that_is_neither_a_gram_nor_vectors_says_what_each_needs(matrix, expected, tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, matrix)
    line = _one_error_line(CliRunner().invoke(main, ["solve", "--classes", "3", "--geometry", str(path)]))
    assert "'--geometry'" in line
    for words in expected:
        assert words in line, line


def test_square_unit_vectors_that_are_not_a_gram_are_read_as_vectors(tmp_path):
    from ncgeo.geometry import etf_gram, load_prototypes, random_rotation

    V = random_rotation(3, seed=1)  # unit columns, not symmetric
    np.save(tmp_path / "v.npy", V)
    np.testing.assert_allclose(load_prototypes(tmp_path / "v.npy"), V, atol=1e-14)
    for gram in (np.eye(3), etf_gram(3)):  # the identity is both readings: the same frame either way
        np.save(tmp_path / "g.npy", gram)
        W = load_prototypes(tmp_path / "g.npy")
        np.testing.assert_allclose(W.T @ W, gram, atol=1e-12)
