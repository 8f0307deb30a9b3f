"""The paper's claims about data types and block sizes (science.md claims 3, 4, 6 and 8): 8-bit is
safe, block 64 is worth its bits at 4 bits, the data types' order at 4 bits, 3-bit needs small
blocks, and the best float exponent is about ceil(k/2).
"""

from __future__ import annotations

import math
from functools import partial

import polars as pl

from kbitlaw.law.claims.specs import block_pair, specs_of
from kbitlaw.law.numerics.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NO_DATA,
    NOT_TESTABLE,
    SUPPORTED,
    Z,
    claim,
    curve_of,
    fmt_diff,
    holm_signs,
    matched_bits,
    paired,
    score,
)
from kbitlaw.quant.spec import QuantSpec
from kbitlaw.vocab import BASELINES, LOSS, MEAN_ACC

ACC_CLOSE, LOSS_CLOSE = 0.01, 0.01  # "close to fp16": within 1 accuracy point / 0.01 nats


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
