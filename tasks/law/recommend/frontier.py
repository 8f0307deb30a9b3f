"""The Pareto frontier of (total model bits, quality), and the recommendation per family and metric.

Each point is one model size at one quant spec. For a memory budget S the best model is the best
point with total_bits <= S, so the frontier is a step function of the budget: what the report
draws and tabulates. The recommended precision is not read off this frontier (within one model more
bits is always a little better, so the frontier's shares follow the grid's spacing): it comes from
the equal-budget comparison of per-spec curves in law/recommend/budget.py.

Ties are broken deterministically, always in favour of the cheaper choice:
- equal quality at different total bits: the point with fewer total bits holds the frontier;
- equal total bits and equal quality: fewer bits per weight (k), then fewer bits per parameter,
  then the smaller model, then the spec name.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, FitConfig, table_rows
from kbitlaw.law.recommend.budget import recommend_by_budget
from kbitlaw.vocab import LOSS, MEAN_ACC

INSUFFICIENT = {"status": NO_DATA}


def pareto_frontier(points: pl.DataFrame, higher_is_better: bool) -> pl.DataFrame:
    """The points that are strictly better than every point with fewer-or-equal total bits.

    `points` needs total_bits, value, bits, quant, n_params (and may carry bits_per_param and any
    other columns, which are kept). Returns the frontier sorted by total_bits.
    """
    if points.height == 0:
        return points
    if "bits_per_param" not in points.columns:
        points = points.with_columns(bits_per_param=pl.col("total_bits") / pl.col("n_params"))
    score = pl.col("value") if higher_is_better else -pl.col("value")
    ranked = points.with_columns(_score=score).sort(
        ["total_bits", "_score", "bits", "bits_per_param", "n_params", "quant"],
        descending=[False, True, False, False, False, False],
        maintain_order=True,
    )
    # A point is on the frontier when it beats the best score of everything before it.
    best_before = pl.col("_score").cum_max().shift(1, fill_value=-np.inf)
    return ranked.filter(pl.col("_score") > best_before).drop("_score")


def budget_grid(frontier: pl.DataFrame, s_min: float, s_max: float, n: int) -> pl.DataFrame:
    """For log-spaced budgets over [s_min, s_max]: the best point that fits (as-of join)."""
    budgets = pl.DataFrame({"budget_bits": np.geomspace(s_min, s_max, n)})
    best = frontier.sort("total_bits").with_columns(pl.col("total_bits").alias("_tb"))
    return budgets.join_asof(best, left_on="budget_bits", right_on="_tb", strategy="backward").drop("_tb")


# -- per family and metric, for the fit document ----------------------------------------------


def fit_frontiers(latest: pl.DataFrame, config: FitConfig) -> tuple[dict, list, list]:
    """Frontier, budget table and recommendation per scope (each family; 'all' when several) and
    per headline metric (mean_acc, loss). Returns (recommendation, recommendations, rows)."""
    families = sorted(latest["family"].unique())
    scopes = [(f, latest.filter(pl.col("family") == f)) for f in families]
    if len(families) > 1:
        scopes.append(("all", latest))
    recs, rows = [], []
    for scope, pts in scopes:
        for metric, higher in ((MEAN_ACC, True), (LOSS, False)):
            m = pts.filter(pl.col("metric") == metric)
            rec = recommend_by_budget(
                m,
                higher,
                min_sizes=config.min_sizes_frontier,
                n_budgets=config.n_budgets,
                n_boot=config.n_boot,
                seed=config.seed,
            )
            recs.append({"family": scope, "metric": metric, "status": rec.get("status", OK), **rec})
            if rec.get("status") == NO_DATA:
                continue
            front = pareto_frontier(m, higher)
            rows.append(
                table_rows(
                    "frontier",
                    None,
                    family=scope,
                    metric=metric,
                    quant=front["quant"],
                    bits=front["bits"],
                    n_params=front["n_params"],
                    tokens_seen=front["tokens_seen"],
                    total_bits=front["total_bits"],
                    value=front["value"],
                )
            )
            b = budget_grid(
                front, float(m["total_bits"].min()), float(m["total_bits"].max()), config.n_budgets
            )
            rows.append(
                table_rows(
                    "budget",
                    None,
                    family=scope,
                    metric=metric,
                    quant=b["quant"],
                    bits=b["bits"],
                    n_params=b["n_params"],
                    total_bits=b["budget_bits"],
                    value=b["value"],
                )
            )
    headline_scope = "all" if len(families) > 1 else (families[0] if families else None)
    by_key = {(r["family"], r["metric"]): r for r in recs}
    rec = headline_recommendation(
        [by_key.get((headline_scope, m), {"status": NO_DATA}) for m in (config.recommend_metric, LOSS)]
    )
    return rec if rec["status"] == OK else dict(INSUFFICIENT), recs, rows


def headline_recommendation(candidates: list[dict]) -> dict:
    """The answer from the metric whose comparison is the more certain: the highest P(clear win)
    plus P(best) of its own winning width (mean accuracy first on ties). Dettmers & Zettlemoyer
    found perplexity the less noisy measure of the two and tracking accuracy (r = -0.94); a small
    accuracy suite can leave widths indistinguishable that the loss separates clearly. Both stay
    in `recommendations`."""
    usable = [c for c in candidates if c.get("status") == OK]
    if not usable:
        return dict(INSUFFICIENT)

    def certainty(c: dict) -> float:
        p = c.get("p_best") or {}
        return float(c.get("p_clear") or 0.0) + float(p.get(str(c["bits"]), 0.0))

    best = max(usable, key=certainty)  # max keeps the first (the configured metric) on ties
    others = [c["metric"] for c in usable if c is not best]
    why = (
        f"more certain than {others[0]}"
        if others and certainty(best) > certainty(usable[0])
        else "configured"
    )
    return {**best, "metric_choice": why}
