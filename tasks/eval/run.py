"""Evaluate one checkpoint at several quant specs: load once, tokenize once, quantize in turn.

loaded = load_checkpoint("runs/my-model/step-4000")          # safetensors only, no remote code
rows = evaluate_specs(loaded, df, "multiple_choice", "fp16,int4-b64,nf4-b64")
rows, samples = evaluate_specs(loaded, df, "multiple_choice", "fp16,int4", samples=True)  # + per example
rows = evaluate_specs(loaded, df, "perplexity", "int3-b64,int3-b64-gptq", calibration="text:128")  # GPTQ
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch

from kbitlaw.checkpoint_loading import load_model, load_tokenizer, pristine_device, resolve_device
from kbitlaw.checkpoints import Checkpoint, resolve
from kbitlaw.data.specs import frame_sha
from kbitlaw.eval.calibration import DEFAULT_CALIBRATION, CalibrationRef, calibration_ref, calibration_tokens
from kbitlaw.eval.engine import evaluate_prepared, max_length, prepare
from kbitlaw.eval.results import result_rows
from kbitlaw.eval.scoring import Scorer
from kbitlaw.quant.fake import quantize_model, restore
from kbitlaw.quant.spec import QuantSpec, resolve_grid

log = logging.getLogger("kbitlaw")


@dataclass
class LoadedCheckpoint:
    """A checkpoint's identity (fingerprint, family, step ...) with its model and tokenizer."""

    checkpoint: Checkpoint
    model: torch.nn.Module
    tokenizer: Any


def load_checkpoint(uri: str | Checkpoint, *, device: str | None = None, allow_pickle: bool = False):
    """Load a Hugging Face checkpoint (local dir, s3:// prefix or hf://org/name@rev) for evaluation,
    on `device` (auto, cpu, cuda, cuda:N: see checkpoint_loading.resolve_device)."""
    device = resolve_device(device)  # a device this machine lacks: one line, before any download
    ckpt = resolve(uri, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(ckpt)
    model = load_model(ckpt, device=device, allow_pickle=allow_pickle)
    return LoadedCheckpoint(ckpt, model, tokenizer)


def evaluate_specs(
    checkpoint: str | LoadedCheckpoint,
    df: pl.DataFrame,
    kind: str,
    specs: str | list[str | QuantSpec],
    *,
    dataset: str = "dataset",
    delimiter: str = " ",
    batch_size: int = 32,
    device: str | None = None,
    allow_pickle: bool = False,
    samples: bool = False,
    calibration: str | CalibrationRef | None = DEFAULT_CALIBRATION,
    dataset_specs: str | None = None,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], pl.DataFrame]:
    """Results rows for every (spec, metric) of one checkpoint on one dataset. The model's weights
    are the original ones again when this returns. With samples=True, returns (rows, samples): the
    per-example scores of every spec (SAMPLE_SCHEMAS[kind] after checkpoint_id, quant, dataset
    columns), each spec's rows in the dataset's order, so specs pair up on `id`.
    GPTQ specs are calibrated on `calibration` (`NAME[:N][:MODE]`, a dataset of `dataset_specs`: see
    eval/calibration.py), recorded in the rows' `calibration` column (null for the others)."""
    quant_specs = (  # parse first: a typo fails before the model loads
        resolve_grid(specs)
        if isinstance(specs, str)
        else [QuantSpec.parse(s) if isinstance(s, str) else s for s in specs]
    )
    gptq = [s for s in quant_specs if s.method == "gptq"]
    if gptq and calibration is None:
        raise ValueError(f"{gptq[0]}: GPTQ needs calibration data (a calibration NAME[:N])")
    ref = None
    if gptq:
        ref = (
            calibration
            if isinstance(calibration, CalibrationRef)
            else calibration_ref(calibration, dataset_specs)
        )
    loaded = (
        checkpoint
        if isinstance(checkpoint, LoadedCheckpoint)
        else load_checkpoint(checkpoint, device=device, allow_pickle=allow_pickle)
    )
    ckpt, model = loaded.checkpoint, loaded.model
    window = max_length(model, loaded.tokenizer)
    prepared = prepare(df, kind, loaded.tokenizer, window, name=dataset, delimiter=delimiter)
    tokens = calibration_tokens(ref, loaded.tokenizer, window) if ref else None
    sha, scorer, rows, frames = frame_sha(df), Scorer(model, batch_size=batch_size), [], []
    keep = pristine_device(model)  # a model on a GPU keeps its original weights on the CPU
    try:
        for spec in quant_specs:
            gptq = spec.method == "gptq"
            report = quantize_model(
                model,
                spec,
                pristine_device=keep,
                calibration=tokens if gptq else None,
                calibration_mode=ref.mode if gptq and ref else "sequential",
            )
            columns = report.columns() | {"calibration": str(ref) if spec.method == "gptq" else None}
            metric_rows, frame = evaluate_prepared(model, prepared, scorer=scorer, samples=True)
            log.info("%s %s %s", ckpt.id, spec, {r["metric"]: round(r["value"], 4) for r in metric_rows})
            rows += result_rows(ckpt, columns, metric_rows, sha)
            if samples:
                identity = {"checkpoint_id": ckpt.id, "quant": report.columns()["quant"], "dataset": dataset}
                frames.append(frame.select(*(pl.lit(v).alias(k) for k, v in identity.items()), pl.all()))
    finally:
        restore(model)
    return (rows, pl.concat(frames) if frames else pl.DataFrame()) if samples else rows
