"""Packaging: the distribution installs ncgeo, sims, deep and cli with the ``ncgeo`` script."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.mark.parametrize("name", ["ncgeo", "sims", "deep", "cli"])
def test_import(name):
    assert importlib.import_module(name) is not None


def test_imports_in_a_fresh_interpreter_and_library_does_not_import_sims_or_deep():
    # the arrows point one way: cli -> sims, deep -> ncgeo
    code = ("import sys, ncgeo; seen = sorted(m for m in ('sims', 'deep', 'cli') if m in sys.modules); "
            "import sims, deep, cli; print(seen)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_module_import_is_light():
    # heavy imports belong inside the command functions, so that `ncgeo --help` is fast
    code = "import sys, cli; print(sorted(m for m in ('torch', 'cvxpy', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_via_click_runner():
    from cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "ncgeo" in result.output


def test_version_via_click_runner():
    import ncgeo
    from cli import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert ncgeo.__version__ in result.output
    assert metadata.version("ncgeo") == ncgeo.__version__


def test_distribution_metadata():
    dist = metadata.distribution("ncgeo")
    scripts = [ep for ep in dist.entry_points if ep.group == "console_scripts" and ep.name == "ncgeo"]
    assert len(scripts) == 1 and scripts[0].value == "cli:main"
    requires = {req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for req in dist.requires or [] if "extra ==" not in req}
    assert requires == {"numpy", "scipy", "torch", "cvxpy", "matplotlib", "click", "tqdm"}
    assert not any("torchvision" in req for req in dist.requires or [])


def _console_script() -> Path:
    name = "ncgeo.exe" if os.name == "nt" else "ncgeo"
    path = Path(sys.executable).parent / name
    assert path.exists(), f"console script {path} is not installed (pip install -e . installs it)"
    return path


def test_help_via_installed_console_script():
    result = subprocess.run([str(_console_script()), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: ncgeo" in result.stdout


def test_console_script_reports_bad_usage_as_one_line():
    result = subprocess.run([str(_console_script()), "--no-such-option"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
