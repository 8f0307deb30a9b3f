"""What the law modules share: the fit config, JSON-safe numbers, long-table rows, the
extrapolation check."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import norm
from scipy.stats import t as student_t

from kbitlaw.law.numerics.solve import interval
from kbitlaw.status import NO_DATA, OK  # noqa: F401  (re-exported to the law modules)
from kbitlaw.vocab import MEAN_ACC


@dataclass(frozen=True)
class FitConfig:
    n_boot: int = 200  # bootstrap resamples per law
    seed: int = 0
    level: float = 0.90  # interval coverage
    min_sizes: int = 3  # curves and threshold law (which also needs a size per free parameter)
    min_sizes_power_law: int = 4  # 3 parameters: a 4th size is the least that leaves a residual
    min_sizes_frontier: int = 2
    n_budgets: int = 64
    recommend_metric: str = MEAN_ACC  # falls back to "loss" when there is no accuracy data
    chance: Mapping[str, float] | None = None  # dataset -> chance accuracy; absent: fitted
    threshold_resample: str = "parametric"  # or examples / sizes / sizes+examples (numerics/threshold.py)
    grid_points: int = 32  # fitted-curve samples per law in the long table

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["chance"] = dict(sorted((self.chance or {}).items()))
        return d


# The long table stored as fit.parquet. `section` says what a row is:
# - "point": an observed point (metric `value`, with its `stderr`) of each size's latest checkpoint
#   at a spec (matched per size, law/table.py), the points the laws over size are fitted on;
# - "checkpoint": the same for every checkpoint (what the report's tables and figures over training
#   show: readers take points from here rather than re-reading the results);
# - "fit": a sample of a fitted curve (`law` linear_log2 | threshold | power_law): `fitted`, with
#   the pointwise bootstrap band in `lo`/`hi` for the nonlinear laws;
# - "frontier": a Pareto-frontier point; "budget": at budget `total_bits`, the best point within it;
# - "damage": an observed dL (`value`) with the form's fit (`fitted`), law damage_power | _exponential;
# - "observed" (law joint): every checkpoint's loss at every spec; the joint law's predictions are
#   "fit" rows of law joint, over tokens_seen per size and spec, with their band in `lo`/`hi`, and
#   law joint_damage (metric delta_loss) the predicted damage of each quantized spec with its band.
TABLE_SCHEMA = {
    "section": pl.String,
    "law": pl.String,
    "family": pl.String,
    "metric": pl.String,
    "quant": pl.String,
    "bits": pl.Int64,
    "n_params": pl.Float64,
    "tokens_seen": pl.Float64,
    "total_bits": pl.Float64,
    "value": pl.Float64,
    "fitted": pl.Float64,
    "lo": pl.Float64,
    "hi": pl.Float64,
    # The point's identity and spec (null in the other sections). Added with the "checkpoint"
    # rows: a table written before them lacks these columns, and readers treat them as null.
    "checkpoint_id": pl.String,
    "step": pl.Float64,
    "stderr": pl.Float64,
    "dtype": pl.String,
    "block_size": pl.Float64,
    "outlier_pct": pl.Float64,
    "bits_per_param": pl.Float64,
}
POINT_COLUMNS = (  # the columns of "point" and "checkpoint" rows (law/table.py metric_points)
    "family",
    "checkpoint_id",
    "quant",
    "metric",
    "n_params",
    "tokens_seen",
    "step",
    "bits",
    "dtype",
    "block_size",
    "outlier_pct",
    "total_bits",
    "bits_per_param",
    "value",
    "stderr",
)


def num(x: Any) -> float | None:
    """A JSON-safe float: NaN and inf become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def json_safe(obj: Any) -> Any:
    """The document with every non-finite float (and numpy scalar) made JSON-safe: NaN -> None."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return num(obj)
    return obj


def ci_pair(samples: np.ndarray, level: float, transform=None) -> list[float | None]:
    lo, hi = interval(samples, level)
    if lo is not None and transform is not None:
        lo, hi = transform(lo), transform(hi)
    return [num(lo), num(hi)]


def table_rows(section: str, law: str | None, **cols: Any) -> pl.DataFrame:
    """Long-table rows; columns not given are null."""
    n = max((len(v) for v in cols.values() if isinstance(v, (list, np.ndarray, pl.Series))), default=1)
    data = {}
    for name, dtype in TABLE_SCHEMA.items():
        v = {"section": section, "law": law}.get(name, cols.get(name))
        data[name] = pl.Series(name, v if isinstance(v, (list, np.ndarray, pl.Series)) else [v] * n).cast(
            dtype
        )
    return pl.DataFrame(data)


def tolerance_interval(
    predicted: float, lo: float, hi: float, se: float, level: float, noise_dof: int | None = None
) -> tuple[float, float]:
    """Where an observation of a predicted value should fall: each side of the prediction's
    interval [lo, hi] combined in quadrature with the observation's noise SD `se`
    (extrapolation_entry says why, and when the quantile is Student's t on `noise_dof`)."""
    tail = 0.5 + level / 2
    z = float(norm.ppf(tail))
    q = z if noise_dof is None else float(student_t.ppf(tail, max(noise_dof, 1)))
    return (
        predicted - q * math.hypot(max(predicted - lo, 0.0) / z, se),
        predicted + q * math.hypot(max(hi - predicted, 0.0) / z, se),
    )


def extrapolation_entry(
    law: str,
    family: str,
    quant: str,
    metric: str,
    held_out: str,
    predicted: float | None,
    boot: np.ndarray | None,
    observed: float,
    obs_se: float,
    level: float,
    *,
    noise_dof: int | None = None,
) -> dict:
    """Predicted vs observed for a held-out point.

    The observation is flagged when it falls outside the tolerance interval, which combines the
    law's bootstrap prediction interval and the observation's own noise in quadrature: each side
    is predicted -/+ q * sqrt((half_width / z)^2 + obs_se^2), z the normal quantile of `level`
    (half_width / z is the prediction's SD). `obs_se` is the point's stderr (then q = z) or, where
    it has none, the caller's estimate of the per-point noise from the refit's residuals on
    `noise_dof` degrees of freedom: then q is Student's t quantile, which widens the prediction's
    part too (its bootstrap drew on the same estimated noise).
    """
    lo, hi = (None, None) if boot is None else interval(boot, level)
    ok = predicted is not None and math.isfinite(predicted) and lo is not None
    se = obs_se if obs_se is not None and math.isfinite(obs_se) and obs_se > 0 else 0.0
    tol_lo = tol_hi = None
    if ok:
        tol_lo, tol_hi = tolerance_interval(predicted, lo, hi, se, level, noise_dof)
    flagged = bool(ok and not (tol_lo <= observed <= tol_hi))
    return {
        "law": law,
        "family": family,
        "quant": quant,
        "metric": metric,
        "held_out": held_out,
        "predicted": num(predicted) if ok else None,
        "observed": num(observed),
        "error": num(predicted - observed) if ok else None,
        "ci": [num(lo), num(hi)],
        "observed_se": num(se) if se > 0 else None,
        "noise_source": None if se == 0 else ("stderr" if noise_dof is None else "residuals"),
        "tolerance": [num(tol_lo), num(tol_hi)],
        "flagged": flagged,
        "status": OK if ok else NO_DATA,
    }
