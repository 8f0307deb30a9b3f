"""What the claims' checks share: the headline metric, and the specs of a family's scored points
(their bit width, data type, block size, outliers and method) with the picks the claims compare:
the best spec per bit width and a small- against a large-block spec of one data type.
"""

from __future__ import annotations

import polars as pl

from kbitlaw.quant.spec import QuantSpec
from kbitlaw.vocab import LOSS, MEAN_ACC


def headline_metric(points: pl.DataFrame) -> str | None:
    """Mean zero-shot accuracy when measured, else loss; None when neither is there."""
    metrics = set(points["metric"].unique().to_list()) if points.height else set()
    return next((m for m in (MEAN_ACC, LOSS) if m in metrics), None)


def is_plain(quant: str) -> bool:
    """Round-to-nearest with fp16 block scales: the paper's setting, which its claims are about
    (GPTQ and MX/NV scale formats are compared in law/claims/methods.py)."""
    try:
        spec = QuantSpec.parse(quant)
    except ValueError:
        return True  # a spec this version cannot read: judged by its columns, as before
    return spec.method == "rtn" and spec.scale_format == "fp16"


def specs_of(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per spec: quant, bits, dtype, block_size (null: per tensor), outlier_pct, n_sizes,
    plain (round-to-nearest with fp16 scales)."""
    specs = (
        scored.group_by("quant")
        .agg(
            pl.col("bits").first().cast(pl.Int64),
            pl.col("dtype").first(),
            pl.col("block_size").first(),
            pl.col("outlier_pct").first().fill_null(0.0),
            pl.col("n_params").n_unique().alias("n_sizes"),
            pl.col("score").mean().alias("mean_score"),
        )
        .sort("quant")
    )
    plain = {q: is_plain(q) for q in specs["quant"].to_list()}
    return specs.with_columns(plain=pl.col("quant").replace_strict(plain, return_dtype=pl.Boolean))


def best_per_bits(scored: pl.DataFrame) -> dict[int, str]:
    """Per bit width, its best spec: among the specs with the most sizes, the highest mean score."""
    best = (
        specs_of(scored)
        .sort(["bits", "n_sizes", "mean_score", "quant"], descending=[False, True, True, False])
        .group_by("bits", maintain_order=True)
        .first()
    )
    return dict(zip(best["bits"].to_list(), best["quant"].to_list(), strict=True))


def block_pair(specs: pl.DataFrame, bits: int) -> tuple[str, str] | None:
    """(small-block spec, large-block spec) of one data type at `bits`: the small block <= 128
    (64 preferred), the large one 1024 if there, else per tensor, else the largest >= 512."""
    at_k = specs.filter(pl.col("bits") == bits, pl.col("outlier_pct") == 0, pl.col("plain"))
    for dtype in sorted(at_k["dtype"].unique().to_list()):
        rows = at_k.filter(pl.col("dtype") == dtype)
        blocks = {r["block_size"]: r["quant"] for r in rows.iter_rows(named=True)}
        small = sorted((b for b in blocks if b is not None and b <= 128), key=lambda b: (abs(b - 64), b))
        large = [b for b in (1024.0, None) if b in blocks] or sorted(
            (b for b in blocks if b is not None and b >= 512), reverse=True
        )
        if small and large:
            return blocks[small[0]], blocks[large[0]]
    return None
