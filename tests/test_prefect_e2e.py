"""Issue #14, end to end, as a new user runs it: a real `prefect server start`, a process work pool,
`prefect deploy --all` from the repository root and `prefect worker start`; the nightly deployment
over a small *trained* family, then `kbitlaw emit-checkpoint` for one more checkpoint, whose event
triggers the evaluate-checkpoint deployment: it evaluates only that checkpoint and refits over all.
Then a nightly run with a truncated checkpoint: it ends Failed, in one line, with no traceback.

Every process the test starts (server, worker, the flow runs the worker starts) is killed at the end,
also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, used_prefect_home, write_specs

pytestmark = pytest.mark.slow  # a real Prefect server, worker and automation

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's prefect and kbitlaw scripts
GRID = "fp16,int8-b64,nf4-b64,int3"
FAMILY = "e2e"
SIZES = "h32-l1,h32-l2,h48-l2"
HELD_BACK = f"{FAMILY}/h48-l2/step-80"  # the largest size's last checkpoint arrives after the nightly
N_EXAMPLES = 12  # rows per builtin dataset (3 datasets: multiple choice, cloze, perplexity)


def train_family(root: Path) -> Path:
    """Three demo sizes trained on 40,960 tokens each (80 steps, saved at 10/20/40/80): enough for a
    recommendation with a spec, not "insufficient data". 10-25 s on two cores (two processes)."""
    from kbitlaw.demo.family import TrainConfig, family_sizes
    from kbitlaw.demo.train import build_family
    from kbitlaw.store import Store

    config = TrainConfig(budget_tokens=40_960, seq_len=64, batch_size=8, corpus_docs=3000)
    report = build_family(Store(str(root)), FAMILY, sizes=family_sizes(SIZES), config=config, workers=2)
    assert len(report.trained) == 12, report
    return root / "checkpoints"


class Processes:
    """Subprocesses in their own sessions; stop() ends each with every descendant (the worker starts
    flow runs in sessions of their own, so a process group alone would miss them)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.started.append((name, proc))
        return proc

    def log(self, name: str, tail: int = 6000) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} log (last {tail} chars) ---\n{text[-tail:]}"

    def stop(self) -> None:
        # Every descendant is found before any signal: a killed worker's flow runs move to PID 1.
        targets = [pid for _, proc in self.started for pid in (proc.pid, *descendants(proc.pid))]
        for _, proc in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)  # each leads its own session and process group
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (left := [pid for pid in targets if alive(pid)]) and time.monotonic() < deadline:
            for _, proc in self.started:
                proc.poll()  # reap our own children (a zombie counts as gone)
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for _, proc in self.started:
            proc.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """The living descendants of `pid`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def processes(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop()


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KBITLAW_"))}
    return env | {
        "PREFECT_HOME": str(used_prefect_home(home)),  # a temporary SQLite database of its own, migrated
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }


def start_server(processes: Processes, home: Path) -> str:
    """`prefect server start` on a free port (services on: triggers and actions run the automation
    of the evaluate-checkpoint deployment; the scheduler off, so the 02:00 cron cannot fire)."""
    port = free_port()
    env = base_env(home) | {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    proc = processes.start(
        "server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300  # a hang guard: two cores, other work beside this one
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"prefect server did not come up (exit {proc.poll()})\n{processes.log('server')}")
        time.sleep(0.5)


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(args)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def wait_final(client, flow_run_id, processes: Processes, timeout: float = 420):
    deadline = time.monotonic() + timeout
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state and flow_run.state.is_final():
            return flow_run
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run.name} still {flow_run.state_name}\n{processes.log('worker')}")
        time.sleep(1)


def run_logs(client, flow_run_id, timeout: float = 180) -> list:
    """Every log line of a flow run (its tasks' too). The run's process sends logs in batches and
    sets the final state before its last batch: wait for the flow's own "Finished in state" line."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    deadline = time.monotonic() + timeout
    while True:
        logs: list = []
        while batch := client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            limit=200,
            offset=len(logs),
            sort=LogSort.TIMESTAMP_ASC,
        ):
            logs += batch
        finished = [
            log for log in logs if log.task_run_id is None and log.message.startswith("Finished in state")
        ]
        if finished or time.monotonic() > deadline:
            return logs
        time.sleep(1)


def read_summary(flow_run) -> dict:
    """The run's summary, read back from its persisted result (the flows persist theirs, so a
    deployment run's answer is readable from the API, not only from its artifact)."""
    from kbitlaw.flows.nightly import run_summary

    return run_summary(flow_run.state)


def assert_clean_logs(logs: list, what: str) -> None:
    text = "\n".join(f"{log.level} {log.message}" for log in logs)
    assert "Traceback" not in text, f"{what} logged a traceback:\n{text[-6000:]}"
    errors = [log.message for log in logs if log.level >= 40]
    assert errors == [], f"{what} logged errors: {errors}"


def test_nightly_then_an_announced_checkpoint_in_a_real_prefect_server(tmp_path, processes):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from kbitlaw.checkpoints import resolve
    from kbitlaw.law.io import read_results_store
    from kbitlaw.law.table import results_sha
    from kbitlaw.store import Store

    began = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - began - sum(timings.values()), 1)

    home, store_dir = tmp_path / "prefect-home", tmp_path / "store"
    specs = write_specs(tmp_path / "specs", N_EXAMPLES)
    family = train_family(tmp_path / "factory")  # trained beside the store; checkpoints copied in
    shutil.copytree(family, store_dir / "checkpoints")
    held = tmp_path / "arrivals" / HELD_BACK
    shutil.move(store_dir / "checkpoints" / HELD_BACK, held)
    lap("train family")

    api = start_server(processes, home)
    lap("server up")
    env = base_env(home) | {"PREFECT_API_URL": api}
    prefect = [str(BIN / "prefect"), "--no-prompt"]
    run([*prefect, "work-pool", "create", "kbitlaw", "--type", "process"], env)
    run([*prefect, "deploy", "--all"], env)
    lap("work pool + deploy")
    worker_env = env | {
        "KBITLAW_STORE": str(store_dir),
        "KBITLAW_DATASET_SPECS": str(specs),
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick up runs sooner than the default 10 s
    }
    worker = processes.start("worker", [*prefect, "worker", "start", "--pool", "kbitlaw"], worker_env)
    store = Store(str(store_dir))

    settings = {PREFECT_API_URL: api, PREFECT_LOCAL_STORAGE_PATH: home / "storage"}  # the worker's results
    with temporary_settings(updates=settings), get_client(sync_client=True) as client:
        # -- the nightly deployment over the first 11 checkpoints --------------------------------
        nightly = client.read_deployment_by_name("nightly/nightly")
        created = client.create_flow_run_from_deployment(nightly.id, parameters={"grid": GRID})
        first = wait_final(client, created.id, processes)
        assert worker.poll() is None, processes.log("worker")
        assert first.state.is_completed(), f"{first.state}\n{processes.log('worker')}"
        first_logs = run_logs(client, first.id)
        first_summary = read_summary(first)
        assert first_summary["checkpoints"] == 11 and first_summary["new_checkpoints"] == 11, first_summary
        assert first_summary["evaluations"]["computed"] == 11 * 4, first_summary
        assert_clean_logs(first_logs, "the nightly run")
        first_fit = store.read_json("fits/latest.json")
        lap("nightly run")

        # -- one more checkpoint arrives and is announced ------------------------------------------
        arrived = store_dir / "checkpoints" / HELD_BACK
        shutil.copytree(held, arrived)
        evaluate = client.read_deployment_by_name("evaluate-checkpoint/evaluate-checkpoint")
        out = run([str(BIN / "kbitlaw"), "emit-checkpoint", str(arrived), "--grid", GRID], env, timeout=120)
        assert "emitted kbitlaw.checkpoint.created" in out.stdout
        deadline = time.monotonic() + 300
        while not (
            runs := client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[evaluate.id]))
            )
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"the event triggered no evaluate-checkpoint run\n{processes.log('server')}")
            time.sleep(1)
        assert len(runs) == 1, [r.name for r in runs]
        triggered = wait_final(client, runs[0].id, processes)
        assert triggered.state.is_completed(), f"{triggered.state}\n{processes.log('worker')}"
        assert triggered.parameters["grid"] == GRID
        assert Path(triggered.parameters["checkpoint_uri"]).resolve() == arrived.resolve()
        logs = run_logs(client, triggered.id)
        assert_clean_logs(logs, "the triggered run")
        summary = read_summary(triggered)
        evaluations = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[triggered.id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=" @ ")),
        )
        lap("emit + triggered run")

        # -- a checkpoint that arrives truncated: the run ends Failed, saying so in one line -------
        broken = store_dir / "checkpoints" / FAMILY / "h32-l1" / "step-999"
        shutil.copytree(store_dir / "checkpoints" / FAMILY / "h32-l1" / "step-80", broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        created = client.create_flow_run_from_deployment(nightly.id, parameters={"grid": GRID})
        failed = wait_final(client, created.id, processes)
        shutil.rmtree(broken)
        assert failed.state.is_failed(), f"{failed.state}\n{processes.log('worker')}"
        assert "\n" not in failed.state.message and "step-999" in failed.state.message, failed.state.message
        failed_summary = read_summary(failed)
        assert failed_summary["failed_checkpoints"] == 1 and failed_summary["evaluations"]["failed"] == 0
        assert failed_summary["evaluations"]["cached"] == 12 * 4, failed_summary  # nothing else to do
        failed_logs = run_logs(client, failed.id)
        text = "\n".join(f"{log.level} {log.message}" for log in failed_logs)
        assert "Traceback" not in text and "Engine execution" not in text, text[-6000:]
        errors = [log.message for log in failed_logs if log.level >= 40]
        assert errors and all("step-999" in m and "\n" not in m for m in errors), errors
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[failed.id]))
        )
        summary_md = next(a.data for a in artifacts if a.key == "kbitlaw-summary")
        assert "| checkpoints failed (unreadable) | 1 |" in summary_md and "step-999" in summary_md
        print("\n".join(text.splitlines()[-8:]))  # the end of the failed run's log, as the UI shows it
        lap("run with a truncated checkpoint")

    # Only the new checkpoint was evaluated: one checkpoint, every spec of the grid, all datasets.
    assert sorted(t.name for t in evaluations) == sorted(f"{HELD_BACK} @ {q}" for q in GRID.split(","))
    assert all(t.state.is_completed() for t in evaluations)
    assert summary["new_checkpoints"] == 1, summary
    assert summary["evaluations"] == {"computed": 4, "cached": 0, "failed": 0}, summary
    fingerprint = resolve(str(arrived)).fingerprint
    new_results = [k for k in store.list(f"results/{fingerprint}") if k.endswith(".parquet")]
    assert len(new_results) == 4 * 3, new_results  # specs x datasets
    # ... and the laws were refitted over ALL current results: every checkpoint of the family.
    all_results = [k for k in store.list("results") if k.endswith(".parquet")]
    assert len({k.split("/")[1] for k in all_results}) == 12 and len(all_results) == 12 * 4 * 3
    assert summary["fit_scope"] == {"checkpoints": 12, "results": 12 * 4 * 3}, summary
    pointer = store.read_json("fits/latest.json")
    assert pointer != first_fit
    rows = read_results_store(store, all_results)
    assert rows["checkpoint_id"].n_unique() == 12
    assert pointer["results_sha"] == results_sha(rows)  # the fit is of exactly these rows
    assert store.read_json(pointer["fit"])["n_rows"] == rows.height
    # The report of that fit recommends a spec, from the family's latest checkpoints (the new one too).
    report = store.read_json(store.read_json("reports/latest.json")["summary"])
    assert report["results_sha"] == pointer["results_sha"]
    rec = report["recommendation"]
    assert rec["status"] == "ok" and rec["quant"] in GRID.split(","), rec
    assert HELD_BACK in report["checkpoints"], report["checkpoints"]
    lap("checks")
    print(json.dumps(timings | {"total": round(time.monotonic() - began, 1)}))
