"""Published scaling runs as results: a table of (model size, training tokens, loss) per run.

Papers publish their training runs as a few columns, not as kbitlaw's results schema: the
Besiroglu et al. (2024) extraction of the Chinchilla runs has `Model Size`, `Training FLOP` and
`loss`. Such a table becomes 16-bit loss results (one checkpoint per row, quant bf16, dataset
"published"), so `kbitlaw fit --results runs.csv` fits the joint law's 16-bit part to it.

Columns are matched ignoring case, spaces, dashes and underscores:
- size:   n_params | n | params | parameters | model_size | num_params | non_embedding_params | ...
- tokens: tokens | d | tokens_seen | training_tokens | data | n_tokens | data_size; or compute:
          flop | flops | c | training_flop(s) | compute, with D = C / (6 N) (as the replication
          derived its tokens);
- loss:   loss | final_loss | eval_loss | validation_loss | val_loss | test_loss | l;
- optional: family (default: the file's stem), quant (a spec; rows below 16 bits are quantized
  losses of the run with the same size and tokens), stderr, excluded (true: kept in the file, left
  out of the fit, e.g. the replication's 5 highest-loss runs).
"""

from __future__ import annotations

import logging
import re

import polars as pl

from kbitlaw.law.table import ResultsError
from kbitlaw.quant.spec import QuantSpec
from kbitlaw.vocab import LOSS

log = logging.getLogger(__name__)

ALIASES = {
    "n_params": (
        "nparams",
        "n",
        "params",
        "parameters",
        "modelsize",
        "numparams",
        "nonembeddingparams",
        "modelparams",
    ),
    "tokens": ("tokens", "d", "tokensseen", "trainingtokens", "data", "ntokens", "numtokens", "datasize"),
    "flop": ("flop", "flops", "c", "trainingflop", "trainingflops", "compute"),
    "loss": ("loss", "finalloss", "evalloss", "validationloss", "valloss", "testloss", "l"),
    "family": ("family",),
    "quant": ("quant",),
    "stderr": ("stderr",),
    "excluded": ("excluded", "exclude", "outlier"),
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def find_columns(columns: list[str]) -> dict[str, str]:
    """role -> the table's column for it (the first alias found)."""
    by_key = {_key(c): c for c in columns}
    return {role: by_key[a] for role, aliases in ALIASES.items() for a in aliases if a in by_key}


def looks_like_runs(columns: list[str]) -> bool:
    found = find_columns(columns)
    return "n_params" in found and "loss" in found and ("tokens" in found or "flop" in found)


def runs_to_results(df: pl.DataFrame, name: str) -> tuple[pl.DataFrame, int]:
    """(results rows, number of rows marked excluded). ResultsError names the column at fault."""
    found = find_columns(df.columns)
    numeric = [r for r in ("n_params", "tokens", "flop", "loss", "stderr") if r in found]
    try:
        runs = df.select(
            *(pl.col(found[r]).cast(pl.Float64, strict=True).alias(r) for r in numeric),
            *(pl.col(found[r]).cast(pl.String).alias(r) for r in ("family", "quant") if r in found),
            *(
                [pl.col(found["excluded"]).cast(pl.Boolean, strict=True).alias("excluded")]
                if "excluded" in found
                else []
            ),
        )
    except pl.exceptions.PolarsError as exc:
        raise ResultsError(f"a size, token, loss or excluded column is not numeric/boolean: {exc}") from None
    if runs.height == 0:
        raise ResultsError("no runs (the table has a header and no rows)")
    if "tokens" not in runs.columns:
        runs = runs.with_columns(tokens=pl.col("flop") / (6.0 * pl.col("n_params")))
    usable = pl.all_horizontal(
        *(
            pl.col(c).is_not_null() & pl.col(c).is_finite() & (pl.col(c) > 0)
            for c in ("n_params", "tokens", "loss")
        )
    )
    if not runs.select(usable.any()).item():
        raise ResultsError(
            "no usable runs: every row has a size, token count or loss that is missing, <= 0 or inf"
        )
    unusable = runs.height - runs.select(usable.sum()).item()
    if unusable:
        log.info(
            "%s: %d runs with a missing, <= 0 or inf size, token count or loss are left out", name, unusable
        )
        runs = runs.filter(usable)
    excluded = int(runs["excluded"].fill_null(False).sum()) if "excluded" in runs.columns else 0
    if excluded:
        runs = runs.filter(~pl.col("excluded").fill_null(False))
    runs = runs.with_columns(
        family=pl.col("family").fill_null(name) if "family" in runs.columns else pl.lit(name),
        quant=pl.col("quant").fill_null("bf16") if "quant" in runs.columns else pl.lit("bf16"),
        stderr=pl.col("stderr") if "stderr" in runs.columns else pl.lit(None, dtype=pl.Float64),
    )
    specs = {}
    for q in runs["quant"].unique().to_list():
        try:
            specs[q] = QuantSpec.parse(q)
        except ValueError as exc:
            raise ResultsError(f"column 'quant': {exc}") from None
    bits = {q: float(s.bits) for q, s in specs.items()}
    bpp = {q: float(s.bits_per_param) for q, s in specs.items()}
    dtype = {q: s.dtype for q, s in specs.items()}
    block = {q: float(s.block_size) if s.block_size else None for q, s in specs.items()}
    outliers = {q: float(s.outlier_pct) for q, s in specs.items()}
    # One checkpoint per (family, size, tokens): a run's quantized losses share its checkpoint. A
    # table that repeats a run (same size, tokens and spec) keeps each repeat as its own checkpoint
    # (-r1, -r2, .. in the order they come), so the bootstrap resamples every row the table has.
    key = ["family", "n_params", "tokens", "quant"]
    repeat = pl.int_range(pl.len()).over(key)
    run_id = (
        pl.col("family")
        + "/n"
        + pl.col("n_params").map_elements(lambda v: f"{v:.10g}", return_dtype=pl.String)
        + "/d"
        + pl.col("tokens").map_elements(lambda v: f"{v:.10g}", return_dtype=pl.String)
        + pl.when(repeat > 0).then(pl.lit("-r") + repeat.cast(pl.String)).otherwise(pl.lit(""))
    )
    out = runs.with_columns(
        checkpoint_id=run_id,
        checkpoint_uri=pl.lit(None, dtype=pl.String),
        tokens_seen=pl.col("tokens"),
        bits=pl.col("quant").replace_strict(bits, return_dtype=pl.Float64),
        bits_per_param=pl.col("quant").replace_strict(bpp, return_dtype=pl.Float64),
        dtype=pl.col("quant").replace_strict(dtype, return_dtype=pl.String),
        block_size=pl.col("quant").replace_strict(block, return_dtype=pl.Float64),
        outlier_pct=pl.col("quant").replace_strict(outliers, return_dtype=pl.Float64),
        dataset=pl.lit("published"),
        kind=pl.lit("perplexity"),
        metric=pl.lit(LOSS),
        value=pl.col("loss"),
    ).with_columns(total_bits=pl.col("n_params") * pl.col("bits_per_param"))
    return out.drop("loss", "tokens", "flop", "excluded", strict=False), excluded
