"""The nightly flow on a tiny family: incremental work, faults, runners, real Prefect server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbitlaw.eval import sweep
from kbitlaw.flows.nightly import evaluate_checkpoint, nightly, run_summary, task_runner
from kbitlaw.law.io import read_results_store
from kbitlaw.law.table import results_sha
from kbitlaw.store import Store
from tests.conftest import make_family, write_specs

pytestmark = pytest.mark.slow  # Prefect flows over real checkpoints

GRID = "fp16,int4-b64"


@pytest.fixture
def setup(tmp_path, prefect_api):
    store = tmp_path / "store"
    make_family(store / "checkpoints")
    specs = write_specs(tmp_path / "specs")
    return str(store), str(specs)


def run(store: str, specs: str, workers: int = 1, runner: str = "thread", checkpoints: str | None = None):
    flow = nightly.with_options(task_runner=task_runner(runner, workers))
    state = flow(
        store=store,
        checkpoints=checkpoints or "",
        grid=GRID,
        dataset_specs=specs,
        workers=workers,
        return_state=True,
    )
    return state, run_summary(state)


def result_keys(store: str) -> list[str]:
    return [k for k in Store(store).list("results")]


def assert_samples_beside_results(store: str) -> None:
    """Every result has its per-example samples at the same <checkpoint_fp>/<quant>/<eval_key>."""
    results = {k.removeprefix("results/") for k in result_keys(store)}
    samples = {k.removeprefix("samples/") for k in Store(store).list("samples")}
    assert results <= samples


def run_artifacts(state) -> dict:
    """The artifacts the flow run created, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flow_run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run))}


def test_nightly_is_incremental(setup, tmp_path):
    store, specs = setup
    state, first = run(store, specs)
    assert state.is_completed(), first
    assert first["checkpoints"] == 4 and first["new_checkpoints"] == 4
    assert first["evaluations"] == {"computed": 8, "cached": 0, "failed": 0}
    assert len(result_keys(store)) == 4 * 2 * 3  # checkpoints x specs x datasets
    assert_samples_beside_results(store)
    assert len(Store(store).list("samples")) == 4 * 2 * 3
    assert first["fit"] and Store(store).exists("fits/latest.json")
    report = first["report"]
    assert Store(store).exists(report["key"]) and report["headline"].startswith("recommended precision")
    assert Store(store).read_json("reports/latest.json")["report"] == report["key"]
    artifacts = run_artifacts(state)
    assert {"kbitlaw-summary", "kbitlaw-report", "kbitlaw-evaluation-progress"} <= set(artifacts)
    assert artifacts["kbitlaw-evaluation-progress"].data == 100.0
    assert "tiny" in artifacts["kbitlaw-summary"].data and report["url"] in artifacts["kbitlaw-summary"].data

    loads = sweep.POOL.loads
    state, second = run(store, specs)
    assert second["evaluations"] == {"computed": 0, "cached": 8, "failed": 0}
    assert second["new_checkpoints"] == 0
    assert sweep.POOL.loads == loads  # no model was loaded
    assert second["fit"] == first["fit"] and second["report"] == first["report"]  # nothing rebuilt

    make_family(Path(store) / "checkpoints", sizes=(("h64", 64, 1),), steps=(10,))  # one new checkpoint
    state, third = run(store, specs)
    assert third["evaluations"] == {"computed": 2, "cached": 8, "failed": 0}
    assert third["new_checkpoints"] == 1 and sweep.POOL.loads == loads + 1
    assert len(result_keys(store)) == 5 * 2 * 3
    assert third["report"]["key"] != first["report"]["key"]
    assert Store(store).read_json("reports/latest.json")["report"] == third["report"]["key"]

    # A changed dataset costs only evaluations on that dataset.
    spec = json.loads((Path(specs) / "cloze.yaml").read_text())
    spec["params"]["seed"] = 1
    (Path(specs) / "cloze.yaml").write_text(json.dumps(spec))
    before = set(result_keys(store))
    state, fourth = run(store, specs)
    added = set(result_keys(store)) - before
    assert fourth["evaluations"]["computed"] == 10 and len(added) == 10  # 5 checkpoints x 2 specs x 1 dataset
    everything = read_results_store(Store(store))
    assert everything.filter(everything["dataset"] == "cloze")["dataset_sha"].n_unique() == 2  # both kept
    # ... but the fit uses only the current version: 10 old cloze files x 2 metrics are left out.
    doc = Store(store).read_json(Store(store).read_json("fits/latest.json")["fit"])
    assert doc["n_rows"] == everything.height - 10 * 2


def run_logs(state) -> list:
    """The log records of a flow run (and its task runs), from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flow_run = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=flow_run), limit=200)


def run_name(state) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


def fit_doc(store: str) -> dict:
    return Store(store).read_json(Store(store).read_json("fits/latest.json")["fit"])


def test_one_new_checkpoint_refits_everything_and_narrow_runs_keep_the_answer(setup):
    store, specs = setup
    state, first = run(store, specs)
    assert state.is_completed(), first
    rows = fit_doc(store)["n_rows"]
    new = make_family(Path(store) / "checkpoints", sizes=(("h64", 64, 1),), steps=(10,))[
        0
    ]  # training wrote it
    event_run = evaluate_checkpoint(
        checkpoint_uri=str(new), grid=GRID, store=store, dataset_specs=specs, return_state=True
    )
    summary = run_summary(event_run)
    assert event_run.is_completed(), summary
    assert summary["new_checkpoints"] == 1 and summary["evaluations"]["computed"] == 2  # its 2 specs only
    # ... and the fit covers the 4 checkpoints of the family as well as the new one
    assert summary["fit_scope"] == {"checkpoints": 5, "results": 5 * 2 * 3}
    assert fit_doc(store)["n_rows"] > rows
    assert run_name(event_run) == "evaluate tiny/h64/step-10"
    assert "insufficient data" not in summary["report"]["headline"]
    answer = summary["report"]["key"]

    # An ad-hoc run on a narrower grid evaluates nothing new and keeps the family's fit and report.
    narrow = nightly(store=store, grid="fp16", dataset_specs=specs, return_state=True)
    again = run_summary(narrow)
    assert again["evaluations"] == {"computed": 0, "cached": 5, "failed": 0}
    assert again["fit_scope"] == {"checkpoints": 5, "results": 5 * 2 * 3}
    assert again["report"]["key"] == answer and run_name(narrow).startswith("nightly 20")
    logs = [r.message for r in run_logs(event_run)]
    assert not any("Finished in state Cached" in m for m in logs)


def test_broken_checkpoint_fails_alone(setup):
    store, specs = setup
    bad = Path(store) / "checkpoints" / "tiny" / "h32" / "step-10"
    config = json.loads((bad / "config.json").read_text())
    config["hidden_size"] = 40  # weights no longer match: loading fails
    (bad / "config.json").write_text(json.dumps(config))
    state, summary = run(store, specs)
    assert state.is_failed()
    assert summary["evaluations"] == {"computed": 6, "cached": 0, "failed": 2}
    assert all("tiny/h32/step-10" in f for f in summary["failures"])
    assert "tiny/h32/step-10" in state.message and "\n" not in state.message
    assert summary["fit"]  # the others were fitted
    logs = run_logs(state)
    noisy = [r.message for r in logs if "Traceback" in r.message or "Unexpected result" in r.message]
    assert not noisy, noisy[0][:3000]


def test_a_truncated_checkpoint_is_a_problem_of_the_run(setup):
    """Discovery cannot read it (the discover task completes: the others go on), yet it is counted
    as failed, listed in the summary artifact, and the run ends Failed in one line. Run as a
    worker runs it: no traceback in the run's logs, from a task or from the engine."""
    from tests.test_flow_problems import run_like_a_worker

    store, specs = setup
    weights = Path(store) / "checkpoints" / "tiny" / "h48" / "step-20" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    state, logs = run_like_a_worker(nightly, {"store": store, "grid": GRID, "dataset_specs": specs})
    summary = run_summary(state)
    assert state.is_failed() and "\n" not in state.message, state.message
    assert "tiny/h48/step-20" in state.message and "truncated" in state.message
    assert summary["checkpoints"] == 3 and summary["failed_checkpoints"] == 1
    assert summary["evaluations"] == {"computed": 6, "cached": 0, "failed": 0}
    assert summary["fit"] and summary["report"]  # the other three were fitted and reported
    assert any("tiny/h48/step-20" in p and "truncated" in p for p in summary["problems"])
    md = run_artifacts(state)["kbitlaw-summary"].data
    assert "| checkpoints failed (unreadable) | 1 |" in md
    assert any(
        line.startswith("- ⚠ unusable checkpoint:") and "tiny/h48/step-20" in line for line in md.splitlines()
    )
    text = "\n".join(f"{log.level} {log.message}" for log in logs)
    assert "Traceback" not in text and "Engine execution" not in text, text[-4000:]
    said = [log.message for log in logs if "unusable checkpoint" in log.message]
    assert said and all("\n" not in m for m in said)
    print("\n".join(text.splitlines()[-12:]))  # what the UI shows at the end of the run (pytest -s)


def test_dask_runner_gives_the_same_results(setup, tmp_path, monkeypatch):
    store, specs = setup
    monkeypatch.setenv("KBITLAW_TASK_RESOURCES", "MODEL=1")  # each evaluation claims a worker's slot
    other = str(tmp_path / "store-dask")
    shutil.copytree(Path(store) / "checkpoints", Path(other) / "checkpoints")
    state, a = run(store, specs, workers=2, runner="thread")
    state_b, b = run(other, specs, workers=2, runner="dask")
    assert state.is_completed() and state_b.is_completed(), b
    assert b["evaluations"] == a["evaluations"] == {"computed": 8, "cached": 0, "failed": 0}
    ra, rb = read_results_store(Store(store)), read_results_store(Store(other))
    # checkpoint URIs differ (two stores); everything else is identical
    assert results_sha(ra.drop("checkpoint_uri")) == results_sha(rb.drop("checkpoint_uri"))


def _cli(store: str, specs: str, api: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kbitlaw",
            "nightly",
            "--store",
            store,
            "--grid",
            GRID,
            "--dataset-specs",
            specs,
            "--json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_killed_run_leaves_nothing_torn_and_resumes(setup, prefect_api):
    store, specs = setup
    proc = _cli(store, specs, prefect_api)
    deadline = time.monotonic() + 600
    while len(result_keys(store)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    partial = result_keys(store)
    assert 0 < len(partial) < 24
    for key in partial:  # every object that exists is complete
        assert Store(store).read_parquet(key).height > 0
    assert_samples_beside_results(store)  # samples are written first: a result implies them
    leftovers = [p for p in Path(store).rglob("*") if p.name.startswith(".kbitlaw-tmp-")]
    assert not any(str(p).endswith(".parquet") and p.stat().st_size == 0 for p in leftovers)
    state, summary = run(store, specs)
    assert state.is_completed()
    assert len(result_keys(store)) == 24
    assert summary["evaluations"]["cached"] >= 1
    assert_samples_beside_results(store)


def test_two_runs_at_once_agree(setup, prefect_api):
    store, specs = setup
    procs = [_cli(store, specs, prefect_api) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    docs = [json.loads(o[0]) for o in outs]
    assert all(d["checkpoints"] == 4 for d in docs)
    keys = result_keys(store)
    assert len(keys) == 24 and len(set(keys)) == 24
    frame = read_results_store(Store(store))
    assert frame.height == frame.unique(subset=["checkpoint_id", "quant", "dataset", "metric"]).height
