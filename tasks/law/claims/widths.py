"""The paper's claims about bit widths at fixed total model bits (science.md claims 1 and 2): 4-bit is
optimal for a memory budget, and the widths' curves in log(total bits) are parallel.
"""

from __future__ import annotations

import math
from functools import partial

import polars as pl

from kbitlaw.law.claims.specs import best_per_bits
from kbitlaw.law.numerics.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NO_DATA,
    NOT_TESTABLE,
    SUPPORTED,
    Diff,
    Z,
    claim,
    curve_of,
    holm_signs,
)
from kbitlaw.law.recommend.budget import CLEAR
from kbitlaw.law.recommend.frontier import headline_recommendation
from kbitlaw.vocab import LOSS, METRIC_WORDS


def _name(k: int) -> str:
    return "16-bit" if k >= 16 else f"{k}-bit"


def four_bit_optimal(scored: pl.DataFrame, metric: str, doc: dict) -> dict:
    paper = (
        "At fixed total model bits, 4-bit is at least as good as 5, 6, 8 and 16-bit, and 3-bit "
        "falls below 4-bit (Dettmers & Zettlemoyer §5.1)."
    )
    crit = (
        "The fit's equal-budget comparison of the specs' curves (on mean accuracy or loss, whichever "
        "separates the widths more surely, as the recommendation does): P(best) of each width over "
        f"simulated re-runs of the evaluation. Supported when 4-bit wins clearly (in {CLEAR:.0%} of "
        "re-runs, with the other widths needing 2%+ more memory to match it), contradicted when "
        "another width does, otherwise inconclusive."
    )
    say = partial(claim, "four_bit_optimal", "4-bit wins at fixed bits", paper, crit)
    best = best_per_bits(scored)
    if 4 not in best or len(best) < 2:
        return say(NOT_TESTABLE, ["needs 4-bit and another width"])
    family = scored["family"][0]
    # The evidence the recommendation itself rests on: the metric whose comparison is more certain.
    recs = [r for r in doc.get("recommendations", []) if r.get("family") == family]
    rec = headline_recommendation(sorted(recs, key=lambda r: r.get("metric") != metric))
    if rec.get("status") != "ok":
        return say(NO_DATA, ["no equal-budget comparison (too few sizes or widths)"])
    numbers = [
        f"compared on {METRIC_WORDS.get(rec['metric'], rec['metric'])}; share of budgets won: "
        + ", ".join(f"{_name(int(k))} {v:.0%}" for k, v in _by_width(rec))
    ]
    p_best = rec.get("p_best")
    if not p_best:
        return say(INCONCLUSIVE, [*numbers, "P(best) unknown: no noise estimate"])
    numbers.append("P(best): " + ", ".join(f"{_name(int(k))} {v:.2f}" for k, v in _by_width(p_best)))
    numbers.append(
        f"other widths need {rec.get('memory_margin', 0):.1%} more memory to match {rec['bits']}-bit"
    )
    if rec.get("clear"):
        return say(SUPPORTED if rec["bits"] == 4 else CONTRADICTED, numbers)
    return say(INCONCLUSIVE, numbers)


def _by_width(shares: dict) -> list[tuple[str, float]]:
    items = shares.get("shares_by_bits", shares) if "shares_by_bits" in shares else shares
    return sorted(items.items(), key=lambda kv: int(kv[0]))


PARALLEL_TOL = 0.25  # slopes within 25% of each other count as parallel


def parallel_curves(scored: pl.DataFrame, metric: str) -> dict:
    paper = "Curves for different k are roughly parallel in log(total bits), 3-bit excepted."
    crit = (
        "Slope of each width's best-spec line vs the widest width's: supported when every width >= 4 "
        f"is within {PARALLEL_TOL:.0%} of it with 2-SE confidence; contradicted when one differs "
        "beyond that and beyond 2 SE (Holm); otherwise inconclusive."
    )
    say = partial(claim, "parallel_curves", "Curves are parallel", paper, crit)
    lines = {k: curve_of(scored, q) for k, q in best_per_bits(scored).items()}
    wide = sorted(k for k in lines if k >= 4)
    if len(wide) < 2:
        return say(NOT_TESTABLE, ["needs two widths >= 4 bits"])
    if any(lines[k] is None for k in wide):
        return say(NO_DATA, ["needs 3 model sizes per width"])
    ref = lines[wide[-1]]
    # In the metric's own terms: accuracy points, or nats of loss (the score is -loss).
    scale, unit = (100, "pts") if metric != LOSS else (-1, "nats")
    numbers = [
        f"{_name(k)} slope {scale * ln.slope:+.3g} ± {abs(scale) * ln.slope_se:.2g} {unit} per doubling"
        for k, ln in sorted(lines.items())
        if ln is not None
    ]
    # Parallel within PARALLEL_TOL of the reference slope, tested as an equivalence (the 2-SE
    # interval of the slope difference inside the tolerance); apart beyond 2 SE after Holm.
    tol = PARALLEL_TOL * abs(ref.slope)
    diffs = [
        Diff(lines[k].slope - ref.slope, math.hypot(lines[k].slope_se, ref.slope_se), 1) for k in wide[:-1]
    ]
    apart = [
        k for k, s, d in zip(wide[:-1], holm_signs(diffs), diffs, strict=True) if s and abs(d.diff) > tol
    ]
    if apart:
        numbers.append("not parallel to " + _name(wide[-1]) + ": " + ", ".join(_name(k) for k in apart))
        return say(CONTRADICTED, numbers)
    if all(abs(d.diff) + Z * d.se <= tol for d in diffs):
        return say(SUPPORTED, numbers)
    return say(INCONCLUSIVE, [*numbers, f"slopes not pinned down to within {PARALLEL_TOL:.0%} of each other"])
