"""`kbitlaw datasets clean|validate`: the evaluation datasets, cleaned and validated."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from kbitlaw.flows.cli.common import (
    JsonOpt,
    OldSpecDirOpt,
    SpecDirOpt,
    StoreOpt,
    _fail,
    datasets_app,
    error_line,
)


@datasets_app.command("clean")
def datasets_clean(
    names: Annotated[list[str] | None, typer.Argument(help="Dataset names (default: all)")] = None,
    store: StoreOpt = None,
    specs: SpecDirOpt = None,
    old_specs: OldSpecDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clean the named datasets into canonical Parquet + quarantine (cached by content)."""
    from kbitlaw.data.prepare import clean_datasets, select_dataset_specs
    from kbitlaw.data.specs import DatasetError
    from kbitlaw.store import Store, StoreError

    invalid: list[str] = []
    try:
        s = Store(store)
        done = clean_datasets(s, select_dataset_specs(names, specs or old_specs, invalid=invalid))
    except (DatasetError, StoreError, ValueError) as exc:
        _fail(error_line(exc))
    for problem in invalid:
        typer.echo(f"failed: {problem}", err=True)
    if as_json:
        doc = [
            c.summary | {"key": s.url(c.key), "quarantine": s.url(c.quarantine_key), "cached": c.cached}
            for c in done
        ]
        sys.stdout.write(json.dumps({"datasets": doc}) + "\n")
        raise typer.Exit(1 if invalid else 0)
    for c in done:
        reasons = ", ".join(f"{k}: {v}" for k, v in c.summary["reasons"].items()) or "none"
        typer.echo(
            f"{c.name}\t{c.summary['rows_in']} in, {c.summary['rows_out']} clean, "
            f"{c.summary['quarantined']} quarantined ({reasons})\t{'cached' if c.cached else 'cleaned'}"
            f"\t{s.url(c.key)}"
        )
    raise typer.Exit(1 if invalid else 0)


@datasets_app.command("validate")
def datasets_validate(
    names: Annotated[list[str] | None, typer.Argument(help="Dataset names (default: all)")] = None,
    store: StoreOpt = None,
    specs: SpecDirOpt = None,
    old_specs: OldSpecDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate the cleaned datasets with Great Expectations; exit 1 if any fails."""
    from kbitlaw.data.prepare import select_dataset_specs, validate_datasets
    from kbitlaw.data.specs import DatasetError
    from kbitlaw.store import Store, StoreError

    invalid: list[str] = []
    try:
        picked = select_dataset_specs(names, specs or old_specs, invalid=invalid)
        results = validate_datasets(Store(store), picked)
    except (DatasetError, StoreError, ValueError) as exc:
        _fail(error_line(exc))
    for problem in invalid:
        typer.echo(f"failed: {problem}", err=True)
    if as_json:
        doc = [
            {"name": c.name, "sha": c.sha, "success": r.success, "message": r.message(), **urls}
            for c, r, urls in results
        ]
        sys.stdout.write(json.dumps({"datasets": doc}) + "\n")
    else:
        for c, r, urls in results:
            typer.echo(f"{c.name}\t{'ok' if r.success else 'FAILED'}\t{r.message()}\t{urls['html']}")
    raise typer.Exit(0 if all(r.success for _, r, _ in results) and not invalid else 1)
