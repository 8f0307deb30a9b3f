"""Documented commands not covered elsewhere, run as a user runs them: a subprocess, output read.

(demo: test_train.py; nightly: test_nightly.py; evaluate: test_evaluate_cli.py; fit: test_law_io.py;
checkpoints and --help: test_cli.py; emit-checkpoint: test_deployments.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import free_port, kbitlaw, write_specs

pytestmark = pytest.mark.slow  # subprocess commands and flows


def test_datasets_clean_then_validate(tmp_path):
    specs = write_specs(tmp_path / "specs", n=12)
    store = str(tmp_path / "store")
    clean = kbitlaw("datasets", "clean", "--store", store, "--dataset-specs", str(specs))
    assert clean.returncode == 0, clean.stderr
    names = [line.split("\t")[0] for line in clean.stdout.strip().splitlines()]
    assert names == ["cloze", "logic", "text"]
    assert all("\tcleaned\t" in line for line in clean.stdout.splitlines())
    again = kbitlaw("datasets", "clean", "--store", store, "--specs", str(specs), "--json")  # the old name
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert [d["cached"] for d in doc["datasets"]] == [True, True, True]
    assert all(d["rows_out"] == 12 for d in doc["datasets"])
    valid = kbitlaw(
        "datasets", "validate", "logic", "--store", store, "--dataset-specs", str(specs), "--json"
    )
    assert valid.returncode == 0, valid.stderr
    [entry] = json.loads(valid.stdout)["datasets"]
    assert entry["name"] == "logic" and entry["success"] is True and entry["html"].endswith(".html")


def test_datasets_clean_unknown_name_is_one_line(tmp_path):
    out = kbitlaw(
        "datasets", "clean", "nope", "--store", str(tmp_path / "s"), "--dataset-specs", str(tmp_path)
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "unknown dataset(s) nope" in out.stderr


def test_report_after_a_fit_prints_the_page(tmp_path):
    from kbitlaw.law.io import fit_store
    from kbitlaw.law.sim import simulate_results
    from kbitlaw.store import Store

    store = tmp_path / "store"
    s = Store(str(store))
    s.write_parquet(
        "results/sim/all.parquet",
        simulate_results([1e7, 4e7, 1.6e8, 6.4e8], [2e10], ["fp16", "int8-b64", "int4-b64", "int3-b64"]),
    )
    fit_store(s)
    out = kbitlaw("report", "--store", str(store))
    assert out.returncode == 0, out.stderr
    page = out.stdout.strip()
    assert page.endswith("/index.html")
    html = open(page.removeprefix("file://"), encoding="utf-8").read()
    assert "Deploy at 4-bit" in html and "Known claims" in html
    assert "report written" in out.stderr
    again = kbitlaw("report", "--store", str(store))
    assert again.stdout == out.stdout and "report unchanged" in again.stderr


def test_serve_starts_and_serves_the_deployments(prefect_api, tmp_path):
    """`kbitlaw serve --store S` from an empty directory: it registers the four deployments, keeps
    polling, and serves the store's reports over HTTP beside them."""
    import httpx

    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    env.pop("KBITLAW_REPORT_URL", None)
    port = free_port()
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbitlaw", "serve", "--store", str(store), "--reports-port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        served = _served_deployments(prefect_api, deadline=time.monotonic() + 300, proc=proc)
        assert {"nightly", "evaluate-checkpoint", "fit", "clean-datasets"} <= served
        assert proc.poll() is None  # still serving
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)  # the report server of this store
        assert page.status_code == 200 and "No report yet" in page.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    assert "Traceback" not in output, output[-3000:]
    assert f"reports served at http://127.0.0.1:{port} (the runs' links point there)" in output


def _served_deployments(api: str, deadline: float, proc: subprocess.Popen) -> set[str]:
    """Names of the deployments with no work pool (what serve makes) once all four are there."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def names() -> set[str]:
        with temporary_settings({PREFECT_API_URL: api}):
            async with get_client() as client:
                return {d.name for d in await client.read_deployments() if not d.work_pool_name}

    while time.monotonic() < deadline:
        found = asyncio.run(names())
        if len(found) >= 4 or proc.poll() is not None:
            return found
        time.sleep(1)
    return asyncio.run(names())
