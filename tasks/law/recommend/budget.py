"""The recommended precision by equal-budget comparison (Dettmers & Zettlemoyer's method).

Each quant spec has a curve: quality against log2(total model bits) across model sizes at matched
training (table.matched_per_size). Curves are compared at equal memory budgets on a log-spaced grid,
and only where each compared spec is measured: a curve is interpolated between its own sizes and
never extrapolated past them. At each budget where at least two bit widths are measured, the best
spec wins the budget; the recommended width is the one that wins the largest share of budgets, and
the recommended spec is that width's spec with the most wins.

Why curves and not the Pareto frontier of (size, spec) points: within one model more bits is
always a little better, so a frontier of discrete points walks through every width of every size
and its shares follow the spacing of the grid, not which precision is better.

Confidence: simulated re-runs of the evaluation redraw every point around the measured curves
with sqrt(2) times its measurement noise (the point's stderr; where a metric has none, a noise
estimate from the curves' residuals): the truth is only known to within the noise, and a re-run
adds its own. P(best) of a width is the share of re-runs in which it wins: the probability that
another evaluation of the same checkpoints names the same width. The answer is "clear" when in
90% of re-runs the width wins and the other widths need at least 2% more memory to match it
(`memory_margin`, the median over the budgets it wins); otherwise the widths with P(best) >= 0.1
are its contenders. (Without the sqrt(2),
P(best) is the flat-prior posterior of the observed winner, and near-ties came out "clear" in 3 of
16 simulated repetitions; with it, 1 of 16.)
Sizes are not resampled: with 3-6 sizes a size bootstrap degenerates (a resample with one size
less moves every curve's measured range), so the intervals cover evaluation noise only.

Curves are made monotone (pooled adjacent violators, weighted by 1/stderr^2): in expectation a
larger model at the same spec is never worse, and noise that breaks this would otherwise decide
budgets by accident.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.interpolate import PchipInterpolator

from kbitlaw.status import NO_DATA

CLEAR = 0.9  # P(best width) at or above which the answer is called clear
MIN_MARGIN = 0.02  # a width that others match with 2% more memory is tied with them in practice
CONTENDER = 0.1  # P(best) at or above which a width is named as a contender
# A replicate is a re-run of the evaluation: the truth is only known to within the noise (around the
# measured curve) and the re-run adds its own, so replicates carry sqrt(2) times the noise.
REPLICATION = 2**0.5


def isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, wt in zip(y, w, strict=True):
        blocks.append([float(v), float(wt), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(c, m) for m, _, c in blocks])


class Curves:
    """The specs' curves as arrays: x = log2 total bits (sorted per spec), y = score (higher is
    better), se = per-point noise; padded with NaN to the largest number of sizes."""

    def __init__(self, points: pl.DataFrame, higher_is_better: bool, min_sizes: int):
        specs = (
            points.group_by("quant")
            .agg(
                pl.col("n_params").n_unique().alias("n"),
                pl.col("bits").max(),
                pl.col("bits_per_param").mean(),
            )
            .filter(pl.col("n") >= min_sizes)
            .sort(["bits", "bits_per_param", "quant"])
        )
        self.quants: list[str] = specs["quant"].to_list()
        self.bits = specs["bits"].to_numpy().astype(int)
        n = int(specs["n"].max()) if specs.height else 0
        self.x = np.full((len(self.quants), n), np.nan)
        self.y = np.full_like(self.x, np.nan)
        self.se = np.full_like(self.x, np.nan)
        sign = 1.0 if higher_is_better else -1.0
        for i, q in enumerate(self.quants):
            c = (
                points.filter(pl.col("quant") == q)
                .group_by("n_params")
                .agg(pl.col("total_bits").mean(), pl.col("value").mean(), pl.col("stderr").mean())
                .sort("total_bits")
            )
            m = c.height
            self.x[i, :m] = np.log2(c["total_bits"].to_numpy())
            self.y[i, :m] = sign * c["value"].to_numpy()
            self.se[i, :m] = c["stderr"].fill_nan(None).fill_null(np.nan).to_numpy()

    def noise(self) -> np.ndarray:
        """Per-point noise: the stderr where measured, else the median over curves with at least 4
        sizes of the residual SD of a saturating power law y = a + b * 2^(-c x) (the loss law over
        total bits) fitted to the curve; NaN when nothing can estimate it. A straight line or a
        quadratic would count the law's curvature as noise, and the median keeps one curve that
        the law does not describe (a collapsing 2-bit spec) from inflating every other."""
        se = self.se.copy()
        measured = np.isfinite(self.x)
        if np.isfinite(se[measured]).all():
            return se
        sds = [
            np.sqrt(_power_law_sse(x[ok], y[ok]) / (ok.sum() - 3))
            for x, y in zip(self.x, self.y, strict=True)
            if (ok := np.isfinite(x)).sum() >= 4
        ]
        sigma = float(np.median(sds)) if sds else np.nan
        return np.where(np.isfinite(se), se, sigma)


def _power_law_sse(x: np.ndarray, y: np.ndarray) -> float:
    """Least squares of y = a + b * 2^(-c (x - x0)) over a grid of c (a, b linear given c), both
    signs of b (rising and falling curves)."""
    x0, best = x.min(), np.inf
    for c in np.geomspace(1e-3, 4.0, 200):
        design = np.column_stack([np.ones_like(x), np.exp2(-c * (x - x0))])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        best = min(best, float(np.sum((design @ coef - y) ** 2)))
    return best


def interpolate(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Shape-preserving cubic (PCHIP) through the curve's points. Straight chords between sizes 4x
    apart misstate a power law by about as much as a 10% difference in effective model size,
    and by an amount that depends on where each spec's sizes fall on the budget axis: enough to
    hand a budget to the wrong width."""
    if len(x) < 3:
        return np.interp(at, x, y)
    return PchipInterpolator(x, y)(at)


def _winners(
    curves: Curves, y: np.ndarray, w: np.ndarray, budgets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index of the best spec at each budget (-1 where fewer than two widths are measured), and the
    specs' interpolated scores [spec, budget] (-inf outside a spec's measured range)."""
    scores = np.full((len(curves.quants), len(budgets)), -np.inf)
    for i, x in enumerate(curves.x):
        ok = np.isfinite(x)
        xs, ys = x[ok], isotonic(y[i, ok], w[i, ok])
        inside = (budgets >= xs[0]) & (budgets <= xs[-1])
        scores[i, inside] = interpolate(xs, ys, budgets[inside])
    measured = np.isfinite(scores)
    widths = np.array([len(set(curves.bits[measured[:, j]])) for j in range(len(budgets))])
    best = np.argmax(scores, axis=0)  # ties: the first, i.e. fewer bits, then fewer bits/param
    return np.where(widths >= 2, best, -1), scores


def memory_margin(curves: Curves, winners: np.ndarray, scores: np.ndarray, budgets: np.ndarray, width: int):
    """How much more memory the other widths need to match `width`: the median, over the budgets
    `width` wins, of the extra log2 budget at which the best other width reaches the same score
    (read off the budget grid, linearly between grid points). Returns the fraction (2^m - 1)."""
    mine = curves.bits == width
    other = np.max(np.where(mine[:, None], -np.inf, scores), axis=0)
    won = [j for j in range(len(budgets)) if winners[j] >= 0 and mine[winners[j]]]
    extra = []
    for j in won:
        level = scores[winners[j], j]
        ahead = np.flatnonzero((other >= level) & (np.arange(len(budgets)) >= j))
        if ahead.size == 0:
            extra.append(budgets[-1] - budgets[j])  # never matched in range: at least this much
            continue
        t = ahead[0]
        if t > j and np.isfinite(other[t - 1]) and other[t] > other[t - 1]:
            frac = (level - other[t - 1]) / (other[t] - other[t - 1])
            extra.append(budgets[t - 1] + frac * (budgets[t] - budgets[t - 1]) - budgets[j])
        else:
            extra.append(budgets[t] - budgets[j])
    return float(2 ** np.median(extra) - 1) if extra else 0.0


def _shares(curves: Curves, winners: np.ndarray) -> tuple[dict[int, float], dict[str, float]]:
    compared = winners[winners >= 0]
    if compared.size == 0:
        return {}, {}
    by_spec = {q: float(np.mean(compared == i)) for i, q in enumerate(curves.quants)}
    by_width: dict[int, float] = {}
    for i, q in enumerate(curves.quants):
        by_width[int(curves.bits[i])] = by_width.get(int(curves.bits[i]), 0.0) + by_spec[q]
    return by_width, by_spec


def _pick(curves: Curves, by_width: dict[int, float], by_spec: dict[str, float]) -> tuple[int, str]:
    """The width with the largest share (ties: fewer bits), and its spec with the largest share."""
    width = min(by_width, key=lambda k: (-round(by_width[k], 12), k))
    in_width = [q for i, q in enumerate(curves.quants) if curves.bits[i] == width]
    return width, min(in_width, key=lambda q: (-round(by_spec[q], 12), curves.quants.index(q)))


def recommend_by_budget(
    points: pl.DataFrame,
    higher_is_better: bool,
    *,
    min_sizes: int = 2,
    n_budgets: int = 64,
    n_boot: int = 200,
    seed: int = 0,
) -> dict:
    """The recommended precision of one family and metric (points matched per size).

    Returns {"quant", "bits", "budget_share", "shares_by_bits", "shares_by_quant", "p_best",
    "p_best_quant", "contenders", "clear", "budgets_compared", ...} or {"status": NO_DATA}."""
    curves = Curves(points, higher_is_better, min_sizes)
    if len(set(curves.bits.tolist())) < 2:
        return {"status": NO_DATA, "reason": f"fewer than two bit widths with {min_sizes}+ sizes"}
    budgets = np.linspace(np.nanmin(curves.x), np.nanmax(curves.x), n_budgets)
    noise = curves.noise()
    weights = np.where(np.isfinite(noise) & (noise > 0), 1.0 / np.maximum(noise, 1e-12) ** 2, 1.0)
    winners, scores = _winners(curves, curves.y, weights, budgets)
    by_width, by_spec = _shares(curves, winners)
    if not by_width:
        return {"status": NO_DATA, "reason": "no budget where two bit widths are both measured"}
    width, quant = _pick(curves, by_width, by_spec)
    margin = memory_margin(curves, winners, scores, budgets, width)
    p_width: dict[int, float] | None = None
    p_clear = 0.0
    p_quant: dict[str, float] | None = None
    if n_boot > 0 and np.isfinite(noise[np.isfinite(curves.y)]).all():
        rng = np.random.default_rng(seed)
        wins_w: dict[int, int] = {}
        wins_q: dict[str, int] = {}
        for _ in range(n_boot):
            y = curves.y + REPLICATION * noise * rng.standard_normal(curves.y.shape)
            won, sc = _winners(curves, y, weights, budgets)
            bw, bq = _shares(curves, won)
            if bw:
                w_, q_ = _pick(curves, bw, bq)
                wins_w[w_] = wins_w.get(w_, 0) + 1
                wins_q[q_] = wins_q.get(q_, 0) + 1
                if w_ == width and memory_margin(curves, won, sc, budgets, w_) >= MIN_MARGIN:
                    p_clear += 1 / n_boot
        p_width = {k: wins_w.get(k, 0) / n_boot for k in sorted(set(curves.bits.tolist()))}
        p_quant = {q: wins_q.get(q, 0) / n_boot for q in curves.quants}
    if p_width is None:
        contenders = sorted(k for k, v in by_width.items() if v > 0)
        clear = False
    else:
        clear = p_clear >= CLEAR  # wins, and by a margin that matters, in 90% of re-runs
        likeliest = max(p_width, key=lambda k: (p_width[k], by_width.get(k, 0.0), -k))
        if not clear and p_width[likeliest] > p_width.get(width, 0.0):
            # A near tie: the measured curves favour one width, re-runs under the noise another.
            # Name the likelier one (a headline must not recommend 3-bit beside "4-bit: P(best) 0.66").
            width = likeliest
            in_width = [q for i, q in enumerate(curves.quants) if curves.bits[i] == width]
            quant = min(in_width, key=lambda q: (-(p_quant or {}).get(q, 0.0), -by_spec.get(q, 0.0), q))
            margin = memory_margin(curves, winners, scores, budgets, width)
        contenders = sorted(k for k, p in p_width.items() if p >= CONTENDER or k == width)
    attrs = points.filter(pl.col("quant") == quant).row(0, named=True)
    return {
        "quant": quant,
        "bits": int(width),
        "budget_share": by_width.get(width, 0.0),
        "frontier_share": by_width.get(width, 0.0),  # the name earlier fits used; the same share
        "dtype": attrs.get("dtype"),
        "block_size": None if attrs.get("block_size") is None else int(attrs["block_size"]),
        "outlier_pct": attrs.get("outlier_pct"),
        "shares_by_bits": {str(k): v for k, v in sorted(by_width.items())},
        "shares_by_quant": dict(sorted(by_spec.items(), key=lambda kv: (-kv[1], kv[0]))),
        "p_best": None if p_width is None else {str(k): v for k, v in p_width.items()},
        "p_best_quant": p_quant,
        "contenders": [str(k) for k in contenders],
        "clear": clear,
        "memory_margin": margin,
        "p_clear": None if p_width is None else p_clear,
        "budgets_compared": int((winners >= 0).sum()),
        "n_boot": n_boot if p_width is not None else 0,
        "method": "equal-budget comparison of per-spec curves (interpolated, never extrapolated)",
    }
