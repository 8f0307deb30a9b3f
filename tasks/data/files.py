"""Dataset files: raw bytes -> a polars frame, and ad-hoc files for `kbitlaw evaluate`.

Every failure is one line naming the file and the cause (and the line or row when there is one):
a CSV saved as .jsonl is "not JSON lines", a truncated JSON line gives its line number.
`read_dataset_file` / `read_dataset_frame` clean an ad-hoc dataset exactly as the nightly cleans a
spec's (data/cleaning.py: normalisation, max_chars, duplicates ...): a row that cannot be scored or
repeats an earlier one is dropped and counted per reason in one INFO line on the "kbitlaw" logger;
a malformed row (its label or choices unusable) is an error naming the row, since scoring the file
without it would quietly measure something else than its author meant.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import polars as pl

from kbitlaw.data.cleaning import NOT_A_LIST, NOT_AN_INTEGER, OPTIONAL, clean_frame, json_choices
from kbitlaw.eval.encoding import EvaluationError
from kbitlaw.store import Store
from kbitlaw.vocab import DATASET_COLUMNS, KINDS

log = logging.getLogger("kbitlaw")
MAX_CHARS = 20_000  # a dataset spec's default max_chars: longer rows are quarantined as "too long"


class DatasetError(ValueError):
    """Bad dataset input: one line naming the file (and row or field) and the cause."""


def read_bytes(source: str) -> bytes:
    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        return Store(parent).read_bytes(name)
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"{source}: no such file")
    return path.read_bytes()


def _jsonl_problem(data: bytes) -> str | None:
    """Why bytes are not JSON lines (one object per line), naming the first bad line; None if they are."""
    first = True
    for number, line in enumerate(io.BytesIO(data), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.rstrip(b"\r\n"))
        except ValueError as exc:
            cause = getattr(exc, "msg", str(exc).splitlines()[0]).removesuffix(" at")
            if isinstance(exc, json.JSONDecodeError):
                cause += f" at column {exc.colno}"
            if first:
                start = line[:20].decode("utf-8", "replace").strip()
                return f"not JSON lines: line {number} is not JSON ({cause}; it starts {start!r})"
            return f"line {number}: not valid JSON ({cause}; a truncated or broken line?)"
        if not isinstance(obj, dict):
            return f"line {number}: a JSON {type(obj).__name__}, not an object (one object per line)"
        first = False
    return None


def parse_table(data: bytes, source: str) -> pl.DataFrame:
    suffix = Path(source).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json", ".csv"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DatasetError(
                f"{source}: not UTF-8 text (invalid byte on line {line}, offset {exc.start})"
            ) from None
    try:
        if suffix in (".jsonl", ".ndjson"):
            if not data.strip():
                return pl.DataFrame()
            try:  # a full scan: a column whose type changes after row 100 becomes text, not an error
                return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
            except pl.exceptions.PolarsError:
                if problem := _jsonl_problem(data):
                    raise DatasetError(f"{source}: {problem}") from None
                raise
        if suffix == ".json":
            obj = json.loads(data)
            return pl.DataFrame(obj if isinstance(obj, list) else obj.get("data", obj))
        if suffix == ".parquet":
            return pl.read_parquet(io.BytesIO(data))
        if suffix == ".csv":
            return pl.read_csv(io.BytesIO(data), infer_schema_length=10_000)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"{source}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    raise DatasetError(f"{source}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet or .csv)")


# -- ad-hoc files for `kbitlaw evaluate` -------------------------------------------------------

# Quarantine reasons that mean the row itself is wrong: an error in `evaluate`, not a silent drop.
MALFORMED = (NOT_A_LIST, NOT_AN_INTEGER, "null field", "fewer than 2 choices", "gold out of range")


def read_dataset_file(
    path: str, kind: str | None = None, limit: int | None = None, *, max_chars: int = MAX_CHARS
) -> tuple[pl.DataFrame, str]:
    """Read and clean a dataset in a canonical schema from jsonl / json / parquet / csv; returns
    (clean frame, kind). In CSV, `choices` is a JSON list in one cell, e.g. ["yes", "no"]."""
    if not Path(path).is_file():
        raise EvaluationError(f"{path}: no such dataset file")
    try:
        df = parse_table(Path(path).read_bytes(), path)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    return read_dataset_frame(df, kind, limit, source=path, max_chars=max_chars)


def read_dataset_frame(
    df: pl.DataFrame,
    kind: str | None = None,
    limit: int | None = None,
    *,
    source: str = "dataset",
    max_chars: int = MAX_CHARS,
) -> tuple[pl.DataFrame, str]:
    """A frame in a canonical schema, cleaned as the nightly cleans (the first `limit` rows);
    returns (clean frame, kind). `source` names it in errors and in the INFO line that counts the
    quarantined rows per reason."""
    if df.height == 0:
        raise EvaluationError(f"{source}: the dataset has no rows")
    if kind is None:
        if not {"context", "choices", "gold"} <= set(df.columns):
            raise EvaluationError(f"{source}: cannot tell cloze from perplexity data: pass --kind")
        kind = "multiple_choice"
    if kind not in KINDS:
        raise EvaluationError(f"{source}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    missing = [c for c in DATASET_COLUMNS[kind] if c not in df.columns]
    if missing:
        raise EvaluationError(f"{source}: missing column(s) {', '.join(missing)} for kind {kind}")
    extra = [c for c in OPTIONAL.get(kind, ()) if c in df.columns]
    raw = (df.head(limit) if limit else df).select([*DATASET_COLUMNS[kind], *extra]).with_row_index("row")
    try:
        clean, quarantine = clean_frame(raw, kind, max_chars=max_chars)
    except (ValueError, pl.exceptions.PolarsError) as exc:
        raise EvaluationError(f"{source}: {str(exc).splitlines()[0]}") from None
    malformed = quarantine.filter(pl.col("reason").is_in(MALFORMED))
    if malformed.height:
        raise EvaluationError(_malformed_message(source, malformed))
    log.info("%s", quarantine_line(source, raw.height, clean.height, quarantine))
    if clean.height == 0:
        raise EvaluationError(f"{source}: no rows left to evaluate after cleaning")
    return clean, kind


def _rows(rows: list[int], most: int = 3) -> str:
    """'row 4' / 'rows 4, 9, 12, …' (1-based: the file's first data row is row 1)."""
    shown = ", ".join(str(r + 1) for r in rows[:most]) + (", …" if len(rows) > most else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown}"


def quarantine_line(source: str, rows_in: int, rows_out: int, quarantine: pl.DataFrame) -> str:
    """'mc.jsonl: 20 rows, 18 clean, 2 quarantined (too long: 1 (row 7), duplicate row: 1 (row 12))'."""
    line = f"{source}: {rows_in} rows, {rows_out} clean, {quarantine.height} quarantined"
    if not quarantine.height:
        return line
    groups = quarantine.group_by("reason", maintain_order=True).agg(pl.col("row"))
    reasons = ", ".join(
        f"{reason}: {len(rows)} ({_rows(sorted(rows))})" for reason, rows in groups.iter_rows()
    )
    return f"{line} ({reasons})"


def _malformed_message(source: str, malformed: pl.DataFrame) -> str:
    """One line for the first malformed row: the file, the row's id, the field and the cause."""
    row = malformed.row(0, named=True)
    reason, choices = row["reason"], row.get("choices")
    if isinstance(choices, str):  # CSV: the JSON text as it arrived
        choices = json_choices(choices)[0]
    n = len(choices) if isinstance(choices, list | pl.Series) else 0
    if reason == "null field":
        field = next(
            (c for c in ("id", "context", "choices", "gold", "text") if c in row and row[c] is None), "?"
        )
        cause = f"field '{field}' is missing or null"
    elif reason == "gold out of range":
        cause = f"gold {row['gold']} out of range for {n} choices"
    elif reason == "fewer than 2 choices":
        cause = f"needs at least 2 choices, has {n}"
    elif reason == NOT_AN_INTEGER:
        cause = f"field 'gold': {row['gold']!r} is not an integer"
    else:
        cause = f"field 'choices': {str(row['choices'])[:40]!r} is not a JSON list of texts"
    more = f"; {malformed.height - 1} more malformed row(s)" if malformed.height > 1 else ""
    name = f"row id={row['id']}" if row.get("id") is not None else f"row {row['row'] + 1}"
    return f"{source}: {name}: {cause} ({_rows([row['row']])} of the file{more})"
