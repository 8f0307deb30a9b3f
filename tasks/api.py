"""The public API's functions (re-exported by `kbitlaw`): quantize, evaluate and fit from Python.

import kbitlaw
loaded = kbitlaw.load_checkpoint("runs/my-model/step-4000")
with kbitlaw.quantized(loaded.model, "nf4-b64") as report:      # restored on exit
    print(report.bits_per_param, report.total_bits)
results = kbitlaw.evaluate(loaded, "piqa.jsonl", "fp16,int4-b64,nf4-b64")   # polars DataFrame
fit = kbitlaw.fit_laws(results)                                               # the fit document
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import torch

from kbitlaw.eval.results import results_frame
from kbitlaw.eval.run import LoadedCheckpoint, evaluate_specs, load_checkpoint
from kbitlaw.quant.fake import QuantReport, fake_quantize, quantize_model, restore
from kbitlaw.quant.spec import QuantSpec

__all__ = ["evaluate", "fake_quantize", "fit_laws", "load_checkpoint", "quantize_", "quantized", "restore"]


def quantize_(
    model: torch.nn.Module,
    spec: QuantSpec | str,
    *,
    calibration: torch.Tensor | None = None,
    calibration_mode: str = "sequential",
) -> QuantReport:
    """Fake-quantize `model`'s transformer linears in place (torchao's `quantize_` convention);
    `restore(model)` puts the original weights back, bit for bit. Applying another spec first
    restores, so specs never compound. Returns the bit accounting and per-layer error. A -gptq
    spec needs `calibration`, token ids [n_seq, seq_len] (kbitlaw.eval.calibration makes them);
    `calibration_mode` "parallel" takes every Hessian from the original model, reused by the next
    GPTQ spec on the same model and tokens."""
    return quantize_model(model, spec, calibration=calibration, calibration_mode=calibration_mode)


@contextmanager
def quantized(
    model: torch.nn.Module,
    spec: QuantSpec | str,
    *,
    calibration: torch.Tensor | None = None,
    calibration_mode: str = "sequential",
) -> Iterator[QuantReport]:
    """`quantize_` for the duration of a `with` block; the original weights are back afterwards."""
    report = quantize_model(model, spec, calibration=calibration, calibration_mode=calibration_mode)
    try:
        yield report
    finally:
        restore(model)


def evaluate(
    model_or_uri: LoadedCheckpoint | str,
    data: pl.DataFrame | str | Path,
    specs: str | list[str | QuantSpec] = "fp16",
    *,
    kind: str | None = None,
    dataset: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    max_chars: int = 20_000,
    calibration: str = "text:128",
) -> pl.DataFrame:
    """Results rows (the results schema) of one checkpoint on one dataset at each spec.

    `model_or_uri`: a checkpoint URI or load_checkpoint()'s result (loaded once, reused).
    `data`: a DataFrame in a canonical schema, or a jsonl / json / parquet / csv file of one. Its
    first `limit` rows are cleaned as the nightly cleans (data/cleaning.py): rows that cannot be
    scored (longer than `max_chars`, empty ...) or repeat an earlier row are dropped and counted in
    one INFO line on the "kbitlaw" logger; a malformed row (bad gold or choices) raises
    EvaluationError naming it. `kind` is inferred for multiple-choice data; cloze and perplexity
    data must say which they are. GPTQ specs are calibrated on `calibration`, NAME[:N][:MODE] (see
    kbitlaw.eval.calibration)."""
    from kbitlaw.data.files import read_dataset_file, read_dataset_frame

    if isinstance(data, pl.DataFrame):
        name = dataset or "dataset"
        df, kind = read_dataset_frame(data, kind, limit, source=name, max_chars=max_chars)
    else:
        df, kind = read_dataset_file(str(data), kind, limit, max_chars=max_chars)
        name = dataset or Path(data).stem
    rows = evaluate_specs(
        model_or_uri,
        df,
        kind,
        specs,
        dataset=name,
        batch_size=batch_size,
        device=device,
        calibration=calibration,
    )
    return results_frame(rows)


def fit_laws(results: pl.DataFrame | str | Path, **config: Any) -> dict[str, Any]:
    """The fit document (DESIGN.md, `fit --json`) of a results table or a Parquet / CSV file of one.
    `config`: FitConfig fields (n_boot, level, seed ...); chance accuracy is taken from the data
    where it is known."""
    from kbitlaw.law.document import FitConfig
    from kbitlaw.law.document import fit_laws as fit
    from kbitlaw.law.io import default_chance, read_results_file

    df = results if isinstance(results, pl.DataFrame) else read_results_file(results)
    config.setdefault("chance", default_chance(df))
    return fit(df, FitConfig(**config)).doc
