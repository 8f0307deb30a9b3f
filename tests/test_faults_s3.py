"""Fault injection, S3: an endpoint that accepts connections and never answers, and one that
refuses them. Every command that touches the store fails with exit 1 and one line
("kbitlaw: error: <store uri>: <cause>") before any flow starts, and the credentials never appear
in what it prints.

Time is bounded by what the code controls, not by the machine's speed: against the silent endpoint
a command makes at most ATTEMPTS connections per request and waits at most KBITLAW_S3_TIMEOUT for
each, so it fails within that many timeouts of the same command's run against the refusing
endpoint (measured in the same test, on the same busy or idle machine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow  # subprocess commands waiting on silent endpoints

SECRET = "kbitlaw-dummy-secret-4f1c9a"  # must never be printed
COMMANDS = {
    "fit": ["fit", "--store", "s3://b/x"],
    "nightly": ["nightly", "--store", "s3://b/x", "--grid", "fp16"],
    "checkpoints": ["checkpoints", "s3://b/x"],
}
TIMEOUT_S = 5  # KBITLAW_S3_TIMEOUT below
ATTEMPTS = 2  # botocore's total_max_attempts in kbitlaw.store
REQUESTS = 2  # the most store requests a command makes before it gives up (its probe, one more)


class SilentEndpoint:
    """A TCP server on 127.0.0.1 that accepts every connection, reads and never replies;
    it stops when the test ends or after `limit` seconds, whichever comes first."""

    def __init__(self, limit: float = 300) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.deadline = time.monotonic() + limit
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.setblocking(False)  # the request stays unread in the buffer; no answer, ever
            self.connections.append(conn)
        for conn in self.connections:
            conn.close()
        self.sock.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


@pytest.fixture
def silent_endpoints():
    """One silent endpoint per command, so that each command's connections can be counted."""
    servers = {name: SilentEndpoint() for name in COMMANDS}
    yield servers
    for server in servers.values():
        server.stop()


def faulty_env(endpoint: str, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KBITLAW_", "PREFECT_API"))}
    return env | {
        "AWS_ACCESS_KEY_ID": "AKIDKBITLAWDUMMY",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "KBITLAW_S3_ENDPOINT": endpoint,
        "KBITLAW_S3_TIMEOUT": str(TIMEOUT_S),
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }


def run_failing(
    commands: dict[str, list[str]], endpoint: str | dict[str, str], tmp_path
) -> dict[str, tuple[str, float]]:
    """Run each `kbitlaw ARGS` at once (they mostly wait on the endpoint); assert each exits 1 with
    nothing on stdout and one error line on stderr, no secret anywhere; return each command's line
    and the seconds it took. `endpoint` is one URL for all, or a dict of one per command."""
    procs = {}
    for name, args in commands.items():
        url = endpoint[name] if isinstance(endpoint, dict) else endpoint
        cwd = tmp_path / name
        cwd.mkdir(parents=True)
        procs[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "kbitlaw", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=faulty_env(url, cwd),
                cwd=cwd,
            ),
            time.monotonic(),
        )
    out = {}
    for name, (proc, started) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)  # a hang, not a slow machine
        seconds = time.monotonic() - started
        assert proc.returncode == 1, stderr[-3000:]
        assert stdout == ""
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kbitlaw: error: s3://b/x: "), stderr[-3000:]
        assert SECRET not in stdout + stderr
        assert not (tmp_path / name / "prefect").exists()  # stopped before any Prefect server
        out[name] = lines[0], seconds
    return out


def test_endpoints_that_refuse_or_never_answer_fail_in_one_line(silent_endpoints, tmp_path):
    refusing = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    refused = run_failing(COMMANDS, refusing, tmp_path / "refused")
    for line, _ in refused.values():
        assert "Could not connect" in line, line
    urls = {name: f"http://127.0.0.1:{server.port}" for name, server in silent_endpoints.items()}
    silent = run_failing(COMMANDS, urls, tmp_path / "silent")
    for command, (line, seconds) in silent.items():
        connections = len(silent_endpoints[command].connections)
        waited = seconds - refused[command][1]
        print(f"{command}: refused {refused[command][1]:.1f} s, silent {seconds:.1f} s, {connections} conn.")
        assert "timeout" in line.lower(), line
        assert 1 <= connections <= REQUESTS * ATTEMPTS, f"{command}: {connections} connections"
        # Each connection waits one timeout; the refused run took the same start-up and no waiting.
        assert waited <= (connections + 1) * TIMEOUT_S * 1.5, f"{command} waited {waited:.1f} s"


def test_a_bad_timeout_setting_is_one_line(tmp_path):
    env = faulty_env("http://127.0.0.1:9", tmp_path) | {"KBITLAW_S3_TIMEOUT": "soon"}
    out = subprocess.run(
        [sys.executable, "-m", "kbitlaw", "fit", "--store", "s3://b/x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "KBITLAW_S3_TIMEOUT" in out.stderr and "'soon'" in out.stderr


def test_probe_names_a_missing_bucket(s3_env, tmp_path):
    from kbitlaw.store import StoreError, probe

    probe(f"s3://{s3_env}/prefix")  # a live bucket: one small listing, no error
    probe(str(tmp_path / "store"))  # a local directory: nothing to probe
    with pytest.raises(
        StoreError, match=r"^s3://no-such-bucket-kbitlaw/p: no bucket 'no-such-bucket-kbitlaw'"
    ):
        probe("s3://no-such-bucket-kbitlaw/p")


def test_the_timeout_bounds_every_layer(monkeypatch):
    """The settings behind the bound: botocore's timeouts and attempts, s3fs's own retries."""
    from kbitlaw.store import Store

    monkeypatch.setenv("KBITLAW_S3_TIMEOUT", "2.5")
    fs = Store("s3://b/x").fs
    assert fs.config_kwargs["connect_timeout"] == fs.config_kwargs["read_timeout"] == 2.5
    assert fs.config_kwargs["retries"]["total_max_attempts"] == 2
    assert fs.retries == 1
