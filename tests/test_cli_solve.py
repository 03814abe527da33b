"""`ncgeo solve`: report, --json/--save/--plot files, and one-line errors for bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from ncgeo.ufm import load_npz


def _run(*args):
    return CliRunner().invoke(main, ["solve", *args], standalone_mode=True)


def test_default_solve_reports_loss_closed_form_and_geometry(tmp_path):
    json_path, npz_path, png_path = tmp_path / "r.json", tmp_path / "r.npz", tmp_path / "r.png"
    result = _run("--classes", "4", "--protos", "100", "--samples", "3", "--json", str(json_path),
                  "--save", str(npz_path), "--plot", str(png_path))
    assert result.exit_code == 0, result.output
    for word in ("loss", "closed form", "iterations", "grad norm", "NC1", "Delta to ETF", "to OF",
                 "to prototypes", "alignment"):
        assert word in result.output
    data = json.loads(json_path.read_text())
    for key in ("loss", "class_sizes", "iterations", "grad_norm", "seconds"):
        assert key in data
    for key in ("nc1", "delta_prototypes", "delta_etf", "delta_of", "gram_means"):
        assert key in data["geometry"]
    assert data["class_sizes"] == [3, 3, 3, 3] and data["grad_norm"] <= 1e-9
    assert np.array(data["geometry"]["gram_means"]).shape == (4, 4)
    assert data["loss"] == pytest.approx(data["closed_form"]["value"], rel=1e-10)
    saved = load_npz(npz_path)
    assert saved.H.shape == (12, 4) and saved.W.shape == (4, 4)
    assert saved.settings["n_w"] == 100 and saved.settings["geometry"] == "etf"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]


def test_json_to_stdout_relu_bind():
    result = _run("--classes", "3", "--samples", "3", "--relu", "--geometry", "of", "--batching", "bind",
                  "--batch-size", "2", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["nonnegative"] and data["settings"]["batching"] == "fixed"
    assert data["settings"]["scheme"] == "bind"
    assert data["settings"]["batch_size"] == 2 + 3  # the largest batch: 2 samples and one bound per class
    assert {"realisable", "geometry", "attempts", "tolerance"} <= set(data["certificate"])  # every to_dict key
    assert data["geometry"]["delta_of"] < 1e-6


def test_report_names_the_batching_scheme():
    """The report said "batching fixed (batch size None)" for partition and bind."""
    result = _run("--classes", "3", "--samples", "4", "--batching", "partition", "--batch-size", "4", "--certify",
                  "none")
    assert result.exit_code == 0, result.output
    assert "batching partition (largest batch 4)" in result.output


def test_prototype_gram_file(tmp_path):
    gram = np.array([[1.0, 0.2, -0.1], [0.2, 1.0, 0.0], [-0.1, 0.0, 1.0]])
    path = tmp_path / "g.npy"
    np.save(path, gram)
    result = _run("--classes", "3", "--protos", "10", "--geometry", str(path), "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["geometry"] == f"file {path}"


@pytest.fixture
def bad_files(tmp_path):
    not_psd = tmp_path / "notpsd.npy"
    np.save(not_psd, np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]))
    malformed = tmp_path / "bad.csv"
    malformed.write_text("1, 0, x\n0, 1, 0\n")
    strings, complex_gram = tmp_path / "strings.npy", tmp_path / "complex.npy"
    np.save(strings, np.array([["a", "b"], ["c", "d"]]))
    np.save(complex_gram, np.eye(3) + 0j)
    gram3 = tmp_path / "gram3.npy"
    np.save(gram3, np.eye(3))
    return {"notpsd": str(not_psd), "malformed": str(malformed), "missing": str(tmp_path / "missing.npy"),
            "strings": str(strings), "complex": str(complex_gram), "folder": str(tmp_path), "gram3": str(gram3)}


@pytest.mark.parametrize("args, option, expected", [
    (["--classes", "1"], "--classes", "must be an integer in [2, 1000000], got '1'"),
    (["--classes", "3", "--protos", "-1"], "--protos", "must be a finite number >= 0"),
    (["--classes", "3", "--tau", "0"], "--tau", "must be a finite number > 0, got '0'"),
    (["--classes", "4", "--dim", "2"], "--dim", "must be >= 3 for a simplex ETF of k=4 points"),
    (["--classes", "4", "--geometry", "of", "--dim", "3"], "--dim", "must be >= 4 for an orthogonal frame"),
    (["--classes", "4", "--geometry", "@gram3"], "--geometry", "holds 3 prototypes, expected k = 4"),
    (["--classes", "3", "--geometry", "@gram3", "--dim", "2"], "--dim", "d must be >= 3"),
    (["--classes", "3", "--geometry", "@notpsd"], "--geometry", "positive semidefinite"),
    (["--classes", "3", "--geometry", "@malformed"], "--geometry", "numeric matrix"),
    (["--classes", "3", "--geometry", "@missing"], "--geometry", "does not exist"),
    (["--classes", "3", "--geometry", "@strings"], "--geometry", "numeric"),
    (["--classes", "3", "--geometry", "@complex"], "--geometry", "real"),
    (["--classes", "3", "--geometry", "@folder"], "--geometry", "is a folder"),
    (["--classes", "3", "--batching", "partition", "--batch-size", "1"], "--batch-size", "must be an integer >= 2"),
    (["--classes", "3", "--batching", "partition"], "--batch-size", "required"),
    (["--classes", "3", "--imbalance", "step", "--ratio", "0"], "--ratio", "must be a finite number >= 1"),
])
def test_bad_input_is_one_line_naming_the_option(args, option, expected, bad_files):
    args = [bad_files[a[1:]] if a.startswith("@") else a for a in args]
    result = _run(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:") and option in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("option", ["--json", "--save", "--plot"])
def test_unwritable_output_is_one_line(option, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    suffix = {"--plot": ".png", "--save": ".npz"}.get(option, "")  # --plot needs a figure format, --save .npz
    targets = [str(blocker / "out") + suffix]  # folder is a file: refused before the solve
    if os.path.isdir("/proc"):
        targets.append("/proc/ncgeo-out" + suffix)  # creating a file there fails (even as root)
    for target in targets:
        result = _run("--classes", "3", "--samples", "2", "--certify", "none", option, target)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and option in lines[0] and "cannot write" in lines[0], result.output
        assert "Traceback" not in result.output and not isinstance(result.exception, OSError)


def test_huge_dim_is_refused_before_any_allocation():
    # 30 samples in 10^9 dimensions need terabytes: one line naming dim, not an OOM kill
    result = _run("--classes", "3", "--dim", "1000000000")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: dim:") and "GB" in result.output and len(result.output.splitlines()) == 1


@pytest.mark.parametrize("args, start", [
    # a batch of 200,000: terabytes of similarities (a full batch takes the collapsed path instead)
    (["--samples", "100000", "--batching", "partition", "--batch-size", "200000"], "Error: batch:"),
    (["--seed", str(2**64 - 1)], "Error: Invalid value for '--seed': must be <="),
])
def test_impossible_batch_or_seed_is_one_line(args, start):
    result = _run("--classes", "3", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(start) and len(result.output.splitlines()) == 1, result.output


@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".PNG", b"\x89PNG")])
def test_plot_format_follows_the_suffix(tmp_path, suffix, magic):
    path = tmp_path / f"gram{suffix}"
    result = _run("--classes", "3", "--samples", "2", "--certify", "none", "--plot", str(path))
    assert result.exit_code == 0, result.output
    assert path.read_bytes().startswith(magic)


def test_plot_with_an_unknown_suffix_is_refused_before_the_solve(tmp_path):
    result = _run("--classes", "3", "--samples", "2", "--plot", str(tmp_path / "gram.jpeg"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--plot" in lines[0] and "must end in .png, .pdf or .svg" in lines[0], lines
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, expected", [
    (["--classes", "100000000000000000000"], "'--classes': must be an integer in [2, 1000000], got '100000000000000000000'"),
    (["--classes", "3", "--restarts", "100000"], "'--restarts': must be an integer in [1, 10000], got '100000'"),
    (["--classes", "3", "--device", "meta"], "device 'meta' holds no values"),
])
def test_sizes_and_devices_that_cannot_work_are_one_line(args, expected):
    """These ended in an OverflowError, a MemoryError or a meta-tensor RuntimeError traceback."""
    result = CliRunner().invoke(main, ["solve", *args])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


def test_out_of_memory_anywhere_in_a_command_is_one_line(monkeypatch):
    import ncgeo.ufm

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 728. TiB for an array")

    monkeypatch.setattr(ncgeo.ufm, "solve_ufm", exhausted)
    result = CliRunner().invoke(main, ["solve", "--classes", "3"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not enough memory for these sizes (MemoryError: Unable to allocate 728. TiB" in result.output


@pytest.mark.parametrize("option", ["--json", "--save"])
def test_an_empty_or_folder_output_name_is_refused_before_the_solve(option, tmp_path, monkeypatch):
    import ncgeo.ufm

    monkeypatch.setattr(ncgeo.ufm, "solve_ufm", lambda *a, **k: pytest.fail("solved before checking the output"))
    for name, expected in (("", "is not a file name"), (str(tmp_path), "is a directory")):
        result = CliRunner().invoke(main, ["solve", "--classes", "3", option, name])
        assert result.exit_code == 2 and expected in result.output and option in result.output


@pytest.mark.parametrize("args, expected", [
    (["--classes", "4", "--batching", "partition", "--batch-size", "4", "--certify", "reduced"],
     "method 'reduced' needs the full batch"),
    (["--classes", "4", "--protos", "10", "--geometry", "random", "--certify", "orbit"],
     "method 'orbit' needs prototypes whose Gram is invariant"),
    (["--classes", "4", "--batching", "shuffle", "--batch-size", "4", "--certify", "dual"],
     "method 'dual' does not apply to --batching shuffle"),
])
def test_a_certificate_that_cannot_apply_is_refused_before_the_solve(args, expected, monkeypatch):
    """The check is ncgeo.certify.check_method (certify() uses it too), not a copy in the CLI."""
    import ncgeo.ufm

    monkeypatch.setattr(ncgeo.ufm, "solve_ufm", lambda *a, **k: pytest.fail("solved before checking --certify"))
    result = CliRunner().invoke(main, ["solve", *args])
    assert result.exit_code == 2 and expected in result.output and "'--certify'" in result.output, result.output


@pytest.mark.parametrize("args, pinned", [
    (["--classes", "4", "--protos", "100", "--samples", "3"], True),
    # one sample per class, no prototypes, UFM+: no anchor has a positive, the loss is 0 at every point
    (["--classes", "3", "--samples", "1", "--relu"], False)])
def test_solve_prints_the_geometry_verdict_beside_the_loss_verdict(tmp_path, args, pinned):
    json_path = tmp_path / "r.json"
    result = _run(*args, "--json", str(json_path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    verdict = next(i for i, line in enumerate(lines) if line.startswith("certified global optimum"))
    geometry = json.loads(json_path.read_text())["certificate"]["geometry"]
    assert lines[verdict + 1] == geometry["line"]
    assert geometry["pinned"] is pinned
    expected = "geometry certified (unique optimal Gram)" if pinned else "loss certified, geometry not pinned"
    assert geometry["line"].startswith(expected)
    if pinned:
        assert geometry["margin"] > 0 and geometry["leave_bound"] >= 0
