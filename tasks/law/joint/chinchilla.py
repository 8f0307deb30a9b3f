"""The 16-bit loss surface L(N, D) = E + A / N^alpha + B / D^beta, fitted as Chinchilla's approach 3.

Hoffmann et al. (2022, App. D.2) and the Besiroglu et al. (2024) replication fit

    log L = LSE(a - alpha log N, b - beta log D, e),   A, B, E = exp(a, b, e)

by minimising the sum of Huber losses (delta = 1e-3) of the log residuals with L-BFGS from a grid
of starting points: alpha, beta in {0, 0.5, .., 2}, e in {-1, -0.5, .., 1}, a, b in {0, 5, .., 25}
(4,500 starts). L-BFGS-B from all of them costs ~20 s per fit. Here the objective is evaluated at
every grid point (milliseconds), the batched Gauss-Newton solver (law/numerics/solve.py, which minimises the
same Huber objective) runs from the N_STARTS best, and L-BFGS-B polishes its POLISHED best optima.
On the Chinchilla data this reaches the replication's optimum (tests/test_chinchilla.py). A warm
fit (a refit after new checkpoints) starts from the previous fit's parameters plus the WARM_STARTS
best grid points.

Intervals: the replication's bootstrap. Points are resampled with replacement and each replicate
is refit from the point estimate (batched Gauss-Newton: ~100x faster than a loop of L-BFGS-B, same
spread to 3 digits); an interval is the equal-tailed percentile interval of the replicates. On the
Chinchilla data the replicates' SDs match the replication's standard errors. In simulation (40
repetitions of two truths, 0.2% loss noise) the 90% intervals cover 82-98% and are 0.9-1.2x as
wide as the estimates spread.
The law is identified only when sizes and token counts both vary (3 distinct values each) and at
least 3 points are left beyond the 5 parameters; otherwise there is no fit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from kbitlaw.law.numerics.solve import interval, solve_batched

HUBER_DELTA = 1e-3
# The objective is ~1e-3 at the optimum, and L-BFGS-B's stopping rule compares its decrease with
# max(|f|, 1): unscaled, a bootstrap refit stops where it started. Scaled, the rule is relative.
OBJECTIVE_SCALE = 1.0 / HUBER_DELTA**2
N_STARTS = 64
WARM_STARTS = 8
POLISHED = 4  # starts polished by L-BFGS-B
MIN_DISTINCT = 3  # sizes and token counts
MIN_SPARE_POINTS = 3
PARAMS = ("E", "A", "alpha", "B", "beta")
THETA = ("a", "b", "e", "alpha", "beta")  # the optimiser's coordinates


def start_grid() -> np.ndarray:
    """Hoffmann et al.'s grid of starting points, rows (a, b, e, alpha, beta)."""
    half = np.arange(0.0, 2.5, 0.5)
    grid = itertools.product(
        np.arange(0.0, 30.0, 5.0), np.arange(0.0, 30.0, 5.0), np.arange(-1.0, 1.5, 0.5), half, half
    )
    return np.array(list(grid))


GRID = start_grid()


def log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log L at (log N, log D) for parameter rows theta [..., 5] -> [..., m]."""
    theta = np.asarray(theta, dtype=float)
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e + 0.0 * log_n)


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Sum over the last axis of the Huber function of r."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(-1)


def terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """The log of each term of L at the points, [3, m]: log(A/N^alpha), log(B/D^beta), log E."""
    a, b, e, alpha, beta = theta
    return np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])


def objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray
) -> tuple[float, np.ndarray]:
    """The approach-3 objective and its gradient in (a, b, e, alpha, beta)."""
    z = terms(theta, log_n, log_d)
    top = z.max(axis=0)
    w = np.exp(z - top)
    total = w.sum(axis=0)
    w /= total  # d LSE / d (each term)
    r = top + np.log(total) - log_l
    psi = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d huber / d r
    grad = np.array([psi @ w[0], psi @ w[1], psi @ w[2], -(psi * w[0]) @ log_n, -(psi * w[1]) @ log_d])
    return float(huber(r)), grad


def _scaled(theta: np.ndarray, *args: np.ndarray) -> tuple[float, np.ndarray]:
    f, g = objective(theta, *args)
    return f * OBJECTIVE_SCALE, g * OBJECTIVE_SCALE


def _polish(start: np.ndarray, args: tuple[np.ndarray, ...]) -> tuple[float, np.ndarray]:
    """L-BFGS-B from one start: (objective, theta), (inf, start) if it diverged."""
    with np.errstate(over="ignore", invalid="ignore"):
        res = minimize(_scaled, start, args=args, jac=True, method="L-BFGS-B")
    ok = np.isfinite(res.fun) and np.isfinite(res.x).all()
    return (float(res.fun) / OBJECTIVE_SCALE, res.x) if ok else (np.inf, start)


def best_of(starts: np.ndarray, args: tuple[np.ndarray, ...]) -> tuple[float, np.ndarray]:
    """The lowest optimum reached by L-BFGS-B from each start."""
    return min((_polish(s, args) for s in starts), key=lambda fx: fx[0])


def screen(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, k: int) -> np.ndarray:
    """The k grid points with the lowest objective (evaluated in one vectorised pass)."""
    with np.errstate(over="ignore"):
        values = huber(log_loss(GRID, log_n, log_d) - log_l)
    return GRID[np.argsort(values, kind="stable")[:k]]


def identified(n: np.ndarray, d: np.ndarray) -> bool:
    return (
        len(np.unique(n)) >= MIN_DISTINCT
        and len(np.unique(d)) >= MIN_DISTINCT
        and len(n) >= len(THETA) + MIN_SPARE_POINTS
    )


@dataclass(frozen=True)
class Surface:
    """A fitted 16-bit loss surface with its bootstrap replicates."""

    theta: np.ndarray  # [5] (a, b, e, alpha, beta)
    boot: np.ndarray  # [n_boot, 5] replicates (NaN rows: failed)
    objective: float
    n_points: int
    warm: bool  # started from a previous fit
    log_scale: float = float("nan")  # robust SD of the log residuals (1.4826 MAD): a point's noise
    unidentified: tuple[str, ...] = ()  # parameters of a term the data do not show (no interval)
    form: str = "chinchilla"  # beside law/joint/anneal.py's "schedule"
    dropped: tuple[str, ...] = ()

    @staticmethod
    def named(theta: np.ndarray) -> np.ndarray:
        """(a, b, e, alpha, beta) rows -> (E, A, alpha, B, beta) rows."""
        a, b, e, alpha, beta = np.moveaxis(np.asarray(theta, dtype=float), -1, 0)
        with np.errstate(over="ignore"):
            return np.stack([np.exp(e), np.exp(a), alpha, np.exp(b), beta], axis=-1)

    def params(self) -> dict[str, float]:
        return dict(zip(PARAMS, self.named(self.theta).tolist(), strict=True))

    def ci(self, level: float) -> dict[str, list[float | None]]:
        named = self.named(self.boot)
        return {
            p: [None, None] if p in self.unidentified else list(interval(named[:, i], level))
            for i, p in enumerate(PARAMS)
        }

    def loss(self, n: np.ndarray, d: np.ndarray, s1=None, s2=None) -> tuple[np.ndarray, np.ndarray]:
        """L at (n, d): the estimate [m] and the replicates' [n_boot, m] (a schedule's areas s1, s2
        are not in this form: ignored)."""
        ln, ld = np.log(np.asarray(n, float)), np.log(np.asarray(d, float))
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(log_loss(self.theta, ln, ld)), np.exp(log_loss(self.boot, ln, ld))


def fit_surface(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    *,
    n_boot: int,
    rng: np.random.Generator,
    warm: np.ndarray | None = None,
) -> Surface | None:
    """Fit L(N, D) to 16-bit losses; None when the law is not identified by the points.

    `warm`: (a, b, e, alpha, beta) of a previous fit, a start beside the best WARM_STARTS grid
    points (a cold fit uses the best N_STARTS)."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    ok = np.isfinite(n) & np.isfinite(d) & np.isfinite(loss) & (n > 0) & (d > 0) & (loss > 0)
    n, d, loss = n[ok], d[ok], loss[ok]
    if not identified(n, d):
        return None
    args = (np.log(n), np.log(d), np.log(loss))
    is_warm = warm is not None and np.isfinite(warm).all()
    starts = screen(*args, WARM_STARTS if is_warm else N_STARTS)
    if is_warm:
        starts = np.vstack([np.asarray(warm, dtype=float)[None], starts])
    # Batched Gauss-Newton from every start finds the basins; L-BFGS-B then polishes the best few.
    found, values = refit(args, starts, np.arange(len(args[0]))[None].repeat(len(starts), 0))
    order = np.argsort(np.where(np.isfinite(values), values, np.inf), kind="stable")[:POLISHED]
    value, theta = best_of(found[order], args)
    if not np.isfinite(value):
        return None
    unidentified = negligible_terms(theta, args[0], args[1])
    resid = args[2] - log_loss(theta, args[0], args[1])
    scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    boot = bootstrap(theta, args, n_boot, rng)
    return Surface(theta, boot, value, len(n), bool(is_warm), scale, unidentified)


NEGLIGIBLE = 1e-3  # a term below this share of the loss at every point is not seen in the data
TERMS = {0: ("A", "alpha"), 1: ("B", "beta"), 2: ("E",)}  # LSE term -> its parameters


def negligible_terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> tuple[str, ...]:
    """Parameters of the terms that stay under NEGLIGIBLE of the loss at every point. Such a term
    sits on a flat direction of the objective (E -> 0 with a steep A N^-alpha, for instance): its
    value is arbitrary and bootstrap refits from the estimate do not move along it, so an interval
    would claim a precision the data do not have."""
    z = terms(theta, log_n, log_d)
    share = np.exp(z - np.logaddexp.reduce(z, axis=0))
    return tuple(p for t, names in TERMS.items() if share[t].max() < NEGLIGIBLE for p in names)


def refit(args: tuple[np.ndarray, ...], theta0: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the Huber objective for B problems at once: problem i on the points idx[i] from
    theta0[i], by the batched Gauss-Newton solver (law/numerics/solve.py; its reweighting majorises the
    Huber function, so every step lowers it). Returns (theta [B, 5], objective [B])."""
    log_n, log_d, log_l = args

    def model(th: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ln, ld, ll = log_n[idx[rows]], log_d[idx[rows]], log_l[idx[rows]]
        z = np.stack(
            [
                th[:, 0, None] - th[:, 3, None] * ln,
                th[:, 1, None] - th[:, 4, None] * ld,
                th[:, 2, None] + 0 * ln,
            ],
            axis=-1,
        )
        top = z.max(axis=-1, keepdims=True)
        w = np.exp(z - top)
        total = w.sum(axis=-1, keepdims=True)
        w = w / total  # d LSE / d (each term)
        r = (top + np.log(total))[..., 0] - ll
        return r, np.stack([w[..., 0], w[..., 1], w[..., 2], -w[..., 0] * ln, -w[..., 1] * ld], axis=-1)

    inf = np.full(len(THETA), np.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        return solve_batched(model, np.asarray(theta0, dtype=float), -inf, inf, delta=HUBER_DELTA)


def bootstrap(
    theta: np.ndarray, args: tuple[np.ndarray, ...], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """[n_boot, 5] refits, each from theta, on the points resampled with replacement. NaN rows:
    the resample does not identify the law, or the refit failed."""
    idx = rng.integers(0, len(args[0]), size=(n_boot, len(args[0])))
    ok = np.array([identified(args[0][i], args[1][i]) for i in idx], dtype=bool)
    if n_boot == 0 or not ok.any():
        return np.full((n_boot, len(THETA)), np.nan)
    boot, f = refit(args, np.repeat(theta[None], n_boot, 0), idx)
    boot[~ok | ~np.isfinite(f)] = np.nan
    return boot
