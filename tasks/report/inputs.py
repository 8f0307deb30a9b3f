"""What a report reads: the stored fit document (fits/<sha>/fit.json) and its long table
(fit.parquet), nothing else. The points come from the table's "point" rows (each size's matched
latest checkpoint, what the laws over size were fitted on) and "checkpoint" rows (every
checkpoint); the dataset versions from the document's `datasets`. Nothing is recomputed from the
results, and nothing in a document, however broken, makes reading it raise: what is missing
becomes an empty table and a line in `problems` (shown on the page).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kbitlaw.law.common import POINT_COLUMNS, TABLE_SCHEMA
from kbitlaw.law.fitdoc import FitDocument, text
from kbitlaw.store import Store, StoreError, fit_table_key, parse_fit_key

# The points' columns as the figures and tables read them (the law stage's names for them).
POINT_SCHEMA = {c: TABLE_SCHEMA[c] for c in POINT_COLUMNS}
PREDATES_POINTS = (
    "this fit predates the per-checkpoint points in its table (fit.parquet): refit to see "
    "every checkpoint's metrics"
)


@dataclass(frozen=True)
class Inputs:
    fit: FitDocument
    table: pl.DataFrame  # fit.parquet, every TABLE_SCHEMA column (null where an older table lacks it)
    points: pl.DataFrame  # every checkpoint's points, one family ("checkpoint" rows)
    latest: pl.DataFrame  # each size's matched latest checkpoint ("point" rows)
    family: str
    keys: list[str]  # the results keys the caller says the fit was made of (may be empty)
    dataset_versions: list[tuple[str, str]]  # (dataset, dataset_sha) the fitted results used
    problems: list[str] = field(default_factory=list)  # shown on the page as warnings

    @property
    def doc(self) -> dict:
        return self.fit.raw


def as_key(store: Store, key_or_url: str) -> str:
    """A store key from a key or from the URL store.url() made of it (as the fit task returns)."""
    root = store.url("x")[:-1]
    return key_or_url[len(root) :] if key_or_url.startswith(root) else key_or_url


def empty_table() -> pl.DataFrame:
    return pl.DataFrame(schema=TABLE_SCHEMA)


def conform(table: Any) -> pl.DataFrame:
    """The table with every TABLE_SCHEMA column in its dtype: a column an older table lacks, or
    one that cannot be cast, is null (extra columns are kept)."""
    if not isinstance(table, pl.DataFrame):
        return empty_table()
    cols = []
    for name, dtype in TABLE_SCHEMA.items():
        if name not in table.columns:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
        elif table.schema[name] != dtype:
            cols.append(pl.col(name).cast(dtype, strict=False))
    return table.with_columns(cols) if cols else table


def read_table(store: Store, key: str) -> tuple[pl.DataFrame, list[str]]:
    """fit.parquet beside the document (an empty table and a problem when it cannot be read)."""
    try:
        return conform(store.read_parquet(key)), []
    except (StoreError, OSError, ValueError, pl.exceptions.PolarsError) as exc:
        return empty_table(), [f"the fit's table {key} could not be read: {exc}"]


def section_points(table: pl.DataFrame, section: str, family: str | None = None) -> pl.DataFrame:
    """The table's rows of one points section (of one family), in the points' columns."""
    rows = table.filter(pl.col("section") == section)
    if family is not None:
        rows = rows.filter(pl.col("family") == family)
    # A point without a finite value, size or total bits cannot be drawn on a log axis.
    usable = [pl.col(c).is_not_null() & pl.col(c).is_finite() for c in ("value", "n_params", "total_bits")]
    return rows.filter(*usable).select(list(POINT_SCHEMA))


def report_family(table: pl.DataFrame, fit: FitDocument) -> str:
    """The family with the most checkpoints in the table (the most sizes in an older table that has
    no "checkpoint" rows); else the document's first family."""
    for section, key in (("checkpoint", "checkpoint_id"), ("point", "n_params")):
        rows = table.filter(pl.col("section") == section, pl.col("family").is_not_null())
        if rows.height:
            counts = rows.group_by("family").agg(pl.col(key).n_unique().alias("n"))
            return counts.sort(["n", "family"], descending=[True, False])["family"][0]
    return (fit.families or ["(none)"])[0]


def dataset_versions(fit: FitDocument) -> list[tuple[str, str]]:
    """The document's `datasets` ([[name, sha], ...]); malformed items are skipped."""
    found = fit.raw.get("datasets")
    pairs = found if isinstance(found, list) else []
    return [
        (p[0], p[1])
        for p in pairs
        if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, str) for v in p)
    ]


def load_inputs(store: Store, fit_key: str, doc: Any, results_keys: list[str] | None = None) -> Inputs:
    """The report's inputs from the document (already read) and the table stored beside it."""
    table, problems = read_table(store, fit_table_key(fit_key))  # not from its (maybe broken) results_sha
    return inputs_from(doc, table, results_keys, problems)


def inputs_from(
    doc: Any, table: pl.DataFrame, results_keys: list[str] | None = None, problems: list[str] | None = None
) -> Inputs:
    """The report's inputs from a document and its table (the fuzz tests build them this way)."""
    fit, table, problems = FitDocument.of(doc), conform(table), list(problems or [])
    family = report_family(table, fit)
    points = section_points(table, "checkpoint", family)
    latest = section_points(table, "point", family)
    if table.height and not table.filter(pl.col("section") == "checkpoint").height:
        problems.append(PREDATES_POINTS)
    others = [f for f in fit.families if f != family]
    if others:
        problems.append(f"this report covers family {family}; also in the fit: {', '.join(others)}")
    if "datasets" not in fit.raw:
        problems.append("this fit predates the dataset versions in its document: refit to list them")
    keys = sorted(k for k in results_keys or [] if isinstance(k, str))
    return Inputs(fit, table, points, latest, family, keys, dataset_versions(fit), problems)


def report_sha(fit_key: str, doc: Any) -> str:
    """The results sha the report is filed under: the one in the fit's key (fits/<sha>/fit.json),
    which names what was fitted whatever the document says; else the document's, when it is a
    plain hex string (a key part from a broken document must not leave reports/); else 'unknown'."""
    if (from_key := parse_fit_key(fit_key)) is not None:
        return from_key
    sha = text(doc.get("results_sha")) if isinstance(doc, dict) else ""
    return sha if re.fullmatch(r"[0-9a-f]{8,128}", sha) else "unknown"
