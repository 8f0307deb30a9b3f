"""Fault injection, S3: an endpoint that accepts connections and never answers, and one that
refuses them. Every command that touches the store fails with exit 1 and one line
("kbitlaw: error: <store uri>: <cause>") within 30 s at KBITLAW_S3_TIMEOUT=5, before any flow
starts, and the credentials never appear in what it prints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import free_port

SECRET = "kbitlaw-dummy-secret-4f1c9a"  # must never be printed
COMMANDS = {
    "fit": ["fit", "--store", "s3://b/x"],
    "nightly": ["nightly", "--store", "s3://b/x", "--grid", "fp16"],
    "checkpoints": ["checkpoints", "s3://b/x"],
}


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


@pytest.fixture(scope="module")
def silent():
    server = SilentEndpoint()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()
    assert server.connections, "the commands never reached the silent endpoint"


def faulty_env(endpoint: str, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KBITLAW_", "PREFECT_API"))}
    return env | {
        "AWS_ACCESS_KEY_ID": "AKIDKBITLAWDUMMY",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "KBITLAW_S3_ENDPOINT": endpoint,
        "KBITLAW_S3_TIMEOUT": "5",
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }


def run_failing(commands: dict[str, list[str]], endpoint: str, tmp_path) -> dict[str, tuple[str, float]]:
    """Run each `kbitlaw ARGS` at once (they mostly wait on the endpoint); assert each exits 1 with
    nothing on stdout and one error line on stderr within 30 s, no secret anywhere; return each
    command's line and the seconds it took."""
    procs = {}
    for name, args in commands.items():
        cwd = tmp_path / name
        cwd.mkdir()
        procs[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "kbitlaw", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=faulty_env(endpoint, cwd),
                cwd=cwd,
            ),
            time.monotonic(),
        )
    out = {}
    for name, (proc, started) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        seconds = time.monotonic() - started
        assert proc.returncode == 1, stderr[-3000:]
        assert stdout == ""
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kbitlaw: error: s3://b/x: "), stderr[-3000:]
        assert SECRET not in stdout + stderr
        assert seconds < 30, f"{name} took {seconds:.1f}s"
        assert not (tmp_path / name / "prefect").exists()  # stopped before any Prefect server
        out[name] = lines[0], seconds
    return out


def test_silent_endpoint_fails_in_one_line(silent, tmp_path):
    for command, (line, seconds) in run_failing(COMMANDS, silent, tmp_path).items():
        assert "timeout" in line.lower(), line
        print(f"{command}: failed in {seconds:.1f}s: {line}")


def test_refusing_endpoint_fails_in_one_line(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for command, (line, seconds) in run_failing(COMMANDS, endpoint, tmp_path).items():
        assert "Could not connect" in line, line
        assert seconds < 20, f"{command}: a refused connection is not worth {seconds:.1f}s"


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
