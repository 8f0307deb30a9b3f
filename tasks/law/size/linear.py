"""The per-spec linear curves over model size: value = intercept + slope * log2(total bits).

Dettmers & Zettlemoyer's per-precision curves, 'almost parallel', comparable by slope and offset;
one per (family, spec, metric) on each size's latest checkpoint.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK
from kbitlaw.law.size.groups import size_groups


def linear_curves(latest: pl.DataFrame, min_sizes: int) -> pl.DataFrame:
    """value = intercept + slope * log2(total bits) per (family, metric, spec): Dettmers &
    Zettlemoyer's per-precision curves, 'almost parallel', comparable by slope and offset."""
    rows = []
    for g in size_groups(latest, pl.lit(True)):
        x, y = np.log2(g.points["total_bits"].to_numpy()), g.points["value"].to_numpy()
        ok = g.points["n_params"].n_unique() >= min_sizes and np.ptp(x) > 0
        slope, intercept = np.polyfit(x, y, 1) if ok else (np.nan, np.nan)
        rmse = float(np.sqrt(np.mean((y - intercept - slope * x) ** 2))) if ok else np.nan
        rows.append(
            {
                **g.base,
                "intercept": intercept,
                "slope": slope,
                "rmse": rmse,
                "s_min": 2.0 ** x.min(),
                "s_max": 2.0 ** x.max(),
                "status": OK if ok else NO_DATA,
            }
        )
    schema = {
        "family": pl.String,
        "quant": pl.String,
        "bits": pl.Int64,
        "metric": pl.String,
        "n_sizes": pl.Int64,
        "intercept": pl.Float64,
        "slope": pl.Float64,
        "rmse": pl.Float64,
        "s_min": pl.Float64,
        "s_max": pl.Float64,
        "status": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)
