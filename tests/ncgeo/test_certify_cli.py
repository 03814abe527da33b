"""`ncgeo certify FILE.npz` and `ncgeo solve --certify/--require-certificate`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main


def _solve(tmp_path, *extra):
    path = tmp_path / "sol.npz"
    result = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "4", "--tau", "0.5",
                                       "--save", str(path), *extra])
    return result, path


def test_solve_prints_verdict_and_certify_file(tmp_path):
    result, path = _solve(tmp_path, "--protos", "5")
    assert result.exit_code == 0, result.output
    assert "certified global optimum: gap" in result.output
    for method in ("auto", "reduced", "dual", "full"):
        out = CliRunner().invoke(main, ["certify", str(path), "--method", method, "--require-certificate"])
        assert out.exit_code == 0, out.output
        assert out.output.startswith("certified global optimum")


def test_solve_json_has_certificate(tmp_path):
    out = CliRunner().invoke(main, ["solve", "--classes", "4", "--samples", "3", "--relu", "--geometry", "of",
                                    "--protos", "2", "--json", "-", "--certify", "reduced"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    cert = data["certificate"]
    assert cert["certified"] is True and cert["method"] == "reduced"
    assert {"lower_bound", "upper_bound", "gap", "reason"} <= set(cert)
    assert abs(cert["upper_bound"] - data["loss"]) <= 1e-9 * abs(data["loss"])


def test_certify_none_and_require(tmp_path):
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "3", "--certify", "none",
                                    "--json", "-"])
    assert out.exit_code == 0 and "certificate" not in json.loads(out.output)
    # --require-certificate without a certificate fails
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "3", "--certify", "none",
                                    "--require-certificate"])
    assert out.exit_code == 1


def test_uncertified_file_exit_status(tmp_path):
    rng = np.random.default_rng(0)
    H = rng.standard_normal((9, 3))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    path = tmp_path / "random.npz"
    np.savez(path, H=H, y=np.repeat(np.arange(3), 3), W=np.zeros((3, 0)),
             settings=np.array(json.dumps({"n_w": 0.0, "tau": 0.5})))
    out = CliRunner().invoke(main, ["certify", str(path)])
    assert out.exit_code == 0 and out.output.startswith("not certified")
    out = CliRunner().invoke(main, ["certify", str(path), "--require-certificate"])
    assert out.exit_code == 1
    out = CliRunner().invoke(main, ["certify", str(path), "--json", "-"])
    assert json.loads(out.output)["certified"] is False


def test_certify_bad_file(tmp_path):
    out = CliRunner().invoke(main, ["certify", str(tmp_path / "missing.npz")])
    assert out.exit_code == 2 and "does not exist" in out.output


def test_certify_unwritable_json_is_one_line(tmp_path):
    _, path = _solve(tmp_path)
    for target in [str(path) + "/x.json"] + (["/proc/ncgeo-review.json"] if os.path.isdir("/proc") else []):
        out = CliRunner().invoke(main, ["certify", str(path), "--json", target])
        assert out.exit_code == 2 and "cannot write" in out.output and "--json" in out.output, out.output


def test_minibatch_file_without_batches_is_refused(tmp_path):
    # certifying the full-batch objective instead of the saved mini-batch one would be wrong
    _, path = _solve(tmp_path)
    data = dict(np.load(path))
    settings = json.loads(str(data["settings"]))
    settings.update(batching="bind", batch_size=2)
    data["settings"] = np.array(json.dumps(settings))
    data.pop("batch_indices", None), data.pop("batch_offsets", None)
    bad = tmp_path / "bind.npz"
    np.savez(bad, **data)
    out = CliRunner().invoke(main, ["certify", str(bad)])
    assert out.exit_code == 2 and "holds no batches" in out.output, out.output


def test_uncertified_json_is_strict_json():
    # a reshuffled solve has no bound: -inf/inf must not become the non-JSON token -Infinity
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "2", "--batching", "shuffle",
                                    "--batch-size", "2", "--max-iterations", "2", "--json", "-"])
    assert out.exit_code == 0, out.output

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    cert = json.loads(out.stdout, parse_constant=refuse)["certificate"]
    assert cert["certified"] is False and cert["lower_bound"] is None and cert["gap"] is None


@pytest.mark.parametrize("args", [
    ["--batching", "bind", "--batch-size", "2", "--certify", "reduced"],
    ["--batching", "partition", "--batch-size", "2", "--certify", "orbit"],
    ["--protos", "2", "--geometry", "random", "--certify", "orbit"],
])
def test_inapplicable_certificate_is_refused_before_the_solve(args, monkeypatch):
    import ncgeo.ufm

    def no_solve(*a, **k):
        raise AssertionError("the solve ran before the option conflict was reported")

    monkeypatch.setattr(ncgeo.ufm, "solve_ufm", no_solve)
    out = CliRunner().invoke(main, ["solve", "--classes", "3", "--samples", "3", *args])
    assert out.exit_code == 2 and "--certify" in out.output and len(out.output.splitlines()) == 1, out.output


@pytest.mark.parametrize("rtol", ["0", "1", "2.5", "-1e-6"])
def test_certify_rtol_outside_the_open_unit_interval_is_refused(tmp_path, rtol):
    out = CliRunner().invoke(main, ["certify", str(tmp_path / "any.npz"), "--rtol", rtol])
    assert out.exit_code == 2 and "--rtol" in out.output and "Traceback" not in out.output


@pytest.mark.parametrize("command", ["certify", "solve"])
@pytest.mark.parametrize("atol", ["-1e-12", "inf", "abc"])
def test_atol_must_be_finite_and_nonnegative(tmp_path, command, atol):
    args = [str(tmp_path / "any.npz")] if command == "certify" else ["--classes", "3"]
    out = CliRunner().invoke(main, [command, *args, "--atol", atol])
    assert out.exit_code == 2 and "--atol" in out.output and "Traceback" not in out.output, out.output


def test_certificate_json_has_floor_excess_and_attempts(tmp_path):
    _, path = _solve(tmp_path, "--protos", "1000")
    out = CliRunner().invoke(main, ["certify", str(path), "--json", "-"])
    data = json.loads(out.output)
    assert data["certified"] is True
    # docs/theory.md section 5.1: the floor is sum over anchors of log P_a, 4 anchors per class of P = 3 + 1000
    assert data["floor"] == pytest.approx(12 * np.log(1003.0), rel=1e-12)
    assert data["excess"] == pytest.approx(data["upper_bound"] - data["floor"], rel=1e-9)
    assert data["relative_gap"] == pytest.approx(data["gap"] / data["excess"], rel=1e-9, abs=1e-15)
    assert data["tolerance"] == pytest.approx(1e-6 * data["excess"] + 1e-12 * 12, rel=1e-9)
    assert [a["method"] for a in data["attempts"]] == [data["method"]]
    # the reason prints the relative gap of the JSON (issue 15 item 6)
    assert f"relative gap {max(data['relative_gap'], 0.0):.1e}" in data["reason"]
    # --rtol and --atol decide: an accepted gap below the measured one refuses
    tight = CliRunner().invoke(main, ["certify", str(path), "--json", "-", "--rtol", "1e-15", "--atol", "0"])
    assert json.loads(tight.output)["certified"] is (data["gap"] <= 0)


def test_verbose_lists_every_attempt_and_a_certified_relaxation_rank_is_no_failure(tmp_path):
    _, path = _solve(tmp_path, "--protos", "5")
    out = CliRunner().invoke(main, ["certify", str(path), "--method", "full", "--verbose"])
    assert out.exit_code == 0 and out.output.startswith("certified global optimum"), out.output
    assert "  tried full: status optimal" in out.output
    assert "floor" in out.output and "excess" in out.output
    rank_line = next(line for line in out.output.splitlines() if line.startswith("rank"))
    rank, dim = (int(x) for x in rank_line.replace("(d = ", " ").replace(")", " ").split()[1:3])
    assert rank <= dim, rank_line  # the candidate's rank; the relaxation's is in the solution
