"""What a killed command leaves behind, and the checks before a nightly flow run starts.

Each flow run records which process runs it (a label: host, pid, start time); `kill -9` of the
command leaves the run "Running" in Prefect's database forever, so the next nightly on this host
sets the runs whose process is gone to Crashed. The Prefect API itself is api_server.py's.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from kbitlaw.flows.api_server import ensure_api, process_start

PROCESS_LABEL = "kbitlaw.process"  # flow run label: "<host>:<pid>:<start time>"


# -- which process runs a flow run, and runs whose process is gone ------------------------------


def _this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or ''}"


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
    now = process_start(int(pid))
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
