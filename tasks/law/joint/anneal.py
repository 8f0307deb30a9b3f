"""The 16-bit loss surface with the learning-rate schedule in it (Tissue et al. 2024):

    L(N, S1, S2) = E + A / N^alpha + B / S1^beta - C S2,   C >= 0

S1 and S2 are the schedule's forward and annealing areas in tokens (schedule.py); with a constant
schedule S1 = D and S2 = 0, and the surface is Chinchilla's (law/joint/chinchilla.py). Why: the
Chinchilla surface treats every checkpoint as a finished model of its tokens, so only a run's
annealed end may feed it; with the schedule in the law, every checkpoint along a cosine run is a
point of the same surface, and a run in progress is predicted at its planned end from the areas
of its planned schedule.

The fit is Chinchilla's approach 3 carried over: the sum of Huber losses (delta 1e-3) of log
residuals, from the grid of starting points of chinchilla.py, each with the C that fits it best in
closed form (C enters L linearly), the N_STARTS best refined by the batched Gauss-Newton solver with
C held >= 0; intervals from the same case bootstrap (refits from the estimate). The solver works in
K = C * s2_ref, the annealing term in nats at the median positive S2, so its coordinates are of
order one; C itself (per token) is what the entry reports. Identified, as Chinchilla's, when sizes and
areas S1 both take 3 distinct values and 3 points are left beyond the 6 parameters; when no point
has annealed (every S2 = 0), C is dropped (held at 0) and the entry says so.

Predicting a loss at D tokens without a schedule (`kbitlaw predict --tokens D`, the heading curves)
assumes the family's schedule with its steps unchanged and D / D_run tokens per step: S1 and S2 then
scale with D, S1 = shape[0] D and S2 = shape[1] D, the ratios of the family's runs at their ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kbitlaw.law.joint.chinchilla import (
    GRID,
    HUBER_DELTA,
    MIN_DISTINCT,
    MIN_SPARE_POINTS,
    N_STARTS,
    NEGLIGIBLE,
    WARM_STARTS,
    huber,
)
from kbitlaw.law.numerics.solve import interval, solve_batched

FORM = "schedule"
PARAMS = ("E", "A", "alpha", "B", "beta", "C")
THETA = ("a", "b", "e", "alpha", "beta", "k")  # the solver's coordinates; k = C * s2_ref
START_K = 0.0  # a start with no annealing, beside each grid point's best k


def parts(theta: np.ndarray, ln: np.ndarray, l1: np.ndarray, t: np.ndarray):
    """The surface at the points for parameter rows theta [..., 6]: (log of the three positive
    terms [..., m, 3], their sum U [..., m], the annealing term K t [..., m])."""
    th = np.asarray(theta, dtype=float)
    z = np.stack(
        [
            th[..., 0, None] - th[..., 3, None] * ln,
            th[..., 1, None] - th[..., 4, None] * l1,
            th[..., 2, None] + 0.0 * ln,
        ],
        axis=-1,
    )
    with np.errstate(over="ignore"):
        u = np.exp(np.logaddexp.reduce(z, axis=-1))
    return z, u, th[..., 5, None] * t


def log_loss(theta: np.ndarray, ln: np.ndarray, l1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """log L; NaN where the annealing term reaches the rest (no loss)."""
    _, u, anneal = parts(theta, ln, l1, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(u > anneal, np.log(u - anneal), np.nan)


def identified(n: np.ndarray, s1: np.ndarray) -> bool:
    return (
        len(np.unique(n)) >= MIN_DISTINCT
        and len(np.unique(s1)) >= MIN_DISTINCT
        and len(n) >= len(THETA) + MIN_SPARE_POINTS
    )


@dataclass(frozen=True)
class AnnealSurface:
    """A fitted schedule-form 16-bit surface with its bootstrap replicates."""

    theta: np.ndarray  # [6] (a, b, e, alpha, beta, k)
    boot: np.ndarray  # [n_boot, 6] (NaN rows: failed)
    objective: float
    n_points: int
    warm: bool
    s2_ref: float  # the S2 at which k is the annealing term (tokens)
    shape: tuple[float, float]  # S1 / D and S2 / D of the family's runs at their ends
    log_scale: float = float("nan")
    unidentified: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # C when no point has annealed
    form: str = FORM

    def named(self, theta: np.ndarray) -> np.ndarray:
        """(a, b, e, alpha, beta, k) rows -> (E, A, alpha, B, beta, C) rows."""
        a, b, e, alpha, beta, k = np.moveaxis(np.asarray(theta, dtype=float), -1, 0)
        with np.errstate(over="ignore"):
            return np.stack([np.exp(e), np.exp(a), alpha, np.exp(b), beta, k / self.s2_ref], axis=-1)

    def params(self) -> dict[str, float]:
        return dict(zip(PARAMS, self.named(self.theta).tolist(), strict=True))

    def ci(self, level: float) -> dict[str, list[float | None]]:
        named = self.named(self.boot)
        hidden = set(self.unidentified) | set(self.dropped)
        return {
            p: [None, None] if p in hidden else list(interval(named[:, i], level))
            for i, p in enumerate(PARAMS)
        }

    def areas(
        self, d: np.ndarray, s1: np.ndarray | None, s2: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The areas to predict at: the given ones, else the family's schedule stretched to D."""
        d = np.asarray(d, dtype=float)
        s1 = d * self.shape[0] if s1 is None else np.asarray(s1, dtype=float)
        s2 = d * self.shape[1] if s2 is None else np.asarray(s2, dtype=float)
        return s1, s2

    def loss(self, n, d, s1=None, s2=None) -> tuple[np.ndarray, np.ndarray]:
        """L at (n, S1, S2) (module docstring for D alone): the estimate [m] and replicates [n_boot, m].
        A replicate whose annealing term exceeds the rest gives NaN there (no loss)."""
        s1, s2 = self.areas(d, s1, s2)
        args = (np.log(np.asarray(n, float)), np.log(s1), s2 / self.s2_ref)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(log_loss(self.theta, *args)), np.exp(log_loss(self.boot, *args))


def best_k(u: np.ndarray, t: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Per row of U [B, m], the k >= 0 that fits U - k t to the losses best in relative least squares
    (closed form: k enters L linearly), so each grid start comes with its own annealing term."""
    rel_t = t / loss
    denom = float(rel_t @ rel_t)
    if denom <= 0:
        return np.zeros(len(u))
    with np.errstate(invalid="ignore", over="ignore"):
        k = ((u - loss) / loss) @ rel_t / denom
    return np.clip(np.nan_to_num(k, nan=0.0, posinf=0.0), 0.0, None)


def screen(args: tuple[np.ndarray, ...], k: int, anneals: bool) -> np.ndarray:
    """The k best starts [k, 6]: each grid point with k = START_K and with its best k."""
    ln, l1, t, ll = args
    loss = np.exp(ll)
    with np.errstate(over="ignore"):
        u = np.exp(
            np.logaddexp(
                np.logaddexp(
                    GRID[:, 0, None] - GRID[:, 3, None] * ln, GRID[:, 1, None] - GRID[:, 4, None] * l1
                ),
                GRID[:, 2, None],
            )
        )
    ks = [np.full(len(GRID), START_K)] + ([best_k(u, t, loss)] if anneals else [])
    starts = np.vstack([np.column_stack([GRID, k_]) for k_ in ks])
    values = np.concatenate(
        [objectives(starts[i : i + len(GRID)], args) for i in range(0, len(starts), len(GRID))]
    )
    return starts[np.argsort(values, kind="stable")[:k]]


def objectives(theta: np.ndarray, args: tuple[np.ndarray, ...]) -> np.ndarray:
    """The Huber objective of each parameter row (inf where a point has no loss)."""
    ln, l1, t, ll = args
    r = log_loss(theta, ln, l1, t) - ll
    return np.where(np.isfinite(r).all(axis=-1), huber(np.nan_to_num(r)), np.inf)


def refit(
    args: tuple[np.ndarray, ...], theta0: np.ndarray, idx: np.ndarray, anneals: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the Huber objective for B problems at once (problem i on the points idx[i], from
    theta0[i]) by the batched Gauss-Newton solver, k >= 0 (held at 0 when nothing anneals)."""
    ln, l1, t, ll = args

    def model(th: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x_n, x_1, x_t, x_l = ln[idx[rows]], l1[idx[rows]], t[idx[rows]], ll[idx[rows]]
        z, u, anneal = parts(th, x_n, x_1, x_t)
        w = np.exp(z - np.log(u)[..., None])  # each term's share of U
        with np.errstate(invalid="ignore", divide="ignore"):
            model_l = u - anneal
            r = np.where(model_l > 0, np.log(model_l), np.nan) - x_l
            g = u / model_l  # d log L / d log U
        jac = np.stack(
            [
                g * w[..., 0],
                g * w[..., 1],
                g * w[..., 2],
                -g * w[..., 0] * x_n,
                -g * w[..., 1] * x_1,
                -x_t / model_l,
            ],
            axis=-1,
        )
        return r, jac

    lo = np.array([-np.inf] * 5 + [0.0])
    hi = np.array([np.inf] * 5 + [np.inf if anneals else 0.0])
    with np.errstate(over="ignore", invalid="ignore"):
        return solve_batched(model, np.asarray(theta0, dtype=float), lo, hi, delta=HUBER_DELTA)


def fit_anneal_surface(
    n: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    loss: np.ndarray,
    *,
    shape: tuple[float, float],
    n_boot: int,
    rng: np.random.Generator,
    warm: np.ndarray | None = None,
) -> AnnealSurface | None:
    """Fit L(N, S1, S2) to 16-bit losses; None when the points do not identify it. `warm`:
    (a, b, e, alpha, beta, C) of a previous fit, a start beside the best WARM_STARTS."""
    n, s1, s2, loss = (np.asarray(v, dtype=float) for v in (n, s1, s2, loss))
    ok = np.isfinite(n + s1 + s2 + loss) & (n > 0) & (s1 > 0) & (s2 >= 0) & (loss > 0)
    n, s1, s2, loss = n[ok], s1[ok], s2[ok], loss[ok]
    if not identified(n, s1):
        return None
    anneals = bool((s2 > 0).any())
    s2_ref = float(np.median(s2[s2 > 0])) if anneals else 1.0
    args = (np.log(n), np.log(s1), s2 / s2_ref, np.log(loss))
    is_warm = warm is not None and np.isfinite(warm).all()
    starts = screen(args, WARM_STARTS if is_warm else N_STARTS, anneals)
    if is_warm:
        w = np.array(warm, dtype=float)
        w[5] = max(w[5] * s2_ref, 0.0) if anneals else 0.0
        starts = np.vstack([w[None], starts])
    found, values = refit(args, starts, np.arange(len(n))[None].repeat(len(starts), 0), anneals)
    values = np.where(np.isfinite(values), values, np.inf)
    best = int(np.argmin(values))
    if not np.isfinite(values[best]):
        return None
    theta = found[best]
    resid = args[3] - log_loss(theta, *args[:3])
    scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    boot = bootstrap(theta, args, n_boot, rng, anneals)
    dropped = () if anneals else ("C",)
    unseen = negligible_terms(theta, args)
    return AnnealSurface(
        theta, boot, float(values[best]), len(n), bool(is_warm), s2_ref, shape, scale, unseen, dropped
    )


TERMS = {0: ("A", "alpha"), 1: ("B", "beta"), 2: ("E",)}


def negligible_terms(theta: np.ndarray, args: tuple[np.ndarray, ...]) -> tuple[str, ...]:
    """Parameters of the terms under NEGLIGIBLE of the loss at every point (chinchilla.py's reason),
    the annealing term included."""
    z, u, anneal = parts(theta, *args[:3])
    total = u + anneal
    share = np.exp(z) / total[..., None]
    out = [p for i, names in TERMS.items() if share[..., i].max() < NEGLIGIBLE for p in names]
    if 0 < theta[5] and (anneal / total).max() < NEGLIGIBLE:
        out.append("C")
    return tuple(out)


def bootstrap(
    theta: np.ndarray, args: tuple[np.ndarray, ...], n_boot: int, rng: np.random.Generator, anneals: bool
) -> np.ndarray:
    """[n_boot, 6] refits from theta on the points resampled with replacement; NaN rows: the resample
    does not identify the law, or the refit failed."""
    m = len(args[0])
    idx = rng.integers(0, m, size=(n_boot, m))
    ok = np.array([identified(args[0][i], args[1][i]) for i in idx], dtype=bool)
    if n_boot == 0 or not ok.any():
        return np.full((n_boot, len(THETA)), np.nan)
    boot, f = refit(args, np.repeat(theta[None], n_boot, 0), idx, anneals)
    boot[~ok | ~np.isfinite(f)] = np.nan
    return boot
