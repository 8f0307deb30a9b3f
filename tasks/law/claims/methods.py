"""Claims about how weights are quantized, beyond the paper's round-to-nearest with fp16 scales:
GPTQ against round-to-nearest (Frantar et al. 2022; Dettmers & Zettlemoyer's one-shot section),
and the 8-bit block scales of OCP MX and NVFP4 against fp16 absmax scales.

Each comparison is made twice where it can be: on the same checkpoints (paired: what the method
or format does to a model) and at equal total model bits (what it is worth for a memory budget,
the question the tool answers). Verdicts follow the paper's claims (law/claims/widths.py, dtypes.py:
2 SE, Holm over several pairs).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import polars as pl

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
)
from kbitlaw.quant.spec import QuantSpec
from kbitlaw.vocab import LOSS, MEAN_ACC

CLOSE = {MEAN_ACC: 0.01, LOSS: 0.01}  # "costs little": within 1 accuracy point / 0.01 nats


def _specs(scored: pl.DataFrame) -> dict[str, QuantSpec]:
    out = {}
    for q in scored["quant"].unique().sort().to_list():
        try:
            out[q] = QuantSpec.parse(q)
        except ValueError:
            continue
    return out


def _best_rtn_at(scored: pl.DataFrame, specs: dict[str, QuantSpec], bits: int) -> str | None:
    """The best-scoring round-to-nearest, fp16-scale spec at `bits` (most sizes first)."""
    rows = [
        (
            scored.filter(pl.col("quant") == q)["n_params"].n_unique(),
            scored.filter(pl.col("quant") == q)["score"].mean(),
            q,
        )
        for q, s in specs.items()
        if s.bits == bits and s.method == "rtn" and s.scale_format == "fp16" and not s.outlier_pct
    ]
    return max(rows)[2] if rows else None


def gptq_improves_3bit(scored: pl.DataFrame, metric: str, samples: pl.DataFrame | None = None) -> dict:
    paper = (
        "One-shot GPTQ (Frantar et al. 2022) makes 3-bit usable where round-to-nearest fails; "
        "whether it then beats 4-bit round-to-nearest at equal total bits is the open question "
        "Dettmers & Zettlemoyer (§6) raise."
    )
    crit = (
        "Each 3-bit GPTQ spec vs the same spec by round-to-nearest, on the same checkpoints: "
        "supported when GPTQ is ahead beyond 2 SE for every pair (Holm), contradicted when behind "
        "beyond 2 SE for one, otherwise inconclusive. Reported beside it, not part of the verdict: "
        "3-bit GPTQ vs the best 4-bit round-to-nearest spec at equal total bits."
    )
    say = partial(claim, "gptq_improves_3bit", "GPTQ rescues 3-bit", paper, crit)
    specs = _specs(scored)
    pairs = [
        (q, str(replace(s, method="rtn")))
        for q, s in specs.items()
        if s.method == "gptq" and s.bits == 3 and str(replace(s, method="rtn")) in specs
    ]
    if not pairs:
        return say(NOT_TESTABLE, ["needs a 3-bit -gptq spec and the same spec without -gptq"])
    diffs = [paired(scored, g, r, samples) for g, r in pairs]
    numbers = [
        f"{g} vs {r}, same checkpoints: {fmt_diff(d, metric)}" for (g, r), d in zip(pairs, diffs, strict=True)
    ]
    four = _best_rtn_at(scored, specs, 4)
    for g, _ in pairs:
        a, b = curve_of(scored, g), (curve_of(scored, four) if four else None)
        at_bits = matched_bits(a, b) if a and b else None
        if at_bits is not None:
            side = {1: "ahead", -1: "behind", 0: "within noise", None: "unknown"}[at_bits.sign]
            numbers.append(f"{g} vs {four} at equal total bits: {fmt_diff(at_bits, metric)} ({side})")
    if any(d is None or d.se is None for d in diffs):
        return say(NO_DATA, numbers)
    signs = holm_signs(diffs)
    if any(s == -1 for s in signs):
        return say(CONTRADICTED, numbers)
    return say(SUPPORTED if all(s == 1 for s in signs) else INCONCLUSIVE, numbers)


def scale_formats(scored: pl.DataFrame, metric: str) -> dict:
    paper = (
        "OCP MX (power-of-two E8M0 scales, blocks of 32) and NVFP4 (E4M3 scales, blocks of 16, an "
        "fp32 per-tensor scale) store block scales in 8 bits; the formats' claim is that this costs "
        "little against fp16 absmax scales."
    )
    close = CLOSE.get(metric, 0.01)
    tol = "1 accuracy point" if metric != LOSS else "0.01 nats"
    crit = (
        "Each spec with 8-bit block scales vs its twin with fp16 scales (same data type, bits and "
        f"block size) at equal total bits: supported when every difference's 2-SE interval lies "
        f"above -{tol} (an equivalence-or-better test); contradicted when one is behind beyond "
        f"{tol} and beyond 2 SE (Holm); otherwise inconclusive."
    )
    say = partial(claim, "scale_formats", "8-bit block scales cost little", paper, crit)
    specs = _specs(scored)
    pairs = [
        (q, str(replace(s, scale_format="fp16")))
        for q, s in specs.items()
        if s.scale_format != "fp16" and str(replace(s, scale_format="fp16")) in specs
    ]
    if not pairs:
        return say(NOT_TESTABLE, ["needs a -se8m0/-se4m3 spec (mxfp4, nvfp4, ...) and its fp16-scale twin"])
    diffs, numbers = [], []
    for q, twin in pairs:
        a, b = curve_of(scored, q), curve_of(scored, twin)
        d = matched_bits(a, b) if a and b else None
        same = paired(scored, q, twin)
        numbers.append(
            f"{q} vs {twin}: at equal total bits {fmt_diff(d, metric)}; "
            f"same checkpoints {fmt_diff(same, metric)}"
        )
        diffs.append(d)
    if any(d is None or d.se is None for d in diffs):
        return say(NO_DATA, numbers)
    signs = holm_signs(diffs)
    if any(s == -1 and d.diff < -close for s, d in zip(signs, diffs, strict=True)):
        return say(CONTRADICTED, numbers)
    if all(d.diff - Z * d.se >= -close for d in diffs):
        return say(SUPPORTED, numbers)
    return say(INCONCLUSIVE, numbers)
