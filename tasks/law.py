"""Fit the k-bit inference scaling laws to a results table: the fit document and its long table.

fit_laws() prepares the points (law_table.py), then computes, each in its own module:
- the Pareto frontier of (total bits, quality) and the recommended precision (law_frontier.py);
- the critical size S* and the loss power law over model sizes, per spec (law_scaling.py);
- the quantization-damage laws across training (law_damage.py);
- the per-spec linear curves in log2 total bits (law_table.py),
and assembles the `fit --json` document (DESIGN.md) and the long table stored as fit.parquet.

A number is never invented: a law with too little data reports "insufficient data" and nulls,
and the others still fit. Everything is deterministic for a fixed seed (FitConfig.seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from tasks.law_common import OK, FitConfig, num, table_rows
from tasks.law_damage import fit_damage
from tasks.law_frontier import fit_frontiers
from tasks.law_scaling import fit_power_laws_by_spec, fit_thresholds
from tasks.law_table import (
    components,
    drop_unusable,
    latest_per_size,
    linear_curves,
    metric_points,
    normalise,
    results_sha,
)

__all__ = ["LAW_VERSION", "FitConfig", "FitResult", "fit_laws", "warm_starts"]

LAW_VERSION = "1"  # bump when a change alters fitted numbers: stored fits are then not reused


@dataclass(frozen=True)
class FitResult:
    doc: dict[str, Any]  # the `fit --json` document
    table: pl.DataFrame  # the long table (fit.parquet): points, fitted curves, frontier, budgets, damage


# -- the whole fit ----------------------------------------------------------------------------------


def warm_starts(previous: Mapping | None) -> dict:
    """Starting points from a previous fit document: (law, family, quant, metric) -> parameters."""
    out: dict = {}
    for e in (previous or {}).get("power_law", []):
        if e.get("status") == OK:
            out[("power_law", e["family"], e["quant"], e["metric"])] = np.array(
                [np.log(e["A"]), e["alpha"], np.log(e["E"])]
            )
    for e in (previous or {}).get("threshold", []):
        if e.get("status") == OK:
            out[("threshold", e["family"], e["quant"], e["metric"])] = np.array(
                [np.log2(e["s_star_bits"]), np.log(e["w"]), e["r_max"] - e["r_chance"], e["r_chance"]]
            )
    return out


def fit_laws(
    results: pl.DataFrame, config: FitConfig = FitConfig(), previous: Mapping | None = None
) -> FitResult:
    """Every law on one results table (the long results schema). `previous`: an earlier fit
    document whose parameters warm-start this fit."""
    df = normalise(results)
    sha = results_sha(df)
    df, dropped = drop_unusable(df)
    comp = components(df)
    points, incomplete = metric_points(comp)
    latest = latest_per_size(points)
    comp_latest = comp.join(
        latest.select("family", "checkpoint_id").unique(), on=["family", "checkpoint_id"], how="semi"
    )
    warm = warm_starts(previous)
    rec, recs, frontier_rows = fit_frontiers(latest, config)
    thresholds, t_checks, t_rows = fit_thresholds(latest, comp_latest, config, warm)
    power, p_checks, p_rows = fit_power_laws_by_spec(latest, config, warm)
    damage, d_checks, d_rows = fit_damage(points, config.n_boot, config.seed, config.level)
    curves = linear_curves(latest, config.min_sizes)
    point_rows = table_rows(
        "point",
        None,
        family=latest["family"],
        metric=latest["metric"],
        quant=latest["quant"],
        bits=latest["bits"],
        n_params=latest["n_params"],
        tokens_seen=latest["tokens_seen"],
        total_bits=latest["total_bits"],
        value=latest["value"],
    )
    table = pl.concat([point_rows, *frontier_rows, *t_rows, *p_rows, *d_rows], how="vertical")
    doc = {
        "results_sha": sha,
        "law_version": LAW_VERSION,
        "recommendation": rec,
        "threshold": thresholds,
        "power_law": power,
        "damage": damage,
        "extrapolation": t_checks + p_checks + d_checks,
        "recommendations": recs,
        "curves": [
            {k: (num(v) if isinstance(v, float) else v) for k, v in r.items()}
            for r in curves.iter_rows(named=True)
        ],
        "families": sorted(df["family"].unique().to_list()),
        "n_rows": results.height,
        "dropped_rows": dropped,
        "incomplete_points": incomplete,
        "warm_started": len(warm),
        "config": config.describe(),
    }
    return FitResult(doc, table)
