"""The nightly flow: discover -> clean + validate -> evaluate what is missing -> fit -> report,
and the evaluate-checkpoint flow (one new checkpoint, announced by an event) that shares its body.

Both refit over every current result of the family: all checkpoints under the checkpoints
location (plus the new one) on the current dataset versions, at any spec. So a run triggered by
one new checkpoint, or an ad-hoc run on a narrow grid, never replaces the family's answer with a
narrower one. The fit and report step holds a lock (a Prefect global concurrency limit per
store), and lists the results inside it, so concurrent runs cannot leave `latest` behind.

(checkpoint, spec) pairs whose every result is stored are not submitted at all (one log line
counts them): on the default grid a quiet night has hundreds, and a task run each buried the
useful lines. Work is ordered so each worker keeps one checkpoint loaded while it walks the specs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from datetime import datetime, timezone
from typing import Any, Literal

import torch
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed, wait
from prefect.states import Failed

from kbitlaw.checkpoints import discover
from kbitlaw.data.prepare import select_dataset_specs
from kbitlaw.eval.calibration import DEFAULT_CALIBRATION, CalibrationRef, calibration_ref
from kbitlaw.eval.sweep import (
    DatasetRef,
    checkpoint_dict,
    checkpoint_from_dict,
    eval_key,
    evaluate_checkpoint_spec,
    is_gptq,
    plan,
)
from kbitlaw.flows.artifacts import interactive, progress_artifact, progress_bar, publish_artifacts
from kbitlaw.flows.datasets import clean_and_validate
from kbitlaw.flows.fit import fit_task
from kbitlaw.flows.server import record_process
from kbitlaw.quant.spec import resolve_grid
from kbitlaw.report.headline import headline_line
from kbitlaw.report.web import public_url
from kbitlaw.store import Store

# Draw a terminal progress bar: set by the CLI for a person at a terminal (not a flow parameter:
# the UI's form has no terminal).
TERMINAL_PROGRESS = False


@task(
    name="discover-checkpoints",
    task_run_name="discover checkpoints in {uri}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
)
def discover_checkpoints(uri: str) -> dict[str, Any]:
    found, errors = discover(uri)
    for e in errors:
        get_run_logger().error("unusable checkpoint: %s", e)
    return {"checkpoints": [checkpoint_dict(c) for c in found], "errors": [str(e) for e in errors]}


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="{checkpoint[id]} @ {spec}")
def evaluate_spec(
    store_uri: str, checkpoint: dict, spec: str, todo: list[dict], calibration: dict | None = None
) -> dict:
    """One (checkpoint, spec): evaluate the datasets in `todo` (those not yet in the store); a GPTQ
    spec is calibrated on `calibration` (a CalibrationRef as a dict)."""
    try:
        return evaluate_checkpoint_spec(
            Store(store_uri),
            checkpoint_from_dict(checkpoint),
            spec,
            [DatasetRef(**d) for d in todo],
            calibration=CalibrationRef.from_dict(calibration) if calibration else None,
        )
    except ValueError as exc:  # a broken checkpoint or bad data (all ours are ValueErrors): one line
        return Failed(message=str(exc), data=exc)  # a traceback would say nothing more; bugs keep theirs


@task(
    name="report", task_run_name="write the report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5
)
def report_task(store_uri: str, fit_key: str, results_keys: list[str], provenance: dict) -> dict:
    """The HTML report of this fit (cached when the same fit was reported before)."""
    from kbitlaw.report.build import build_report

    started = time.perf_counter()
    report = build_report(Store(store_uri), fit_key, results_keys=results_keys, provenance=provenance)
    return {k: report[k] for k in ("key", "url", "summary", "cached")} | {
        "seconds": time.perf_counter() - started
    }


def task_resources() -> dict[str, float]:
    """Dask resources each evaluation claims: KBITLAW_TASK_RESOURCES="GPU=1" (workers of an existing
    cluster then need `--resources GPU=1`); by default one GPU per task where this machine has one."""
    text = os.environ.get("KBITLAW_TASK_RESOURCES")
    if text is None:
        return {"GPU": 1} if torch.cuda.is_available() else {}
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {name.strip(): float(amount) for name, amount in pairs}


def task_runner(runner: str, workers: int, address: str | None = None):
    """The flow's task runner: threads (one process; models shared through the pool) or Dask."""
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        gpus, resources = torch.cuda.device_count(), task_resources()
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": min(workers, gpus) if gpus else workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                **({"resources": resources} if resources else {}),  # one task's worth per worker
            }
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=workers)


def claim(resources: dict[str, float]):
    """Annotate Dask submissions with the resources a task needs (nothing for other runners)."""
    runner = FlowRunContext.get().task_runner if FlowRunContext.get() else None
    if not resources or type(runner).__name__ != "DaskTaskRunner":
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources=resources)


class RunProblems(Exception):
    """A run that finished with problems (a broken checkpoint, a failed evaluation or dataset): the
    flow run ends Failed with one message, and `summary` keeps everything it did. An exception, so
    Prefect resolves the Failed state cleanly (a dict there logs a TypeError traceback)."""

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):  # results are pickled: keep the summary through a round trip
        return (RunProblems, (str(self), self.summary))


def run_summary(state) -> dict:
    """The summary document of a nightly or evaluate-checkpoint run, whether it ended Completed or
    Failed with RunProblems; {"error": message} for any other failure."""
    data = state.result(raise_on_failure=False)
    if isinstance(data, dict):
        return data
    if isinstance(data, RunProblems):
        return data.summary
    return {"error": str(state.message or data), "failures": [str(state.message or data)]}


@contextlib.contextmanager
def fit_lock(store_uri: str):
    """One fit + report at a time per store on this Prefect server: the nightly and event-triggered
    runs all move fits/latest.json and reports/latest.json, and the last to finish must have seen
    every result the others wrote. A global concurrency limit (created on first use)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = "kbitlaw-fit-" + hashlib.sha256(store_uri.encode()).hexdigest()[:12]
    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        lock = concurrency(name, occupy=1, timeout_seconds=6 * 3600, strict=True)
    except Exception as exc:  # an API without global limits: fit anyway, say so
        get_run_logger().warning("no fit lock (%s); concurrent runs may race on latest", exc)
        lock = contextlib.nullcontext()
    with lock:
        yield


def current_results(
    store: Store,
    fingerprints: set[str],
    datasets: list[DatasetRef],
    calibration: CalibrationRef | None = None,
) -> list[str]:
    """What a fit covers: every stored result of these checkpoints on these dataset versions, at any
    spec (so a run on a narrow grid, or on one new checkpoint, refits everything that is current);
    GPTQ specs' results only with the current `calibration` data (none without it)."""
    evals = {eval_key(d) for d in datasets}
    gptq_evals = {eval_key(d, calibration) for d in datasets} if calibration else set()
    keys = []
    for key in store.list("results"):
        parts = key.split("/")  # results/<fingerprint>/<quant>/<eval_key>.parquet
        if len(parts) != 4 or parts[1] not in fingerprints:
            continue
        try:
            current = gptq_evals if is_gptq(parts[2]) else evals
        except ValueError:  # a spec this version cannot parse: keyed as before GPTQ existed
            current = evals
        if parts[3].removesuffix(".parquet") in current:
            keys.append(key)
    return sorted(keys)


def resolve_calibration(text: str, dataset_specs: str | None, specs: list[str]) -> CalibrationRef | None:
    """The run's calibration data. It also decides which stored GPTQ results are current, so it is
    resolved on every run; if it cannot be and no spec of this run needs it, the run goes on without
    (stored GPTQ results are then left out of the fit) and says so."""
    try:
        return calibration_ref(text, dataset_specs)
    except ValueError as exc:
        if any(is_gptq(q) for q in specs):
            raise
        get_run_logger().warning("calibration data %r unusable (%s): GPTQ results are not fitted", text, exc)
        return None


def fit_and_report(store: Store, keys: list[str], provenance: dict) -> dict:
    """Refit the laws to `keys` and write the report: {fit, fit_doc, report, report_summary,
    seconds, failures}."""
    out: dict[str, Any] = {"fit": None, "fit_doc": {}, "report": None, "report_summary": None}
    out |= {"seconds": 0.0, "failures": []}
    fit_state = fit_task(store.uri, keys, return_state=True)
    if not fit_state.is_completed():
        out["failures"].append(f"fit: {fit_state.message}")
        return out
    fitted = fit_state.result()
    out |= {"fit": fitted["key"], "fit_doc": fitted["doc"], "seconds": fitted["seconds"]}
    report_state = report_task(store.uri, fitted["key"], keys, provenance, return_state=True)
    if not report_state.is_completed():
        out["failures"].append(f"report: {report_state.message}")
        return out
    built = report_state.result()
    out["seconds"] += built["seconds"]
    out["report_summary"] = built["summary"]
    out["report"] = {
        "key": built["key"],
        "url": built["url"],
        "link": public_url(store, built["key"]),  # where a browser opens it ($KBITLAW_REPORT_URL)
        "headline": headline_line(built["summary"]),
    }
    return out


def prepare_datasets(store: Store, dataset_specs: str | None) -> tuple[list[DatasetRef], list[str], float]:
    """Clean + validate every dataset spec (cached by content), one task each: the current dataset
    versions, the problems (one line each), and the seconds spent in the tasks."""
    invalid: list[str] = []  # dataset spec files that cannot be read: each fails its dataset alone
    cleaned = [
        clean_and_validate.submit(store.uri, spec.name, dataset_specs)
        for spec in select_dataset_specs(None, dataset_specs, invalid=invalid)
    ]
    wait(cleaned)
    ok = [f for f in cleaned if f.state.is_completed()]
    refs = [DatasetRef(**f.result()["ref"]) for f in ok]
    problems = invalid + [f.state.message for f in cleaned if not f.state.is_completed()]
    return refs, problems, sum(f.result()["seconds"] for f in ok)


def evaluate_all(
    store: Store,
    work: list[tuple[dict, str, list[DatasetRef], list[str]]],
    progress: bool,
    calibration: CalibrationRef | None = None,
) -> tuple[list[dict], list[str]]:
    """Submit each (checkpoint, spec) with datasets to evaluate; returns what the completed ones
    computed and one failure line per failed one."""
    cal = calibration.to_dict() if calibration else None
    with claim(task_resources()):
        futures = [
            evaluate_spec.submit(store.uri, c, q, [d.__dict__ for d in todo], cal if is_gptq(q) else None)
            for c, q, todo, _ in work
        ]
    update = progress_artifact(len(futures), "evaluations of this run")
    with progress_bar(len(futures), "evaluating", enabled=progress) as advance:
        for done, _ in enumerate(as_completed(futures), start=1):
            update(done)
            advance()
    wait(futures)  # sets each future's final state (as_completed alone leaves .state to the API)
    computed, failures = [], []
    for future, (c, q, _, _) in zip(futures, work, strict=True):
        if future.state.is_completed():
            computed.append(future.result())
        else:
            failures.append(f"{c['id']} @ {q}: {future.state.message}")
    return computed, failures


def sweep(
    store: str | None,
    family: str | None,
    grid: str,
    datasets: list[str] | None,
    workers: int,
    dataset_specs: str | None,
    only: str | None = None,
    calibration: str = DEFAULT_CALIBRATION,
) -> dict | Any:
    """The body of the nightly and evaluate-checkpoint flows: evaluate what is missing for the
    checkpoints under `only` (default: the whole family under `family`) on `datasets` (default:
    all), then refit over every current result of the family and report. GPTQ specs are calibrated
    on `calibration` (NAME[:N])."""
    logger = get_run_logger()
    started = time.perf_counter()
    record_process(runtime.flow_run.id)  # a later run can tell when this one was killed
    s = Store(store)
    specs = [str(q) for q in resolve_grid(grid)]
    location = family or os.environ.get("KBITLAW_CHECKPOINTS") or s.url("checkpoints")
    found = discover_checkpoints(location)
    targets = discover_checkpoints(only) if only else found
    members = {c["fingerprint"]: c for c in found["checkpoints"] + targets["checkpoints"]}
    refs, bad_data, in_tasks = prepare_datasets(s, dataset_specs)
    wanted = [d for d in refs if datasets is None or d.name in datasets]
    cal = resolve_calibration(calibration, dataset_specs, specs)
    work = plan(s, targets["checkpoints"], specs, wanted, width=max(1, workers), calibration=cal)
    todo = [item for item in work if item[2]]  # all datasets already stored: nothing to run
    if len(todo) < len(work):
        logger.info(
            "%d of %d (checkpoint, spec) pairs already in the store", len(work) - len(todo), len(work)
        )
    computed, failures = evaluate_all(s, todo, TERMINAL_PROGRESS and interactive(), cal)
    failed_evaluations = len(failures)
    model_work = sum(r["seconds"] for r in computed)
    fitted: dict[str, Any] = {"fit": None, "fit_doc": {}, "report": None, "report_summary": None}
    with fit_lock(s.uri):  # the results are listed inside: the fit sees what others wrote before it
        keys = current_results(s, set(members), refs, cal)
        if keys:
            run = runtime.flow_run
            provenance = {
                "flow run": f"{run.flow_name} {run.name} ({run.id})",
                "grid": grid,
                "workers": workers,
                "calibration (GPTQ)": str(cal) if cal else "none",
            }
            fitted = fit_and_report(s, keys, provenance)
            failures += fitted["failures"]
            in_tasks += fitted["seconds"]
    report = fitted["report"]
    errors = found["errors"] + [e for e in targets["errors"] if only]
    summary = {
        "checkpoints": len(members),
        "new_checkpoints": len({c["id"] for c, _, _, _ in todo}),
        "evaluations": {
            "computed": len(computed),
            "cached": len(work) - len(todo),
            "failed": failed_evaluations,
        },
        "fit": fitted["fit"],
        "fit_scope": {"checkpoints": len({k.split("/")[1] for k in keys}), "results": len(keys)},
        "report": report,
        "unusable_checkpoints": errors,
        "invalid_datasets": bad_data,
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 2),
        # where the time went: model work (load, quantize, evaluate, write) and the other task
        # bodies (clean + validate, fit, report); the rest of "seconds" is orchestration
        "timing": {"model_work": round(model_work, 2), "other_tasks": round(in_tasks, 2)},
    }
    logger.info("%s", {k: summary[k] for k in ("checkpoints", "new_checkpoints", "evaluations", "fit_scope")})
    if report:
        logger.info("report: %s (%s)", report["link"], report["headline"])
    if fitted["fit"]:
        publish_artifacts(
            report and {**report, "summary": fitted["report_summary"]},
            summary,
            fitted["fit_doc"],
            flow_name=runtime.flow_run.flow_name,
            store_uri=s.uri,
        )
    problems = failures + bad_data + errors
    if problems:
        message = f"{len(problems)} problem(s): " + "; ".join(problems[:5])
        return Failed(message=message, data=RunProblems(message, summary))
    return summary


GridName = Literal["default", "quick", "paper", "demo"]


def _names(text: str) -> list[str] | None:
    names = [n.strip() for n in text.split(",") if n.strip()]
    return names or None


def _where(uri: str, parts: int = 3) -> str:
    """The end of a URI, for a run name: `.../tiny/h64/step-400` -> `tiny/h64/step-400`."""
    return "/".join(uri.rstrip("/").split("/")[-parts:])


def nightly_run_name() -> str:
    store = Store(runtime.flow_run.parameters.get("store") or None).uri
    return f"nightly {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {_where(store, 2)}"


def evaluate_run_name() -> str:
    return f"evaluate {_where(str(runtime.flow_run.parameters.get('checkpoint_uri', '?')))}"


# persist_result: a deployment run's summary (or its RunProblems) can be read back from the API
@flow(name="nightly", flow_run_name=nightly_run_name, log_prints=True, persist_result=True)
def nightly(
    grid: GridName | str = "default",
    store: str = "",
    checkpoints: str = "",
    datasets: str = "",
    dataset_specs: str = "",
    workers: int = 1,
    calibration: str = DEFAULT_CALIBRATION,
) -> dict:
    """Evaluate every missing (checkpoint, spec, dataset version), refit the laws over all current
    results and write the report.

    Args:
        grid: The quant specs to evaluate: a named grid (default, quick, paper, demo) or
            comma-separated specs such as `fp16,nf4-b64,int3-b64`.
        store: Store URI, a directory or s3://bucket/prefix (empty: $KBITLAW_STORE or .kbitlaw/store).
        checkpoints: Where the checkpoint family is (empty: $KBITLAW_CHECKPOINTS or <store>/checkpoints).
        datasets: Comma-separated dataset names to evaluate (empty: every dataset spec).
        dataset_specs: Directory of dataset specs (empty: $KBITLAW_DATASET_SPECS, ./datasets, builtin).
        workers: Evaluations side by side (threads, or Dask processes with the Dask runner).
        calibration: GPTQ specs' calibration data, NAME[:N]: N sequences (default 128) of
            min(window, 256) tokens from the dataset spec NAME (builtin datasets: their training side).
    """
    return sweep(
        store or None,
        checkpoints or None,
        grid,
        _names(datasets),
        workers,
        dataset_specs or None,
        calibration=calibration or DEFAULT_CALIBRATION,
    )


@flow(name="evaluate-checkpoint", flow_run_name=evaluate_run_name, log_prints=True, persist_result=True)
def evaluate_checkpoint(
    checkpoint_uri: str,
    grid: GridName | str = "default",
    store: str = "",
    checkpoints: str = "",
    datasets: str = "",
    dataset_specs: str = "",
    workers: int = 1,
    calibration: str = DEFAULT_CALIBRATION,
) -> dict:
    """Evaluate one new checkpoint (announced by `kbitlaw emit-checkpoint URI`), then refit the laws
    over every current result of its family, as the nightly does.

    Args:
        checkpoint_uri: The new checkpoint: a directory, s3:// prefix or hf://org/name@rev.
        grid: The quant specs to evaluate it at: a named grid (default, quick, paper, demo) or
            comma-separated specs (empty: default).
        store: Store URI (empty: $KBITLAW_STORE or .kbitlaw/store).
        checkpoints: Where the rest of the family is (empty: $KBITLAW_CHECKPOINTS or <store>/checkpoints).
        datasets: Comma-separated dataset names to evaluate (empty: every dataset spec).
        dataset_specs: Directory of dataset specs (empty: $KBITLAW_DATASET_SPECS, ./datasets, builtin).
        workers: Evaluations side by side.
        calibration: GPTQ specs' calibration data, NAME[:N] (as the nightly's).
    """
    return sweep(
        store or None,
        checkpoints or None,
        grid or "default",
        _names(datasets),
        workers,
        dataset_specs or None,
        only=checkpoint_uri,
        calibration=calibration or DEFAULT_CALIBRATION,
    )
