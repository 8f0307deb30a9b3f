"""Datasets in the canonical schemas (DESIGN.md): reading files, content hashes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tasks.evaluate import SCHEMAS, EvaluationError
from tasks.store import sha256_bytes


def frame_sha(df: pl.DataFrame) -> str:
    """Content hash of a dataset: its rows as NDJSON, in order."""
    return sha256_bytes(df.write_ndjson().encode())


def infer_kind(df: pl.DataFrame, name: str) -> str:
    if {"context", "choices", "gold"} <= set(df.columns):
        return "multiple_choice"
    raise EvaluationError(f"{name}: cannot tell cloze from perplexity data: pass --kind")


def read_dataset_file(
    path: str, kind: str | None = None, limit: int | None = None
) -> tuple[pl.DataFrame, str]:
    """Read a canonical dataset from jsonl / parquet / csv; returns (frame, kind).

    In CSV, `choices` is a JSON list in one cell, e.g. ["yes", "no"].
    """
    name = Path(path).name
    if not Path(path).is_file():
        raise EvaluationError(f"{path}: no such dataset file")
    suffix = Path(path).suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            df = pl.read_ndjson(path)
        elif suffix == ".parquet":
            df = pl.read_parquet(path)
        elif suffix == ".csv":
            df = pl.read_csv(path, infer_schema_length=0)  # all strings; cast below
            if "choices" in df.columns:
                df = df.with_columns(
                    pl.col("choices").map_elements(json.loads, return_dtype=pl.List(pl.String))
                )
            if "gold" in df.columns:
                df = df.with_columns(pl.col("gold").cast(pl.Int64))
        else:
            raise EvaluationError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .parquet or .csv)")
    except EvaluationError:
        raise
    except Exception as exc:
        raise EvaluationError(
            f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    kind = kind or infer_kind(df, name)
    if kind not in SCHEMAS:
        raise EvaluationError(f"{path}: unknown kind {kind!r} (expected one of {', '.join(SCHEMAS)})")
    missing = [c for c in SCHEMAS[kind] if c not in df.columns]
    if missing:
        raise EvaluationError(f"{path}: missing column(s) {', '.join(missing)} for kind {kind}")
    df = df.select(SCHEMAS[kind]).with_columns(pl.col("id").cast(pl.String))
    return (df.head(limit) if limit else df), kind
