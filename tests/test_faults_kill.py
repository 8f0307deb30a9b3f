"""Fault injection, `kill -9` of a nightly that uses the local Prefect API kept for its
PREFECT_HOME: nothing the command started outlives it except that shared API, and the next run
reuses the API, marks the killed flow run Crashed and finishes its work.

PREFECT_API_URL is unset and PREFECT_HOME is a temporary folder, as for a user without a Prefect
server: the first command starts the local API (SQLite under PREFECT_HOME), the second reuses it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbitlaw.store import Store
from tests.conftest import make_family, used_prefect_home, write_specs

pytestmark = pytest.mark.slow  # kill -9 of a real nightly


def processes_with(marker: bytes) -> dict[int, str]:
    """Live processes (not zombies) whose environment or command line contains `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            seen = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if state not in ("Z", "X") and marker in seen:
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()
    return found


def flow_runs(prefect_home: Path) -> list[dict]:
    """The flow runs (and their task runs' states) in the local API's SQLite database."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        db.row_factory = sqlite3.Row
        runs = [dict(r) for r in db.execute("SELECT id, name, state_type, state_name FROM flow_run")]
        for run in runs:
            rows = db.execute("SELECT state_type FROM task_run WHERE flow_run_id = ?", (run["id"],))
            run["task_states"] = sorted({r[0] for r in rows})
    return runs


def api_server(home: Path) -> dict:
    return json.loads((home / "kbitlaw-api" / "server.json").read_text())


def test_kill_9_leaves_only_the_shared_api_and_the_next_run_crashes_the_stale_run(tmp_path):
    store, home = tmp_path / "store", tmp_path / "prefect"
    make_family(store / "checkpoints")  # 4 checkpoints
    specs = write_specs(tmp_path / "specs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "KBITLAW_"))}
    env |= {"PREFECT_HOME": str(used_prefect_home(home)), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["KBITLAW_API_IDLE_S"] = "600"  # the API waits for the second run however busy the machine
    args = [sys.executable, "-m", "kbitlaw", "nightly", "--store", str(store), "--grid", "fp16"]
    args += ["--dataset-specs", str(specs), "--datasets", "text", "--json"]

    t0 = time.monotonic()
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 600  # a hang guard
        while not Store(str(store)).list("results") and first.poll() is None:
            assert time.monotonic() < deadline, "no result within 600 s"
            time.sleep(0.1)
        assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
        server = api_server(home)["pid"]
        started_by_it = processes_with(str(home).encode())
        assert first.pid in started_by_it and server in started_by_it and server != first.pid
    finally:
        first.kill()  # SIGKILL: no handler, no atexit
        first.wait()
    killed = time.monotonic()
    print(f"first result after {killed - t0:.1f}s")
    while (alive := set(processes_with(str(home).encode())) - {server}) and time.monotonic() < killed + 20:
        time.sleep(0.1)
    assert not alive, f"still alive 20 s after kill -9: {alive}"
    print(f"orphans gone {time.monotonic() - killed:.2f}s after kill -9")
    assert server in processes_with(str(home).encode())  # the shared API stays for the next command
    done_before = len(Store(str(store)).list("results"))
    assert 1 <= done_before < 4
    [stale] = flow_runs(home)
    assert stale["state_type"] == "RUNNING"  # what a killed run leaves in the database

    t1 = time.monotonic()
    second = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    print(f"second run {time.monotonic() - t1:.1f}s")
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert summary["evaluations"]["failed"] == 0
    assert api_server(home)["pid"] == server  # reused, not started again
    assert summary["evaluations"]["cached"] == done_before  # the missing work, and only it
    assert summary["evaluations"]["computed"] == 4 - done_before
    assert len(Store(str(store)).list("results")) == 4
    [crashed] = summary["crashed_stale_runs"]
    assert stale["name"] in crashed and f"pid {first.pid}" in crashed
    assert f"stale run marked Crashed: {stale['name']}" in second.stderr
    runs = {r["id"]: r for r in flow_runs(home)}
    assert (runs[stale["id"]]["state_type"], runs[stale["id"]]["state_name"]) == ("CRASHED", "Crashed")
    assert "RUNNING" not in runs[stale["id"]]["task_states"]
    [new] = [r for r in runs.values() if r["id"] != stale["id"]]
    assert new["state_type"] == "COMPLETED"
    assert server in processes_with(str(home).encode())  # a normal exit leaves the API for the next
    stop = subprocess.run([sys.executable, "-m", "kbitlaw", "api", "stop"], env=env, capture_output=True)
    assert stop.returncode == 0 and f"pid {server}" in stop.stdout.decode()
    assert not processes_with(str(home).encode())
