"""What each damage form predicts beyond its data: the checks that choose between the forms.

- held_out_check: refit without the family's latest checkpoint and predict it; each held-out point
  is an extrapolation check (its noise: the losses' stderrs, else the refit's noise estimate);
- width_holdout: leave each bit width out in turn and predict it (where the forms differ);
- heldout_errors, standardized_errors: those predictions' errors in units of the points' noise SD,
  pooled over the two forms so that neither is flattered by its own noise estimate;
- next_checkpoint: dL at the next checkpoint of the latest checkpoint's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from kbitlaw.law.common import extrapolation_entry, num
from kbitlaw.law.damage.design import SchemeData, design, free_columns, identifiable, predict
from kbitlaw.law.damage.fit import DamageFit, fit_damage_law
from kbitlaw.law.numerics.solve import child_rng, interval


@dataclass(frozen=True)
class HeldOut:
    """A form's predictions of the held-out checkpoint's dL, the observations and their noise SD."""

    predicted: np.ndarray
    observed: np.ndarray
    sd: np.ndarray


def held_out_check(
    data: SchemeData,
    form: str,
    cols: np.ndarray,
    n_boot: int,
    seed: int,
    level: float,
    with_checks: bool = True,
):
    """Refit without the latest checkpoint and predict its points: (HeldOut or None, checks).

    A held-out point is flagged when it lies outside the refit's prediction interval combined in
    quadrature with the point's own noise (its stderrs, else the refit's noise estimate)."""
    x, y, ckpt, noise = data.design(form)[:, cols], data.y, data.checkpoints, data.noise()
    latest = data.latest["checkpoint_id"]
    train = ckpt != latest
    if not set(cols) <= set(free_columns(data.design(form)[train])) or not identifiable(
        x[train], ckpt[train], cols
    ):
        return None, []
    rng = child_rng(seed, f"damage|{data.family}|{data.scheme}|{form}|heldout")
    rows = np.flatnonzero(train)
    # without checks only the held-out errors are wanted (choosing a form): no bootstrap needed
    fit = fit_damage_law(x[rows], y[rows], noise.take(rows), n_boot if with_checks else 0, rng)
    if fit is None:
        return None, []
    pred, pred_boot = predict(x[~train], fit)
    obs = y[~train]
    obs_sd = fit.sd(x[~train], noise.unit[~train])
    dof = None if noise.known else fit.dof
    quants = data.rows["quant"].to_numpy()[~train]
    checks = [
        extrapolation_entry(
            f"damage_{form}",
            data.family,
            q,
            "delta_loss",
            latest,
            float(pred[j]),
            pred_boot[:, j],
            float(obs[j]),
            float(obs_sd[j]),
            level,
            noise_dof=dof,
        )
        for j, q in enumerate(quants)
    ]
    return HeldOut(pred, obs, obs_sd), checks


def width_holdout(data: SchemeData, form: str, cols: np.ndarray, seed: int) -> HeldOut | None:
    """Leave one bit width out: refit without each k in turn and predict its points. The forms
    differ only in how damage falls with k (k^-gamma against e^(-k/gamma)), so predicting an unseen
    width, the extreme ones above all, is what tells them apart; a held-out checkpoint is not (both
    forms share its D and N terms). None with fewer than 3 widths."""
    x, y, noise = data.design(form)[:, cols], data.y, data.noise()
    ks = data.rows["bits"].to_numpy()
    widths = np.unique(ks)
    if len(widths) < 3 or 3 not in cols:
        return None
    predicted, observed, sd = (np.full(len(y), np.nan) for _ in range(3))
    for k in widths:
        train = np.flatnonzero(ks != k)
        rng = child_rng(seed, f"damage|{data.family}|{data.scheme}|{form}|width{k}")
        fit = fit_damage_law(x[train], y[train], noise.take(train), 0, rng)
        if fit is None:
            return None
        test = ks == k
        predicted[test] = np.exp(x[test] @ fit.theta)
        observed[test] = y[test]
        sd[test] = fit.sd(x[test], noise.unit[test])
    return HeldOut(predicted, observed, sd)


def next_checkpoint(data: SchemeData, all_rows: pl.DataFrame, form: str, cols, fit: DamageFit, level: float):
    """dL predicted for the latest checkpoint's size one more step of its last token growth ahead."""
    latest = data.latest
    size = all_rows.filter(pl.col("family") == data.family, pl.col("n_params") == latest["n_params"])
    earlier = size.filter(pl.col("tokens_seen") < latest["tokens_seen"])["tokens_seen"]
    if earlier.len() == 0:
        return None
    d_next = latest["tokens_seen"] ** 2 / float(earlier.max())
    names = data.rows.sort("quant").group_by("bits", maintain_order=True).first().sort("bits")
    ks = names["bits"].to_numpy().astype(float)
    x = design(np.full(len(ks), d_next), np.full(len(ks), latest["n_params"]), ks, form)[:, cols]
    pred, pred_boot = predict(x, fit)
    predictions = [
        {
            "quant": q,
            "bits": int(k),
            "delta_loss": num(pred[i]),
            "ci": [num(v) for v in interval(pred_boot[:, i], level)],
        }
        for i, (q, k) in enumerate(zip(names["quant"], ks, strict=True))
    ]
    return {"n_params": int(latest["n_params"]), "tokens_seen": num(d_next), "predictions": predictions}


def heldout_errors(held: list[HeldOut | None]) -> list[float | None]:
    """Each form's RMS held-out error in units of the points' noise SD, pooled over the forms
    (the mean of their noise variances), so that a form whose poorer fit inflated its own noise
    estimate is not flattered by it."""
    fitted = [h for h in held if h is not None]
    if not fitted:
        return [None] * len(held)
    sd = np.sqrt(np.mean([h.sd**2 for h in fitted], axis=0))
    return [
        None if h is None else float(np.sqrt(np.mean(((h.predicted - h.observed) / sd) ** 2))) for h in held
    ]


def standardized_errors(held: list[HeldOut | None]) -> list[np.ndarray | None]:
    """Each form's per-point errors in units of the points' noise SD pooled over the forms (as in
    heldout_errors); None for a form without predictions, or for both when either has none."""
    if any(h is None for h in held):
        return [None] * len(held)
    sd = np.sqrt(np.mean([h.sd**2 for h in held], axis=0))
    return [(h.predicted - h.observed) / sd for h in held]
