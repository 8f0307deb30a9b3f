"""Clean and validate the datasets named by dataset specs (all of them by default), one task each."""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.states import Failed

from kbitlaw.data.prepare import select_dataset_specs, validate_dataset
from kbitlaw.data.specs import clean_dataset
from kbitlaw.eval.sweep import DatasetRef
from kbitlaw.flows.problems import retry_transient
from kbitlaw.store import Store


@task(
    name="clean-and-validate",
    cache_policy=NO_CACHE,
    task_run_name="clean {name}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)
def clean_and_validate(store_uri: str, name: str, dataset_specs: str | None = None) -> dict:
    """One dataset: clean (or read the stored clean version) and validate; Failed if invalid."""
    try:
        return _clean_and_validate(store_uri, name, dataset_specs)
    except ValueError as exc:  # a bad spec, bad data, a failed validation: one line, no traceback
        return Failed(message=str(exc), data=exc)


def _clean_and_validate(store_uri: str, name: str, dataset_specs: str | None) -> dict:
    from kbitlaw.data.validate import ValidationFailed

    started = time.perf_counter()
    store, spec = Store(store_uri), select_dataset_specs([name], dataset_specs)[0]
    cleaned = clean_dataset(store, spec)
    report, urls = validate_dataset(store, spec, cleaned)
    logger = get_run_logger()
    logger.info(
        "%s: %s rows clean (%s), validation %s",
        name,
        cleaned.summary["rows_out"],
        "cached" if cleaned.cached else "cleaned",
        "ok" if report.success else "FAILED",
    )
    if not report.success:
        raise ValidationFailed(report)
    ref = DatasetRef(spec.name, spec.kind, cleaned.key, cleaned.sha, spec.delimiter)
    return {
        "ref": asdict(ref),
        "summary": cleaned.summary,
        "validation": urls,
        "chance": spec.chance,
        "seconds": time.perf_counter() - started,
    }


@flow(name="clean-datasets", log_prints=True)
def clean_datasets_flow(store: str = "", names: str = "", dataset_specs: str = "") -> list:
    """Clean and validate each dataset in its own task: one bad dataset fails alone (the flow
    run then ends Failed, naming it). Returns each task's final state. Parameters are plain
    strings (empty: the default store, every dataset, the builtin specs; `names` comma-separated)
    so the run form shows one field each, not a type toggle."""
    store_uri = Store(store or None).uri
    wanted = [n.strip() for n in names.split(",") if n.strip()] or None
    specs = dataset_specs or None
    futures = [
        clean_and_validate.submit(store_uri, s.name, specs) for s in select_dataset_specs(wanted, specs)
    ]
    wait(futures)  # final states: before this they may still be Pending or Running
    return [f.state for f in futures]
