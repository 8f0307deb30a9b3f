"""Result rows in the results schema (kbitlaw.vocab.RESULT_SCHEMA: one long-format row per
(checkpoint, quant spec, dataset, metric)), and the samples schemas: one row per dataset row with
the per-example scores the metrics average."""

from __future__ import annotations

import datetime as _dt
from importlib import metadata
from typing import Any

import polars as pl

from kbitlaw.vocab import RESULT_SCHEMA, SCHEDULE_COLUMNS

# samples/<checkpoint_fp>/<quant>/<eval_key>.parquet, by dataset kind; rows in the dataset's order.
SAMPLE_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "multiple_choice": {
        "id": pl.String,
        "gold": pl.Int64,
        "loglikelihood": pl.List(pl.Float64),  # per choice, summed over the continuation's tokens
        "is_greedy": pl.List(pl.Boolean),  # per choice: greedy decoding reproduces it
        "correct": pl.Boolean,  # argmax log-likelihood == gold (acc)
        "correct_norm": pl.Boolean,  # argmax log-likelihood / choice characters == gold (acc_norm)
    },
    "cloze": {
        "id": pl.String,
        "loglikelihood": pl.Float64,  # of the target (last word)
        "is_greedy": pl.Boolean,
        "correct": pl.Boolean,  # acc: greedy decoding reproduces every target token
        "n_tokens": pl.Int64,  # target tokens
    },
    "perplexity": {
        "id": pl.String,
        "loss": pl.Float64,  # total NLL of the document in nats (every token predicted once)
        "n_tokens": pl.Int64,
        "n_bytes": pl.Int64,  # UTF-8 bytes
        "n_words": pl.Int64,  # whitespace-separated words, as lm-eval counts them
    },
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
        "tokens_planned": checkpoint.tokens_planned,
        # the schedule columns (checkpoints.py; an object without them has none)
        **{c: getattr(checkpoint, c, None) for c in SCHEDULE_COLUMNS},
        "dataset_sha": dataset_sha,
        "kbitlaw_version": kbitlaw_version(),
        "created_at": now,
        **quant_columns,
    }
    return [{col: {**base, **row}.get(col) for col in RESULT_SCHEMA} for row in metric_rows]


def results_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)
