"""Clean and validate datasets from their dataset specs, each step read back from the store when its
inputs are unchanged (clean Parquet by input sha, validation by clean sha + suite settings)."""

from __future__ import annotations

from kbitlaw.data.specs import CleanDataset, DatasetError, DatasetSpec, clean_dataset, load_dataset_specs
from kbitlaw.store import Store


def select_dataset_specs(names: list[str] | None, directory: str | None = None) -> list[DatasetSpec]:
    """The dataset specs named (all of them by default) from `directory` (see dataset_spec_dir)."""
    specs = load_dataset_specs(directory)
    unknown = [n for n in names or [] if n not in specs]
    if unknown:
        raise DatasetError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(specs)})")
    return [specs[n] for n in names] if names else list(specs.values())


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
