"""The results schema (DESIGN.md): one long-format row per (checkpoint, quant spec, dataset, metric)."""

from __future__ import annotations

import datetime as _dt
from importlib import metadata
from typing import Any

import polars as pl

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "checkpoint_id": pl.String,
    "checkpoint_uri": pl.String,
    "family": pl.String,
    "step": pl.Int64,
    "tokens_seen": pl.Int64,
    "n_params": pl.Int64,
    "n_params_quantized": pl.Int64,
    "quant": pl.String,
    "dtype": pl.String,
    "bits": pl.Int64,
    "block_size": pl.Int64,
    "outlier_pct": pl.Float64,
    "bits_per_param": pl.Float64,
    "total_bits": pl.Float64,
    "dataset": pl.String,
    "dataset_sha": pl.String,
    "kind": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    "stderr": pl.Float64,
    "n_examples": pl.Int64,
    "n_truncated": pl.Int64,  # beyond DESIGN.md: examples left-truncated to fit the model window
    "seconds": pl.Float64,
    "device": pl.String,
    "kbitlaw_version": pl.String,
    "created_at": pl.String,
}


def kbitlaw_version() -> str:
    try:
        return metadata.version("kbitlaw")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def result_rows(
    checkpoint: Any, quant_columns: dict[str, Any], metric_rows: list[dict[str, Any]], dataset_sha: str
) -> list[dict[str, Any]]:
    """Full results rows: checkpoint identity + quantization accounting + each metric row."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    base = {
        "checkpoint_id": checkpoint.id,
        "checkpoint_uri": checkpoint.uri,
        "family": checkpoint.family,
        "step": checkpoint.step,
        "tokens_seen": checkpoint.tokens_seen,
        "dataset_sha": dataset_sha,
        "kbitlaw_version": kbitlaw_version(),
        "created_at": now,
        **quant_columns,
    }
    return [{col: {**base, **row}.get(col) for col in RESULT_SCHEMA} for row in metric_rows]


def results_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)
