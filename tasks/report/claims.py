"""The papers' checkable claims (reference/science.md) put to this data, each with a verdict.

A verdict is one of: supported, contradicted, inconclusive (the difference is within noise),
"not testable with this grid" (the grid lacks the specs the claim is about) or "insufficient data"
(the specs are there, but too few model sizes or points). Each claim also carries its criterion
and the numbers behind the verdict, so a reader can disagree with the rule and still use them.

Inputs: `latest`, each model size's latest checkpoint as points (law_table.metric_points +
latest_per_size) of one family; `points`, all its checkpoints; `doc`, the fit document.
Comparisons use "advantage" = score(a) - score(b), score being accuracy, or -loss.
"""

from __future__ import annotations

import math
from functools import partial

import polars as pl

from kbitlaw.quant.spec import QuantSpec
from kbitlaw.report.claims_loss import damage_grows_with_tokens, per_bit_factor, perplexity_tracks_accuracy
from kbitlaw.report.stats import (
    BASELINES,
    CONTRADICTED,
    INCONCLUSIVE,
    NO_DATA,
    NOT_TESTABLE,
    SUPPORTED,
    Z,
    claim,
    curve_of,
    fmt_diff,
    matched_bits,
    paired,
    score,
)

ACC_CLOSE, LOSS_CLOSE = 0.01, 0.01  # "close to fp16": within 1 accuracy point / 0.01 nats


def headline_metric(points: pl.DataFrame) -> str | None:
    """Mean zero-shot accuracy when measured, else loss; None when neither is there."""
    metrics = set(points["metric"].unique().to_list()) if points.height else set()
    return next((m for m in ("mean_acc", "loss") if m in metrics), None)


def specs_of(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per spec: quant, bits, dtype, block_size (null: per tensor), outlier_pct, n_sizes."""
    return (
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
    at_k = specs.filter(pl.col("bits") == bits, pl.col("outlier_pct") == 0)
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


def width_shares(doc: dict, family: str, metric: str) -> list[tuple[int, float]]:
    """The fit's frontier share per bit width for the family and metric, narrowest first."""
    recs = [
        r for r in doc.get("recommendations", []) if r.get("family") == family and r.get("metric") == metric
    ]
    shares = (recs[0].get("shares_by_bits") or {}) if recs else {}
    return sorted((int(k), v) for k, v in shares.items())


# -- 1, 2: bit widths at fixed total bits -----------------------------------------------------------


def four_bit_wins(scored: pl.DataFrame, metric: str, doc: dict) -> dict:
    paper = (
        "At fixed total model bits, 4-bit is at least as good as 5, 6, 8 and 16-bit, and 3-bit "
        "falls below 4-bit (Dettmers & Zettlemoyer §5.1)."
    )
    crit = (
        "Best spec per bit width; curves interpolated in log2(total bits) and compared at equal total "
        "bits, averaged over their common range. Supported: no wider width beats 4-bit beyond 2 SE and "
        "3-bit (and 2-bit) is below 4-bit beyond 2 SE."
    )
    say = partial(claim, 1, "4-bit wins at fixed bits", paper, crit)
    best = best_per_bits(scored)
    others = [k for k in best if k != 4]
    if 4 not in best or not others:
        return say(NOT_TESTABLE, ["needs 4-bit and another width"])
    curve4 = curve_of(scored, best[4])
    numbers, signs = [], {}
    for k in sorted(others):
        other = curve_of(scored, best[k])
        d = None if curve4 is None or other is None else matched_bits(curve4, other)
        signs[k] = None if d is None else d.sign
        numbers.append(f"4-bit ({best[4]}) vs {_name(k)} ({best[k]}): {fmt_diff(d, metric)}")
    shares = width_shares(doc, scored["family"][0], metric)
    if shares:
        numbers.append("frontier share by width: " + ", ".join(f"{_name(k)} {v:.0%}" for k, v in shares))
    if all(s is None for s in signs.values()):
        return say(NO_DATA, numbers)
    if -1 in signs.values():  # some width beats 4-bit at equal memory
        verdict = CONTRADICTED
    elif all(signs[k] == 1 for k in signs if k < 4) and all(signs[k] is not None for k in signs):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return say(verdict, numbers)


def parallel_curves(scored: pl.DataFrame, metric: str) -> dict:
    paper = "Curves for different k are roughly parallel in log(total bits), 3-bit excepted."
    crit = (
        "Slope of each width's best-spec line vs the widest width's; supported when every width "
        ">= 4 is within 2 SE of it."
    )
    say = partial(claim, 2, "Curves are parallel", paper, crit)
    lines = {k: curve_of(scored, q) for k, q in best_per_bits(scored).items()}
    wide = sorted(k for k in lines if k >= 4)
    if len(wide) < 2:
        return say(NOT_TESTABLE, ["needs two widths >= 4 bits"])
    if any(lines[k] is None for k in wide):
        return say(NO_DATA, ["needs 3 model sizes per width"])
    ref = lines[wide[-1]]
    # In the metric's own terms: accuracy points, or nats of loss (the score is -loss).
    scale, unit = (100, "pts") if metric != "loss" else (-1, "nats")
    numbers = [
        f"{_name(k)} slope {scale * ln.slope:+.3g} ± {abs(scale) * ln.slope_se:.2g} {unit} per doubling"
        for k, ln in sorted(lines.items())
        if ln is not None
    ]
    apart = [
        k
        for k in wide[:-1]
        if abs(lines[k].slope - ref.slope) > Z * math.hypot(lines[k].slope_se, ref.slope_se)
    ]
    verdict = CONTRADICTED if apart else SUPPORTED
    if apart:
        numbers.append("not parallel to " + _name(wide[-1]) + ": " + ", ".join(_name(k) for k in apart))
    return say(verdict, numbers)


# -- 3, 4, 6, 8: data types and block sizes ------------------------------------------------------------


def eight_bit_safe(scored: pl.DataFrame, metric: str) -> dict:
    paper = "8-bit is close to fp16; at 6-8 bits no data type or block size changes the curves."
    close = ACC_CLOSE if metric != "loss" else LOSS_CLOSE
    crit = (
        f"Every 8-bit spec vs the 16-bit baseline on the same checkpoints: within 2 SE or within "
        f"{'1 accuracy point' if metric != 'loss' else '0.01 nats'}."
    )
    say = partial(claim, 3, "8-bit is safe", paper, crit)
    specs = specs_of(scored)
    base = next((b for b in BASELINES if b in specs["quant"].to_list()), None)
    eights = specs.filter(pl.col("bits") == 8)["quant"].to_list()
    if base is None or not eights:
        return say(NOT_TESTABLE, ["needs fp16/bf16 and an 8-bit spec"])
    diffs = {q: paired(scored, q, base) for q in eights}
    numbers = [f"{q} vs {base}: {fmt_diff(d, metric)}" for q, d in diffs.items()]
    if any(d is None for d in diffs.values()):
        return say(NO_DATA, numbers)
    ok = [d.sign in (0, 1) or abs(d.diff) <= close for d in diffs.values()]
    return say(SUPPORTED if all(ok) else CONTRADICTED, numbers)


def block_64_at_4_bits(scored: pl.DataFrame, metric: str) -> dict:
    paper = (
        "At 4-bit, block 64 beats block 1024 by about the 4->5-bit gain for +0.234 bits per "
        "parameter: small blocks are worth their bits (optimum 64-128)."
    )
    crit = (
        "Small- vs large-block spec of one data type at 4 bits, compared at equal total bits "
        "(so the extra 16/B bits are paid for). Supported: small blocks ahead beyond 2 SE."
    )
    say = partial(claim, 4, "Block 64 is worth its 0.25 bits", paper, crit)
    specs = specs_of(scored)
    pair = block_pair(specs, 4)
    if pair is None:
        return say(
            NOT_TESTABLE,
            ["needs one data type at 4 bits with block <= 128 and block >= 512 (or per tensor)"],
        )
    small, large = pair
    same_ckpt = paired(scored, small, large)
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
            f"{fmt_diff(paired(scored, five['quant'][0], small), metric)}"
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


def dtypes_at_4_bits(points: pl.DataFrame) -> dict:
    paper = "Data types at 4-bit, by perplexity: quantile >= float > int ~ dynamic exponent."
    metric = "loss" if (points["metric"] == "loss").any() else "mean_acc"
    crit = (
        "Same block size, same checkpoints, by "
        + ("loss." if metric == "loss" else "mean accuracy (no loss measured).")
        + " Contradicted when an expected-worse type wins beyond 2 SE; supported when every strict"
        " '>' holds beyond 2 SE."
    )
    say = partial(claim, 5, "Data-type ordering at 4 bits", paper, crit)
    scored = score(points, metric)
    at4 = specs_of(scored).filter(pl.col("bits") == 4, pl.col("outlier_pct") == 0)
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
    signs = []
    for better, worse, strict in DTYPE_ORDER:
        if better in quant and worse in quant:
            d = paired(scored, quant[better], quant[worse])
            numbers.append(f"{quant[better]} vs {quant[worse]}: {fmt_diff(d, metric)}")
            signs.append((None if d is None else d.sign, strict))
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


def three_bit_needs_small_blocks(scored: pl.DataFrame, metric: str) -> dict:
    paper = (
        "3-bit is fragile: without small blocks it can collapse; 2% outliers in 16-bit stabilise "
        "it but do not beat 4-bit."
    )
    crit = "Small- vs large-block 3-bit spec of one data type, same checkpoints: small ahead beyond 2 SE."
    say = partial(claim, 6, "3-bit needs small blocks", paper, crit)
    specs = specs_of(scored)
    pair = block_pair(specs, 3)
    if pair is None:
        return say(
            NOT_TESTABLE,
            ["needs one data type at 3 bits with block <= 128 and block >= 512 (or per tensor)"],
        )
    d = paired(scored, *pair)
    numbers = [f"{pair[0]} vs {pair[1]}: {fmt_diff(d, metric)}"]
    for q in specs.filter(pl.col("bits") == 3, pl.col("outlier_pct") > 0)["quant"].to_list():
        plain = str(QuantSpec.parse(q).without_outliers())
        if plain in specs["quant"].to_list():
            numbers.append(f"outliers kept: {q} vs {plain}: {fmt_diff(paired(scored, q, plain), metric)}")
    if d is None or d.sign is None:
        return say(NO_DATA, numbers)
    return say(
        {1: SUPPORTED, -1: CONTRADICTED, 0: INCONCLUSIVE}[d.sign],
        numbers,
    )


def float_exponent(scored: pl.DataFrame, metric: str) -> dict:
    paper = "Best float exponent bits for 3..8 bits are about ceil(k/2) (5-bit excepted)."
    crit = (
        "Per k with several explicit fp exponents (fp<k>e<E>) at one block size: ceil(k/2) not "
        "behind the best beyond 2 SE."
    )
    say = partial(claim, 8, "Float exponent heuristic", paper, crit)
    specs = specs_of(scored)
    exponent = {q: QuantSpec.parse(q).exp_bits for q in specs["quant"].to_list()}
    specs = specs.with_columns(e=pl.col("quant").replace_strict(exponent, return_dtype=pl.Int64)).filter(
        pl.col("e").is_not_null(), pl.col("outlier_pct") == 0
    )
    numbers, verdicts = [], []
    for (k, _block), g in specs.group_by(["bits", "block_size"], maintain_order=True):
        expected = g.filter(pl.col("e") == math.ceil(k / 2))
        if g.height < 2 or expected.height == 0:
            continue
        best = g.sort("mean_score", descending=True)["quant"][0]
        d = paired(scored, best, expected["quant"][0]) if best != expected["quant"][0] else None
        numbers.append(
            f"{k}-bit: best {best}, ceil(k/2) = {math.ceil(k / 2)}"
            + (f": behind by {fmt_diff(d, metric)}" if d else "")
        )
        if k != 5:
            verdicts.append(1 if d is None else (None if d.sign is None else (-1 if d.sign == 1 else 1)))
    if not verdicts:
        return say(
            NOT_TESTABLE,
            numbers or ["needs fp specs with two exponent widths at one k"],
        )
    verdict = NO_DATA if None in verdicts else (CONTRADICTED if -1 in verdicts else SUPPORTED)
    return say(verdict, numbers)


# -- all -------------------------------------------------------------------------------------------


def check_claims(latest: pl.DataFrame, points: pl.DataFrame, doc: dict) -> list[dict]:
    """Every checkable claim, in science.md's order, for one family's points."""
    metric = headline_metric(latest)
    if metric is None:
        none = claim(0, "All claims", "", "", NO_DATA, ["no accuracy or perplexity points"])
        return [none]
    scored = score(latest, metric)
    return [
        four_bit_wins(scored, metric, doc),
        parallel_curves(scored, metric),
        eight_bit_safe(scored, metric),
        block_64_at_4_bits(scored, metric),
        dtypes_at_4_bits(latest),
        three_bit_needs_small_blocks(scored, metric),
        perplexity_tracks_accuracy(points),
        float_exponent(scored, metric),
        damage_grows_with_tokens(points, doc),
        per_bit_factor(points, doc),
    ]
