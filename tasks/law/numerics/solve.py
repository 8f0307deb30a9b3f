"""Batched numerics for the law fits: a damped Gauss-Newton solver, least squares, resampling.

A leading batch axis indexes independent small problems (bootstrap replicates, starting points,
specs); problems with fewer points are padded and the padding carries weight 0. One vectorised
solve over thousands of tiny problems replaces a Python loop of scipy calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

# model(theta [m, p], rows [m]) -> (residuals [m, n], jacobian [m, n, p]) for problems `rows`
Model = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# -- the solver -------------------------------------------------------------------------------------


def robust_loss(r: np.ndarray, delta: float | None) -> np.ndarray:
    """Sum over the last axis of 0.5 r^2 (delta None) or of the Huber function."""
    if delta is None:
        return 0.5 * np.einsum("...n,...n->...", r, r)
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum(-1)


def solve_batched(
    model: Model,
    theta0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    delta: float | None = None,
    max_iter: int = 300,
    rtol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise sum(rho(r)) for B problems at once by damped Gauss-Newton (Levenberg-Marquardt).

    Huber losses use iteratively reweighted least squares: weight min(1, delta/|r|) majorises the
    Huber function, so every accepted step decreases the true objective. Bounds are kept by
    projection; a parameter with lo == hi is held fixed. Returns (theta [B, p], objective [B]).
    """
    theta = np.clip(np.asarray(theta0, dtype=float), lo, hi)
    n_prob, n_par = theta.shape
    lo = np.broadcast_to(lo, theta.shape)
    hi = np.broadcast_to(hi, theta.shape)
    free = (lo < hi).astype(float)
    rows = np.arange(n_prob)
    r, jac = model(theta, rows)
    f = robust_loss(r, delta)
    lam = np.full(n_prob, 1e-3)
    active = np.isfinite(f)
    for _ in range(max_iter):
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        ra, ja, ta = r[a], jac[a], theta[a]
        w = np.ones_like(ra) if delta is None else np.minimum(1.0, delta / np.maximum(np.abs(ra), 1e-300))
        g = np.einsum("bn,bnp->bp", w * ra, ja)
        # A parameter on a bound that the gradient pushes outward is held for this step, so the
        # step is a Newton step in the free directions instead of a clipped full one.
        blocked = ((ta <= lo[a]) & (g > 0)) | ((ta >= hi[a]) & (g < 0))
        keep = free[a] * ~blocked
        ja, g = ja * keep[:, None, :], g * keep
        h = np.einsum("bnp,bnq->bpq", ja * w[..., None], ja)
        d = np.diagonal(h, axis1=1, axis2=2)
        jitter = 1e-12 * (d.max(axis=1, keepdims=True) + 1.0)
        damped = h + (lam[a, None] * d + jitter)[:, :, None] * np.eye(n_par)
        step = np.linalg.solve(damped, -g[:, :, None])[..., 0]
        cand = np.clip(ta + step, lo[a], hi[a])
        rc, jc = model(cand, a)
        fc = robust_loss(rc, delta)
        ok = np.isfinite(fc) & (fc <= f[a])
        gain = f[a] - fc
        acc = a[ok]
        theta[acc], r[acc], jac[acc], f[acc] = cand[ok], rc[ok], jc[ok], fc[ok]
        lam[a] = np.where(ok, np.maximum(lam[a] / 3.0, 1e-12), lam[a] * 5.0)
        small_step = (np.abs(cand - ta) <= 1e-10 * (1.0 + np.abs(ta))).all(axis=1)
        done = (ok & ((gain <= rtol * np.abs(f[a])) | small_step)) | (lam[a] > 1e12)
        active[a[done]] = False
    return theta, f


# -- bootstrap helpers ------------------------------------------------------------------------------


def child_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by (seed, key): a problem's draws do not depend on which others exist."""
    return np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)])


def resample_indices(
    rng: np.random.Generator, groups: np.ndarray, n_boot: int, min_distinct: int
) -> np.ndarray:
    """[n_boot, n] point indices drawn with replacement, each draw covering >= min_distinct groups.

    Draws with too few distinct groups (e.g. model sizes) cannot identify the law, so they are
    redrawn; a few attempts always suffice unless the data themselves are too few, in which case
    the remaining bad rows are kept and the fit reports what it can.
    """
    n = len(groups)
    idx = rng.integers(0, n, size=(n_boot, n))
    need = min(min_distinct, len(np.unique(groups)))
    for _ in range(100):
        drawn = np.sort(groups[idx], axis=1)
        distinct = 1 + (drawn[:, 1:] != drawn[:, :-1]).sum(axis=1)
        bad = np.flatnonzero(distinct < need)
        if bad.size == 0:
            break
        idx[bad] = rng.integers(0, n, size=(bad.size, n))
    return idx


def accuracy_stderr(acc: np.ndarray, n: np.ndarray, stderr: np.ndarray) -> np.ndarray:
    """The reported stderr where usable, else the binomial one with Agresti-Coull's +2/+4 (never 0)."""
    p = (acc * n + 1.0) / (n + 2.0)
    binomial = np.sqrt(p * (1.0 - p) / n)
    return np.where(np.isfinite(stderr) & (stderr > 0), stderr, binomial)


def resample_accuracy(
    rng: np.random.Generator, acc: np.ndarray, n: np.ndarray, stderr: np.ndarray
) -> np.ndarray:
    """Redraw each accuracy as its evaluation could have come out: binomial in n_examples when
    known (the examples taken as independent), else normal with the reported stderr, else
    unchanged."""
    known_n = np.isfinite(n) & (n > 0)
    draws = rng.binomial(np.where(known_n, n, 1).astype(np.int64), np.clip(np.nan_to_num(acc), 0, 1))
    normal = acc + rng.standard_normal(acc.shape) * np.nan_to_num(stderr)
    return np.where(known_n, draws / np.where(known_n, n, 1), normal)


def interval(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """The equal-tailed percentile interval of the finite bootstrap samples (None if none)."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size < 2:
        return None, None
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(s, [tail, 100.0 - tail])
    return float(lo), float(hi)


def pad_rows(blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack 2-d blocks [B_i, n_i] into [sum B_i, max n_i] plus a 0/1 mask of the real entries."""
    n_max = max(b.shape[1] for b in blocks)
    out = np.zeros((sum(b.shape[0] for b in blocks), n_max))
    mask = np.zeros_like(out)
    row = 0
    for b in blocks:
        out[row : row + b.shape[0], : b.shape[1]] = b
        mask[row : row + b.shape[0], : b.shape[1]] = 1.0
        row += b.shape[0]
    return out, mask


def pad(arrays: list[np.ndarray], fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Stack 1-d arrays of unequal length into [B, n_max] plus a 0/1 mask of the real entries."""
    n_max = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), n_max), fill, dtype=float)
    mask = np.zeros((len(arrays), n_max))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = 1.0
    return out, mask


# -- linear least squares (the damage laws are linear in log space) --------------------------------


def lstsq_batch(design: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """OLS for B problems: design [B, n, p], y [B, n], 0/1 mask [B, n] -> coefficients [B, p].

    Rank-deficient problems (a resample that lost every distinct value of a regressor) give NaN.
    """
    xm = design * mask[..., None]
    gram = np.einsum("bnp,bnq->bpq", xm, design)
    rhs = np.einsum("bnp,bn->bp", xm, y)
    cond = np.linalg.cond(gram)
    ok = np.isfinite(cond) & (cond < 1e12)
    coef = np.full(rhs.shape, np.nan)
    if ok.any():
        coef[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
    return coef


def bootstrap_linear(
    design: np.ndarray, y: np.ndarray, clusters: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """OLS coefficients [p] and a cluster bootstrap of them [n_boot, p].

    Rows of one cluster (one checkpoint: its specs share an evaluation and a 16-bit baseline) are
    resampled together. A replicate whose design lost rank is redrawn a few times, then left NaN.
    """
    coef = lstsq_batch(design[None], y[None], np.ones((1, len(y))))[0]
    ids, members = np.unique(clusters, return_inverse=True)
    rows_of = [np.flatnonzero(members == c) for c in range(len(ids))]
    boot = np.full((n_boot, design.shape[1]), np.nan)
    todo = np.arange(n_boot)
    for _ in range(20):
        if todo.size == 0 or not np.isfinite(coef).all():
            break
        draws = rng.integers(0, len(ids), size=(todo.size, len(ids)))
        rows, mask = pad([np.concatenate([rows_of[c] for c in d]) for d in draws])
        rows = rows.astype(int)
        boot[todo] = lstsq_batch(design[rows], y[rows], mask)
        todo = todo[~np.isfinite(boot[todo]).all(axis=1)]
    return coef, boot
