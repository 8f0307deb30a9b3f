"""Clean and validate datasets from their dataset specs, each step read back from the store when its
inputs are unchanged (clean Parquet by input sha, validation by clean sha + suite settings)."""

from __future__ import annotations

import logging

from kbitlaw.data.specs import CleanDataset, DatasetError, DatasetSpec, clean_dataset, load_dataset_specs
from kbitlaw.store import Store

log = logging.getLogger("kbitlaw")


def select_dataset_specs(
    names: list[str] | None, directory: str | None = None, *, invalid: list[str] | None = None
) -> list[DatasetSpec]:
    """The dataset specs named (all of them by default) from `directory` (see dataset_spec_dir).

    A spec file that cannot be loaded fails its own dataset only: its one-line error is appended
    to `invalid` when a list is given (the nightly counts it as that dataset's failure); otherwise
    it is raised when that dataset is asked for by name, and logged as an error on the "kbitlaw"
    logger when all datasets are asked for, the good ones being returned."""
    specs = load_dataset_specs(directory)
    unknown = [n for n in names or [] if n not in specs and n not in specs.errors]
    if unknown:
        known = ", ".join(sorted([*specs, *specs.errors]))
        raise DatasetError(f"unknown dataset(s) {', '.join(unknown)} (known: {known})")
    wanted = list(dict.fromkeys(names)) if names else [*specs, *specs.errors]
    errors = [specs.errors[n] for n in wanted if n in specs.errors]
    if invalid is not None:
        invalid.extend(errors)
    elif errors and names:
        raise DatasetError("; ".join(errors))
    else:
        for message in errors:
            log.error("invalid dataset spec: %s", message)
    return [specs[n] for n in wanted if n in specs]


def clean_datasets(store: Store, specs: list[DatasetSpec]) -> list[CleanDataset]:
    return [clean_dataset(store, spec) for spec in specs]


def validate_dataset(store: Store, spec: DatasetSpec, cleaned: CleanDataset):
    """Validate a clean dataset once: a stored result for its sha and suite settings is read.
    Returns (report, {"json": url, "html": url})."""
    from kbitlaw.data.validate import VALIDATOR_VERSION, store_validation, stored_validation, validate_frame

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
    """Clean (or read) and validate each dataset: [(cleaned, report, urls)]."""
    return [
        (c, *validate_dataset(store, s, c)) for s, c in zip(specs, clean_datasets(store, specs), strict=True)
    ]
