"""Paired differences between two specs on the same checkpoints, from per-example scores.

Two specs of one checkpoint score the same examples, so the noise of their difference is the noise
of the per-example differences, far below the two results' stderrs added as if independent (an
8-bit model gets nearly every example right or wrong exactly as its 16-bit original). The samples
beside each result (samples/<fp>/<quant>/<eval_key>.parquet) hold those per-example scores.

    samples = read_samples_store(store, read_result_frames(store))   # None where the store has none
    d = paired_samples(samples, ["ckpt/a"], "int8-b64", "fp16", "mean_acc")   # a Diff, or None
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import polars as pl

from kbitlaw.store import SAMPLES, parse_result_key, samples_key
from kbitlaw.vocab import ACC_OF, ACCURACY_KINDS, is_accuracy

SAMPLE_COLUMNS = {"id": pl.String, "correct": pl.Float64, "loss": pl.Float64, "n_tokens": pl.Float64}


def read_samples_store(store, results: Mapping[str, pl.DataFrame]) -> pl.DataFrame | None:
    """The per-example scores beside the given results (key -> its rows, as read for the fit), long:
    checkpoint_id, quant, dataset, kind, id, correct (accuracy kinds), loss and n_tokens (perplexity).
    Results without samples (stores older than samples) are left out; None when none has any."""
    wanted = {samples_key(*parts): k for k in results if (parts := parse_result_key(k))}
    present = set(store.list(SAMPLES)) & set(wanted)
    if not present:
        return None
    frames = []
    for skey, data in store.read_many(sorted(present)).items():
        meta = results[wanted[skey]].select("checkpoint_id", "quant", "dataset", "kind")
        if meta.height == 0:
            continue
        raw = pl.read_parquet(io.BytesIO(data))
        frame = raw.select(
            [
                (pl.col(c).cast(t) if c in raw.columns else pl.lit(None, dtype=t)).alias(c)
                for c, t in SAMPLE_COLUMNS.items()
            ]
        )
        frames.append(frame.with_columns(**{c: pl.lit(meta[c][0]) for c in meta.columns}))
    return pl.concat(frames) if frames else None


def _dataset_diff(a: pl.DataFrame, b: pl.DataFrame, kind: str) -> tuple[float, float] | None:
    """(difference a - b in score units, its variance) on one dataset's shared examples."""
    both = a.join(b, on="id", suffix="_b")
    n = both.height
    if n < 2:
        return None
    if kind in ACCURACY_KINDS:
        d = both["correct"] - both["correct_b"]
        return float(d.mean()), float(d.var()) / n
    tokens = both["n_tokens"]
    diff_i = both["loss"] - both["loss_b"]
    diff = float(diff_i.sum() / tokens.sum())
    resid = diff_i - diff * tokens
    var = float((resid**2).sum() / (n - 1)) / n / float(tokens.mean()) ** 2
    return -diff, var  # score units: lower loss is better


def paired_samples(
    samples: pl.DataFrame | None, checkpoints: list[str], quant_a: str, quant_b: str, metric: str
) -> tuple[float, float, int] | None:
    """Mean paired difference a - b (score units) over the checkpoints and the metric's datasets,
    its standard error and the number of checkpoints; None unless every dataset of every checkpoint
    has samples for both specs."""
    if samples is None:
        return None
    if is_accuracy(metric):
        rows = samples.filter(pl.col("kind").is_in(ACCURACY_KINDS))
        if metric.startswith(ACC_OF):
            rows = rows.filter(pl.col("dataset") == metric.removeprefix(ACC_OF))
    else:
        rows = samples.filter(pl.col("kind") == "perplexity")
    diffs, variances = [], []
    for ckpt in checkpoints:
        mine = rows.filter(pl.col("checkpoint_id") == ckpt)
        per_dataset = []
        for (_, kind), g in mine.group_by(["dataset", "kind"], maintain_order=True):
            a, b = g.filter(pl.col("quant") == quant_a), g.filter(pl.col("quant") == quant_b)
            if a.height == 0 or b.height == 0:
                return None
            got = _dataset_diff(a, b, kind)
            if got is None:
                return None
            per_dataset.append(got)
        if not per_dataset:
            return None
        m = len(per_dataset)
        diffs.append(sum(d for d, _ in per_dataset) / m)
        variances.append(sum(v for _, v in per_dataset) / m**2)
    if not diffs:
        return None
    n = len(diffs)
    return sum(diffs) / n, math.sqrt(sum(variances)) / n, n
