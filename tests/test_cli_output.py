"""What successful commands print when `kbitlaw` runs as a user runs it (a subprocess, no
PREFECT_API_URL: the CLI starts or reuses its local API): no traceback, no CancelledError, which a
user reads as a failure. These were first seen on a busy machine: `make test-under-load` runs them
(with the whole suite) beside two CPU-bound processes; here they run as the suite finds the machine,
so that the suite's own time is not spent on load it makes itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import kbitlaw, make_family, write_specs

pytestmark = pytest.mark.slow  # real commands and the local Prefect API


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "KBITLAW_"))}
    return env | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # a first run: the database is created too
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }



def test_datasets_clean_and_validate_print_no_traceback(tmp_path):
    env = cli_env(tmp_path)
    common = ["--store", str(tmp_path / "store"), "--dataset-specs", str(write_specs(tmp_path / "specs", 12))]
    cleaned = kbitlaw("datasets", "clean", *common, env=env)
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    validated = kbitlaw("datasets", "validate", *common, env=env)
    assert validated.returncode == 0, validated.stdout[-2000:] + validated.stderr[-3000:]
    lines = validated.stdout.strip().splitlines()
    assert sorted(line.split("\t")[:2] for line in lines) == [
        ["cloze", "ok"],
        ["logic", "ok"],
        ["text", "ok"],
    ], validated.stdout
    assert "Traceback" not in validated.stderr, validated.stderr[-3000:]


def test_nightly_prints_no_traceback(tmp_path):
    """A successful nightly run (which starts the local Prefect API) leaves no CancelledError or
    traceback on stderr."""
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
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "checkpoints: 1 (1 new); evaluations: 2 computed" in out.stdout, out.stdout
    assert "CancelledError" not in out.stderr, out.stderr[-4000:]
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
