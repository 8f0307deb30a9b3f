"""The critical size S*: accuracy over model size as a logistic in log2 total bits, per (family, spec,
accuracy metric), on each size's latest checkpoint.

Each group is also refit without its largest model, which is then predicted (the extrapolation
check). All groups and their refits go through one batched bootstrap (law/numerics/threshold.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, FitConfig, ci_pair, num
from kbitlaw.law.numerics.nonlinear import Bootstrapped
from kbitlaw.law.numerics.threshold import (
    ThresholdProblem,
    bootstrap_thresholds,
    threshold_bounds,
    threshold_predict,
)
from kbitlaw.law.size.groups import (
    SizeGroup,
    check_largest,
    curve_rows,
    group_noise,
    size_groups,
    solve_groups,
)
from kbitlaw.vocab import ACC, ACC_OF, MEAN_ACC

ACCURACY_METRIC = (pl.col("metric") == MEAN_ACC) | pl.col("metric").str.starts_with(ACC_OF)


def _accuracy_arrays(comp: pl.DataFrame, group: SizeGroup, datasets: list[str]) -> tuple[np.ndarray, ...]:
    """[n, D] accuracy, n_examples and stderr of the group's checkpoints on its datasets."""
    sub = comp.filter(
        pl.col("family") == group.family,
        pl.col("quant") == group.quant,
        pl.col("component") == ACC,
        pl.col("dataset").is_in(datasets),
    )
    lookup = {(r["checkpoint_id"], r["dataset"]): r for r in sub.iter_rows(named=True)}
    ids = group.points["checkpoint_id"].to_list()
    out = np.full((3, len(ids), len(datasets)), np.nan)
    for i, cid in enumerate(ids):
        for j, ds in enumerate(datasets):
            r = lookup[(cid, ds)]
            out[:, i, j] = [np.nan if r[c] is None else r[c] for c in ("value", "n_examples", "stderr")]
    return out[0], out[1], out[2]


def _threshold_entry(group: SizeGroup, p: ThresholdProblem, f: Bootstrapped | None, level: float) -> dict:
    if f is None:
        return {
            **group.base,
            "s_star_bits": None,
            "ci": [None, None],
            "width": None,
            "w": None,
            "w_ci": [None, None],
            "r_chance": None,
            "r_max": None,
            "status": NO_DATA,
        }
    m, log_w, h, c = f.theta
    bounds = threshold_bounds(p.x, p.chance)
    ci = ci_pair(f.boot[:, 0], level, lambda v: 2.0**v)
    known = None not in ci
    return {
        **group.base,
        "s_star_bits": num(2.0**m),
        "ci": ci,
        "width": num(ci[1] - ci[0]) if known else None,  # in bits, as S* is
        "width_doublings": num(np.log2(ci[1] / ci[0])) if known else None,
        "w": num(np.exp(log_w)),
        "w_ci": ci_pair(f.boot[:, 1], level, np.exp),
        "r_chance": num(c),
        "r_chance_fixed": p.chance is not None,
        "r_max": num(c + h),
        "s_star_in_range": bool(p.x.min() <= m <= p.x.max()),
        "bounds": {
            "s_star_bits": [num(2.0 ** bounds.lo[0]), num(2.0 ** bounds.hi[0])],
            "w": [num(np.exp(bounds.lo[1])), num(np.exp(bounds.hi[1]))],
        },
        "status": OK,
    }


def fit_thresholds(
    latest: pl.DataFrame, comp: pl.DataFrame, config: FitConfig, warm: Mapping
) -> tuple[list, list, list]:
    """Critical size S* per (family, spec, accuracy metric): doc entries, checks, table rows."""
    groups = size_groups(latest, ACCURACY_METRIC)
    acc_ds = comp.filter(pl.col("component") == ACC).group_by("family").agg(pl.col("dataset").unique().sort())
    family_datasets = dict(zip(acc_ds["family"], acc_ds["dataset"].to_list(), strict=True))

    def datasets(g: SizeGroup) -> list[str]:
        return family_datasets[g.family] if g.metric == MEAN_ACC else [g.metric.removeprefix(ACC_OF)]

    def chance(g: SizeGroup) -> float | None:
        known = config.chance or {}
        return (
            float(np.mean([known[d] for d in datasets(g)])) if all(d in known for d in datasets(g)) else None
        )

    def minimum(g: SizeGroup) -> int:
        """No fewer sizes than free parameters: 3, or 4 when the chance level is fitted too."""
        return max(config.min_sizes, 3 if chance(g) is not None else 4)

    def make(g: SizeGroup, keep: np.ndarray | None) -> ThresholdProblem:
        acc, n, se = _accuracy_arrays(comp, g, datasets(g))
        x = np.log2(g.points["total_bits"].to_numpy())
        w = warm.get(("threshold", g.family, g.quant, g.metric))
        key = f"threshold|{g.family}|{g.quant}|{g.metric}"
        if keep is None:
            return ThresholdProblem(key, x, acc, n, se, chance(g), warm=w)
        return ThresholdProblem(
            f"{key}|extrapolate",
            x[keep],
            acc[keep],
            n[keep],
            se[keep],
            chance(g),
            x_predict=float(x[~keep][0]),
            warm=w,
        )

    problems = [make(g, None) for g in groups]  # cheap; used for the entries' data ranges

    def solve(todo: list[ThresholdProblem]) -> list[Bootstrapped]:
        return bootstrap_thresholds(todo, config.n_boot, config.seed, resample=config.threshold_resample)

    fits, held = solve_groups(groups, make, minimum, solve)
    entries, checks, rows = [], [], []
    for g, p, f, h in zip(groups, problems, fits, held, strict=True):
        entries.append(_threshold_entry(g, p, f, config.level))
        if f is not None:
            x = np.linspace(p.x.min(), p.x.max(), config.grid_points)
            rows.append(curve_rows("threshold", g, x, 2.0**x, threshold_predict, f, config.level))
        if h is not None:
            noise = group_noise(g, h, threshold_predict, p.x, 3 if p.chance is not None else 4, log=False)
            checks.append(check_largest("threshold", g, h, noise, config.level))
    return entries, checks, rows
