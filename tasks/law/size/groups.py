"""The curves over model size the size laws are fitted to, and what every size law does with them.

A SizeGroup is one family's points at one spec and metric, each size's latest checkpoint, by total
model bits S (size_groups). Each law solves every group twice, in full and without its largest
model (solve_groups), so that the refit can predict the largest model: the extrapolation check
(check_largest; its noise: group_noise, law/numerics/holdout.py). The fitted curves, with their
bootstrap bands, go to the long table for plots (curve_rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from kbitlaw.law.common import extrapolation_entry, table_rows
from kbitlaw.law.numerics.holdout import HeldOutNoise, held_out_noise
from kbitlaw.law.numerics.nonlinear import Bootstrapped


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


def solve_groups(
    groups: list[SizeGroup], make: Callable, minimum: Callable, solve: Callable
) -> tuple[list, list]:
    """Build each group's full and without-largest problems (None when fewer sizes than
    minimum(group)) and solve them all in one batch. Returns both fits, aligned with `groups`."""
    full = [make(g, None) if g.points.height >= minimum(g) else None for g in groups]
    held = [make(g, g.without_largest()) if g.points.height - 1 >= minimum(g) else None for g in groups]
    todo = [p for p in full + held if p is not None]
    fitted = dict(zip([p.key for p in todo], solve(todo), strict=True))
    ok = [None if p is None or not np.isfinite(fitted[p.key].theta).all() else fitted[p.key] for p in full]
    return ok, [None if p is None else fitted[p.key] for p in held]
