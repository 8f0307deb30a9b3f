"""The claims about loss the report checks: perplexity tracking accuracy (science.md claim 7) and the
quantization-damage laws across training (claims 9 and 10), read from the fit document."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from statistics import NormalDist

import numpy as np
import polars as pl

from kbitlaw.law.numerics.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NO_DATA,
    NOT_TESTABLE,
    SUPPORTED,
    Diff,
    claim,
    holm_signs,
)
from kbitlaw.vocab import BASELINES, LOSS, MEAN_ACC

# -- 7: perplexity vs accuracy ------------------------------------------------------------------------


def perplexity_tracks_accuracy(points: pl.DataFrame) -> dict:
    paper = "Perplexity and mean zero-shot accuracy correlate at r ~ -0.94 (over 35k runs)."
    crit = (
        "Pearson r of loss and mean accuracy over every (checkpoint, spec): supported <= -0.7, "
        "contradicted >= -0.3."
    )
    say = partial(claim, "ppl_tracks_acc", "Perplexity tracks accuracy", paper, crit)
    acc = points.filter(pl.col("metric") == MEAN_ACC).select(
        "checkpoint_id", "quant", pl.col("value").alias("acc")
    )
    loss = points.filter(pl.col("metric") == LOSS).select(
        "checkpoint_id", "quant", pl.col("value").alias("loss")
    )
    if acc.height == 0 or loss.height == 0:
        return say(
            NOT_TESTABLE,
            ["needs both accuracy and perplexity datasets"],
        )
    both = acc.join(loss, on=["checkpoint_id", "quant"])
    if both.height < 5 or both["acc"].n_unique() < 2 or both["loss"].n_unique() < 2:
        return say(NO_DATA, [f"{both.height} paired points"])
    r = float(np.corrcoef(both["acc"].to_numpy(), both["loss"].to_numpy())[0, 1])
    rho = float(np.corrcoef(both["acc"].rank().to_numpy(), both["loss"].rank().to_numpy())[0, 1])
    verdict = SUPPORTED if r <= -0.7 else (CONTRADICTED if r >= -0.3 else INCONCLUSIVE)
    return say(
        verdict,
        [f"Pearson r = {r:.2f}, Spearman rho = {rho:.2f} over {both.height} points"],
    )


# -- 9, 10: damage across training --------------------------------------------------------------------


def _ci_text(name: str, v: float | None, ci: list, f: Callable[[float], float] = lambda x: x) -> str:
    if v is None:
        return f"{name} n/a"
    lo, hi = ci
    interval = "" if lo is None or hi is None else f" [{f(lo):.3g}, {f(hi):.3g}]"
    return f"{name} = {f(v):.3g}{interval}"


def _damage_claim(
    say: Callable[[str, list[str]], dict],
    points: pl.DataFrame,
    entries: list[dict],
    judge: Callable[[dict], tuple[Diff | None, str]],
    level: float,
) -> dict:
    """A claim over the damage fits: one judged line per scheme with an ok fit."""
    if not (points["metric"] == LOSS).any() or not points["quant"].is_in(BASELINES).any():
        return say(NOT_TESTABLE, ["needs a perplexity dataset and an fp16/bf16 baseline"])
    if points["tokens_seen"].n_unique() < 2:
        return say(NOT_TESTABLE, ["every checkpoint saw the same number of tokens"])
    judged = [judge(e) for e in entries if e.get("status") == "ok"]
    judged = [(d, text) for d, text in judged if text]
    if not judged:
        return say(NO_DATA, ["no damage law could be fitted"])
    # Schemes with few points have wide intervals: evidence one way from some schemes and none
    # the other way from any decides; evidence both ways, or none, is inconclusive. Trying several
    # schemes is several tests: Holm's correction keeps one lucky scheme from deciding.
    signs = set(holm_signs([d for d, _ in judged], alpha=1 - level))
    if signs <= {None}:
        verdict = NO_DATA
    elif 1 in signs and -1 not in signs:
        verdict = SUPPORTED
    elif -1 in signs and 1 not in signs:
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    return say(verdict, [t for _, t in judged])


def _ci_diff(value: float | None, ci: list, level: float, zero: float = 0.0) -> Diff | None:
    """The estimate minus `zero` with a standard error read off its (two-sided, `level`) interval."""
    lo, hi = ci
    if value is None or lo is None or hi is None:
        return None
    se = (hi - lo) / (2 * NormalDist().inv_cdf(0.5 + level / 2))
    return Diff(value - zero, se if se > 0 else None, 1)


def damage_grows_with_tokens(points: pl.DataFrame, doc: dict) -> dict:
    paper = (
        "Quantization damage dL grows with training tokens (Ouyang: ∝ D^0.53, N^-0.23, P^-5.5; "
        "3->4 bits cuts it ~4.9x, 2->3 bits ~9.3x)."
    )
    crit = (
        "Power-form damage law per scheme: supported when the 90% interval of beta is above 0 for some "
        "scheme and below 0 for none (contradicted: the reverse)."
    )
    say = partial(claim, "damage_grows_with_tokens", "Damage grows with training tokens", paper, crit)
    power = [e for e in doc.get("damage", []) if e.get("form") == "power"]
    level = (doc.get("config") or {}).get("level", 0.9)

    def judge(e: dict) -> tuple[Diff | None, str]:
        if e.get("beta") is None:
            return None, ""
        parts = [
            _ci_text("beta", e["beta"], e["ci"]["beta"]),
            _ci_text("alpha", e["alpha"], e["ci"]["alpha"]),
        ]
        if e.get("gamma") is not None:
            parts.append(_ci_text("3->4-bit factor", e["gamma"], e["ci"]["gamma"], lambda g: (4 / 3) ** g))
        return _ci_diff(e["beta"], e["ci"]["beta"], level), f"{e['scheme']}: " + ", ".join(parts)

    return _damage_claim(say, points, power, judge, level)


def per_bit_factor(points: pl.DataFrame, doc: dict) -> dict:
    paper = (
        "Each extra bit divides post-training-quantization damage by a constant factor, "
        "e^(1/0.59) ~ 5.4 (Kumar: exponential in k), rather than by a power of k (Ouyang: k^-5.5)."
    )
    crit = (
        "Per scheme, each damage form is refit without one bit width at a time and predicts that "
        "width's damage; the two forms' squared errors (in noise SDs) are compared point by point "
        "(paired). Supported when the exponential form predicts unseen widths better beyond 2 SE for "
        "some scheme and worse for none (Holm's correction over the schemes); contradicted in the "
        "reverse case; otherwise inconclusive."
    )
    say = partial(
        claim, "damage_constant_per_bit", "Each bit divides damage by a constant factor", paper, crit
    )
    forms = {(e["scheme"], e["form"]): e for e in doc.get("damage", []) if e.get("status") == "ok"}
    expo = [e for (_, form), e in forms.items() if form == "exponential"]

    def judge(e: dict) -> tuple[Diff | None, str]:
        power = forms.get((e["scheme"], "power"), {})
        factor = (
            f", per-bit factor e^(1/gamma) = {math.exp(1 / e['gamma']):.3g}"
            if e.get("gamma") and e["gamma"] > 0
            else ""
        )
        a, b = power.get("width_holdout_errors"), e.get("width_holdout_errors")
        if not a or not b:
            return None, f"{e['scheme']}: fewer than 3 bit widths to hold out{factor}"
        d = np.asarray(a, float) ** 2 - np.asarray(b, float) ** 2
        d = d[np.isfinite(d)]
        if len(d) < 2:
            return None, f"{e['scheme']}: too few held-out points{factor}"
        diff = Diff(float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d))
        closer = "exponential" if diff.diff > 0 else "power"
        return diff, (
            f"{e['scheme']}: unseen widths, squared error (noise SDs) power - exponential = "
            f"{diff.diff:.3g} ± {diff.se:.2g} over {len(d)} points ({closer} closer){factor}"
        )

    level = (doc.get("config") or {}).get("level", 0.9)
    return _damage_claim(say, points, expo, judge, level)
