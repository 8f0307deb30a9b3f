"""The extrapolation checks' numerics for the laws over model size: the held-out point's noise and
the loss power law's prediction interval.

A law refit without the largest model predicts it; the check (common.extrapolation_entry) compares
the observation with the prediction, combining the prediction's uncertainty and the observation's
noise in quadrature. Both need the noise of a point:
- the stderrs, when the held-out point and every training point report one;
- else the refit's residual SD, sqrt(RSS / (n - p)) with p the law's free parameters, on its
  degrees of freedom (the check then uses Student's t).
The loss power law's own bootstrap resamples points, which with the 4-5 sizes a refit often has
leaves too few distinct sizes to vary the extrapolation (its interval came out far too narrow:
27% of noise-only checks flagged with 5 sizes); its prediction interval is instead a parametric
bootstrap: replicates drawn from the refit law with that noise, refit with the same Huber fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kbitlaw.law.numerics.nonlinear import Bootstrapped, power_law_predict, refit_power_law_batch
from kbitlaw.law.numerics.solve import child_rng, pad_rows


@dataclass(frozen=True)
class HeldOutNoise:
    train: np.ndarray  # [n] noise SD of each training point, on the fit's scale (log L for the power law)
    held: float  # noise SD of the held-out observation, in the metric's units
    dof: int | None  # None: from stderrs; else the residual degrees of freedom


def _known(se: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(se) & (se > 0)))


def held_out_noise(
    y: np.ndarray,
    stderr: np.ndarray,
    keep: np.ndarray,
    fitted: np.ndarray,
    predicted: float,
    n_free: int,
    log: bool,
) -> HeldOutNoise | None:
    """Noise of a size group's points (values y, stderr) for a refit on `keep` whose values at the
    kept points are `fitted` and at the held-out point `predicted`. On log y when `log`."""
    y, se = np.asarray(y, float), np.asarray(stderr, float)
    if _known(se):
        train = se[keep] / y[keep] if log else se[keep]
        return HeldOutNoise(train, float(se[~keep][0]), None)
    dof = int(keep.sum()) - n_free
    if dof <= 0:
        return None
    resid = np.log(y[keep] / fitted) if log else y[keep] - fitted
    sd = float(np.sqrt(resid @ resid / dof))
    return HeldOutNoise(np.full(int(keep.sum()), sd), sd * predicted if log else sd, dof)


@dataclass(frozen=True)
class PowerLawRefit:
    key: str  # seeds the replicates
    s_bits: np.ndarray  # the training points' total bits
    fit: Bootstrapped  # the refit without the largest model (theta, predicted)
    noise: HeldOutNoise
    s_predict: float
    drop_e: bool = False  # the nested form without E


def power_law_prediction_boot(refits: list[PowerLawRefit], n_boot: int, seed: int) -> list[Bootstrapped]:
    """Each refit with its prediction's parametric bootstrap: log L* = log L(theta, S) + noise,
    refit from theta (all refits in one batched solve) and evaluated at s_predict."""
    if not refits:
        return []
    s_rows, y_rows = [], []
    for r in refits:
        rng = child_rng(seed, f"{r.key}|parametric")
        mu = np.log(power_law_predict(r.fit.theta, r.s_bits))
        s_rows.append(np.tile(r.s_bits, (n_boot, 1)))
        y_rows.append(np.exp(mu + r.noise.train * rng.standard_normal((n_boot, len(r.s_bits)))))
    s, mask = pad_rows(s_rows)
    y, _ = pad_rows(y_rows)
    warm = np.repeat(np.array([r.fit.theta for r in refits]), n_boot, axis=0)
    drop = np.repeat([r.drop_e for r in refits], n_boot)
    boot = refit_power_law_batch(s, y, mask, warm, drop_e=drop).reshape(len(refits), n_boot, 3)
    return [
        Bootstrapped(r.fit.theta, b, r.fit.predicted, power_law_predict(b, r.s_predict))
        for r, b in zip(refits, boot, strict=True)
    ]
