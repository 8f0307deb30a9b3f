"""Fit the k-bit inference scaling laws to a results table: the fit document and its long table.

fit_laws() prepares the points (table.py), then computes, each in its own module:
- the Pareto frontier of (total bits, quality) and the recommended precision (law/recommend/frontier.py);
- the critical size S* and the loss power law over model sizes, per spec (size/threshold.py,
  size/power_law.py);
- the quantization-damage laws across training (damage/law.py, damage/fit.py);
- the joint law L(N, D, spec) over every checkpoint (joint/law.py, joint/fit.py): one entry, or a
  list when the results hold several families;
- the per-spec linear curves in log2 total bits (size/linear.py),
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

from kbitlaw.law.common import OK, POINT_COLUMNS, FitConfig, json_safe, table_rows
from kbitlaw.law.damage.law import fit_damage
from kbitlaw.law.document_gates import gate_document
from kbitlaw.law.fitdoc import FIT_SCHEMA_VERSION
from kbitlaw.law.gates import describe_gates
from kbitlaw.law.joint.fit import fit_joint_laws
from kbitlaw.law.recommend.frontier import fit_frontiers
from kbitlaw.law.size.linear import linear_curves
from kbitlaw.law.size.power_law import fit_power_laws_by_spec
from kbitlaw.law.size.threshold import fit_thresholds
from kbitlaw.law.table import (
    components,
    drop_unusable,
    matched_per_size,
    metric_points,
    normalise,
    results_sha,
)

__all__ = ["LAW_VERSION", "FitConfig", "FitResult", "fit_laws", "warm_starts"]

LAW_VERSION = "7"  # bump when a change alters fitted numbers: stored fits are then not reused


@dataclass(frozen=True)
class FitResult:
    doc: dict[str, Any]  # the `fit --json` document
    table: pl.DataFrame  # the long table (fit.parquet): points, fitted curves, frontier, budgets, damage


# -- the whole fit ----------------------------------------------------------------------------------


def warm_starts(previous: Mapping | None) -> dict:
    """Starting points from a previous fit document: (law, family, quant, metric) -> parameters.

    A warm start joins the grid of starting points (it does not replace it): a refit after new
    results starts from where the last fit ended, which keeps the estimates continuous.
    """
    out: dict = {}
    for law, params in (
        ("power_law", lambda e: [np.log(e["A"]), e["alpha"], np.log(e["E"])]),
        (
            "threshold",
            lambda e: [np.log2(e["s_star_bits"]), np.log(e["w"]), e["r_max"] - e["r_chance"], e["r_chance"]],
        ),
    ):
        for e in (previous or {}).get(law, []):
            if e.get("dropped"):
                continue  # a nested form (E dropped: E = 0) starts nothing in the full form
            try:
                theta = np.array(params(e), dtype=float)
                key = (law, e["family"], e["quant"], e["metric"])
            except (KeyError, TypeError, ValueError):
                continue  # an entry without numbers (insufficient data) or from another layout
            if e.get("status") == OK and np.isfinite(theta).all():
                out[key] = theta
    return out


def linear_rows(curves: pl.DataFrame, n: int) -> list[pl.DataFrame]:
    """Each fitted linear curve sampled over its spec's observed range of total bits."""
    rows = []
    for c in curves.filter(pl.col("status") == OK).iter_rows(named=True):
        grid = np.geomspace(c["s_min"], c["s_max"], n)
        rows.append(
            table_rows(
                "fit",
                "linear_log2",
                family=c["family"],
                metric=c["metric"],
                quant=c["quant"],
                bits=c["bits"],
                total_bits=grid,
                fitted=c["intercept"] + c["slope"] * np.log2(grid),
            )
        )
    return rows


def observed_rows(section: str, pts: pl.DataFrame) -> pl.DataFrame:
    """Long-table rows of metric points (law/table.py), every POINT_COLUMNS column: the report
    and the other readers take the points from the fit instead of re-reading the results."""
    return table_rows(section, None, **{c: pts[c] for c in POINT_COLUMNS})


def dataset_versions(df: pl.DataFrame) -> list[list[str]]:
    """The (dataset, dataset_sha) pairs the fitted results used, sorted: the report links each
    version's cleaning summary and validation pages."""
    if "dataset_sha" not in df.columns:
        return []
    pairs = df.select("dataset", pl.col("dataset_sha").cast(pl.String)).unique().drop_nulls()
    return [list(r) for r in pairs.sort("dataset", "dataset_sha").iter_rows()]


def fit_laws(
    results: pl.DataFrame,
    config: FitConfig = FitConfig(),
    previous: Mapping | None = None,
    samples: pl.DataFrame | None = None,
) -> FitResult:
    """Every law on one results table (the long results schema). `previous`: an earlier fit
    document whose parameters warm-start this fit; `samples`: per-example scores
    (law/numerics/paired.py), which make the claims' same-checkpoint comparisons paired."""
    df = normalise(results)
    sha = results_sha(df)
    df, dropped = drop_unusable(df)
    comp = components(df)
    points, incomplete = metric_points(comp)
    latest, matching = matched_per_size(points)
    comp_latest = comp.join(
        latest.select("family", "checkpoint_id").unique(), on=["family", "checkpoint_id"], how="semi"
    )
    warm = warm_starts(previous)
    rec, recs, frontier_rows = fit_frontiers(latest, config)
    thresholds, t_checks, t_rows = fit_thresholds(latest, comp_latest, config, warm)
    power, p_checks, p_rows = fit_power_laws_by_spec(latest, config, warm)
    damage, d_checks, d_rows = fit_damage(points, config.n_boot, config.seed, config.level)
    joint, j_rows, _ = fit_joint_laws(points, damage, config, previous)
    curves = linear_curves(latest, config.min_sizes)
    table = pl.concat(
        [
            observed_rows("point", latest),
            observed_rows("checkpoint", points),
            *frontier_rows,
            *linear_rows(curves, config.grid_points),
            *t_rows,
            *p_rows,
            *d_rows,
            *j_rows,
        ],
        how="vertical",
    )
    doc = {
        "results_sha": sha,
        "law_version": LAW_VERSION,
        "schema_version": FIT_SCHEMA_VERSION,
        "recommendation": rec,
        "threshold": thresholds,
        "power_law": power,
        "damage": damage,
        "joint_law": joint,
        "extrapolation": t_checks + p_checks + d_checks,
        "recommendations": recs,
        "matching": matching,
        "curves": curves.drop("s_min", "s_max").to_dicts(),
        "families": sorted(df["family"].unique().to_list()),
        "n_rows": results.height,
        "dropped_rows": dropped,
        "incomplete_points": incomplete,
        "warm_started": len(warm),
        "config": config.describe(),
        "datasets": dataset_versions(df),
    }
    doc = gate_document(json_safe(doc))
    doc["gates"] = describe_gates()
    doc["claims"] = family_claims(latest, points, doc, samples)
    return FitResult(json_safe(doc), table)


def family_claims(
    latest: pl.DataFrame, points: pl.DataFrame, doc: dict, samples: pl.DataFrame | None = None
) -> list[dict]:
    """The papers' checkable claims put to each family's data (law/claims/paper.py), each with its family."""
    from kbitlaw.law.claims.paper import check_claims

    out = []
    for family in doc["families"]:
        mine = pl.col("family") == family
        out += [
            {"family": family, **c}
            for c in check_claims(latest.filter(mine), points.filter(mine), json_safe(doc), samples)
        ]
    return out
