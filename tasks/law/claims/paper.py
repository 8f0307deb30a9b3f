"""The papers' checkable claims (reference/science.md) put to this data, each with a verdict:
check_claims runs them all, in science.md's order. The claims about bit widths are in
claims/widths.py, about data types and block sizes in claims/dtypes.py, about loss and damage in
claims/loss.py, about GPTQ and scale formats in claims/methods.py; what they share in claims/specs.py.

A verdict is one of: supported, contradicted, inconclusive (the difference is within noise),
"not testable with this grid" (the grid lacks the specs the claim is about) or "insufficient data"
(the specs are there, but too few model sizes or points). Each claim also carries its criterion
and the numbers behind the verdict, so a reader can disagree with the rule and still use them.

Inputs: `latest`, each model size's latest checkpoint as points (table.metric_points +
latest_per_size) of one family; `points`, all its checkpoints; `doc`, the fit document.
Comparisons use "advantage" = score(a) - score(b), score being accuracy, or -loss.
"""

from __future__ import annotations

import polars as pl

from kbitlaw.law.claims.dtypes import (
    block_64_at_4_bits,
    dtypes_at_4_bits,
    eight_bit_safe,
    float_exponent,
    three_bit_needs_small_blocks,
)
from kbitlaw.law.claims.loss import damage_grows_with_tokens, per_bit_factor, perplexity_tracks_accuracy
from kbitlaw.law.claims.methods import gptq_improves_3bit, scale_formats
from kbitlaw.law.claims.specs import headline_metric
from kbitlaw.law.claims.widths import four_bit_optimal, parallel_curves
from kbitlaw.law.numerics.stats import NO_DATA, claim, score


def check_claims(
    latest: pl.DataFrame, points: pl.DataFrame, doc: dict, samples: pl.DataFrame | None = None
) -> list[dict]:
    """Every checkable claim, in science.md's order, for one family's points; `samples`: the
    per-example scores (law/numerics/paired.py) that make same-checkpoint comparisons paired."""
    metric = headline_metric(latest)
    if metric is None:
        none = claim("all", "All claims", "", "", NO_DATA, ["no accuracy or perplexity points"])
        return [none]
    scored = score(latest, metric)
    return [
        four_bit_optimal(scored, metric, doc),
        parallel_curves(scored, metric),
        eight_bit_safe(scored, metric, samples),
        block_64_at_4_bits(scored, metric, samples),
        dtypes_at_4_bits(latest, samples),
        three_bit_needs_small_blocks(scored, metric, samples),
        perplexity_tracks_accuracy(points),
        float_exponent(scored, metric, samples),
        damage_grows_with_tokens(points, doc),
        per_bit_factor(points, doc),
        gptq_improves_3bit(scored, metric, samples),
        scale_formats(scored, metric),
    ]
