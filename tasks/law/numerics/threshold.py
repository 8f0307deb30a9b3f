"""The threshold law and its calibrated bootstrap, batched over problems (law/numerics/solve.py's solver).

R = c + h*sigmoid((log2 S - m)/w): chance c, ceiling c + h, critical size S* = 2^m, fitted by
weighted least squares (1/stderr of each accuracy); by default the bootstrap simulates from the fit
(see bootstrap_thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kbitlaw.law.numerics.nonlinear import Bootstrapped, _bootstrapped
from kbitlaw.law.numerics.solve import (
    Model,
    accuracy_stderr,
    child_rng,
    pad,
    pad_rows,
    resample_accuracy,
    resample_indices,
    solve_batched,
)


@dataclass(frozen=True)
class ThresholdProblem:
    key: str
    x: np.ndarray  # log2 total bits per point [n]
    acc: np.ndarray  # [n, D] accuracy per dataset; the metric is their mean
    n_examples: np.ndarray  # [n, D]; NaN where unknown
    stderr: np.ndarray  # [n, D]; NaN where unknown
    chance: float | None  # None: a free parameter
    x_predict: float | None = None
    warm: np.ndarray | None = None  # (m, ln w, h, c) from a previous fit


@dataclass(frozen=True)
class ThresholdBounds:
    lo: np.ndarray  # (m, ln w, h, c)
    hi: np.ndarray


def threshold_bounds(x: np.ndarray, chance: float | None) -> ThresholdBounds:
    """S* may lie up to one data span beyond the data; w from 1/20 doubling to 4 spans."""
    span = max(float(x.max() - x.min()), 1.0)
    c_lo, c_hi = (0.0, 1.0) if chance is None else (chance, chance)
    lo = np.array([x.min() - span, np.log(0.05), 0.0, c_lo])
    hi = np.array([x.max() + span, np.log(4 * span), 1.0, c_hi])
    return ThresholdBounds(lo, hi)


def threshold_predict(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    theta = np.asarray(theta, dtype=float)
    m, w, h, c = theta[..., 0], np.exp(theta[..., 1]), theta[..., 2], theta[..., 3]
    return c + h / (1.0 + np.exp(-(x - m) / w))


def _threshold_model(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Model:
    """Residuals (R(x) - y)/sigma; `weight` = mask/sigma, so padding has weight 0."""

    def model(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, w, h, c = (theta[:, i : i + 1] for i in range(4))
        w = np.exp(w)
        xr, wt = x[rows], weight[rows]
        z = np.clip((xr - m) / w, -60, 60)
        s = 1.0 / (1.0 + np.exp(-z))
        ds = h * s * (1.0 - s)
        jac = np.stack([-ds / w, -ds * z, s, np.ones_like(s)], axis=-1) * wt[..., None]
        return (c + h * s - y[rows]) * wt, jac

    return model


def threshold_starts(x: np.ndarray, y: np.ndarray, chance: float | None) -> np.ndarray:
    """A small grid: S* at the low end, middle and high end of the data, sharp and gentle."""
    span = max(float(x.max() - x.min()), 1.0)
    c0 = float(chance) if chance is not None else float(np.clip(y.min(), 0.0, 1.0))
    h0 = float(np.clip(y.max() - c0, 0.01, 1.0))
    return np.array(
        [
            (m, np.log(w), h0, c0)
            for m in (x.min(), (x.min() + x.max()) / 2, x.max())
            for w in (span / 8, span / 2)
        ]
    )


def fit_threshold_batch(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    starts: np.ndarray,
    bounds_lo: np.ndarray,
    bounds_hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares for B problems [B, n]; returns (theta [B, 4], objective [B])."""
    theta, f = solve_batched(_threshold_model(x, y, weight), starts, bounds_lo, bounds_hi)
    theta[~np.isfinite(f)] = np.nan
    return theta, f


def _threshold_sigma(p: ThresholdProblem) -> np.ndarray | None:
    """The stderr of each point's mean accuracy; None when any is unknown."""
    se = accuracy_stderr(p.acc, p.n_examples, p.stderr)
    sigma = np.sqrt((se**2).sum(axis=1)) / p.acc.shape[1]
    return sigma if np.isfinite(sigma).all() and (sigma > 0).all() else None


def _threshold_weights(p: ThresholdProblem) -> np.ndarray:
    """1/sigma of each point's mean accuracy; equal weights when any sigma is unknown."""
    sigma = _threshold_sigma(p)
    return np.ones(len(p.x)) if sigma is None else 1.0 / sigma


THRESHOLD_RESAMPLE = ("parametric", "examples", "sizes+examples", "sizes")
OVERDISPERSION_MIN_DOF = 2  # residual degrees of freedom needed to measure scatter beyond the stderr


def _n_free(p: ThresholdProblem) -> int:
    return 3 if p.chance is not None else 4


def _parametric_replicates(
    rng: np.random.Generator, p: ThresholdProblem, hat: np.ndarray, weight: np.ndarray, n_boot: int
) -> np.ndarray:
    """[n_boot, n] mean accuracies simulated from the fitted law plus each point's noise.

    Where this approximates: (1) the law is taken as right, so replicates scatter around the
    fitted curve; (2) the law fits the datasets' mean, so each dataset's accuracy is shifted by its
    point's fitted-minus-observed gap and redrawn (binomial in n_examples, else normal with its
    stderr); (3) scatter beyond that noise (sizes off the curve) enters only as a variance factor
    phi = max(1, Pearson chi^2 / residual dof), once the residual dof reach OVERDISPERSION_MIN_DOF,
    and phi is then taken as known (no t-correction): with fewer sizes the interval carries the
    evaluation noise alone; (4) replicates keep the data's weights. With unknown noise (equal
    weights) replicates are normal with the residual variance, which needs a residual dof (else NaN).
    """
    mu = threshold_predict(hat, p.x)
    resid = (mu - p.acc.mean(axis=1)) * weight
    dof = len(p.x) - _n_free(p)
    phi = float(resid @ resid) / dof if dof > 0 else np.nan
    if _threshold_sigma(p) is None:
        return mu + np.sqrt(phi) * rng.standard_normal((n_boot, len(p.x)))
    centre = np.clip(p.acc + (mu - p.acc.mean(axis=1))[:, None], 0.0, 1.0)
    tile = (n_boot, 1, 1)
    drawn = resample_accuracy(
        rng, np.tile(centre, tile), np.tile(p.n_examples, tile), np.tile(p.stderr, tile)
    )
    scale = np.sqrt(max(phi, 1.0)) if dof >= OVERDISPERSION_MIN_DOF else 1.0
    return mu + scale * (drawn.mean(axis=2) - centre.mean(axis=1))


def _resampled_replicates(
    rng: np.random.Generator, p: ThresholdProblem, resample: str, n_boot: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nonparametric replicates: (point indices [n_boot, n], mean accuracies [n_boot, n]).

    A size resample keeps free parameters + 1 distinct sizes (with fewer the law interpolates
    them); with no more sizes than that, "sizes" cannot vary the data and its replicates are NaN.
    """
    n = len(p.x)
    if resample == "examples":
        idx = np.tile(np.arange(n), (n_boot, 1))
    else:
        idx = resample_indices(rng, np.arange(n), n_boot, _n_free(p) + 1)
    acc = p.acc[idx]
    if resample != "sizes":
        acc = resample_accuracy(rng, acc, p.n_examples[idx], p.stderr[idx])
    elif n <= _n_free(p) + 1:
        acc = np.full_like(acc, np.nan)
    return idx, acc.mean(axis=2)


def _threshold_point_fits(problems: list[ThresholdProblem], bounds: list, weights: list) -> np.ndarray:
    """(m, ln w, h, c) per problem: every problem from every start in one solve; the best wins."""
    ys = [p.acc.mean(axis=1) for p in problems]
    starts = [threshold_starts(p.x, y, p.chance) for p, y in zip(problems, ys, strict=True)]
    starts = [s if p.warm is None else np.vstack([s, p.warm]) for s, p in zip(starts, problems, strict=True)]
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(starts)])
    x, _ = pad([problems[i].x for i in owner])
    y, _ = pad([ys[i] for i in owner])
    wt, _ = pad([weights[i] for i in owner])
    lo = np.vstack([bounds[i].lo for i in owner])
    hi = np.vstack([bounds[i].hi for i in owner])
    theta, f = fit_threshold_batch(x, y, wt, np.vstack(starts), lo, hi)
    hats = np.full((len(problems), 4), np.nan)
    for i in range(len(problems)):
        mine = np.flatnonzero((owner == i) & np.isfinite(f))
        if mine.size:
            hats[i] = theta[mine[np.argmin(f[mine])]]
    return hats


def _refit_replicates(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    hat: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    gap: np.ndarray,
) -> np.ndarray:
    """Each replicate refit from its problem's estimate, and where that is a step sharper than the
    widest `gap` between the problem's sizes also from a 4x gentler start; the better one wins.

    From the estimate alone such a replicate stays in the estimate's basin, while S* can slide
    along a ridge (w against m) that the point fit's gentle starts explore: the interval then
    under-covers (about half the time with 4 sizes and w = 0.3 doublings in simulation, ~0.95
    with the second start). Gentler estimates have no such ridge and skip the second solve.
    """
    theta, f = fit_threshold_batch(x, y, weight, hat, lo, hi)
    steep = np.flatnonzero(np.exp(hat[:, 1]) < gap)
    if steep.size:
        gentle = hat[steep].copy()
        gentle[:, 1] = np.minimum(gentle[:, 1] + np.log(4.0), hi[steep, 1])
        t2, f2 = fit_threshold_batch(x[steep], y[steep], weight[steep], gentle, lo[steep], hi[steep])
        better = np.isfinite(f2) & ~(f[steep] <= f2)
        theta[steep[better]] = t2[better]
    return theta


def bootstrap_thresholds(
    problems: list[ThresholdProblem], n_boot: int, seed: int, *, resample: str = "parametric"
) -> list[Bootstrapped]:
    """Weighted least-squares sigmoid fits plus a bootstrap, all in a few batched solves.
    `resample` (FitConfig.threshold_resample) chooses how replicates are made:

    "parametric" (default): each replicate is the fitted law at the measured sizes plus each
    point's evaluation noise, widened by the residual scatter when there are sizes enough to
    measure it (_parametric_replicates says where it approximates). Simulated from the law with
    binomial noise, its 90% S* interval covers the truth ~90% of the time with 4, 6 or 8 sizes,
    chance fixed or fitted, and is about as wide as the estimates spread
    (tests/test_threshold_calibration.py).
    "examples": accuracies redrawn around the observed ones; as calibrated under binomial noise,
    blind to extra scatter between sizes. "sizes+examples": sizes resampled (free parameters + 1
    distinct), then accuracies redrawn: counts the binomial noise twice, 2-2.7x too wide with 6-8
    sizes. "sizes": sizes alone; no interval with free parameters + 1 sizes or fewer, and with 6
    it under-covers (0.66 with chance fitted).
    """
    if resample not in THRESHOLD_RESAMPLE:
        raise ValueError(f"threshold resample must be one of {THRESHOLD_RESAMPLE}, not {resample!r}")
    if not problems:
        return []
    bounds = [threshold_bounds(p.x, p.chance) for p in problems]
    weights = [_threshold_weights(p) for p in problems]
    hats = _threshold_point_fits(problems, bounds, weights)
    # replicates, refit from their problem's estimate (a warm start: the resampled optimum is near)
    bx, by, bw = [], [], []
    for p, w, hat in zip(problems, weights, hats, strict=True):
        rng = child_rng(seed, p.key)
        if resample == "parametric":
            idx = np.tile(np.arange(len(p.x)), (n_boot, 1))
            yb = _parametric_replicates(rng, p, hat, w, n_boot)
        else:
            idx, yb = _resampled_replicates(rng, p, resample, n_boot)
        ok = np.isfinite(yb).all(axis=1, keepdims=True)
        bx.append(p.x[idx])
        by.append(np.where(ok, yb, 0.0))
        bw.append(np.where(ok, w[idx], 0.0))  # a replicate without data: all weights 0, NaN below
    rep = np.repeat(np.arange(len(problems)), n_boot)
    bx, _ = pad_rows(bx)
    by, _ = pad_rows(by)
    bw, _ = pad_rows(bw)  # padding gets weight 0
    lo, hi = np.vstack([bounds[i].lo for i in rep]), np.vstack([bounds[i].hi for i in rep])
    gap = np.array([np.diff(np.unique(p.x)).max(initial=0.0) for p in problems])
    boot = _refit_replicates(bx, by, bw, hats[rep], lo, hi, gap[rep])
    boot[~(bw > 0).any(axis=1)] = np.nan
    boot = boot.reshape(len(problems), n_boot, 4)
    return [
        _bootstrapped(hat, b, p.x_predict, threshold_predict)
        for p, hat, b in zip(problems, hats, boot, strict=True)
    ]
