"""The Prefect API a command-line flow run talks to, and what a killed run leaves behind.

Without PREFECT_API_URL, Prefect starts an ephemeral API server (uvicorn, SQLite under
PREFECT_HOME) as a subprocess of the first client. `kill -9` of the command orphans that server
(it keeps running with parent PID 1) and leaves the flow run "Running" in the database forever.
So the CLI starts the ephemeral server itself, the way Prefect does, but as a child that the
kernel kills when the CLI dies (Linux PR_SET_PDEATHSIG), stops it at a normal exit, and points
PREFECT_API_URL at it for this process and its children. Each flow run records which process
runs it (labels); the next run sets the runs of this host whose process is gone to Crashed.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from typing import Any

# Run in the server's interpreter before uvicorn: die with the parent (SIGKILL: nothing to save,
# SQLite commits are atomic), and exit at once if the parent died before prctl took effect.
_BOOT = """
import os, runpy, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""
PARENT_ENV = "KBITLAW_API_SERVER_PARENT"  # set in the server's environment: whose server it is
PROCESS_LABEL = "kbitlaw.process"  # flow run label: "<host>:<pid>:<start time>"
_server: subprocess.Popen | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(port: int) -> subprocess.Popen:
    import prefect
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
        PARENT_ENV: str(os.getpid()),
    }
    app_dir = str(prefect.__module_path__.parent)
    args = ["--app-dir", app_dir, "--factory", "prefect.server.api.server:create_app"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    return subprocess.Popen(
        [sys.executable, "-c", _BOOT, str(os.getpid()), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),  # stdout carries --json documents only
    )


def _stop() -> None:
    global _server
    proc, _server = _server, None
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _use_api(url: str) -> None:
    """PREFECT_API_URL=url for this process (every thread) and the processes it starts."""
    import prefect.context

    os.environ["PREFECT_API_URL"] = url
    refresh = getattr(prefect.context, "refresh_global_settings_context", None)
    if refresh is not None:
        refresh()
    else:  # older Prefect 3
        prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.root_settings_context()


def ensure_api() -> str:
    """The Prefect API URL to use: PREFECT_API_URL if set, else a new ephemeral server that dies
    with this process. Raises RuntimeError (one line) if the server does not come up."""
    global _server
    import httpx
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return settings.api.url or ""  # a server of the user's, or Prefect's own refusal to come
    if _server is not None:
        return os.environ["PREFECT_API_URL"]
    deadline = time.monotonic() + 120  # a first start creates the database: can take a while
    atexit.register(_stop)  # before any client exists: atexit runs it after their flushes
    for _ in range(3):  # a server that exits at once most likely lost its port to another process
        port = _free_port()
        _server = _spawn(port)
        url = f"http://127.0.0.1:{port}/api"
        while _server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    _use_api(url)
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        code = _server.poll()
        _stop()
        if code is None:
            raise RuntimeError("the ephemeral Prefect API server did not answer within 120 s")
    raise RuntimeError(f"the ephemeral Prefect API server exited with code {code} (its errors are above)")


# -- which process runs a flow run, and runs whose process is gone ------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot; tells a reused PID apart), '' where /proc
    is missing, None if the process does not exist or is a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    except OSError:
        fields = []
    if not fields:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    return None if fields[0] in ("Z", "X") else fields[19]


def _this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def record_process(flow_run_id: Any) -> None:
    """Label a flow run with the process that runs it (host, PID, start); called at its start."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(flow_run_id, {PROCESS_LABEL: _this_process()})
    except Exception as exc:  # bookkeeping only: never fail the run for it
        print(f"kbitlaw: warning: could not label the flow run: {exc}", file=sys.stderr)


def _gone(process: str) -> bool:
    host, _, rest = process.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's run: its process cannot be checked from here
    now = _start_time(int(pid))
    return now is None or bool(started and now and now != started)


def crash_stale_runs(flow_names: tuple[str, ...] = ("nightly", "evaluate-checkpoint")) -> list[str]:
    """Set Running flow runs of `flow_names` whose process (on this host) no longer exists to
    Crashed, with their running task runs; returns one description per run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = f.FlowRunFilterState(type=f.FlowRunFilterStateType(any_=[StateType.RUNNING]))
    done = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=f.FlowFilter(name=f.FlowFilterName(any_=list(flow_names))),
            flow_run_filter=f.FlowRunFilter(state=running),
            limit=200,
        )
        for run in runs:
            process = str((run.labels or {}).get(PROCESS_LABEL, ""))
            if not process or not _gone(process):
                continue
            host, pid = process.split(":")[:2]
            message = (
                f"its process (pid {pid} on {host}) ended without reporting a final state "
                f"(killed?); marked Crashed by kbitlaw (pid {os.getpid()})"
            )
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            tasks = client.read_task_runs(
                flow_run_filter=f.FlowRunFilter(id=f.FlowRunFilterId(any_=[run.id])),
                task_run_filter=f.TaskRunFilter(
                    state=f.TaskRunFilterState(
                        type=f.TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                    )
                ),
            )
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            done.append(f"{run.name} ({run.id}): {message}")
    return done


def probe_stores(store: str | None, checkpoints: str | None) -> None:
    """Before a nightly flow run: StoreError (one line) unless the store and the checkpoints
    location answer, before any Prefect output and before the flow retries its tasks."""
    from kbitlaw.store import Store, probe

    probe(store)
    if checkpoints and checkpoints.startswith("s3://"):
        if not checkpoints.rstrip("/").startswith(Store(store).uri + "/"):
            probe(checkpoints)  # elsewhere than the store: its own bucket


def prepare_api() -> list[str]:
    """Before a nightly flow run: a Prefect API (ensure_api) and this host's nightly runs whose
    process is gone set to Crashed. Returns one line per crashed run."""
    ensure_api()
    try:
        crashed = crash_stale_runs()
    except Exception as exc:  # bookkeeping only: the run itself goes ahead
        print(f"kbitlaw: warning: could not check for stale flow runs: {exc}", file=sys.stderr)
        return []
    for line in crashed:
        print(f"kbitlaw: stale run marked Crashed: {line}", file=sys.stderr)
    return crashed
