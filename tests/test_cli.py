"""The `kbitlaw` command as a user runs it: a real subprocess, stdout and stderr kept apart."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import kbitlaw

COMMANDS = [
    "demo",
    "nightly",
    "evaluate",
    "fit",
    "predict",
    "report",
    "datasets",
    "serve",
    "emit-checkpoint",
    "serve-reports",
]



def test_help_lists_every_command():
    out = kbitlaw("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("kbitlaw", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "nightly" in out.stdout


@pytest.mark.parametrize("name", COMMANDS + ["datasets clean", "datasets validate", "checkpoints"])
def test_every_command_has_help(name):
    out = kbitlaw(*name.split(), "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_report_without_a_fit_says_so_in_one_line(tmp_path):
    out = kbitlaw("report", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no fit yet" in out.stderr


def test_checkpoints_json_is_the_only_stdout(tree_for_cli):
    out = kbitlaw("checkpoints", str(tree_for_cli), "--json")
    doc = json.loads(out.stdout)
    assert [c["id"] for c in doc["checkpoints"]] == ["fam/h32/step-100"]
    assert len(doc["errors"]) == 1 and "no config.json" in doc["errors"][0]
    assert out.returncode == 0


@pytest.fixture
def tree_for_cli(tmp_path):
    from tests.conftest import make_checkpoint

    make_checkpoint(
        tmp_path / "fam" / "h32" / "step-100", sidecar={"family": "fam", "size": "h32", "step": 100}
    )
    bad = make_checkpoint(tmp_path / "fam" / "h32" / "step-200")
    (bad / "config.json").unlink()
    return tmp_path
