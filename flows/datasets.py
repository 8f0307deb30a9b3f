"""Clean and validate the datasets named by spec files (all of them by default)."""

from __future__ import annotations

from tasks.data import CleanDataset, DatasetError, DatasetSpec, clean_dataset, load_specs
from tasks.store import Store


def select_specs(names: list[str] | None, spec_dir: str | None = None) -> list[DatasetSpec]:
    specs = load_specs(spec_dir) if spec_dir else load_specs()
    unknown = [n for n in names or [] if n not in specs]
    if unknown:
        raise DatasetError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(specs)})")
    return [specs[n] for n in names] if names else list(specs.values())


def clean_datasets(store: Store, specs: list[DatasetSpec]) -> list[CleanDataset]:
    return [clean_dataset(store, spec) for spec in specs]


def validate_datasets(store: Store, specs: list[DatasetSpec]) -> list[tuple[CleanDataset, object, dict]]:
    """Validate each clean dataset (cleaning it first if needed); returns (dataset, report, urls)."""
    from tasks.validate import store_validation, validate_frame

    out = []
    for spec, cleaned in zip(specs, clean_datasets(store, specs), strict=True):
        report = validate_frame(
            store.read_parquet(cleaned.key),
            spec.kind,
            name=spec.name,
            sha=cleaned.sha,
            min_rows=spec.min_rows,
            max_chars=spec.max_chars,
            extra=list(spec.expectations),
        )
        out.append((cleaned, report, store_validation(store, report)))
    return out
