"""The papers' claims get honest verdicts: tested on simulated truths where the answer is known."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from kbitlaw.law.claims.paper import check_claims
from kbitlaw.law.document import FitConfig, fit_laws
from kbitlaw.law.io import default_chance
from kbitlaw.law.numerics.stats import Diff, holm, holm_signs, paired, score
from kbitlaw.law.sim import (
    DEFAULT_DATASETS,
    Dataset,
    World,
    bits_cost,
    effective_size_loss,
    peaked_quality,
    simulate_results,
)
from kbitlaw.law.table import components, matched_per_size, metric_points, normalise

WORLD = World(loss_noise=0.001)
INT_GRID = ["fp16", *[f"int{k}-b64" for k in range(3, 9)]]


def claims_of(df: pl.DataFrame, n_boot: int = 100, samples: pl.DataFrame | None = None) -> dict[str, dict]:
    doc = fit_laws(df, FitConfig(chance=default_chance(df), n_boot=n_boot), samples=samples).doc
    assert {c["id"] for c in doc["claims"]} >= {
        "four_bit_optimal",
        "parallel_curves",
        "eight_bit_safe",
        "small_blocks",
        "dtype_order_4bit",
        "three_bit_needs_blocks",
        "ppl_tracks_acc",
        "float_exponents",
        "damage_grows_with_tokens",
        "damage_constant_per_bit",
    }
    return {c["id"]: c for c in doc["claims"]}


def truth(q: dict, sizes, n_examples: int, seed: int, specs=INT_GRID) -> pl.DataFrame:
    datasets = tuple(Dataset(d.name, d.kind, d.chance, n_examples) for d in DEFAULT_DATASETS)
    return simulate_results(
        list(sizes), [2e10], specs, datasets, world=WORLD, loss_fn=effective_size_loss(q, WORLD), seed=seed
    )


FIVE_SIZES = [1e8 * 4**i for i in range(5)]


@pytest.mark.parametrize("best, verdict", [(4, "supported"), (6, "contradicted")])
def test_four_bit_optimal_when_a_width_wins_clearly(best, verdict):
    for seed in (0, 1):
        c = claims_of(truth(peaked_quality(best, 0.2), FIVE_SIZES, 1000, seed))["four_bit_optimal"]
        assert c["verdict"] == verdict, c["numbers"]


def test_four_bit_optimal_is_inconclusive_on_a_near_tie_with_little_data():
    """4- and 5-bit within 1% per bit of memory, 3 sizes, 300 examples per suite: the data cannot
    tell, and the verdict must say so (measured: 1 of 12 seeds came out "supported", 4-bit being in
    truth 1% ahead; here at most 1 of 6)."""
    q = peaked_quality(4, 0.2)
    q[5] = q[4] * bits_cost(5) / bits_cost(4) * 0.99
    verdicts = [
        claims_of(truth(q, (1e8, 4e8, 1.6e9), 300, seed))["four_bit_optimal"]["verdict"] for seed in range(6)
    ]
    assert verdicts.count("inconclusive") >= 5, verdicts
    assert "contradicted" not in verdicts


def paired_samples_for(df: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Per-example scores consistent with the results: for each checkpoint and accuracy dataset,
    one draw of the fp16 model's correct/incorrect examples, and every other spec flipping only as
    many examples as its accuracy differs by (the same examples scored by near-identical models)."""
    rng = np.random.default_rng(seed)
    acc = df.filter(pl.col("metric") == "acc")
    frames = []
    for (ckpt, dataset, kind), g in acc.group_by(["checkpoint_id", "dataset", "kind"], maintain_order=True):
        n = int(g["n_examples"][0])
        base_acc = float(g.filter(pl.col("quant") == "fp16")["value"][0])
        base = rng.permutation(np.arange(n) < round(base_acc * n)).astype(float)
        for quant, value in g.select("quant", "value").iter_rows():
            correct = base.copy()
            change = round(value * n) - int(base.sum())
            pool = np.flatnonzero(correct == (0.0 if change > 0 else 1.0))
            correct[rng.choice(pool, abs(change), replace=False)] = 1.0 if change > 0 else 0.0
            frames.append(
                pl.DataFrame({"id": [str(i) for i in range(n)], "correct": correct}).with_columns(
                    checkpoint_id=pl.lit(ckpt),
                    quant=pl.lit(quant),
                    dataset=pl.lit(dataset),
                    kind=pl.lit(kind),
                    loss=pl.lit(None, dtype=pl.Float64),
                    n_tokens=pl.lit(None, dtype=pl.Float64),
                )
            )
    return pl.concat(frames)


def test_eight_bit_safe_needs_paired_evidence():
    """8-bit within a fraction of a point of fp16. Without per-example scores the two results' noise
    adds up (an SE too wide to show "within 1 point"); paired on the same examples it shrinks to the
    few examples that differ, and the equivalence test passes."""
    world = World(loss_noise=0.001, damage_c=0.004)
    df = simulate_results(FIVE_SIZES, [2e10], ["fp16", "int8-b64", "int4-b64"], world=world, seed=3)
    df = df.filter(pl.col("kind") != "perplexity")  # claims on accuracy
    samples = paired_samples_for(df)
    points, _ = metric_points(components(normalise(df)))
    scored = score(matched_per_size(points)[0], "mean_acc")
    unpaired, with_samples = paired(scored, "int8-b64", "fp16"), paired(scored, "int8-b64", "fp16", samples)
    assert with_samples.diff == pytest.approx(unpaired.diff, abs=1e-9)  # same difference of means
    assert with_samples.se < unpaired.se / 3
    verdict = claims_of(df, n_boot=20, samples=samples)["eight_bit_safe"]
    assert verdict["verdict"] == "supported", verdict["numbers"]


def test_eight_bit_safe_is_contradicted_when_8_bit_hurts():
    """A damage so large that 8-bit loses points of accuracy: contradicted, paired or not."""
    world = World(loss_noise=0.001, damage_c=40.0)
    df = simulate_results(FIVE_SIZES, [2e10], ["fp16", "int8-b64", "int4-b64"], world=world, seed=4)
    df = df.filter(pl.col("kind") != "perplexity")
    c = claims_of(df, n_boot=20, samples=paired_samples_for(df))["eight_bit_safe"]
    assert c["verdict"] == "contradicted", c["numbers"]


def exponential_world_loss(gamma: float = 1.0, c: float = 5.0):
    """Damage dL = c * D^0.5 / N^0.25 * exp(-k/gamma): a constant factor e^(1/gamma) per bit."""

    def loss(n, d, spec, _total):
        base = WORLD.loss16(n, d)
        if spec.bits >= 16:
            return base
        return base + c * d**0.5 / n**0.25 * np.exp(-spec.bits / gamma) * 1e-3

    return loss


@pytest.mark.parametrize("form, verdict", [("exponential", "supported"), ("power", "contradicted")])
def test_damage_constant_per_bit_compares_the_forms_on_held_out_points(form, verdict):
    sizes, tokens = [1e7 * 4**i for i in range(5)], [2e9 * 2**i for i in range(6)]
    specs = ["fp16", *[f"int{k}-b64" for k in range(3, 9)]]
    datasets = (Dataset("pile_cc", "perplexity"),)
    if form == "exponential":
        df = simulate_results(sizes, tokens, specs, datasets, world=WORLD, loss_fn=exponential_world_loss())
    else:
        df = simulate_results(sizes, tokens, specs, datasets, world=World(loss_noise=0.001))
    c = claims_of(df, n_boot=40)["damage_constant_per_bit"]
    assert c["verdict"] == verdict, c["numbers"]


def test_holm_controls_the_family():
    assert holm([0.01, 0.04, 0.03], alpha=0.05) == [True, False, False]
    assert holm([0.001, 0.01, 0.2], alpha=0.05) == [True, True, False]
    lucky = [Diff(2.1, 1.0, 1)] + [Diff(0.1, 1.0, 1)] * 4  # one of five schemes at 2.1 SE
    assert lucky[0].sign == 1 and holm_signs(lucky) == [0, 0, 0, 0, 0]


def test_claims_run_on_the_report_path_without_a_fit_document():
    df = simulate_results(FIVE_SIZES, [2e10], INT_GRID, seed=0)
    points, _ = metric_points(components(normalise(df)))
    latest, _ = matched_per_size(points)
    claims = check_claims(latest, points, {})
    assert {c["id"] for c in claims} >= {"four_bit_optimal", "eight_bit_safe"}
    assert {c["verdict"] for c in claims} <= {
        "supported",
        "contradicted",
        "inconclusive",
        "not testable with this grid",
        "insufficient data",
    }
