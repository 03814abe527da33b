"""Every `ncgeo ...` command of the README's ```bash blocks, and every example of the commands'
``--help`` (the ``Example(s):`` lines of cli.py and deep/cli.py), runs as written from the repository root.

The commands are parsed from whatever README.md holds (continuation lines joined, comments
dropped) and run in README order through ``python cli.py`` (the ``ncgeo`` console script's
module), with three rewrites, all explicit below:

* outputs go to a temporary folder: the value of ``--out``, ``--json``, ``--save``, ``--plot``
  and every other relative path that is not a tracked file of the repository (a file a previous
  command wrote, such as ``sol.npz``), so nothing is written into the checkout or read from it;
* ``ncgeo sims`` commands without ``--quick`` (full sizes: minutes) get ``--quick``;
* commands that cannot run here are skipped with the reason in :data:`SKIPS` (data
  downloads, long network training, multi-process launches, shell loop variables, run
  folders that only a skipped command would create).

Input files the commands name (``examples/gram.npy``, ...) must exist in the repository.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: (predicate on the argument list after ``ncgeo``, reason): a command matching one is skipped.
SKIPS = [
    (lambda a: any("$" in t for t in a), "uses a shell variable of a loop (the loop trains networks for minutes)"),
    (lambda a: a[:1] == ["deep"] and _value(a, "--dataset") in ("cifar10", "cifar100", "mnist"),
     "needs a dataset download (CIFAR-10/100 or MNIST are not on this machine)"),
    (lambda a: "--nproc" in a, "multi-process launch"),
    (lambda a: a[:2] == ["sims", "all"] and "--help" not in a,
     "the same `ncgeo sims all --quick` runs in tests/sims/test_studies.py (its quick_run fixture)"),
    (lambda a: a[:2] in (["deep", "train"], ["deep", "sweep"]) and "--help" not in a,
     "trains networks for minutes; tests/deep runs the same code on tiny data"),
    (lambda a: a[:2] in (["deep", "predict"], ["deep", "report"]) and "--help" not in a,
     "needs run folders written by `ncgeo deep train`, which is skipped here"),
    (lambda a: a[:1] == ["certify"] and _value(a, "--method") == "full",
     "the N x N program of the help's N = 40 example takes 85 s (timed in the README)"),
]

#: Options whose value is a path the command writes.
OUTPUT_OPTIONS = ("--out", "--json", "--save", "--plot")
_PATH_LIKE = re.compile(r"(/|\.(npz|npy|json|png|pdf|svg|csv|txt|toml|md)$)")


def _value(args: list[str], option: str) -> str | None:
    for i, token in enumerate(args):
        if token == option and i + 1 < len(args):
            return args[i + 1]
        if token.startswith(option + "="):
            return token.split("=", 1)[1]
    return None


def readme_commands(text: str) -> list[str]:
    """The lines of ```bash blocks whose command is ``ncgeo`` (after ``VAR=value`` prefixes)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]
            if words and words[0] == "ncgeo":
                commands.append(" ".join(shlex.quote(w) for w in words))
    return commands


def skip_reason(args: list[str]) -> str | None:
    for predicate, reason in SKIPS:
        if predicate(args):
            return reason
    return None


@functools.lru_cache(maxsize=None)
def tracked_files(root: Path) -> frozenset[str]:
    """The repository's tracked files (``git ls-files``); without git, the files under ``examples/`` and ``docs/``."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, timeout=60, check=True)
        return frozenset(listed.stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        return frozenset(str(p.relative_to(root)) for folder in ("examples", "docs") for p in (root / folder).rglob("*"))


def rewrite(args: list[str], tmp: Path, tracked: frozenset[str] | set[str] | None = None) -> list[str]:
    """Outputs into ``tmp`` and quick sizes for sims (module docstring): every relative path that is not a
    tracked file of the repository (an input such as ``examples/gram.npy`` is) goes to ``tmp``, so that a
    file a user's earlier README run left in the clone is neither read nor overwritten."""
    tracked = tracked_files(ROOT) if tracked is None else tracked
    out = []
    for i, token in enumerate(args):
        previous = args[i - 1] if i else ""
        writes = previous in OUTPUT_OPTIONS and token != "-"
        untracked_path = not token.startswith("-") and _PATH_LIKE.search(token) and token not in tracked
        out.append(str(tmp / token) if (writes or untracked_path) and not os.path.isabs(token) else token)
    if out[:1] == ["sims"] and "--quick" not in out and "--help" not in out:
        out.append("--quick")
    return out


def help_commands(sources) -> list[str]:
    """The ``ncgeo`` lines of the ``--help`` examples in ``sources`` (docstring lines indented by six
    spaces; ``a && b`` gives two commands)."""
    commands = []
    for source in sources:
        for line in re.findall(r"^      (ncgeo .+)$", source.read_text(encoding="utf-8"), flags=re.M):
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                commands.append(" ".join(shlex.quote(w) for w in words))
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8")) + help_commands([ROOT / "cli.py",
                                                                                 ROOT / "deep" / "cli.py"])


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 10, COMMANDS
    runnable = [c for c in COMMANDS if skip_reason(shlex.split(c)[1:]) is None]
    assert len(runnable) >= 8, runnable


def test_parser_and_rewrites_on_a_made_up_readme(tmp_path):
    text = ("```bash\nncgeo solve --classes 4 \\\n    --save sol.npz   # a comment\n"
            "OMP_NUM_THREADS=1 ncgeo certify sol.npz\npython -m pytest\n```\n"
            "```python\nncgeo.solve_ufm()\n```\n```bash\nncgeo sims limit --out results\n```\n")
    commands = readme_commands(text)
    assert commands == ["ncgeo solve --classes 4 --save sol.npz", "ncgeo certify sol.npz",
                        "ncgeo sims limit --out results"]
    args = [shlex.split(c)[1:] for c in commands]
    assert rewrite(args[0], tmp_path) == ["solve", "--classes", "4", "--save", str(tmp_path / "sol.npz")]
    assert rewrite(args[1], tmp_path) == ["certify", str(tmp_path / "sol.npz")]
    assert rewrite(args[2], tmp_path) == ["sims", "limit", "--out", str(tmp_path / "results"), "--quick"]
    assert rewrite(["solve", "--geometry", "examples/gram.npy", "--json", "-"], tmp_path) == \
        ["solve", "--geometry", "examples/gram.npy", "--json", "-"]
    # a file left by an earlier run (untracked) is not read: sol.npz goes to tmp even where it exists
    assert rewrite(["certify", "sol.npz"], tmp_path, tracked={"examples/gram.npy"}) == \
        ["certify", str(tmp_path / "sol.npz")]
    assert skip_reason(["deep", "train", "--dataset", "cifar10"]) is not None
    assert skip_reason(["deep", "train", "--nproc", "4", "--dataset", "fmnist"]) is not None
    assert skip_reason(["solve", "--classes", "4"]) is None


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One folder for the whole README, so that `ncgeo certify sol.npz` finds the file that an
    earlier `ncgeo solve --save sol.npz` wrote."""
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, outputs):
    args = shlex.split(command)[1:]
    reason = skip_reason(args)
    if reason is not None:
        pytest.skip(reason)
    for token in args:  # every input a command names is in the repository
        if token.startswith("examples/"):
            assert (ROOT / token).is_file(), f"{command}: {token} is missing from the repository"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "cli.py", *rewrite(args, outputs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
