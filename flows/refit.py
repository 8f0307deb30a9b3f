"""The refit step of the nightly and evaluate-checkpoint flows: the results a fit covers, the lock
that keeps concurrent runs from leaving `latest` behind, and fit + report as two tasks.

Each problem of the step is one line in `failures` (the flow lists them and ends Failed): the fit
task failing, the report task failing, or a section of the report that failed to render (the
report is still written, with its headline: `section_errors` of build_report).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from kbitlaw.eval.calibration import CalibrationRef
from kbitlaw.eval.sweep import DatasetRef, eval_key, is_gptq
from kbitlaw.flows.fit import fit_task
from kbitlaw.flows.problems import one_line, retry_transient
from kbitlaw.report.headline import headline_line
from kbitlaw.report.web import public_url
from kbitlaw.store import Store, StoreError, parse_result_key, result_keys


@task(
    name="report",
    task_run_name="write the report",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,  # a bug or bad data fails the same way twice
)
def report_task(store_uri: str, fit_key: str, results_keys: list[str], provenance: dict) -> dict:
    """The HTML report of this fit (cached when the same fit was reported before)."""
    from kbitlaw.law.table import ResultsError
    from kbitlaw.report.build import build_report

    started = time.perf_counter()
    try:
        report = build_report(Store(store_uri), fit_key, results_keys=results_keys, provenance=provenance)
    except (ResultsError, StoreError, FileNotFoundError) as exc:  # bad input or the store: one line
        return Failed(message=one_line(exc), data=exc)  # retried only when transient
    kept = {k: report[k] for k in ("key", "url", "summary", "cached")}
    errors = [one_line(e) for e in report.get("section_errors", [])]
    for line in errors:  # one line each; the report was written without that section
        get_run_logger().error("report section failed: %s", line)
    return kept | {"section_errors": errors, "seconds": time.perf_counter() - started}


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
        get_run_logger().warning("no fit lock (%s); concurrent runs may race on latest", one_line(exc))
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
    for key in result_keys(store):
        parts = parse_result_key(key)
        if parts is None or parts.fingerprint not in fingerprints:
            continue
        try:
            current = gptq_evals if is_gptq(parts.quant) else evals
        except ValueError:  # a spec this version cannot parse: keyed as before GPTQ existed
            current = evals
        if parts.eval_key in current:
            keys.append(key)
    return sorted(keys)


def fit_and_report(store: Store, keys: list[str], provenance: dict) -> dict[str, Any]:
    """Refit the laws to `keys` and write the report: {fit, fit_doc, report, report_summary,
    seconds, failures}; a failed report section is a failure, its report is still returned."""
    out: dict[str, Any] = {"fit": None, "fit_doc": {}, "report": None, "report_summary": None}
    out |= {"seconds": 0.0, "failures": []}
    fit_state = fit_task(store.uri, keys, return_state=True)
    if not fit_state.is_completed():
        out["failures"].append(f"fit: {one_line(fit_state.message or 'failed')}")
        return out
    fitted = fit_state.result()
    out |= {"fit": fitted["key"], "fit_doc": fitted["doc"], "seconds": fitted["seconds"]}
    report_state = report_task(store.uri, fitted["key"], keys, provenance, return_state=True)
    if not report_state.is_completed():
        out["failures"].append(f"report: {one_line(report_state.message or 'failed')}")
        return out
    built = report_state.result()
    out["seconds"] += built["seconds"]
    out["failures"] += [f"report section {line}" for line in built.get("section_errors", [])]
    out["report_summary"] = built["summary"]
    out["report"] = {
        "key": built["key"],
        "url": built["url"],
        "link": public_url(store, built["key"]),  # where a browser opens it ($KBITLAW_REPORT_URL)
        "headline": headline_line(built["summary"]),
    }
    return out
