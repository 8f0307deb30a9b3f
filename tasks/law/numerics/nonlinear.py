"""The nonlinear k-bit laws and their bootstraps, batched over problems (law/numerics/solve.py's solver); the
threshold law's fitting lives in law/numerics/threshold.py.

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

from kbitlaw.law.numerics.solve import (
    Model,
    child_rng,
    pad,
    pad_rows,
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
# The nested form without E (L = A * S^-alpha, a line in log-log): e held at this value, where
# E = e^-40 ~ 4e-18 nats adds nothing to any loss.
DROPPED_E = -40.0


def power_law_bounds(drop_e: np.ndarray | bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (lo, hi) [B, 3], or [3] for one flag: e fixed at DROPPED_E where E is dropped."""
    drop = np.asarray(drop_e, dtype=bool)
    lo = np.broadcast_to(POWER_LAW_LO, (*drop.shape, 3)).copy()
    hi = np.broadcast_to(POWER_LAW_HI, (*drop.shape, 3)).copy()
    lo[..., 2] = np.where(drop, DROPPED_E, lo[..., 2])
    hi[..., 2] = np.where(drop, DROPPED_E, hi[..., 2])
    return lo, hi


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


def _polish_power_law(
    x: np.ndarray, y: np.ndarray, candidates: list[np.ndarray], delta: float, drop_e: bool = False
) -> np.ndarray:
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
        for lo, hi in zip(*power_law_bounds(drop_e), strict=True)
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
    drop_e: list[bool] | None = None,
) -> np.ndarray:
    """Chinchilla approach 3 for each (total bits, loss) point set: raw (a, alpha, e) rows [P, 3].

    Every Hoffmann grid start (plus the problem's warm start) runs in one batched solve over all
    problems; scipy's L-BFGS-B then polishes the `polish` best distinct optima of each problem on
    the summed Huber objective and keeps the best.
    """
    warm = warm or [None] * len(points)
    drop_e = drop_e or [False] * len(points)
    xs = [np.log(np.asarray(s, dtype=float)) for s, _ in points]
    ys = [np.log(np.asarray(v, dtype=float)) for _, v in points]
    x0 = np.array([x.mean() for x in xs])
    starts = [POWER_LAW_GRID if w is None else np.vstack([POWER_LAW_GRID, w]) for w in warm]
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(starts)])
    xc, mask = pad([xs[i] - x0[i] for i in owner])
    yy, _ = pad([ys[i] for i in owner])
    theta0 = np.vstack([to_centred(s, x0[i]) for i, s in enumerate(starts)])
    lo, hi = power_law_bounds(np.array([drop_e[i] for i in owner], dtype=bool))
    theta, f = solve_batched(_power_law_model(xc, yy, mask), theta0, lo, hi, delta=delta)
    out = np.full((len(points), 3), np.nan)
    for i in range(len(points)):
        mine = np.flatnonzero((owner == i) & np.isfinite(f))
        candidates: list[np.ndarray] = []
        for j in mine[np.argsort(f[mine], kind="stable")]:
            if not any(np.allclose(theta[j], c, rtol=1e-4, atol=1e-6) for c in candidates):
                candidates.append(theta[j])
            if len(candidates) == polish:
                break
        polished = _polish_power_law(xs[i] - x0[i], ys[i], candidates, delta, drop_e[i])
        out[i] = from_centred(polished, x0[i])
    return out


def fit_power_law(s_bits: np.ndarray, loss: np.ndarray, warm: np.ndarray | None = None) -> np.ndarray:
    """One point set: raw (a, alpha, e), i.e. E = e^e, A = e^a."""
    return fit_power_laws([(s_bits, loss)], [warm])[0]


def refit_power_law_batch(
    s_bits: np.ndarray,
    loss: np.ndarray,
    mask: np.ndarray,
    warm: np.ndarray,
    *,
    delta: float = HUBER_DELTA,
    drop_e: np.ndarray | bool = False,
) -> np.ndarray:
    """Refit many point sets [B, n] at once, each from its warm start [B, 3] (raw); NaN if failed."""
    x = np.log(np.where(mask > 0, s_bits, 1.0))
    y = np.log(np.where(mask > 0, loss, 1.0))
    x0 = (x * mask).sum(1) / np.maximum(mask.sum(1), 1)
    model = _power_law_model(x - x0[:, None], y, mask)
    lo, hi = power_law_bounds(np.broadcast_to(np.asarray(drop_e, dtype=bool), (len(warm),)))
    theta, f = solve_batched(model, to_centred(warm, x0), lo, hi, delta=delta)
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
    drop_e: bool = False  # the nested form without E


def bootstrap_power_laws(
    problems: list[PowerLawProblem], n_boot: int, seed: int, *, delta: float = HUBER_DELTA
) -> list[Bootstrapped]:
    """Point fits plus a points-with-replacement bootstrap (Besiroglu et al.), all batched.

    Each replicate is refit from the point estimate (a warm start: the resampled optimum is near).
    """
    if not problems:
        return []
    hats = fit_power_laws(
        [(p.s_bits, p.loss) for p in problems],
        [p.warm for p in problems],
        delta=delta,
        drop_e=[p.drop_e for p in problems],
    )
    idx = [resample_indices(child_rng(seed, p.key), np.arange(len(p.loss)), n_boot, 3) for p in problems]
    s, mask = pad_rows([np.asarray(p.s_bits, float)[i] for p, i in zip(problems, idx, strict=True)])
    v, _ = pad_rows([np.asarray(p.loss, float)[i] for p, i in zip(problems, idx, strict=True)])
    warm = np.repeat(hats, n_boot, axis=0)
    drop = np.repeat([p.drop_e for p in problems], n_boot)
    boot = refit_power_law_batch(s, v, mask, warm, delta=delta, drop_e=drop).reshape(len(problems), n_boot, 3)
    return [
        _bootstrapped(hat, np.where(np.isfinite(hat).all(), b, np.nan), p.s_predict, power_law_predict)
        for p, hat, b in zip(problems, hats, boot, strict=True)
    ]


def _bootstrapped(hat: np.ndarray, boot: np.ndarray, at: float | None, predict) -> Bootstrapped:
    if at is None:
        return Bootstrapped(hat, boot)
    return Bootstrapped(hat, boot, float(predict(hat, at)), predict(boot, at))


# -- threshold law: R = c + h * sigmoid((x - m) / w), x = log2 S ----------------------------------
