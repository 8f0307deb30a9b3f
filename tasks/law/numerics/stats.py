"""The small statistics the claim checks share: paired differences and matched-bits curves.

Every comparison is made in "score" units, where higher is better: accuracy as measured, loss
negated. A difference is called significant when it is more than two standard errors from zero
(about 95%); within that it is "within noise", and a claim resting on it is inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import polars as pl

from kbitlaw.law.numerics.paired import paired_samples
from kbitlaw.status import NO_DATA  # noqa: F401  (re-exported to the report modules)
from kbitlaw.vocab import LOSS, MEAN_ACC

Z = 2.0  # standard errors for a difference to count as real (about 95% two-sided)
SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable with this grid"


def higher_is_better(metric: str) -> bool:
    return metric != LOSS


def score(points: pl.DataFrame, metric: str) -> pl.DataFrame:
    """The points of one metric with a `score` column: value, or -value for loss."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    return points.filter(pl.col("metric") == metric).with_columns(score=pl.col("value") * sign)


def sign_of(diff: float | None, se: float | None) -> int | None:
    """+1 / -1 when the difference is beyond Z standard errors, 0 within noise, None unknown."""
    if diff is None or se is None or not math.isfinite(diff) or not math.isfinite(se):
        return None
    if diff > Z * se:
        return 1
    if diff < -Z * se:
        return -1
    return 0


ALPHA = 2 * (1 - NormalDist().cdf(Z))  # the same two-sided level as Z, for Holm's procedure


def holm(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which of several tests reject at family-wise level alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    reject = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        reject[i] = True
    return reject


def holm_signs(diffs: list[Diff | None], alpha: float = ALPHA) -> list[int | None]:
    """Each difference's sign after Holm's correction over the family (None where unknown): a
    claim that tries several schemes must not count the lucky one as evidence."""
    known = [i for i, d in enumerate(diffs) if d is not None and d.sign is not None]
    reject = holm([diffs[i].p for i in known], alpha)
    out: list[int | None] = [None] * len(diffs)
    for i, r in zip(known, reject, strict=True):
        out[i] = (1 if diffs[i].diff > 0 else -1) if r else 0
    return out


@dataclass(frozen=True)
class Diff:
    """A difference a - b in score units with its standard error, over n paired model sizes."""

    diff: float
    se: float | None
    n: int

    @property
    def sign(self) -> int | None:
        return sign_of(self.diff, self.se)

    @property
    def p(self) -> float:
        """Two-sided p-value of diff = 0 (normal approximation)."""
        if self.se is None or not self.se > 0:
            return 0.0 if self.diff != 0 else 1.0
        return 2 * (1 - NormalDist().cdf(abs(self.diff) / self.se))


def paired(
    scored: pl.DataFrame, quant_a: str, quant_b: str, samples: pl.DataFrame | None = None
) -> Diff | None:
    """Mean score difference a - b over the checkpoints evaluated at both specs.

    With per-example samples for both specs (law/numerics/paired.py) the standard error is that of the
    paired per-example differences: the specs score the same examples. Without them it is the
    larger of the spread of the differences across checkpoints and the two points' stderrs in
    quadrature (treated as independent: conservative, since same-example noise mostly cancels).
    None when no checkpoint has both.
    """
    a = scored.filter(pl.col("quant") == quant_a).select("checkpoint_id", "score", "stderr")
    b = scored.filter(pl.col("quant") == quant_b).select("checkpoint_id", "score", "stderr")
    both = a.join(b, on="checkpoint_id", suffix="_b")
    if both.height == 0:
        return None
    metric = scored["metric"][0] if "metric" in scored.columns and scored.height else MEAN_ACC
    by_example = paired_samples(samples, both["checkpoint_id"].to_list(), quant_a, quant_b, metric)
    if by_example is not None:
        return Diff(*by_example)
    d = (both["score"] - both["score_b"]).to_numpy()
    n = len(d)
    spread = float(np.std(d, ddof=1) / math.sqrt(n)) if n >= 2 else None
    noise = (both["stderr"] ** 2 + both["stderr_b"] ** 2).sqrt().drop_nans().drop_nulls()
    own = float(noise.mean() / math.sqrt(n)) if noise.len() else None
    candidates = [s for s in (spread, own) if s is not None]
    return Diff(float(d.mean()), max(candidates) if candidates else None, n)


@dataclass(frozen=True)
class Curve:
    """One spec's points over model sizes in (log2 total bits, score), with a least-squares line.

    Comparisons at equal bits interpolate the points piecewise-linearly (as Dettmers & Zettlemoyer
    do), so a curve's bend is not mistaken for noise; the line gives the slope (claim 2).
    """

    quant: str
    xs: np.ndarray  # log2 total bits, ascending
    ys: np.ndarray  # score
    noise: float  # one point's standard error: mean evaluation stderr, else the line's residual sd
    slope: float
    slope_se: float


def curve_of(scored: pl.DataFrame, quant: str, min_sizes: int = 3) -> Curve | None:
    """The spec's curve; None with fewer than min_sizes sizes (a line needs a residual)."""
    pts = scored.filter(pl.col("quant") == quant).sort("total_bits")
    if pts["n_params"].n_unique() < min_sizes:
        return None
    x, y = np.log2(pts["total_bits"].to_numpy()), pts["score"].to_numpy()
    sxx = float(((x - x.mean()) ** 2).sum())
    if sxx <= 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    resid_sd = float(np.sqrt(((y - intercept - slope * x) ** 2).sum() / (len(x) - 2)))
    stderr = pts["stderr"].drop_nans().drop_nulls()
    noise = float(stderr.mean()) if stderr.len() else resid_sd
    # Evaluation noise is a floor for the slope too: 3 points that happen to be collinear do
    # not pin it down exactly.
    slope_se = max(resid_sd, noise) / math.sqrt(sxx)
    return Curve(quant, x, y, noise, float(slope), slope_se)


def matched_bits(a: Curve, b: Curve) -> Diff | None:
    """a - b at equal total bits, averaged over the range of log2 bits both curves cover.

    The standard error counts each curve's points that enter the interpolation as independent
    measurements of its noise. None when the curves share no range of budgets.
    """
    lo, hi = max(a.xs[0], b.xs[0]), min(a.xs[-1], b.xs[-1])
    if hi <= lo:
        return None  # no common budget: comparing would extrapolate
    grid = np.unique(np.concatenate([a.xs, b.xs, [lo, hi]]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    d = np.interp(grid, a.xs, a.ys) - np.interp(grid, b.xs, b.ys)
    diff = float(np.sum((d[1:] + d[:-1]) / 2 * np.diff(grid)) / (hi - lo))

    def used(c: Curve) -> int:
        first = max(int(np.searchsorted(c.xs, lo, side="right")) - 1, 0)
        last = min(int(np.searchsorted(c.xs, hi, side="left")), len(c.xs) - 1)
        return last - first + 1

    se = math.hypot(a.noise / math.sqrt(used(a)), b.noise / math.sqrt(used(b)))
    return Diff(diff, se, min(used(a), used(b)))


def fmt_diff(d: Diff | None, metric: str) -> str:
    """'+1.2 ± 0.4 pts' for accuracy (percentage points), '+0.031 ± 0.010 nats' for loss."""
    if d is None:
        return "n/a"
    if higher_is_better(metric):
        se = "" if d.se is None else f" ± {100 * d.se:.1f}"
        return f"{100 * d.diff:+.1f}{se} pts"
    se = "" if d.se is None else f" ± {d.se:.3f}"
    return f"{d.diff:+.3f}{se} nats"


def claim(cid: str, title: str, paper: str, criterion: str, verdict: str, numbers: list[str]) -> dict:
    """One claim's entry in the fit document (DESIGN.md: {id, claim, verdict, numbers, test})."""
    return {
        "id": cid,
        "claim": title,
        "paper": paper,
        "test": criterion,
        "verdict": verdict,
        "numbers": numbers,
    }
