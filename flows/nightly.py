"""The nightly flow: discover -> clean + validate -> evaluate what is missing -> fit -> report.

Cached work shows in the Prefect UI as task runs in the state "Cached": the flow lists the store's
results once, and a (checkpoint, spec) whose every output key exists returns at once with that
state, without loading anything. Work is ordered so each worker keeps one checkpoint loaded while
it walks through the specs.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import torch
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed, wait
from prefect.states import Completed, Failed

from kbitlaw.checkpoints import discover
from kbitlaw.data.prepare import select_dataset_specs
from kbitlaw.eval.sweep import (
    DatasetRef,
    checkpoint_dict,
    checkpoint_from_dict,
    evaluate_checkpoint_spec,
    plan,
    result_key,
)
from kbitlaw.flows.artifacts import progress_artifact, progress_bar, publish_artifacts
from kbitlaw.flows.datasets import clean_and_validate
from kbitlaw.flows.fit import fit_task
from kbitlaw.flows.server import record_process
from kbitlaw.quant.spec import resolve_grid
from kbitlaw.report.headline import headline_line
from kbitlaw.store import Store


@task(name="discover-checkpoints", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def discover_checkpoints(uri: str) -> dict[str, Any]:
    found, errors = discover(uri)
    for e in errors:
        get_run_logger().error("unusable checkpoint: %s", e)
    return {"checkpoints": [checkpoint_dict(c) for c in found], "errors": [str(e) for e in errors]}


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="{checkpoint[id]} @ {spec}")
def evaluate_spec(store_uri: str, checkpoint: dict, spec: str, todo: list[dict], cached: list[str]):
    """One (checkpoint, spec): evaluate the datasets in `todo`; none left means Cached."""
    if not todo:
        return Completed(
            name="Cached",
            message=f"{len(cached)} results already in the store",
            data={"checkpoint": checkpoint["id"], "quant": spec, "computed": [], "cached": cached},
        )
    return evaluate_checkpoint_spec(
        Store(store_uri), checkpoint_from_dict(checkpoint), spec, [DatasetRef(**d) for d in todo]
    )


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
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


def sweep(
    store: str | None,
    checkpoints: str | None,
    grid: str,
    datasets: list[str] | None,
    workers: int,
    dataset_specs: str | None,
    progress: bool = False,
) -> dict | Any:
    """The body shared by the nightly and evaluate-checkpoint flows (runs inside either).
    `progress`: draw a terminal progress bar (interactive CLI runs only)."""
    logger = get_run_logger()
    started = time.perf_counter()
    record_process(runtime.flow_run.id)  # a later run can tell when this one was killed
    s = Store(store)
    specs = [str(q) for q in resolve_grid(grid)]
    found = discover_checkpoints(checkpoints or s.url("checkpoints"))
    invalid: list[str] = []  # dataset spec files that cannot be read: each fails its dataset alone
    cleaned = [
        clean_and_validate.submit(s.uri, spec.name, dataset_specs)
        for spec in select_dataset_specs(datasets, dataset_specs, invalid=invalid)
    ]
    wait(cleaned)
    refs = [DatasetRef(**f.result()["ref"]) for f in cleaned if f.state.is_completed()]
    in_tasks = sum(f.result()["seconds"] for f in cleaned if f.state.is_completed())
    bad_data = invalid + [f.state.message for f in cleaned if not f.state.is_completed()]
    work = plan(s, found["checkpoints"], specs, refs, width=max(1, workers))
    with claim(task_resources()):
        futures = [
            evaluate_spec.submit(s.uri, c, q, [d.__dict__ for d in todo], done) for c, q, todo, done in work
        ]
    update = progress_artifact(len(futures), "evaluations of this nightly run (computed or cached)")
    with progress_bar(len(futures), "evaluating", enabled=progress) as advance:
        for done, _ in enumerate(as_completed(futures), start=1):
            update(done)
            advance()
    wait(futures)  # sets each future's final state (as_completed alone leaves .state to the API)
    states = [f.state for f in futures]
    computed = [f for f, st in zip(futures, states, strict=True) if st.is_completed() and st.name != "Cached"]
    model_work = sum(f.result()["seconds"] for f in computed)
    failures = [
        f"{c['id']} @ {q}: {st.message}"
        for st, (c, q, _, _) in zip(states, work, strict=True)
        if not st.is_completed()
    ]
    fit, fit_doc, report, report_summary = None, {}, None, None
    current = {result_key(c["fingerprint"], q, d) for c, q, _, _ in work for d in refs}
    keys = sorted(current & set(s.list("results")))
    if keys:
        fit_state = fit_task(s.uri, keys, return_state=True)
        if fit_state.is_completed():
            fitted = fit_state.result()
            fit, fit_doc, in_tasks = fitted["key"], fitted["doc"], in_tasks + fitted["seconds"]
        else:
            failures.append(f"fit: {fit_state.message}")
    if fit:
        run = runtime.flow_run
        provenance = {"flow run": f"{run.flow_name} {run.name} ({run.id})", "grid": grid, "workers": workers}
        report_state = report_task(s.uri, fit, keys, provenance, return_state=True)
        if report_state.is_completed():
            built = report_state.result()
            report_summary = built["summary"]
            in_tasks += built["seconds"]
            report = {"key": built["key"], "url": built["url"], "headline": headline_line(report_summary)}
        else:
            failures.append(f"report: {report_state.message}")
    summary = {
        "checkpoints": len(found["checkpoints"]),
        "new_checkpoints": len({c["id"] for c, _, todo, _ in work if todo}),
        "evaluations": {
            "computed": len(computed),
            "cached": sum(1 for st in states if st.name == "Cached"),
            "failed": sum(1 for st in states if not st.is_completed()),
        },
        "fit": fit,
        "report": report,
        "unusable_checkpoints": found["errors"],
        "invalid_datasets": bad_data,
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 2),
        # where the time went: model work (load, quantize, evaluate, write) and the other task
        # bodies (clean + validate, fit, report); the rest of "seconds" is orchestration
        "timing": {"model_work": round(model_work, 2), "other_tasks": round(in_tasks, 2)},
    }
    logger.info("%s", {k: summary[k] for k in ("checkpoints", "new_checkpoints", "evaluations", "fit")})
    if report:
        logger.info("report: %s (%s)", report["url"], report["headline"])
    if fit:
        publish_artifacts(report and {"url": report["url"], "summary": report_summary}, summary, fit_doc)
    problems = failures + bad_data + found["errors"]
    if problems:
        return Failed(message=f"{len(problems)} problem(s): " + "; ".join(problems[:5]), data=summary)
    return summary


@flow(name="nightly", log_prints=True)
def nightly(
    store: str | None = None,
    checkpoints: str | None = None,
    grid: str = "default",
    datasets: list[str] | None = None,
    workers: int = 1,
    dataset_specs: str | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate every missing (checkpoint x spec x dataset version) under the checkpoints URI, refit
    the laws and report. `progress`: a terminal progress bar (the CLI sets it on a terminal)."""
    return sweep(store, checkpoints, grid, datasets, workers, dataset_specs, progress)


@flow(name="evaluate-checkpoint", log_prints=True)
def evaluate_checkpoint(
    checkpoint_uri: str,
    grid: str = "default",
    datasets: list[str] | None = None,
    store: str | None = None,
    workers: int = 1,
) -> dict:
    """One checkpoint (e.g. announced by a kbitlaw.checkpoint.created event): its evaluations + a refit."""
    return sweep(store, checkpoint_uri, grid, datasets, workers, None)
