"""The command line on a busy machine: two CPU-bound processes take both cores of a small box while
`kbitlaw` runs as a user runs it (a subprocess, no PREFECT_API_URL: the CLI starts its own API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import kbitlaw, make_family, write_specs

pytestmark = pytest.mark.slow  # CPU hogs beside real commands


@pytest.fixture
def busy_cpus():
    """Two busy loops (as many as this machine's cores, at least on the 2-core CI box)."""
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(2)
    ]
    try:
        yield loops
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait(timeout=10)


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "KBITLAW_"))}
    return env | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # a first run: the database is created too
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }



def test_datasets_validate_under_load(tmp_path, busy_cpus):
    env = cli_env(tmp_path)
    common = ["--store", str(tmp_path / "store"), "--dataset-specs", str(write_specs(tmp_path / "specs", 12))]
    cleaned = kbitlaw("datasets", "clean", *common, env=env)
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    validated = kbitlaw("datasets", "validate", *common, env=env)
    assert all(loop.poll() is None for loop in busy_cpus)  # the load lasted the whole run
    assert validated.returncode == 0, validated.stdout[-2000:] + validated.stderr[-3000:]
    lines = validated.stdout.strip().splitlines()
    assert sorted(line.split("\t")[:2] for line in lines) == [
        ["cloze", "ok"],
        ["logic", "ok"],
        ["text", "ok"],
    ], validated.stdout
    assert "Traceback" not in validated.stderr, validated.stderr[-3000:]


def test_nightly_prints_no_traceback_under_load(tmp_path, busy_cpus):
    """A successful nightly run (which starts the local Prefect API on a busy machine) leaves no
    CancelledError or traceback on stderr: a user reads those as a failure."""
    make_family(tmp_path / "store" / "checkpoints", sizes=(("h32", 32, 1),), steps=(10,))
    env = cli_env(tmp_path)
    specs = str(write_specs(tmp_path / "specs", 12))
    out = kbitlaw(
        "nightly",
        "--store",
        str(tmp_path / "store"),
        "--grid",
        "fp16,int8",
        "--dataset-specs",
        specs,
        env=env,
    )
    assert all(loop.poll() is None for loop in busy_cpus)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "checkpoints: 1 (1 new); evaluations: 2 computed" in out.stdout, out.stdout
    assert "CancelledError" not in out.stderr, out.stderr[-4000:]
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
