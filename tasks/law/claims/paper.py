"""The papers' checkable claims (reference/science.md) put to this data, each with a verdict.

A verdict is one of: supported, contradicted, inconclusive (the difference is within noise),
"not testable with this grid" (the grid lacks the specs the claim is about) or "insufficient data"
(the specs are there, but too few model sizes or points). Each claim also carries its criterion
and the numbers behind the verdict, so a reader can disagree with the rule and still use them.

Inputs: `latest`, each model size's latest checkpoint as points (table.metric_points +
latest_per_size) of one family; `points`, all its checkpoints; `doc`, the fit document.
Comparisons use "advantage" = score(a) - score(b), score being accuracy, or -loss.
"""

from __future__ import annotations

import math
from functools import partial

import polars as pl

from kbitlaw.law.claims.loss import damage_grows_with_tokens, per_bit_factor, perplexity_tracks_accuracy
from kbitlaw.law.claims.methods import gptq_improves_3bit, scale_formats
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
    fmt_diff,
    holm_signs,
    matched_bits,
    paired,
    score,
)
from kbitlaw.law.recommend.budget import CLEAR
from kbitlaw.law.recommend.frontier import headline_recommendation
from kbitlaw.quant.spec import QuantSpec
from kbitlaw.vocab import BASELINES, LOSS, MEAN_ACC, METRIC_WORDS

ACC_CLOSE, LOSS_CLOSE = 0.01, 0.01  # "close to fp16": within 1 accuracy point / 0.01 nats


def headline_metric(points: pl.DataFrame) -> str | None:
    """Mean zero-shot accuracy when measured, else loss; None when neither is there."""
    metrics = set(points["metric"].unique().to_list()) if points.height else set()
    return next((m for m in (MEAN_ACC, LOSS) if m in metrics), None)


def is_plain(quant: str) -> bool:
    """Round-to-nearest with fp16 block scales: the paper's setting, which its claims are about
    (GPTQ and MX/NV scale formats are compared in law/claims/methods.py)."""
    try:
        spec = QuantSpec.parse(quant)
    except ValueError:
        return True  # a spec this version cannot read: judged by its columns, as before
    return spec.method == "rtn" and spec.scale_format == "fp16"


def specs_of(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per spec: quant, bits, dtype, block_size (null: per tensor), outlier_pct, n_sizes,
    plain (round-to-nearest with fp16 scales)."""
    specs = (
        scored.group_by("quant")
        .agg(
            pl.col("bits").first().cast(pl.Int64),
            pl.col("dtype").first(),
            pl.col("block_size").first(),
            pl.col("outlier_pct").first().fill_null(0.0),
            pl.col("n_params").n_unique().alias("n_sizes"),
            pl.col("score").mean().alias("mean_score"),
        )
        .sort("quant")
    )
    plain = {q: is_plain(q) for q in specs["quant"].to_list()}
    return specs.with_columns(plain=pl.col("quant").replace_strict(plain, return_dtype=pl.Boolean))


def best_per_bits(scored: pl.DataFrame) -> dict[int, str]:
    """Per bit width, its best spec: among the specs with the most sizes, the highest mean score."""
    best = (
        specs_of(scored)
        .sort(["bits", "n_sizes", "mean_score", "quant"], descending=[False, True, True, False])
        .group_by("bits", maintain_order=True)
        .first()
    )
    return dict(zip(best["bits"].to_list(), best["quant"].to_list(), strict=True))


def block_pair(specs: pl.DataFrame, bits: int) -> tuple[str, str] | None:
    """(small-block spec, large-block spec) of one data type at `bits`: the small block <= 128
    (64 preferred), the large one 1024 if there, else per tensor, else the largest >= 512."""
    at_k = specs.filter(pl.col("bits") == bits, pl.col("outlier_pct") == 0, pl.col("plain"))
    for dtype in sorted(at_k["dtype"].unique().to_list()):
        rows = at_k.filter(pl.col("dtype") == dtype)
        blocks = {r["block_size"]: r["quant"] for r in rows.iter_rows(named=True)}
        small = sorted((b for b in blocks if b is not None and b <= 128), key=lambda b: (abs(b - 64), b))
        large = [b for b in (1024.0, None) if b in blocks] or sorted(
            (b for b in blocks if b is not None and b >= 512), reverse=True
        )
        if small and large:
            return blocks[small[0]], blocks[large[0]]
    return None


def _name(k: int) -> str:
    return "16-bit" if k >= 16 else f"{k}-bit"


# -- 1, 2: bit widths at fixed total bits -----------------------------------------------------------


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


# -- 3, 4, 6, 8: data types and block sizes ------------------------------------------------------------


def eight_bit_safe(scored: pl.DataFrame, metric: str, samples: pl.DataFrame | None = None) -> dict:
    paper = "8-bit is close to fp16; at 6-8 bits no data type or block size changes the curves."
    close = ACC_CLOSE if metric != LOSS else LOSS_CLOSE
    tol = "1 accuracy point" if metric != LOSS else "0.01 nats"
    crit = (
        f"Every 8-bit spec vs the 16-bit baseline on the same checkpoints. Supported when each "
        f"difference's 2-SE interval lies within {tol} of zero (an equivalence test); contradicted "
        f"when one is worse beyond {tol} and significantly so after Holm's correction over the 8-bit "
        f"specs; otherwise inconclusive."
    )
    say = partial(claim, "eight_bit_safe", "8-bit is safe", paper, crit)
    specs = specs_of(scored)
    base = next((b for b in BASELINES if b in specs["quant"].to_list()), None)
    eights = specs.filter(pl.col("bits") == 8)["quant"].to_list()
    if base is None or not eights:
        return say(NOT_TESTABLE, ["needs fp16/bf16 and an 8-bit spec"])
    diffs = {q: paired(scored, q, base, samples) for q in eights}
    numbers = [f"{q} vs {base}: {fmt_diff(d, metric)}" for q, d in diffs.items()]
    if any(d is None or d.se is None for d in diffs.values()):
        return say(NO_DATA, numbers)
    signs = holm_signs(list(diffs.values()))
    if any(s == -1 and d.diff < -close for s, d in zip(signs, diffs.values(), strict=True)):
        return say(CONTRADICTED, numbers)
    if all(d.diff - Z * d.se >= -close for d in diffs.values()):
        return say(SUPPORTED, numbers)
    return say(INCONCLUSIVE, numbers)


def block_64_at_4_bits(scored: pl.DataFrame, metric: str, samples: pl.DataFrame | None = None) -> dict:
    paper = (
        "At 4-bit, block 64 beats block 1024 by about the 4->5-bit gain for +0.234 bits per "
        "parameter: small blocks are worth their bits (optimum 64-128)."
    )
    crit = (
        "Small- vs large-block spec of one data type at 4 bits, compared at equal total bits "
        "(so the extra 16/B bits are paid for). Supported: small blocks ahead beyond 2 SE."
    )
    say = partial(claim, "small_blocks", "Block 64 is worth its 0.25 bits", paper, crit)
    specs = specs_of(scored)
    pair = block_pair(specs, 4)
    if pair is None:
        return say(
            NOT_TESTABLE,
            ["needs one data type at 4 bits with block <= 128 and block >= 512 (or per tensor)"],
        )
    small, large = pair
    same_ckpt = paired(scored, small, large, samples)
    a, b = curve_of(scored, small), curve_of(scored, large)
    at_bits = None if a is None or b is None else matched_bits(a, b)
    numbers = [
        f"{small} vs {large} at equal total bits: {fmt_diff(at_bits, metric)}",
        f"{small} vs {large} on the same checkpoints: {fmt_diff(same_ckpt, metric)}",
    ]
    dtype, block = specs.filter(pl.col("quant") == small).select("dtype", "block_size").row(0)
    five = specs.filter(pl.col("bits") == 5, pl.col("dtype") == dtype, pl.col("block_size") == block)
    if five.height:
        numbers.append(
            f"for scale, {five['quant'][0]} vs {small}: "
            f"{fmt_diff(paired(scored, five['quant'][0], small, samples), metric)}"
        )
    if at_bits is None or at_bits.sign is None:
        return say(NO_DATA, numbers)
    verdict = {1: SUPPORTED, -1: CONTRADICTED, 0: INCONCLUSIVE}[at_bits.sign]
    return say(verdict, numbers)


# Expected order at 4 bits (Dettmers App. C): (better, worse, strict). quantile >= float > int, dynamic.
DTYPE_ORDER = (
    ("quantile", "fp", False),
    ("fp", "int", True),
    ("fp", "dynamic", True),
    ("quantile", "int", True),
    ("quantile", "dynamic", True),
)


def dtypes_at_4_bits(points: pl.DataFrame, samples: pl.DataFrame | None = None) -> dict:
    paper = "Data types at 4-bit, by perplexity: quantile >= float > int ~ dynamic exponent."
    metric = LOSS if (points["metric"] == LOSS).any() else MEAN_ACC
    crit = (
        "Same block size, same checkpoints, by "
        + ("loss." if metric == LOSS else "mean accuracy (no loss measured).")
        + " Contradicted when an expected-worse type wins beyond 2 SE; supported when every strict"
        " '>' holds beyond 2 SE (Holm's correction over the pairs)."
    )
    say = partial(claim, "dtype_order_4bit", "Data-type ordering at 4 bits", paper, crit)
    scored = score(points, metric)
    at4 = specs_of(scored).filter(pl.col("bits") == 4, pl.col("outlier_pct") == 0, pl.col("plain"))
    n_types = {b: len(set(g["dtype"])) for (b,), g in at4.group_by("block_size")}
    if not n_types or max(n_types.values()) < 2:
        return say(NOT_TESTABLE, ["needs two data types at 4 bits"])
    # The block size with the most data types; on a tie the smaller block (per tensor last).
    block = min(n_types, key=lambda b: (-n_types[b], math.inf if b is None else b))
    rows = at4.filter(pl.col("block_size").is_null() if block is None else pl.col("block_size") == block)
    rows = rows.sort("mean_score")  # several specs of one type (fp4e2, fp4e3): the best one is kept
    quant = dict(zip(rows["dtype"].to_list(), rows["quant"].to_list(), strict=True))
    ranked = sorted(quant, key=lambda t: -float(scored.filter(pl.col("quant") == quant[t])["score"].mean()))
    numbers = ["order (best first): " + " > ".join(quant[t] for t in ranked)]
    diffs, stricts = [], []
    for better, worse, strict in DTYPE_ORDER:
        if better in quant and worse in quant:
            d = paired(scored, quant[better], quant[worse], samples)
            numbers.append(f"{quant[better]} vs {quant[worse]}: {fmt_diff(d, metric)}")
            diffs.append(d)
            stricts.append(strict)
    signs = list(zip(holm_signs(diffs), stricts, strict=True))  # Holm over the pairs tried
    if not signs:
        return say(
            NOT_TESTABLE,
            numbers + ["none of the paper's pairs (quantile, fp, int, dynamic) present"],
        )
    if any(s is None for s, _ in signs):
        verdict = NO_DATA
    elif any(s == -1 for s, _ in signs):
        verdict = CONTRADICTED
    elif all(s == 1 for s, strict in signs if strict):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return say(verdict, numbers)


def three_bit_needs_small_blocks(
    scored: pl.DataFrame, metric: str, samples: pl.DataFrame | None = None
) -> dict:
    paper = (
        "3-bit is fragile: without small blocks it can collapse; 2% outliers in 16-bit stabilise "
        "it but do not beat 4-bit."
    )
    crit = "Small- vs large-block 3-bit spec of one data type, same checkpoints: small ahead beyond 2 SE."
    say = partial(claim, "three_bit_needs_blocks", "3-bit needs small blocks", paper, crit)
    specs = specs_of(scored)
    pair = block_pair(specs, 3)
    if pair is None:
        return say(
            NOT_TESTABLE,
            ["needs one data type at 3 bits with block <= 128 and block >= 512 (or per tensor)"],
        )
    d = paired(scored, *pair, samples)
    numbers = [f"{pair[0]} vs {pair[1]}: {fmt_diff(d, metric)}"]
    for q in specs.filter(pl.col("bits") == 3, pl.col("outlier_pct") > 0)["quant"].to_list():
        plain = str(QuantSpec.parse(q).without_outliers())
        if plain in specs["quant"].to_list():
            numbers.append(
                f"outliers kept: {q} vs {plain}: {fmt_diff(paired(scored, q, plain, samples), metric)}"
            )
    if d is None or d.sign is None:
        return say(NO_DATA, numbers)
    return say(
        {1: SUPPORTED, -1: CONTRADICTED, 0: INCONCLUSIVE}[d.sign],
        numbers,
    )


def float_exponent(scored: pl.DataFrame, metric: str, samples: pl.DataFrame | None = None) -> dict:
    paper = "Best float exponent bits for 3..8 bits are about ceil(k/2) (5-bit excepted)."
    crit = (
        "Per k with several explicit fp exponents (fp<k>e<E>) at one block size (5-bit excepted): "
        "supported when ceil(k/2) is the best at every k; contradicted when it is behind the best "
        "beyond 2 SE at some k after Holm's correction over the k's; otherwise inconclusive."
    )
    say = partial(claim, "float_exponents", "Float exponent heuristic", paper, crit)
    specs = specs_of(scored)
    exponent = {q: QuantSpec.parse(q).exp_bits for q in specs["quant"].to_list()}
    specs = specs.with_columns(e=pl.col("quant").replace_strict(exponent, return_dtype=pl.Int64)).filter(
        pl.col("e").is_not_null(), pl.col("outlier_pct") == 0, pl.col("plain")
    )
    numbers, tested = [], []  # tested: (k, best is ceil(k/2), best - ceil(k/2))
    for (k, _block), g in specs.group_by(["bits", "block_size"], maintain_order=True):
        expected = g.filter(pl.col("e") == math.ceil(k / 2))
        if g.height < 2 or expected.height == 0:
            continue
        best = g.sort("mean_score", descending=True)["quant"][0]
        d = paired(scored, best, expected["quant"][0], samples) if best != expected["quant"][0] else None
        numbers.append(
            f"{k}-bit: best {best}, ceil(k/2) = {math.ceil(k / 2)}"
            + (f": behind by {fmt_diff(d, metric)}" if d else "")
        )
        if k != 5:
            tested.append((best == expected["quant"][0], d))
    if not tested:
        return say(
            NOT_TESTABLE,
            numbers or ["needs fp specs with two exponent widths at one k"],
        )
    behind = [d for ok, d in tested if not ok]
    if any(d is None or d.se is None for d in behind):
        return say(NO_DATA, numbers)
    if any(s == 1 for s in holm_signs(behind)):  # the best beats ceil(k/2) beyond noise (Holm)
        return say(CONTRADICTED, numbers)
    return say(SUPPORTED if not behind else INCONCLUSIVE, numbers)


# -- all -------------------------------------------------------------------------------------------


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
