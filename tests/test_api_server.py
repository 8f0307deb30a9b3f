"""The local Prefect API kept per PREFECT_HOME (kbitlaw.flows.api_server): commands without
PREFECT_API_URL share one server instead of each paying a server's start; it goes away when idle,
is replaced when dead, and `kbitlaw api stop` stops it. Real servers, started as users start them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import used_prefect_home

pytestmark = pytest.mark.slow  # starts real API servers


def env_for(home: Path, idle_s: float = 600) -> dict[str, str]:
    used_prefect_home(home)  # what is tested is the server's life, not Prefect's migrations
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "KBITLAW_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "KBITLAW_API_IDLE_S": str(idle_s),
    }


def api(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kbitlaw", "api", *args], env=env, capture_output=True, text=True, timeout=600
    )


def server(home: Path) -> dict:
    return json.loads((home / "kbitlaw-api" / "server.json").read_text())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, deadline_s: float = 120) -> bool:
    deadline = time.monotonic() + deadline_s  # only stops a hang: the idle time is what is tested
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive(pid)


def test_commands_share_one_api_a_dead_one_is_replaced_and_stop_stops_it(tmp_path):
    home = tmp_path / "home"
    env = env_for(home)
    # Two commands at once on a home without a server: one starts it, the other waits and reuses it.
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "kbitlaw", "api", "start"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    urls = {out.strip() for out, _ in outs}
    assert len(urls) == 1, outs
    assert sum("started a local Prefect API" in err for _, err in outs) == 1, outs
    pid = server(home)["pid"]
    again = api(env, "start")
    assert again.stdout.strip() in urls and "started" not in again.stderr
    assert server(home)["pid"] == pid
    status = api(env, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == pid
    # A server that died (kill -9 leaves its server.json behind) is replaced by the next command.
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 15)
    started = api(env, "start")
    assert started.returncode == 0, started.stderr
    second = server(home)["pid"]
    assert second != pid and alive(second)
    stop = api(env, "stop")
    assert stop.returncode == 0 and f"pid {second}" in stop.stdout
    assert wait_gone(second, 15)
    assert api(env, "status").returncode == 1


def test_an_api_in_use_stays_and_an_idle_one_goes_away(tmp_path):
    home = tmp_path / "home"
    env = env_for(home, idle_s=2)
    # A command that holds the API (a lease) for longer than the idle time.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from kbitlaw.flows.api_server import ensure_api; ensure_api(); import sys; sys.stdin.read()",
        ],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not (home / "kbitlaw-api" / "clients").is_dir() or not any(
            (home / "kbitlaw-api/clients").iterdir()
        ):
            assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read()
            time.sleep(0.2)
        pid = server(home)["pid"]
        time.sleep(6)  # three idle times
        assert alive(pid), "the API went away while a command used it"
    finally:
        holder.communicate("", timeout=60)
    assert wait_gone(pid), "the idle API did not go away"
    assert not (home / "kbitlaw-api" / "server.json").exists()


def test_another_prefect_version_in_use_is_one_line(tmp_path):
    """A server of another Prefect version is replaced when no command uses it, and refused in one
    line (never shared: its database schema may differ) while one does."""
    home = tmp_path / "home"
    env = env_for(home)
    assert api(env, "start").returncode == 0
    info_file = home / "kbitlaw-api" / "server.json"
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps(info | {"prefect_version": "0.0.1"}))
    lease = home / "kbitlaw-api" / "clients" / f"{os.getpid()}-"  # this test process "uses" it
    lease.touch()
    refused = api(env, "start")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "Prefect 0.0.1" in refused.stderr and "PREFECT_HOME" in refused.stderr
    lease.unlink()
    replaced = api(env, "start")
    assert replaced.returncode == 0, replaced.stderr
    assert server(home)["pid"] != info["pid"] and not alive(info["pid"])
    api(env, "stop")
