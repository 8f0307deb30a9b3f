"""Evaluate one checkpoint at several quant specs: load once, tokenize once, quantize in turn."""

from __future__ import annotations

import logging
from typing import Any

import polars as pl
import torch

from tasks.checkpoints import load_model, load_tokenizer, resolve
from tasks.data import frame_sha
from tasks.evaluate import evaluate_prepared, max_length, prepare
from tasks.quantize import quantize_model, resolve_grid, restore
from tasks.results import result_rows
from tasks.scoring import Scorer

log = logging.getLogger("kbitlaw")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_specs(
    checkpoint: str,
    df: pl.DataFrame,
    kind: str,
    specs: str,
    *,
    dataset: str = "dataset",
    delimiter: str = " ",
    batch_size: int = 32,
    device: str | None = None,
    allow_pickle: bool = False,
) -> list[dict[str, Any]]:
    """Results rows for every (spec, metric) of one checkpoint on one dataset."""
    quant_specs = resolve_grid(specs)  # parse first: a typo fails before the model loads
    ckpt = resolve(checkpoint, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(ckpt)
    model = load_model(ckpt, device=device or default_device(), allow_pickle=allow_pickle)
    prepared = prepare(df, kind, tokenizer, max_length(model, tokenizer), name=dataset, delimiter=delimiter)
    sha, scorer, rows = frame_sha(df), Scorer(model, batch_size=batch_size), []
    try:
        for spec in quant_specs:
            report = quantize_model(model, spec)
            metric_rows = evaluate_prepared(model, prepared, scorer=scorer)
            log.info("%s %s %s", ckpt.id, spec, {r["metric"]: round(r["value"], 4) for r in metric_rows})
            rows += result_rows(ckpt, report.columns(), metric_rows, sha)
    finally:
        restore(model)
    return rows
