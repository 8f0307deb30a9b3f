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

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed, wait
from prefect.states import Failed, State

from kbitlaw.checkpoint_loading import parse_device, resolve_device
from kbitlaw.checkpoints import discover
from kbitlaw.data.prepare import select_dataset_specs
from kbitlaw.eval.calibration import DEFAULT_CALIBRATION, CalibrationRef, calibration_ref
from kbitlaw.eval.sweep import (
    DatasetRef,
    checkpoint_dict,
    checkpoint_from_dict,
    evaluate_checkpoint_spec,
    is_gptq,
    plan,
)
from kbitlaw.flows.artifacts import interactive, progress_artifact, progress_bar, publish_artifacts
from kbitlaw.flows.datasets import clean_and_validate
from kbitlaw.flows.problems import (
    failed_run,
    one_line,
    quiet_planned_failures,
    retry_transient,
    run_summary,  # noqa: F401 (the flows' callers read a run's summary from here)
)
from kbitlaw.flows.refit import current_results, fit_and_report, fit_lock
from kbitlaw.flows.runners import claim, runs_here, task_resources, task_runner  # noqa: F401 (task_runner: callers)
from kbitlaw.flows.stale_runs import record_process
from kbitlaw.quant.spec import resolve_grid
from kbitlaw.store import CHECKPOINTS, Store, StoreError, parse_result_key

quiet_planned_failures()  # a deployment run that fails as planned logs one line, not a traceback

# Draw a terminal progress bar: set by the CLI for a person at a terminal (not a flow parameter:
# the UI's form has no terminal).
TERMINAL_PROGRESS = False
# Told (done, total) as the run's evaluations complete, (0, total) once they are submitted: set by a
# caller that draws its own display (`kbitlaw demo`); not a flow parameter either.
EVALUATION_PROGRESS: Callable[[int, int], None] | None = None


@task(
    name="discover-checkpoints",
    task_run_name="discover checkpoints in {uri}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,  # the store may answer next time; a bad URI will not
)
def discover_checkpoints(uri: str) -> dict[str, Any]:
    """The checkpoints under `uri`, and one line per checkpoint that cannot be read (the task
    completes: the others are evaluated; the flow counts these among the run's problems)."""
    try:
        found, errors = discover(uri)
    except (StoreError, ValueError) as exc:  # the location itself: one line, retried if transient
        return Failed(message=one_line(exc), data=exc)
    for e in errors:
        get_run_logger().error("unusable checkpoint: %s", one_line(e))
    return {"checkpoints": [checkpoint_dict(c) for c in found], "errors": [one_line(e) for e in errors]}


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="{checkpoint[id]} @ {spec}")
def evaluate_spec(
    store_uri: str,
    checkpoint: dict,
    spec: str,
    todo: list[dict],
    calibration: dict | None = None,
    device: str = "auto",
) -> dict:
    """One (checkpoint, spec): evaluate the datasets in `todo` (those not yet in the store) on
    `device` (resolved in the process that runs this task); a GPTQ spec is calibrated on
    `calibration` (a CalibrationRef as a dict)."""
    try:
        return evaluate_checkpoint_spec(
            Store(store_uri),
            checkpoint_from_dict(checkpoint),
            spec,
            [DatasetRef(**d) for d in todo],
            device=device,
            calibration=CalibrationRef.from_dict(calibration) if calibration else None,
        )
    except ValueError as exc:  # a broken checkpoint or bad data (all ours are ValueErrors): one line
        return Failed(message=str(exc), data=exc)  # a traceback would say nothing more; bugs keep theirs


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
    problems = invalid + [
        one_line(f.state.message or "failed") for f in cleaned if not f.state.is_completed()
    ]
    return refs, problems, sum(f.result()["seconds"] for f in ok)


def evaluate_all(
    store: Store,
    work: list[tuple[dict, str, list[DatasetRef], list[str]]],
    progress: bool,
    calibration: CalibrationRef | None = None,
    device: str = "auto",
) -> tuple[list[dict], list[str]]:
    """Submit each (checkpoint, spec) with datasets to evaluate on `device`; returns what the
    completed ones computed and one failure line per failed one."""
    cal = calibration.to_dict() if calibration else None
    with claim(task_resources()):
        futures = [
            evaluate_spec.submit(
                store.uri, c, q, [d.__dict__ for d in todo], cal if is_gptq(q) else None, device
            )
            for c, q, todo, _ in work
        ]
    update = progress_artifact(len(futures), "evaluations of this run")
    tell = EVALUATION_PROGRESS or (lambda done, total: None)
    tell(0, len(futures))
    with progress_bar(len(futures), "evaluating", enabled=progress) as advance:
        for done, _ in enumerate(as_completed(futures), start=1):
            update(done)
            advance()
            tell(done, len(futures))
    wait(futures)  # sets each future's final state (as_completed alone leaves .state to the API)
    computed, failures = [], []
    for future, (c, q, _, _) in zip(futures, work, strict=True):
        if future.state.is_completed():
            computed.append(future.result())
        else:
            failures.append(f"{c['id']} @ {q}: {one_line(future.state.message or 'failed')}")
    return computed, failures


def discover_all(location: str, only: str | None) -> tuple[list[dict], list[dict], list[str]]:
    """The family under `location` and the targets under `only` (default: the family), and one
    problem line per checkpoint or location that could not be read."""
    problems: list[str] = []

    def found_in(uri: str) -> list[dict]:
        state = discover_checkpoints(uri, return_state=True)
        if not state.is_completed():
            problems.append(f"checkpoints at {uri}: {one_line(state.message or 'unreadable')}")
            return []
        out = state.result()
        problems.extend(f"unusable checkpoint: {e}" for e in out["errors"])
        return out["checkpoints"]

    family = found_in(location)
    return family, found_in(only) if only else family, list(dict.fromkeys(problems))


def sweep(
    store: str | None,
    family: str | None,
    grid: str,
    datasets: list[str] | None,
    workers: int,
    dataset_specs: str | None,
    only: str | None = None,
    calibration: str = DEFAULT_CALIBRATION,
    device: str = "auto",
) -> dict | State:
    """The body of the nightly and evaluate-checkpoint flows: evaluate what is missing for the
    checkpoints under `only` (default: the whole family under `family`) on `datasets` (default:
    all), then refit over every current result of the family and report. GPTQ specs are calibrated
    on `calibration` (NAME[:N][:MODE]); models run on `device` (auto, cpu, cuda, cuda:N). Returns the run's
    summary, or a Failed state carrying it when the run had problems (each one line in
    summary["problems"])."""
    logger = get_run_logger()
    started = time.perf_counter()
    record_process(runtime.flow_run.id)  # a later run can tell when this one was killed
    s = Store(store)
    specs = [str(q) for q in resolve_grid(grid)]
    # A device this process lacks fails the run here, not once per evaluation; Dask workers
    # check theirs (they may have GPUs this process lacks), so only the name is checked for them.
    device = resolve_device(device) if runs_here() else parse_device(device)
    location = family or os.environ.get("KBITLAW_CHECKPOINTS") or s.url(CHECKPOINTS)
    found, targets, unusable = discover_all(location, only)
    members = {c["fingerprint"]: c for c in found + targets}
    refs, bad_data, in_tasks = prepare_datasets(s, dataset_specs)
    wanted = [d for d in refs if datasets is None or d.name in datasets]
    cal = resolve_calibration(calibration, dataset_specs, specs)
    work = plan(s, targets, specs, wanted, width=max(1, workers), calibration=cal)
    todo = [item for item in work if item[2]]  # all datasets already stored: nothing to run
    if len(todo) < len(work):
        logger.info(
            "%d of %d (checkpoint, spec) pairs already in the store", len(work) - len(todo), len(work)
        )
    computed, failures = evaluate_all(s, todo, TERMINAL_PROGRESS and interactive(), cal, device)
    failed_evaluations = len(failures)
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
                "device": device,
            }
            fitted = fit_and_report(s, keys, provenance)
            failures += fitted["failures"]
            in_tasks += fitted["seconds"]
    report = fitted["report"]
    # Every problem of the run, one line each: what could not be read (checkpoints, datasets),
    # what failed (evaluations, the fit, the report or a section of it).
    problems = unusable + bad_data + failures
    summary = {
        "checkpoints": len(members),
        "new_checkpoints": len({c["id"] for c, _, _, _ in todo}),
        "failed_checkpoints": len(unusable),
        "evaluations": {
            "computed": len(computed),
            "cached": len(work) - len(todo),
            "failed": failed_evaluations,
        },
        "fit": fitted["fit"],
        "fit_scope": {
            "checkpoints": len({p.fingerprint for k in keys if (p := parse_result_key(k))}),
            "results": len(keys),
        },
        "report": report,
        "unusable_checkpoints": unusable,
        "invalid_datasets": bad_data,
        "failures": failures,
        "problems": problems,
        "seconds": round(time.perf_counter() - started, 2),
        # where the time went: model work (load, quantize, evaluate, write) and the other task
        # bodies (clean + validate, fit, report); the rest of "seconds" is orchestration
        "timing": {
            "model_work": round(sum(r["seconds"] for r in computed), 2),
            "other_tasks": round(in_tasks, 2),
        },
    }
    logger.info("%s", {k: summary[k] for k in ("checkpoints", "new_checkpoints", "evaluations", "fit_scope")})
    if report:
        logger.info("report: %s (%s)", report["link"], report["headline"])
    # The summary artifact also when nothing was fitted: the UI then still lists the problems.
    publish_artifacts(
        report and {**report, "summary": fitted["report_summary"]},
        summary,
        fitted["fit_doc"],
        flow_name=runtime.flow_run.flow_name,
        store_uri=s.uri,
    )
    for i, problem in enumerate(problems, start=1):
        logger.warning("problem %d of %d: %s", i, len(problems), problem)
    return failed_run(summary, problems) if problems else summary


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


# persist_result: a deployment run's summary (also of a Failed run) can be read back from the API.
# `grid` is a plain str (a named grid or specs): a Literal | str union shows a type toggle in the UI.
@flow(name="nightly", flow_run_name=nightly_run_name, log_prints=True, persist_result=True)
def nightly(
    grid: str = "default",
    store: str = "",
    checkpoints: str = "",
    datasets: str = "",
    dataset_specs: str = "",
    workers: int = 1,
    calibration: str = DEFAULT_CALIBRATION,
    device: str = "auto",
) -> dict:
    """Evaluate every missing (checkpoint, spec, dataset version), refit the laws over all current
    results and write the report.

    Args:
        grid: The quant specs to evaluate: a named grid (default, quick, paper, demo) or
            comma-separated specs such as `fp16,nf4-b64,int3-b64`.
        store: Store URI, a directory or s3://bucket/prefix (empty: $KBITLAW_STORE or .kbitlaw/store).
        checkpoints: Where the checkpoint family is (empty: $KBITLAW_CHECKPOINTS, else the
            checkpoints/ folder of the store).
        datasets: Comma-separated dataset names to evaluate (empty: every dataset spec).
        dataset_specs: Directory of dataset specs (empty: $KBITLAW_DATASET_SPECS, ./datasets, builtin).
        workers: Evaluations side by side (threads, or Dask processes with the Dask runner).
        calibration: GPTQ specs' calibration data, NAME[:N][:MODE]: N sequences (default 128) of
            min(window, 256) tokens from the dataset spec NAME (builtin datasets: their training side).
        device: Where models run: auto (CUDA when available, else CPU; $KBITLAW_DEVICE when set),
            cpu, cuda or cuda:N.
    """
    return sweep(
        store or None,
        checkpoints or None,
        grid,
        _names(datasets),
        workers,
        dataset_specs or None,
        calibration=calibration or DEFAULT_CALIBRATION,
        device=device or "auto",
    )


@flow(name="evaluate-checkpoint", flow_run_name=evaluate_run_name, log_prints=True, persist_result=True)
def evaluate_checkpoint(
    checkpoint_uri: str,
    grid: str = "default",
    store: str = "",
    checkpoints: str = "",
    datasets: str = "",
    dataset_specs: str = "",
    workers: int = 1,
    calibration: str = DEFAULT_CALIBRATION,
    device: str = "auto",
) -> dict:
    """Evaluate one new checkpoint (announced by `kbitlaw emit-checkpoint URI`), then refit the laws
    over every current result of its family, as the nightly does.

    Args:
        checkpoint_uri: The new checkpoint: a directory, s3:// prefix or hf://org/name@rev.
        grid: The quant specs to evaluate it at: a named grid (default, quick, paper, demo) or
            comma-separated specs (empty: default).
        store: Store URI (empty: $KBITLAW_STORE or .kbitlaw/store).
        checkpoints: Where the rest of the family is (empty: $KBITLAW_CHECKPOINTS, else the
            checkpoints/ folder of the store).
        datasets: Comma-separated dataset names to evaluate (empty: every dataset spec).
        dataset_specs: Directory of dataset specs (empty: $KBITLAW_DATASET_SPECS, ./datasets, builtin).
        workers: Evaluations side by side.
        calibration: GPTQ specs' calibration data, NAME[:N] (as the nightly's).
        device: Where models run: auto, cpu, cuda or cuda:N (as the nightly's).
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
        device=device or "auto",
    )
