"""From raw result rows to the points the laws are fitted on.

A point is one checkpoint at one quant spec and one metric:
- `mean_acc`: mean zero-shot accuracy (`acc`) over the family's accuracy datasets (multiple_choice
  and cloze kinds); a point missing any of them has no mean_acc (an average over a different set
  of tasks is a different metric);
- `acc:<dataset>`: one dataset's accuracy;
- `loss`: mean `loss` (nats/token) over the family's perplexity datasets, same completeness rule.
Model size is n_params; the laws over size use each size's latest checkpoint (max tokens_seen,
then max step). Duplicate rows for the same (checkpoint, spec, dataset, metric) are averaged.
A point also carries its checkpoint's planned training length, `tokens_planned` (null when not
given), so a law can predict where a training run in progress will end, and the SCHEDULE_COLUMNS
(null when not given): `finished` and the learning-rate schedule's areas, with which the joint law
tells a finished model from an intermediate checkpoint of a decaying run (law/joint/usable.py).
"""

from __future__ import annotations

import polars as pl

from kbitlaw.vocab import (
    ACC,
    ACC_OF,
    ACCURACY_KINDS,
    LATER_COLUMNS,
    LOSS,
    MEAN_ACC,
    RESULT_COLUMNS,
    SCHEDULE_COLUMNS,
    VOLATILE_COLUMNS,
)

REQUIRED_COLUMNS = (
    "checkpoint_id",
    "family",
    "n_params",
    "quant",
    "bits",
    "total_bits",
    "dataset",
    "kind",
    "metric",
    "value",
)
FLOAT_COLUMNS = (
    "tokens_seen",
    "n_params",
    "bits",
    "total_bits",
    "value",
    "stderr",
    "n_examples",
    "bits_per_param",
    "block_size",
    "outlier_pct",
    "step",
    "tokens_planned",  # optional, not in RESULT_COLUMNS: counted in results_sha like `calibration`
    "lr_area",  # the same (vocab.SCHEDULE_COLUMNS)
    "lr_anneal",
    "lr_area_planned",
    "lr_anneal_planned",
)
BOOL_COLUMNS = ("finished",)  # optional, as tokens_planned
# Per-checkpoint columns that results cached before the sidecar said them lack: a point takes its
# checkpoint's value from any of its rows (components).
CHECKPOINT_COLUMNS = ("tokens_planned", *SCHEDULE_COLUMNS)
STRING_COLUMNS = ("checkpoint_id", "family", "quant", "dtype", "dataset", "kind", "metric", "calibration")
POINT_KEYS = ("family", "checkpoint_id", "quant")


class ResultsError(ValueError):
    """The results table cannot be used; the message names the column and the cause."""


def normalise(df: pl.DataFrame) -> pl.DataFrame:
    """Check the required columns and give every column the law code reads one dtype.

    Optional columns that are absent become null. Raises ResultsError naming the first problem.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(
            f"missing column {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    # One with_columns for every column (one per column was most of the time spent reading a
    # store's thousands of small results files); a failed cast is then looked for column by column.
    schema = df.schema

    def typed(c: str, dtype: pl.DataType) -> pl.Expr:
        if c not in schema:
            return pl.lit(None, dtype=dtype).alias(c)
        if dtype == pl.Boolean and schema[c] == pl.String:  # a CSV's true/false
            words = {"true": True, "false": False}
            return pl.col(c).str.to_lowercase().replace_strict(words, default=None, return_dtype=pl.Boolean)
        return pl.col(c) if schema[c] == dtype else pl.col(c).cast(dtype, strict=True)

    exprs = [typed(c, pl.Float64) for c in FLOAT_COLUMNS] + [typed(c, pl.String) for c in STRING_COLUMNS]
    exprs += [typed(c, pl.Boolean) for c in BOOL_COLUMNS]
    try:
        return df.with_columns(exprs)
    except Exception:  # which column, below; anything else is raised as it was
        for c in FLOAT_COLUMNS:
            try:
                df.select(typed(c, pl.Float64))
            except Exception as exc:
                raise ResultsError(f"column {c!r} is not numeric ({schema[c]})") from exc
        for c in BOOL_COLUMNS:
            try:
                df.select(typed(c, pl.Boolean))
            except Exception as exc:
                raise ResultsError(f"column {c!r} is not true/false ({schema[c]})") from exc
        raise


def drop_unusable(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Drop rows whose value, size or bit count is NaN/inf/null, whose size or total bits is not
    positive (the laws take their logarithm), or whose keys are null; count them."""
    finite = [
        pl.col(c).is_not_null() & pl.col(c).is_finite() for c in ("value", "total_bits", "n_params", "bits")
    ]
    positive = [pl.col(c) > 0 for c in ("total_bits", "n_params")]
    keys = [
        pl.col(c).is_not_null() for c in ("checkpoint_id", "family", "quant", "dataset", "kind", "metric")
    ]
    ok = pl.all_horizontal(*finite, *positive, *keys)
    kept = df.filter(ok)
    return kept, df.height - kept.height


def require_usable(df: pl.DataFrame, where: str) -> None:
    """ResultsError('no usable result rows in WHERE: ...') when drop_unusable would drop every row."""
    kept, dropped = drop_unusable(df)
    if df.height and not kept.height:
        raise ResultsError(
            f"no usable result rows in {where}: all {dropped} rows have a NaN/inf/null value, "
            "size or bit count, a size or total bits <= 0, or a null key"
        )


def _point_attrs() -> list[pl.Expr]:
    """Per-point attributes; rows of one (checkpoint, spec) agree, min/max only make it deterministic."""
    return [
        pl.col("n_params").max(),
        pl.col("tokens_seen").max(),
        *(pl.col(c).max() for c in CHECKPOINT_COLUMNS),
        pl.col("step").max(),
        pl.col("bits").max(),
        pl.col("dtype").min(),
        pl.col("block_size").max(),
        pl.col("outlier_pct").max(),
        pl.col("total_bits").mean(),
        pl.col("bits_per_param").mean(),
    ]


def components(df: pl.DataFrame) -> pl.DataFrame:
    """Per (checkpoint, spec, dataset): the accuracy (`acc`) or perplexity `loss` the metrics average.

    tokens_planned (and the other CHECKPOINT_COLUMNS) is the checkpoint's across all its rows:
    results cached under its fingerprint before the sidecar gave a plan have none, and would
    otherwise leave some points without it."""
    wanted = (pl.col("kind").is_in(ACCURACY_KINDS) & (pl.col("metric") == ACC)) | (
        (pl.col("kind") == "perplexity") & (pl.col("metric") == LOSS)
    )
    return (
        df.filter(wanted)
        .with_columns(
            *(pl.col(c).max().over(["family", "checkpoint_id"]) for c in CHECKPOINT_COLUMNS),
            component=pl.when(pl.col("metric") == ACC).then(pl.lit(ACC)).otherwise(pl.lit(LOSS)),
        )
        .group_by([*POINT_KEYS, "component", "dataset"])
        .agg(*_point_attrs(), pl.col("value").mean(), pl.col("stderr").mean(), pl.col("n_examples").mean())
        .sort([*POINT_KEYS, "component", "dataset"])
    )


def metric_points(comp: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Long table of points: (family, checkpoint, spec, metric) -> value, stderr, n_datasets.

    Returns the table and the number of (point, mean metric) pairs left out as incomplete.
    """
    per_dataset = comp.filter(pl.col("component") == ACC).with_columns(
        metric=pl.lit(ACC_OF) + pl.col("dataset"), n_datasets=pl.lit(1, dtype=pl.UInt32)
    )
    # The family's dataset set per component; a mean is only taken over all of it.
    need = comp.group_by(["family", "component"]).agg(n_need=pl.col("dataset").n_unique())
    means = (
        comp.group_by([*POINT_KEYS, "component"])
        .agg(
            *_point_attrs(),
            pl.col("value").mean(),
            ((pl.col("stderr") ** 2).sum() / pl.len() ** 2).sqrt().alias("stderr"),
            pl.col("n_examples").sum(),
            pl.col("dataset").n_unique().alias("n_datasets"),
        )
        .join(need, on=["family", "component"])
    )
    complete = means.filter(pl.col("n_datasets") == pl.col("n_need"))
    incomplete = means.height - complete.height
    complete = complete.with_columns(
        metric=pl.when(pl.col("component") == ACC).then(pl.lit(MEAN_ACC)).otherwise(pl.lit(LOSS))
    )
    cols = [
        *POINT_KEYS,
        "metric",
        "n_params",
        "tokens_seen",
        *CHECKPOINT_COLUMNS,
        "step",
        "bits",
        "dtype",
        "block_size",
        "outlier_pct",
        "total_bits",
        "bits_per_param",
        "value",
        "stderr",
        "n_examples",
        "n_datasets",
    ]
    table = pl.concat([complete.select(cols), per_dataset.select(cols)], how="vertical_relaxed")
    return table.sort([*POINT_KEYS, "metric"]), incomplete


def latest_per_size(points: pl.DataFrame) -> pl.DataFrame:
    """Keep only each (family, size)'s latest checkpoint: max tokens_seen, then step, then id."""
    latest = (
        points.select("family", "n_params", "checkpoint_id", "tokens_seen", "step")
        .unique()
        .sort(["tokens_seen", "step", "checkpoint_id"], descending=True, nulls_last=True)
        .group_by(["family", "n_params"], maintain_order=True)
        .first()
        .select("family", "checkpoint_id")
    )
    return points.join(latest, on=["family", "checkpoint_id"], how="semi")


def matched_per_size(points: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, str]]:
    """One checkpoint per (family, size) at matched training, for the laws over size.

    Per family: the tokens_seen value that the most sizes have a checkpoint at (the largest such
    value on ties) when at least two sizes share it, e.g. a family trained to one token budget, or
    the last step every size has reached while training is in progress; otherwise each size's
    latest checkpoint. Returns the points and, per family, which matching was used."""
    picked, how = [], {}
    for family in sorted(points["family"].unique().to_list()):
        fam = points.filter(pl.col("family") == family)
        ckpts = fam.select("n_params", "checkpoint_id", "tokens_seen", "step").unique()
        shared = (
            ckpts.filter(pl.col("tokens_seen").is_not_null())
            .group_by("tokens_seen")
            .agg(pl.col("n_params").n_unique().alias("sizes"))
            .sort(["sizes", "tokens_seen"], descending=True)
        )
        if shared.height and shared["sizes"][0] >= 2:
            tokens = shared["tokens_seen"][0]
            at = fam.filter(pl.col("tokens_seen") == tokens)
            picked.append(latest_per_size(at))
            how[family] = f"tokens_seen = {tokens:.4g} ({shared['sizes'][0]} sizes)"
        else:
            picked.append(latest_per_size(fam))
            how[family] = "latest checkpoint of each size (no token count shared by two sizes)"
    return (pl.concat(picked) if picked else points.head(0)), how


def results_sha(df: pl.DataFrame) -> str:
    """sha256 of the canonical result rows: independent of row and column order and of file format.

    Every schema column except the volatile ones (timing, device, version, timestamp) is rendered
    as text after normalise(), so a Parquet and a CSV of the same rows hash alike. The LATER_COLUMNS,
    `calibration` (GPTQ's calibration data) and `tokens_planned` (the run's planned length), count
    only where some row has one, so result sets without them keep the sha they had before the
    columns existed.
    """
    import hashlib

    cols = [c for c in RESULT_COLUMNS if c not in VOLATILE_COLUMNS]
    cols += [c for c in LATER_COLUMNS if c in df.columns and df[c].is_not_null().any()]
    table = df.select(
        [
            (pl.col(c) if c in df.columns else pl.lit(None)).cast(pl.String).fill_null("\x00").alias(c)
            for c in cols
        ]
    ).sort(cols)
    return hashlib.sha256(table.write_csv().encode()).hexdigest()
