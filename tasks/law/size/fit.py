"""The laws over model size at a fixed precision: critical size (threshold) and the loss power law.

Both run per (family, quant spec, metric) on each size's latest checkpoint, with S = total model
bits. Each group is also refit without its largest model, which is then predicted (the
extrapolation check; its noise and the power law's prediction interval: law/numerics/holdout.py). All
groups of a law, and their extrapolation refits, go through one batched bootstrap (law/numerics/nonlinear.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, FitConfig, ci_pair, extrapolation_entry, num, table_rows
from kbitlaw.law.numerics.holdout import (
    HeldOutNoise,
    PowerLawRefit,
    held_out_noise,
    power_law_prediction_boot,
)
from kbitlaw.law.numerics.nonlinear import (
    POWER_LAW_HI,
    POWER_LAW_LO,
    Bootstrapped,
    PowerLawProblem,
    bootstrap_power_laws,
    power_law_predict,
)
from kbitlaw.law.numerics.threshold import (
    ThresholdProblem,
    bootstrap_thresholds,
    threshold_bounds,
    threshold_predict,
)
from kbitlaw.vocab import ACC, ACC_OF, LOSS, MEAN_ACC

ACCURACY_METRIC = (pl.col("metric") == MEAN_ACC) | pl.col("metric").str.starts_with(ACC_OF)


@dataclass(frozen=True)
class SizeGroup:
    """One curve over model sizes: a family's points at one spec and metric, by total bits."""

    family: str
    quant: str
    metric: str
    points: pl.DataFrame  # sorted by total_bits

    @property
    def base(self) -> dict:
        bits = int(self.points["bits"].max())
        return {
            "family": self.family,
            "quant": self.quant,
            "bits": bits,
            "metric": self.metric,
            "n_sizes": self.points.height,
        }

    @property
    def largest(self) -> int:
        return int(np.argmax(self.points["n_params"].to_numpy()))

    def without_largest(self) -> np.ndarray:
        return np.arange(self.points.height) != self.largest


def size_groups(latest: pl.DataFrame, which: pl.Expr) -> list[SizeGroup]:
    grouped = (
        latest.filter(which).sort("total_bits").group_by(["family", "quant", "metric"], maintain_order=True)
    )
    return sorted((SizeGroup(*key, g) for key, g in grouped), key=lambda s: (s.family, s.quant, s.metric))


def group_noise(group: SizeGroup, fit: Bootstrapped, predict: Callable, x, n_free: int, log: bool):
    """The held-out check's noise for a refit without the largest model (holdout.held_out_noise)."""
    if fit.predicted is None or not np.isfinite(fit.theta).all():
        return None
    keep = group.without_largest()
    pts = group.points
    se = pts["stderr"].fill_null(np.nan).to_numpy().astype(float)
    fitted = predict(fit.theta, x[keep])
    return held_out_noise(pts["value"].to_numpy(), se, keep, fitted, fit.predicted, n_free, log)


def check_largest(law: str, group: SizeGroup, fit: Bootstrapped, noise: HeldOutNoise | None, level: float):
    """The extrapolation check: the refit without the largest model, predicting it."""
    row = group.points.row(group.largest, named=True)
    return extrapolation_entry(
        law,
        group.family,
        group.quant,
        group.metric,
        row["checkpoint_id"],
        fit.predicted,
        fit.predicted_boot,
        row["value"],
        np.nan if noise is None else noise.held,
        level,
        noise_dof=None if noise is None else noise.dof,
    )


def curve_rows(
    law: str,
    group: SizeGroup,
    x_grid: np.ndarray,
    s_grid: np.ndarray,
    predict: Callable,
    fit: Bootstrapped,
    level: float,
) -> pl.DataFrame:
    """The fitted curve on a grid with its pointwise bootstrap band, for plots."""
    band = predict(fit.boot[:, None, :], x_grid[None, :])
    lo, hi = np.nanpercentile(band, [50 * (1 - level), 100 - 50 * (1 - level)], axis=0)
    return table_rows(
        "fit",
        law,
        family=group.family,
        metric=group.metric,
        quant=group.quant,
        bits=group.base["bits"],
        total_bits=s_grid,
        fitted=predict(fit.theta, x_grid),
        lo=lo,
        hi=hi,
    )


def _run(groups: list[SizeGroup], make: Callable, minimum: Callable, solve: Callable) -> tuple[list, list]:
    """Build each group's full and without-largest problems (None when fewer sizes than
    minimum(group)) and solve them all in one batch. Returns both fits, aligned with `groups`."""
    full = [make(g, None) if g.points.height >= minimum(g) else None for g in groups]
    held = [make(g, g.without_largest()) if g.points.height - 1 >= minimum(g) else None for g in groups]
    todo = [p for p in full + held if p is not None]
    fitted = dict(zip([p.key for p in todo], solve(todo), strict=True))
    ok = [None if p is None or not np.isfinite(fitted[p.key].theta).all() else fitted[p.key] for p in full]
    return ok, [None if p is None else fitted[p.key] for p in held]


# -- linear curves ---------------------------------------------------------------------------------


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


# -- threshold law ----------------------------------------------------------------------------------


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

    fits, held = _run(groups, make, minimum, solve)
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


# -- loss power law ---------------------------------------------------------------------------------


def _power_law_entry(group: SizeGroup, f: Bootstrapped | None, level: float) -> dict:
    if f is None:
        return {
            **group.base,
            "E": None,
            "A": None,
            "alpha": None,
            "ci": {"E": [None, None], "A": [None, None], "alpha": [None, None]},
            "status": NO_DATA,
        }
    a, alpha, e = f.theta
    # A's scale where the data are: A / S^alpha at the geometric centre of the sizes (gates.py)
    log_s = float(np.log(group.points["total_bits"].to_numpy().astype(float)).mean())
    with np.errstate(over="ignore", invalid="ignore"):
        a_term = np.exp(f.boot[:, 0] - f.boot[:, 1] * log_s)
    ci = {
        "E": ci_pair(np.exp(f.boot[:, 2]), level),
        "A": ci_pair(np.exp(f.boot[:, 0]), level),
        "alpha": ci_pair(f.boot[:, 1], level),
    }
    return {
        **group.base,
        "E": num(np.exp(e)),
        "A": num(np.exp(a)),
        "alpha": num(alpha),
        "ci": ci,
        "ci_centre": {"A": ci_pair(a_term, level)},
        "centre": {"total_bits": num(np.exp(log_s)), "A_term": num(np.exp(a - alpha * log_s))},
        "bounds": {
            "alpha": [num(POWER_LAW_LO[1]), num(POWER_LAW_HI[1])],
            "E": [num(np.exp(POWER_LAW_LO[2])), num(np.exp(POWER_LAW_HI[2]))],
        },
        "dropped": [],
        "nested": None,
        "status": OK,
    }


def fit_power_laws_by_spec(latest: pl.DataFrame, config: FitConfig, warm: Mapping) -> tuple[list, list, list]:
    """L(S) = E + A*S^-alpha per (family, spec) on the mean loss: doc entries, checks, table rows.

    Where the full form does not pass its gates (law/gates.py; e.g. a loss that flattens over the
    sizes leaves E, A and alpha trading off), the nested form without E, a line in log-log, is
    fitted and reported instead when it passes, with `dropped` and `nested` saying so."""
    from kbitlaw.law.common import json_safe
    from kbitlaw.law.gates import POWER_LAW, gate_params

    groups = size_groups(latest, (pl.col("metric") == LOSS) & (pl.col("value") > 0))
    full = _power_laws(groups, config, warm, drop_e=False, minimum=config.min_sizes_power_law)
    failing = [
        i
        for i, (e, _, _) in enumerate(full)
        if e["status"] == OK and gate_params(json_safe(e), POWER_LAW, level=config.level).status != OK
    ]
    nested = _power_laws([groups[i] for i in failing], config, warm, drop_e=True, minimum=config.min_sizes)
    for i, (e, check, rows) in zip(failing, nested, strict=True):
        if e["status"] == OK and gate_params(json_safe(e), POWER_LAW, level=config.level).status == OK:
            why = gate_params(json_safe(full[i][0]), POWER_LAW, level=config.level).reason
            e["nested"] = f"E dropped from the form (L = A / S^alpha): in the full form, {why}"
            full[i] = (e, check, rows)
    entries = [e for e, _, _ in full]
    checks = [c for _, c, _ in full if c is not None]
    rows = [r for _, _, r in full if r is not None]
    return entries, checks, rows


def _power_laws(
    groups: list[SizeGroup], config: FitConfig, warm: Mapping, *, drop_e: bool, minimum: int
) -> list[tuple[dict, dict | None, pl.DataFrame | None]]:
    """(entry, extrapolation check, curve rows) per group, in the full form or without E."""
    tag = "|E dropped" if drop_e else ""

    def make(g: SizeGroup, keep: np.ndarray | None) -> PowerLawProblem:
        s, v = g.points["total_bits"].to_numpy(), g.points["value"].to_numpy()
        w = None if drop_e else warm.get(("power_law", g.family, g.quant, LOSS))
        key = f"power_law|{g.family}|{g.quant}|{LOSS}{tag}"
        if keep is None:
            return PowerLawProblem(key, s, v, warm=w, drop_e=drop_e)
        s_next = float(s[~keep][0])
        return PowerLawProblem(
            f"{key}|extrapolate", s[keep], v[keep], s_predict=s_next, warm=w, drop_e=drop_e
        )

    def solve(todo: list[PowerLawProblem]) -> list[Bootstrapped]:
        return bootstrap_power_laws(todo, config.n_boot, config.seed)

    fits, held = _run(groups, make, lambda g: minimum, solve)
    out = []
    for g, f, check in zip(groups, fits, power_law_checks(groups, held, config, drop_e), strict=True):
        entry = _power_law_entry(g, f, config.level)
        if drop_e and f is not None:
            entry.update(E=0.0, dropped=["E"])
            entry["ci"]["E"] = [0.0, 0.0]
        rows = None
        if f is not None:
            s = g.points["total_bits"].to_numpy()
            grid = np.geomspace(s.min(), s.max(), config.grid_points)
            rows = curve_rows("power_law", g, grid, grid, power_law_predict, f, config.level)
        out.append((entry, check, rows))
    return out


def power_law_checks(
    groups: list[SizeGroup], held: list, config: FitConfig, drop_e: bool = False
) -> list[dict | None]:
    """Each group's extrapolation check (None without a refit). The prediction interval is a
    parametric bootstrap of the refit, all groups in one batch (law/numerics/holdout.py)."""
    noises, refits = {}, {}
    for i, (g, h) in enumerate(zip(groups, held, strict=True)):
        if h is None:
            continue
        s, keep = g.points["total_bits"].to_numpy(), g.without_largest()
        noises[i] = group_noise(g, h, power_law_predict, s, 2 if drop_e else 3, log=True)
        if noises[i] is not None:
            key = f"power_law|{g.family}|{g.quant}|loss{'|E dropped' if drop_e else ''}|extrapolate"
            refits[i] = PowerLawRefit(key, s[keep], h, noises[i], float(s[~keep][0]), drop_e)
    boots = power_law_prediction_boot(list(refits.values()), config.n_boot, config.seed)
    predicted = dict(zip(refits, boots, strict=True))
    return [
        None if h is None else check_largest("power_law", g, predicted.get(i, h), noises[i], config.level)
        for i, (g, h) in enumerate(zip(groups, held, strict=True))
    ]
