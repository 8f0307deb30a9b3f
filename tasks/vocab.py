"""The words every stage shares, defined once: the baseline specs, bits and bytes, metric names and
the results schema. Each of them is also part of stored data (result rows, fit documents, reports),
so a value here is never changed, only added to.
"""

from __future__ import annotations

import polars as pl

# -- quant specs ------------------------------------------------------------------------------------

BASELINES = ("fp16", "bf16")  # the unquantized 16-bit specs: the references every other spec is compared to

# -- bits and bytes ---------------------------------------------------------------------------------

BITS_PER_GB = 8e9  # a decimal gigabyte (10^9 bytes), as GPU memory is sold


def gb(bits: float) -> float:
    """`bits` in gigabytes."""
    return bits / BITS_PER_GB


def gb_bits(gigabytes: float) -> float:
    """`gigabytes` in bits."""
    return gigabytes * BITS_PER_GB


# -- datasets ---------------------------------------------------------------------------------------

# A clean dataset's columns, by kind (a multiple_choice dataset may also have `continuation`).
DATASET_COLUMNS = {
    "multiple_choice": ("id", "context", "choices", "gold"),
    "cloze": ("id", "text"),
    "perplexity": ("id", "text"),
}
KINDS = tuple(DATASET_COLUMNS)
ACCURACY_KINDS = ("multiple_choice", "cloze")  # scored by accuracy; perplexity datasets by loss

# -- metrics ----------------------------------------------------------------------------------------
# A result row's metric (eval/engine.py), by dataset kind: multiple_choice acc, acc_norm; cloze acc,
# perplexity; perplexity word_perplexity, byte_perplexity, bits_per_byte, loss. The laws use acc
# and loss; a law's point (law/table.py) has the metric mean_acc, acc:<dataset> or loss.

ACC = "acc"  # share of examples right
ACC_NORM = "acc_norm"  # multiple_choice: right by the highest log-likelihood per character
PERPLEXITY = "perplexity"  # cloze: of the target words
WORD_PERPLEXITY = "word_perplexity"
BYTE_PERPLEXITY = "byte_perplexity"
BITS_PER_BYTE = "bits_per_byte"  # a metric's name, not a unit
LOSS = "loss"  # nats per token
MEAN_ACC = "mean_acc"  # a point's acc averaged over its family's accuracy datasets
ACC_OF = "acc:"  # acc:<dataset>: a point's acc on one dataset
METRIC_WORDS = {MEAN_ACC: "mean zero-shot accuracy", LOSS: "loss"}  # the metrics in a sentence


def is_accuracy(metric: str) -> bool:
    """mean_acc or acc:<dataset>: a point metric where higher is better."""
    return metric == MEAN_ACC or metric.startswith(ACC_OF)


# -- the results schema (DESIGN.md) ------------------------------------------------------------------
# One long-format row per (checkpoint, quant spec, dataset, metric), these columns in this order.

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "checkpoint_id": pl.String,
    "checkpoint_uri": pl.String,
    "family": pl.String,
    "step": pl.Int64,
    "tokens_seen": pl.Int64,
    "tokens_planned": pl.Int64,  # beyond DESIGN.md: the run's planned total tokens (null: not given)
    # beyond DESIGN.md, null when not given (checkpoints.py, schedule.py): a finished model of its
    # tokens; the learning-rate schedule's areas in tokens, at the checkpoint and at the planned end
    "finished": pl.Boolean,
    "lr_area": pl.Float64,
    "lr_anneal": pl.Float64,
    "lr_area_planned": pl.Float64,
    "lr_anneal_planned": pl.Float64,
    "n_params": pl.Int64,
    "n_params_quantized": pl.Int64,
    "quant": pl.String,
    "dtype": pl.String,
    "bits": pl.Int64,
    "block_size": pl.Int64,
    "outlier_pct": pl.Float64,
    "bits_per_param": pl.Float64,
    "total_bits": pl.Float64,
    "calibration": pl.String,  # beyond DESIGN.md: GPTQ's calibration data, NAME:N (null: round-to-nearest)
    "dataset": pl.String,
    "dataset_sha": pl.String,
    "kind": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    "stderr": pl.Float64,
    "n_examples": pl.Int64,
    "n_truncated": pl.Int64,  # beyond DESIGN.md: examples left-truncated to fit the model window
    "bos": pl.Boolean,  # beyond DESIGN.md: a BOS token started every scored text (the tokenizer's default)
    "seconds": pl.Float64,
    "device": pl.String,
    "kbitlaw_version": pl.String,
    "created_at": pl.String,
}

# Columns added after results were first hashed (law/table.py's results_sha). A file written before
# them lacks them and reads them as null. The LATER_COLUMNS count in the hash only where some row
# has a value, in this order, so older result sets keep their sha; n_truncated and bos never count.
SCHEDULE_COLUMNS = ("finished", "lr_area", "lr_anneal", "lr_area_planned", "lr_anneal_planned")
LATER_COLUMNS = ("calibration", "tokens_planned", *SCHEDULE_COLUMNS)
UNHASHED_COLUMNS = ("n_truncated", "bos")
# The columns of the first schema, in RESULT_SCHEMA's order.
RESULT_COLUMNS = tuple(c for c in RESULT_SCHEMA if c not in (*LATER_COLUMNS, *UNHASHED_COLUMNS))
# Columns that differ between two runs of the same evaluation: never hashed.
VOLATILE_COLUMNS = ("seconds", "created_at", "device", "kbitlaw_version")
