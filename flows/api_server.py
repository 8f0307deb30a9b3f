"""The Prefect API that command-line flow runs talk to when PREFECT_API_URL is not set.

Prefect's own answer, an ephemeral server started by each command, costs every command a fresh
server start: ~10 s idle and minutes on a busy machine, before any work. So kbitlaw keeps one
local API per PREFECT_HOME running between commands, as `prefect server start --background`
does, and every command without PREFECT_API_URL reuses it:

- The first command starts it (uvicorn, SQLite under PREFECT_HOME, no UI, no background
  services) as a process of its own session, so it outlives that command; its log is
  `$PREFECT_HOME/kbitlaw-api/server.log`.
- State lives in `$PREFECT_HOME/kbitlaw-api/`: `server.json` (pid, url, Prefect version), a lock
  file that serialises starting and stopping, and `clients/`, one lease file per command using it.
- The server watches its leases: it exits once no command has used it for KBITLAW_API_IDLE_S
  seconds (default 25 h: a daily job keeps it warm, a forgotten one goes away), when another
  server took its place, or when its folder is gone.
- `kbitlaw api status|start|stop` shows, starts and stops it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

IDLE_ENV = "KBITLAW_API_IDLE_S"
DEFAULT_IDLE_S = 25 * 3600
START_TIMEOUT_S = 300  # a first start creates the database; a busy machine makes it slow
HOME_ENV = "KBITLAW_API_HOME"  # in the server's environment: which state folder is its own
_lease: Path | None = None


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    url: str
    prefect_version: str
    started: str  # the process's start time (tells a reused pid apart)
    ready: bool  # False while it starts


def state_dir() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser() / "kbitlaw-api"


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), '' where /proc is missing, None if the
    process does not exist or is a zombie."""
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


def _alive(pid: int, started: str) -> bool:
    now = process_start(pid)
    return now is not None and (not started or not now or now == started)


@contextlib.contextmanager
def _locked(folder: Path, blocking: bool = True):
    """The state folder's lock (held while a server starts or stops); yields False when not
    blocking and someone else holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_info(folder: Path) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads((folder / "server.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_info(folder: Path, info: ServerInfo) -> None:
    tmp = folder / "server.json.tmp"
    tmp.write_text(json.dumps(info.__dict__))
    tmp.replace(folder / "server.json")


def _healthy(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def live_leases(folder: Path) -> list[str]:
    """The commands using the server (pid:start); removes the leases of processes that are gone."""
    live = []
    for lease in (folder / "clients").glob("*"):
        pid, _, started = lease.name.partition("-")
        if pid.isdigit() and _alive(int(pid), started):
            live.append(lease.name)
        else:
            lease.unlink(missing_ok=True)
    return live


def _take_lease(folder: Path) -> None:
    global _lease
    if _lease is not None:
        return
    (folder / "clients").mkdir(parents=True, exist_ok=True)
    _lease = folder / "clients" / f"{os.getpid()}-{process_start(os.getpid()) or ''}"
    _lease.touch()
    atexit.register(_lease.unlink, missing_ok=True)


def _use_api(url: str) -> None:
    """PREFECT_API_URL=url for this process (every thread) and the processes it starts."""
    import prefect.context

    os.environ["PREFECT_API_URL"] = url
    refresh = getattr(prefect.context, "refresh_global_settings_context", None)
    if refresh is not None:
        refresh()
    else:  # older Prefect 3
        prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.root_settings_context()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(folder: Path, port: int) -> subprocess.Popen:
    import prefect
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",  # no background services: the CLI's runs need none
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
        HOME_ENV: str(folder),
    }
    env.pop("PREFECT_API_URL", None)
    app_dir = str(prefect.__module_path__.parent)
    args = ["--app-dir", app_dir, "--factory", "prefect.server.api.server:create_app"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    boot = "from kbitlaw.flows.api_server import serve; serve()"
    with open(folder / "server.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", boot, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # not the command's: Ctrl-C or kill of the command spares it
        )


def _start(folder: Path) -> ServerInfo:
    """Start a server and wait until it answers (the caller holds the lock)."""
    import prefect

    deadline = time.monotonic() + START_TIMEOUT_S
    for _ in range(3):  # a server that exits at once most likely lost its port to another process
        port = _free_port()
        proc = _spawn(folder, port)
        url, started = f"http://127.0.0.1:{port}/api", process_start(proc.pid) or ""
        info = ServerInfo(proc.pid, url, prefect.__version__, started, ready=False)
        _write_info(folder, info)  # at once: a server that is not named here exits
        while proc.poll() is None and time.monotonic() < deadline:
            if _healthy(info.url):
                info = ServerInfo(**{**info.__dict__, "ready": True})
                _write_info(folder, info)
                return info
            time.sleep(0.2)
        code = proc.poll()
        if code is None:
            proc.kill()
            raise RuntimeError(
                f"the local Prefect API did not answer within {START_TIMEOUT_S} s "
                f"(its log: {folder / 'server.log'})"
            )
    (folder / "server.json").unlink(missing_ok=True)
    raise RuntimeError(f"the local Prefect API exited with code {code} (its log: {folder / 'server.log'})")


def _stop(info: ServerInfo, folder: Path) -> None:
    if _alive(info.pid, info.started):
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(info.pid, info.started) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(info.pid, info.started):
            os.kill(info.pid, signal.SIGKILL)
    (folder / "server.json").unlink(missing_ok=True)


def running(folder: Path) -> ServerInfo | None:
    """The folder's server if it runs and answers."""
    info = read_info(folder)
    if not (info and info.ready and _alive(info.pid, info.started)):
        return None
    # A busy machine can slow an answer past a short timeout; only a server that stays silent
    # for long is taken for hung (and replaced: other commands may be using it).
    if any(_healthy(info.url, timeout) for timeout in (2.0, 10.0, 30.0)):
        return info
    return None


def ensure_api() -> str:
    """The Prefect API URL to use: PREFECT_API_URL if set, else this PREFECT_HOME's local API,
    started if it is not running. Raises RuntimeError (one line) if it cannot be had."""
    import prefect
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return settings.api.url or ""  # a server of the user's, or Prefect's own refusal to come
    folder = state_dir()
    with _locked(folder):
        info = running(folder)
        if info and info.prefect_version != prefect.__version__:
            if live_leases(folder):
                raise RuntimeError(
                    f"the local Prefect API of {folder.parent} runs Prefect {info.prefect_version} for "
                    f"another command (this is {prefect.__version__}); set PREFECT_HOME or PREFECT_API_URL"
                )
            _stop(info, folder)
            info = None
        if info is None:
            stale = read_info(folder)
            if stale is not None:
                _stop(stale, folder)  # started but never answered, or answers no more
            info = _start(folder)
            print(
                f"kbitlaw: started a local Prefect API at {info.url} for the next commands too "
                f"(`kbitlaw api stop` stops it)",
                file=sys.stderr,
            )
        _take_lease(folder)  # under the lock: the server cannot go idle in between
    _use_api(info.url)
    return info.url


def stop_api() -> ServerInfo | None:
    """Stop this PREFECT_HOME's local API (whoever uses it); returns what was stopped."""
    folder = state_dir()
    with _locked(folder):
        info = read_info(folder)
        if info is not None:
            _stop(info, folder)
    return info


# -- inside the server process ----------------------------------------------------------------


def _idle_s() -> float:
    try:
        return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S


def _watch(folder: Path, pid: int, check_every: float) -> None:
    """Exit (SIGTERM to this process: uvicorn stops cleanly) when the folder is gone, another
    server took its place, or no command has used it for the idle time."""
    last_used, idle = time.monotonic(), _idle_s()
    while True:
        time.sleep(check_every)
        info = read_info(folder) if folder.is_dir() else None
        if info is not None and info.pid != pid:
            break
        if info is None and (not folder.is_dir() or time.monotonic() - last_used > 60):
            break  # the folder went away, or the starter died before naming this server
        if live_leases(folder):
            last_used = time.monotonic()
            continue
        if time.monotonic() - last_used < idle:
            continue
        with _locked(folder, blocking=False) as mine:  # a command starting now holds the lock
            if mine and not live_leases(folder):
                (folder / "server.json").unlink(missing_ok=True)
                break
    os.kill(pid, signal.SIGTERM)


def serve() -> None:
    """The server process: uvicorn with its arguments from argv, and the watchdog beside it."""
    import runpy

    folder, pid = Path(os.environ[HOME_ENV]), os.getpid()
    check_every = min(5.0, max(0.5, _idle_s() / 4))
    threading.Thread(target=_watch, args=(folder, pid, check_every), daemon=True).start()
    sys.argv = ["uvicorn", *sys.argv[1:]]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
