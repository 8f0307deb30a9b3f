"""The nonlinear k-bit laws and their bootstraps, batched over problems (law_solve.py's solver).

The laws, with x = a log of total model bits S:
- power law (Chinchilla approach 3): log L = LSE(a - alpha*ln S, e), i.e. L = E + A*S^-alpha with
  A = e^a, E = e^e, fitted by the summed Huber loss (delta 1e-3) on log L;
- threshold: R = c + h*sigmoid((log2 S - m)/w): chance c, ceiling c + h, critical size S* = 2^m,
  fitted by weighted least squares (1/stderr of each accuracy).
Each law has a point fit from a grid of starts and a bootstrap whose replicates are refit from
the point estimate (the power law resamples points; the threshold law by default simulates from
its fit, see bootstrap_thresholds); all problems of a law (every spec, metric and extrapolation
refit) are solved together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from kbitlaw.law.solve import (
    Model,
    accuracy_stderr,
    child_rng,
    pad,
    pad_rows,
    resample_accuracy,
    resample_indices,
    robust_loss,
    solve_batched,
)

HUBER_DELTA = 1e-3


@dataclass(frozen=True)
class Bootstrapped:
    theta: np.ndarray  # the point estimate [p]; NaN when the fit failed
    boot: np.ndarray  # [n_boot, p] refits of resampled data; NaN rows failed
    predicted: float | None = None  # the law at the problem's prediction point
    predicted_boot: np.ndarray | None = None


# -- power law: L = E + A * S^-alpha ----------------------------------------------------------------

# Hoffmann et al.'s grid of starting points for (a, alpha, e).
POWER_LAW_GRID = np.array(
    [
        (a, al, e)
        for a in np.arange(0, 30, 5.0)
        for al in np.arange(0, 2.5, 0.5)
        for e in np.arange(-1, 1.5, 0.5)
    ]
)
POWER_LAW_LO = np.array([-np.inf, 0.0, -20.0])
POWER_LAW_HI = np.array([np.inf, 10.0, 20.0])


def _power_law_model(xc: np.ndarray, y: np.ndarray, mask: np.ndarray) -> Model:
    """log L = LSE(a' - alpha*xc, e) with xc = ln S - x0 (centring keeps a' and alpha uncorrelated)."""

    def model(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, alpha, e = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        x, m = xc[rows], mask[rows]
        u = a - alpha * x
        lse = np.logaddexp(u, e)
        p = np.exp(u - lse)
        jac = np.stack([p, -x * p, 1.0 - p], axis=-1) * m[..., None]
        return (lse - y[rows]) * m, jac

    return model


def to_centred(theta: np.ndarray, x0: np.ndarray | float) -> np.ndarray:
    """(a, alpha, e) -> (a - alpha*x0, alpha, e)."""
    out = np.array(theta, dtype=float)
    out[..., 0] = out[..., 0] - out[..., 1] * x0
    return out


def from_centred(theta: np.ndarray, x0: np.ndarray | float) -> np.ndarray:
    out = np.array(theta, dtype=float)
    out[..., 0] = out[..., 0] + out[..., 1] * x0
    return out


def power_law_predict(theta: np.ndarray, s_bits: np.ndarray | float) -> np.ndarray:
    """L(S) for raw (a, alpha, e) rows; broadcasts theta [..., 3] against S."""
    theta = np.asarray(theta, dtype=float)
    return np.exp(np.logaddexp(theta[..., 0] - theta[..., 1] * np.log(s_bits), theta[..., 2]))


def _polish_power_law(x: np.ndarray, y: np.ndarray, candidates: list[np.ndarray], delta: float) -> np.ndarray:
    """scipy L-BFGS-B on the summed Huber objective from each candidate (centred); the best wins.

    The objective is divided by delta^2, which leaves the minimiser unchanged but keeps L-BFGS-B's
    relative stopping rule from firing early (Besiroglu et al.'s lesson on mean vs sum).
    """
    one = _power_law_model(x[None], y[None], np.ones((1, len(x))))
    row = np.zeros(1, dtype=int)

    def objective(t: np.ndarray) -> tuple[float, np.ndarray]:
        r, jac = one(t[None], row)
        return float(robust_loss(r[0], delta)) / delta**2, (np.clip(r[0], -delta, delta) @ jac[0]) / delta**2

    bounds = [
        (None if np.isinf(lo) else lo, None if np.isinf(hi) else hi)
        for lo, hi in zip(POWER_LAW_LO, POWER_LAW_HI, strict=True)
    ]
    best, best_f = np.full(3, np.nan), np.inf
    for c in candidates:
        res = minimize(
            objective,
            c,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000},
        )
        if np.isfinite(res.fun) and res.fun < best_f:
            best, best_f = np.asarray(res.x), float(res.fun)
    return best


def fit_power_laws(
    points: list[tuple[np.ndarray, np.ndarray]],
    warm: list[np.ndarray | None] | None = None,
    *,
    delta: float = HUBER_DELTA,
    polish: int = 3,
) -> np.ndarray:
    """Chinchilla approach 3 for each (total bits, loss) point set: raw (a, alpha, e) rows [P, 3].

    Every Hoffmann grid start (plus the problem's warm start) runs in one batched solve over all
    problems; scipy's L-BFGS-B then polishes the `polish` best distinct optima of each problem on
    the summed Huber objective and keeps the best.
    """
    warm = warm or [None] * len(points)
    xs = [np.log(np.asarray(s, dtype=float)) for s, _ in points]
    ys = [np.log(np.asarray(v, dtype=float)) for _, v in points]
    x0 = np.array([x.mean() for x in xs])
    starts = [POWER_LAW_GRID if w is None else np.vstack([POWER_LAW_GRID, w]) for w in warm]
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(starts)])
    xc, mask = pad([xs[i] - x0[i] for i in owner])
    yy, _ = pad([ys[i] for i in owner])
    theta0 = np.vstack([to_centred(s, x0[i]) for i, s in enumerate(starts)])
    theta, f = solve_batched(_power_law_model(xc, yy, mask), theta0, POWER_LAW_LO, POWER_LAW_HI, delta=delta)
    out = np.full((len(points), 3), np.nan)
    for i in range(len(points)):
        mine = np.flatnonzero((owner == i) & np.isfinite(f))
        candidates: list[np.ndarray] = []
        for j in mine[np.argsort(f[mine], kind="stable")]:
            if not any(np.allclose(theta[j], c, rtol=1e-4, atol=1e-6) for c in candidates):
                candidates.append(theta[j])
            if len(candidates) == polish:
                break
        out[i] = from_centred(_polish_power_law(xs[i] - x0[i], ys[i], candidates, delta), x0[i])
    return out


def fit_power_law(s_bits: np.ndarray, loss: np.ndarray, warm: np.ndarray | None = None) -> np.ndarray:
    """One point set: raw (a, alpha, e), i.e. E = e^e, A = e^a."""
    return fit_power_laws([(s_bits, loss)], [warm])[0]


def refit_power_law_batch(
    s_bits: np.ndarray, loss: np.ndarray, mask: np.ndarray, warm: np.ndarray, *, delta: float = HUBER_DELTA
) -> np.ndarray:
    """Refit many point sets [B, n] at once, each from its warm start [B, 3] (raw); NaN if failed."""
    x = np.log(np.where(mask > 0, s_bits, 1.0))
    y = np.log(np.where(mask > 0, loss, 1.0))
    x0 = (x * mask).sum(1) / np.maximum(mask.sum(1), 1)
    model = _power_law_model(x - x0[:, None], y, mask)
    theta, f = solve_batched(model, to_centred(warm, x0), POWER_LAW_LO, POWER_LAW_HI, delta=delta)
    theta = from_centred(theta, x0)
    theta[~np.isfinite(f)] = np.nan
    return theta


@dataclass(frozen=True)
class PowerLawProblem:
    key: str  # names the problem; seeds its bootstrap draws
    s_bits: np.ndarray  # total model bits per point
    loss: np.ndarray
    s_predict: float | None = None  # also predict L here (extrapolation checks)
    warm: np.ndarray | None = None  # raw (a, alpha, e) from a previous fit


def bootstrap_power_laws(
    problems: list[PowerLawProblem], n_boot: int, seed: int, *, delta: float = HUBER_DELTA
) -> list[Bootstrapped]:
    """Point fits plus a points-with-replacement bootstrap (Besiroglu et al.), all batched.

    Each replicate is refit from the point estimate (a warm start: the resampled optimum is near).
    """
    if not problems:
        return []
    hats = fit_power_laws([(p.s_bits, p.loss) for p in problems], [p.warm for p in problems], delta=delta)
    idx = [resample_indices(child_rng(seed, p.key), np.arange(len(p.loss)), n_boot, 3) for p in problems]
    s, mask = pad_rows([np.asarray(p.s_bits, float)[i] for p, i in zip(problems, idx, strict=True)])
    v, _ = pad_rows([np.asarray(p.loss, float)[i] for p, i in zip(problems, idx, strict=True)])
    warm = np.repeat(hats, n_boot, axis=0)
    boot = refit_power_law_batch(s, v, mask, warm, delta=delta).reshape(len(problems), n_boot, 3)
    return [
        _bootstrapped(hat, np.where(np.isfinite(hat).all(), b, np.nan), p.s_predict, power_law_predict)
        for p, hat, b in zip(problems, hats, boot, strict=True)
    ]


def _bootstrapped(hat: np.ndarray, boot: np.ndarray, at: float | None, predict) -> Bootstrapped:
    if at is None:
        return Bootstrapped(hat, boot)
    return Bootstrapped(hat, boot, float(predict(hat, at)), predict(boot, at))


# -- threshold law: R = c + h * sigmoid((x - m) / w), x = log2 S ----------------------------------


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


def bootstrap_thresholds(
    problems: list[ThresholdProblem], n_boot: int, seed: int, *, resample: str = "parametric"
) -> list[Bootstrapped]:
    """Weighted least-squares sigmoid fits plus a bootstrap, all in two batched solves.

    "parametric" (default): each replicate is the fitted law at the measured sizes plus each
    point's evaluation noise, widened by the residual scatter when there are sizes enough to
    measure it (_parametric_replicates says where it approximates). Simulated from the law with
    binomial noise, its 90% S* interval covers the truth ~90% of the time with 4, 6 or 8 sizes,
    chance fixed or fitted, and is about as wide as the estimates spread (tests/test_law_fit.py).
    "examples": accuracies redrawn around the observed ones; as calibrated under binomial noise,
    blind to extra scatter between sizes. "sizes+examples": sizes resampled (free parameters + 1
    distinct), then accuracies redrawn: counts the binomial noise twice, about 2x too wide.
    "sizes": sizes alone; too few sizes to resample with 4-5, and under-covers with 6.
    """
    if resample not in THRESHOLD_RESAMPLE:
        raise ValueError(f"threshold resample must be one of {THRESHOLD_RESAMPLE}, not {resample!r}")
    if not problems:
        return []
    bounds = [threshold_bounds(p.x, p.chance) for p in problems]
    weights = [_threshold_weights(p) for p in problems]
    hats = _threshold_point_fits(problems, bounds, weights)
    # replicates, each refit from its problem's estimate (a warm start: the resampled optimum is near)
    bx, by, bw = [], [], []
    for p, w, hat in zip(problems, weights, hats, strict=True):
        rng = child_rng(seed, p.key)
        if resample == "parametric":
            idx, yb = (
                np.tile(np.arange(len(p.x)), (n_boot, 1)),
                _parametric_replicates(rng, p, hat, w, n_boot),
            )
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
    boot, _ = fit_threshold_batch(bx, by, bw, hats[rep], lo, hi)
    boot[~(bw > 0).any(axis=1)] = np.nan
    boot = boot.reshape(len(problems), n_boot, 4)
    return [
        _bootstrapped(hat, b, p.x_predict, threshold_predict)
        for p, hat, b in zip(problems, hats, boot, strict=True)
    ]
