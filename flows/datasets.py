"""Clean and validate the datasets named by spec files (all of them by default)."""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.data import CleanDataset, DatasetError, DatasetSpec, clean_dataset, load_specs
from tasks.store import Store
from tasks.sweep import DatasetRef


def select_specs(names: list[str] | None, spec_dir: str | None = None) -> list[DatasetSpec]:
    specs = load_specs(spec_dir) if spec_dir else load_specs()
    unknown = [n for n in names or [] if n not in specs]
    if unknown:
        raise DatasetError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(specs)})")
    return [specs[n] for n in names] if names else list(specs.values())


def clean_datasets_now(store: Store, specs: list[DatasetSpec]) -> list[CleanDataset]:
    return [clean_dataset(store, spec) for spec in specs]


def validate_now(store: Store, spec: DatasetSpec, cleaned: CleanDataset):
    """Validate a clean dataset once: a stored result for its sha and suite settings is read."""
    from tasks.validate import VALIDATOR_VERSION, store_validation, stored_validation, validate_frame

    settings = {
        "kind": spec.kind,
        "min_rows": spec.min_rows,
        "max_chars": spec.max_chars,
        "extra": list(spec.expectations),
        "validator": VALIDATOR_VERSION,
    }
    if stored := stored_validation(store, spec.name, cleaned.sha, settings):
        return stored
    report = validate_frame(
        store.read_parquet(cleaned.key),
        spec.kind,
        name=spec.name,
        sha=cleaned.sha,
        min_rows=spec.min_rows,
        max_chars=spec.max_chars,
        extra=list(spec.expectations),
    )
    return report, store_validation(store, report, settings)


def validate_datasets(store: Store, specs: list[DatasetSpec]) -> list[tuple[CleanDataset, object, dict]]:
    out = []
    for spec, cleaned in zip(specs, clean_datasets_now(store, specs), strict=True):
        out.append((cleaned, *validate_now(store, spec, cleaned)))
    return out


@task(
    name="clean-and-validate",
    cache_policy=NO_CACHE,
    task_run_name="clean {name}",
    retries=1,
    retry_delay_seconds=5,
)
def clean_and_validate(store_uri: str, name: str, spec_dir: str | None = None) -> dict:
    """One dataset: clean (or read the stored clean version) and validate; raise if invalid."""
    from tasks.validate import ValidationFailed

    started = time.perf_counter()
    store, spec = Store(store_uri), select_specs([name], spec_dir)[0]
    cleaned = clean_dataset(store, spec)
    report, urls = validate_now(store, spec, cleaned)
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
def clean_datasets(
    store: str | None = None, names: list[str] | None = None, spec_dir: str | None = None
) -> list:
    """Clean and validate each dataset in its own task: one bad dataset fails alone."""
    store_uri = Store(store).uri
    futures = [clean_and_validate.submit(store_uri, s.name, spec_dir) for s in select_specs(names, spec_dir)]
    return [f.state for f in futures]
