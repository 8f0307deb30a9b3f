"""Cleaning canonical rows with polars: normalise, then drop what cannot be scored, with a reason.

Normalisation: Unicode NFC, runs of spaces/tabs collapsed to one space, runs of line breaks to
one newline (prompts like "Question: ...\\nAnswer:" keep their line), ends stripped.
Cells arrive as the file gave them: `choices` may be a JSON list in one text cell (CSV), `gold`
text or a float, text fields numbers; `coerce` converts them, and a cell that does not convert is
its row's reason ("choices not a JSON list", "gold not an integer").
Each dropped row goes to quarantine with the first reason that applies, in this order:
a cell that does not convert, null field, empty field, fewer than 2 choices, gold out of range,
duplicate choices, too long, too short (cloze needs a context and a last word), duplicate id,
duplicate row (same content as an earlier row after normalisation, whatever its id).
Rows in = rows out + rows quarantined.
"""

from __future__ import annotations

import json
import math

import polars as pl

from kbitlaw.vocab import DATASET_COLUMNS

CLEANING_VERSION = "1"  # part of every clean dataset's key: bump when a rule changes
OPTIONAL = {"multiple_choice": ("continuation",)}  # winogrande-style partial scoring
NOT_A_LIST, NOT_AN_INTEGER = "choices not a JSON list", "gold not an integer"
_SCALAR = (pl.String, pl.Boolean, pl.Null)


def json_choices(cell: str | None) -> tuple[list[str | None] | None, bool]:
    """(choices, ok) of one text cell holding a JSON list, e.g. ["yes", "no"]."""
    if cell is None:
        return None, True
    try:
        value = json.loads(cell)
    except ValueError:
        return None, False
    if not isinstance(value, list) or any(isinstance(v, list | dict) for v in value):
        return None, False
    return [None if v is None else str(v) for v in value], True


def _gold(value) -> tuple[int | None, bool]:
    """(gold, ok) of one cell that is not already an integer: "2", 2.0 convert; "b", 1.5 do not."""
    if value is None:
        return None, True
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("+-").isdigit():
            return None, False
        return int(value), True
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value), True
    return None, False


def coerce(df: pl.DataFrame, kind: str) -> pl.DataFrame:
    """The canonical dtypes (id, text: String; choices: List(String); gold: Int64) plus `_invalid`:
    the reason a row's cell did not convert (null when every cell did). Raises ValueError naming
    the column when a whole column has a type that cannot hold its field (e.g. nested text)."""
    invalid = [None] * df.height
    out = []
    for col in df.columns:
        dtype = df.schema[col]
        if col in ("id", "context", "text", "continuation"):
            if not (dtype.is_numeric() or dtype.is_temporal() or dtype in _SCALAR):
                raise ValueError(f"column '{col}' holds {dtype}, not text")
            out.append(df[col].cast(pl.String))
        elif col == "choices":
            if dtype == pl.String or dtype == pl.Null:
                parsed = [json_choices(c) for c in df[col].cast(pl.String)]
                invalid = [
                    r or (None if ok else NOT_A_LIST) for r, (_, ok) in zip(invalid, parsed, strict=True)
                ]
                out.append(pl.Series(col, [c for c, _ in parsed], dtype=pl.List(pl.String)))
            elif isinstance(dtype, pl.List) and (dtype.inner.is_numeric() or dtype.inner in _SCALAR):
                out.append(df[col].cast(pl.List(pl.String)))
            else:
                raise ValueError(f"column 'choices' holds {dtype}, not a list of texts")
        elif col == "gold" and not dtype.is_integer():
            if not (dtype.is_numeric() or dtype in _SCALAR):
                raise ValueError(f"column 'gold' holds {dtype}, not integers")
            parsed = [_gold(v) for v in df[col]] if dtype != pl.Null else [(None, True)] * df.height
            invalid = [
                r or (None if ok else NOT_AN_INTEGER) for r, (_, ok) in zip(invalid, parsed, strict=True)
            ]
            out.append(pl.Series(col, [g for g, _ in parsed], dtype=pl.Int64))
        else:
            out.append(df[col].cast(pl.Int64) if col == "gold" else df[col])
    return pl.DataFrame(out).with_columns(pl.Series("_invalid", invalid, dtype=pl.String))


def _normalise(expr: pl.Expr) -> pl.Expr:
    return (
        expr.str.normalize("NFC")
        .str.replace_all(r"[^\S\n]+", " ")
        .str.replace_all(r" ?\n[\s]*", "\n")
        .str.strip_chars()
    )


def normalise(df: pl.DataFrame, kind: str) -> pl.DataFrame:
    text_cols = [c for c in ("context", "text", "continuation") if c in df.columns]
    exprs = [_normalise(pl.col(c)) for c in text_cols]
    if "choices" in df.columns:
        exprs.append(pl.col("choices").list.eval(_normalise(pl.element())))
    return df.with_columns(exprs)


def _reasons(kind: str, columns: list[str], max_chars: int) -> list[tuple[str, pl.Expr]]:
    """(reason, condition) pairs, checked in order; conditions may assume earlier ones are false."""
    fields = DATASET_COLUMNS[kind]
    rules = [("null field", pl.any_horizontal([pl.col(c).is_null() for c in fields]))]
    if kind == "multiple_choice":
        empty = (pl.col("context").str.len_chars() == 0) & ~pl.lit("continuation" in columns)
        empty = (
            empty
            | pl.col("choices")
            .list.eval(pl.element().is_null() | (pl.element().str.len_chars() == 0))
            .list.any()
        )
        if "continuation" in columns:
            empty = empty | (pl.col("continuation").fill_null("").str.len_chars() == 0)
        n = pl.col("choices").list.len()
        longest = pl.max_horizontal(
            pl.col("context").str.len_chars(),
            pl.col("choices").list.eval(pl.element().str.len_chars()).list.max(),
        )
        rules += [
            ("empty field", empty),
            ("fewer than 2 choices", n < 2),
            ("gold out of range", (pl.col("gold") < 0) | (pl.col("gold") >= n)),
            ("duplicate choices", pl.col("choices").list.n_unique() < n),
            ("too long", longest > max_chars),
        ]
    else:
        rules += [
            ("empty field", pl.col("text").str.len_chars() == 0),
            ("too long", pl.col("text").str.len_chars() > max_chars),
        ]
        if kind == "cloze":
            rules.append(("too short", pl.col("text").str.split(" ").list.len() < 2))
    return rules


def _content_hash(kind: str, columns: list[str]) -> pl.Expr:
    """Hash of a row's normalised content without its id: equal content, equal hash."""
    parts = [c for c in DATASET_COLUMNS[kind] + OPTIONAL.get(kind, ()) if c != "id" and c in columns]
    cols = [pl.col(c).list.join("\x1f") if c == "choices" else pl.col(c).cast(pl.String) for c in parts]
    return pl.concat_str(cols, separator="\x1e", ignore_nulls=True).hash(seed=0)


def clean_frame(
    raw: pl.DataFrame, kind: str, *, max_chars: int = 20_000
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(clean rows, quarantined rows with `reason`). `raw` has the canonical columns and `row`."""
    columns = [c for c in DATASET_COLUMNS[kind] + OPTIONAL.get(kind, ()) if c in raw.columns]
    norm = normalise(coerce(raw.select(["row", *columns]), kind), kind)
    reason = pl.lit(None, dtype=pl.String)
    for label, condition in reversed(_reasons(kind, columns, max_chars)):
        reason = pl.when(condition.fill_null(True)).then(pl.lit(label)).otherwise(reason)
    reason = pl.coalesce(pl.col("_invalid"), reason)
    checked = norm.with_columns(reason.alias("reason"), _content_hash(kind, columns).alias("_hash"))
    ok = pl.col("reason").is_null()
    # Duplicates are judged only among rows that passed every other rule; the first one is kept.
    dup_id = ok & (pl.int_range(pl.len()).over(pl.col("id"), ok) > 0)
    checked = checked.with_columns(
        pl.when(dup_id).then(pl.lit("duplicate id")).otherwise(pl.col("reason")).alias("reason")
    )
    ok = pl.col("reason").is_null()
    first_of_hash = pl.int_range(pl.len()).over(pl.col("_hash"), pl.col("reason").is_null()) == 0
    checked = checked.with_columns(
        pl.when(ok & ~first_of_hash).then(pl.lit("duplicate row")).otherwise(pl.col("reason")).alias("reason")
    )
    clean = checked.filter(pl.col("reason").is_null()).select(columns)
    if (
        kind == "multiple_choice"
        and "continuation" in clean.columns
        and clean["continuation"].null_count() == clean.height
    ):
        clean = clean.drop("continuation")
    # Quarantine keeps the row as it arrived (before normalisation), its raw index and the reason.
    quarantine = (
        raw.select(["row", *columns])
        .join(checked.filter(pl.col("reason").is_not_null()).select("row", "reason"), on="row", how="inner")
        .sort("row")
    )
    return clean, quarantine


def summary(name: str, raw: pl.DataFrame, clean: pl.DataFrame, quarantine: pl.DataFrame) -> dict:
    counts = dict(quarantine.group_by("reason").len().sort("reason").iter_rows()) if quarantine.height else {}
    return {
        "name": name,
        "rows_in": raw.height,
        "rows_out": clean.height,
        "quarantined": quarantine.height,
        "reasons": counts,
        "cleaning_version": CLEANING_VERSION,
    }
