"""The damage-law numerics: weighted nonlinear least squares on dL itself, and its bootstrap.

The law is dL = exp(x @ theta) for design rows x (damage/design.py builds them). Fitting log dL by
linear least squares would need dL > 0, and dropping the others keeps only the points whose noise
came out positive: where damage is small against evaluation noise this biases every exponent
toward 0. So dL is fitted as it is, negatives included, with weights from its noise:

    var(dL_i) = s_e^2 * (u_i + b_c(i)) + s_m^2 * f_i^2

- u_i, b_c: the variance units of the quantized loss and of its checkpoint's 16-bit loss: their
  squared stderrs when every loss has one (then s_e = 1), else the squared losses themselves
  (evaluation noise relative to the loss, scale s_e estimated from the residuals);
- s_m: scatter of the law itself, relative to the damage f_i (0 when the law is exact).
The scales are estimated from the residuals (moment equations weighted by 1/var^2, with the
n/(n - p) degrees-of-freedom correction) alternately with the fit (iteratively reweighted), from
the log-space fit on the positive points as the start. Intervals come from a parametric bootstrap:
new data are drawn from the fitted law with that noise (the 16-bit loss's noise shared by all
specs of a checkpoint, as it is in the data) and refit with the batched Gauss-Newton solver.
Approximations: the fit weights points independently (that shared noise would make a generalised
least squares a little more efficient; the bootstrap does carry it), and replicates keep the point
fit's weights. In simulation (tests/test_damage.py) the 90% intervals cover 82-92% and are about
as wide as the estimates spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from kbitlaw.law.numerics.solve import lstsq_batch, solve_batched

REWEIGHT_ROUNDS = 4


@dataclass(frozen=True)
class Noise:
    """Variance units of each dL: the quantized loss's own (u) and its checkpoint's 16-bit one."""

    own: np.ndarray  # [n]
    base: np.ndarray  # [n], equal within a checkpoint
    cluster: np.ndarray  # [n] checkpoint index 0..n_clusters-1
    known: bool  # True: units are squared stderrs (s_e fixed to 1); False: squared losses

    @property
    def unit(self) -> np.ndarray:
        return self.own + self.base

    def take(self, rows: np.ndarray) -> Noise:
        _, cluster = np.unique(self.cluster[rows], return_inverse=True)
        return Noise(self.own[rows], self.base[rows], cluster, self.known)


@dataclass(frozen=True)
class DamageFit:
    theta: np.ndarray  # [p] coefficients of the design columns
    boot: np.ndarray  # [n_boot, p] parametric-bootstrap refits (NaN rows failed)
    eval_scale: float  # s_e: evaluation noise per unit (1 when stderrs are known)
    scatter: float  # s_m: the law's own relative scatter
    dof: int  # points minus coefficients

    def sd(self, x: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """Noise SD of an observed dL at design rows x whose variance unit is `unit`."""
        f = np.exp(x @ self.theta)
        return np.sqrt(self.eval_scale**2 * unit + self.scatter**2 * f**2)


def _model(xc: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Residuals (exp(xc @ theta) - y) * w for B problems sharing design xc [n, p] and weights w [n]."""

    def model(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.exp(np.clip(theta @ xc.T, -700.0, 700.0))
        r = (f - y[rows]) * w
        return r, (f * w)[..., None] * xc[None]

    return model


def _solve(xc: np.ndarray, y: np.ndarray, w: np.ndarray, theta0: np.ndarray) -> np.ndarray:
    """Weighted least squares for each row of y [B, n] from theta0 [B, p]; NaN rows failed."""
    p = xc.shape[1]
    theta, f = solve_batched(_model(xc, y, w), theta0, np.full(p, -np.inf), np.full(p, np.inf))
    theta[~np.isfinite(f)] = np.nan
    return theta


def _objective(xc: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray) -> float:
    if not np.isfinite(theta).all():
        return np.inf
    return float(np.sum(((np.exp(np.clip(xc @ theta, -700.0, 700.0)) - y) * w) ** 2))


def _starts(xc: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The log-space fit on the positive points, and a flat law at the mean damage."""
    flat = np.zeros(xc.shape[1])
    flat[0] = np.log(max(float(np.mean(np.abs(y))), 1e-12))
    pos = y > 0
    starts = [flat]
    if pos.sum() > xc.shape[1]:
        coef = lstsq_batch(xc[pos][None], np.log(y[pos])[None], np.ones((1, int(pos.sum()))))[0]
        if np.isfinite(coef).all():
            starts.append(coef)
    return np.array(starts)


def _variance_scales(
    r: np.ndarray, unit: np.ndarray, f: np.ndarray, prev: np.ndarray, dof_factor: float, known: bool
) -> tuple[float, float]:
    """(s_e^2, s_m^2) >= 0 from E[r^2] = s_e^2 unit + s_m^2 f^2 (r^2 scaled by n/(n - p)), by least
    squares with each equation divided by the previous variance (var(r^2) = 2 var^2)."""
    target = r**2 * dof_factor / prev
    a, b = unit / prev, f**2 / prev
    if known:
        bb = float(b @ b)
        return 1.0, max(0.0, float(b @ (target - a)) / bb) if bb > 0 else 0.0
    (se2, sm2), _ = nnls(np.column_stack([a, b]), target)
    return float(se2), float(sm2)


def noise_variance(se2: float, sm2: float, unit: np.ndarray, f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The noise model, floored (noise-free data would give weights of 1/0); the nested forms' F test
    (damage/law.py) weighs residuals by it too."""
    v = se2 * unit + sm2 * f**2
    floor = max(1e-12 * float(v.max(initial=0.0)), (1e-9 * float(np.abs(y).max(initial=0.0))) ** 2, 1e-300)
    return np.maximum(v, floor)


def fit_damage_law(
    x: np.ndarray, y: np.ndarray, noise: Noise, n_boot: int, rng: np.random.Generator
) -> DamageFit | None:
    """Fit dL = exp(x @ theta) to y (negatives kept) and bootstrap it; None when the fit fails or
    the design cannot separate the coefficients (e.g. D proportional to N)."""
    n, p = x.shape
    if n <= p:
        return None
    centre = np.r_[0.0, x[:, 1:].mean(axis=0)]
    xc = x - centre  # centred regressors: the intercept becomes log dL at the centre
    scaled = xc / np.maximum(np.abs(xc).max(axis=0), 1e-300)
    if not np.linalg.cond(scaled.T @ scaled) < 1e12:
        return None
    unit = np.maximum(noise.unit, 1e-300)
    dof_factor = n / (n - p)
    se2, sm2 = 1.0, 0.0  # round 0: weights from the evaluation noise alone
    var = unit.copy()
    starts = _starts(xc, y)
    theta = None
    for _ in range(REWEIGHT_ROUNDS):
        w = 1.0 / np.sqrt(var)
        cand = _solve(xc, np.repeat(y[None], len(starts), 0), w, starts)
        obj = [_objective(xc, y, w, t) for t in cand]
        if not np.isfinite(min(obj)):
            return None
        theta = cand[int(np.argmin(obj))]
        starts = theta[None]
        f = np.exp(xc @ theta)
        se2, sm2 = _variance_scales(y - f, unit, f, var, dof_factor, noise.known)
        var = noise_variance(se2, sm2, unit, f, y)
    assert theta is not None
    f = np.exp(xc @ theta)
    w = 1.0 / np.sqrt(var)
    n_clusters = int(noise.cluster.max()) + 1
    draws = np.sqrt(se2) * (
        np.sqrt(noise.own) * rng.standard_normal((n_boot, n))
        - np.sqrt(noise.base) * rng.standard_normal((n_boot, n_clusters))[:, noise.cluster]
    ) + np.sqrt(sm2) * f * rng.standard_normal((n_boot, n))
    boot = _solve(xc, f + draws, w, np.repeat(theta[None], n_boot, 0)) if n_boot else np.zeros((0, p))
    theta_raw = theta.copy()
    theta_raw[0] -= theta[1:] @ centre[1:]
    boot_raw = boot.copy()
    boot_raw[:, 0] -= boot[:, 1:] @ centre[1:]
    return DamageFit(theta_raw, boot_raw, float(np.sqrt(se2)), float(np.sqrt(sm2)), n - p)
