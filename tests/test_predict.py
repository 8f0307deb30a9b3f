"""`kbitlaw predict`: the joint law's forward predictions, against simulated truths, and the command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from kbitlaw.law.common import FitConfig
from kbitlaw.law.predict import PredictError, fit_for_prediction, predict
from kbitlaw.law.sim import Dataset, World, simulate_results
from kbitlaw.quant.spec import QuantSpec

PPL = Dataset("ppl", "perplexity")
SPECS = ["fp16", "int3-b64", "int4-b64", "int5-b64", "int6-b64", "int8-b64"]
SIZES = 1e7 * 4.0 ** np.arange(5)
TOKENS = 2e9 * 2.0 ** np.arange(6)
WORLD = World(loss_noise=0.001)
CONFIG = FitConfig(n_boot=200)


def simulate(seed: int = 0, **kw) -> pl.DataFrame:
    return simulate_results(SIZES, TOKENS, SPECS, [PPL], world=WORLD, seed=seed, **kw)


@pytest.fixture(scope="module")
def fitted():
    return fit_for_prediction(simulate(), CONFIG)


def test_predictions_cover_the_truth_inside_the_fitted_range(fitted):
    law, points, entry = fitted
    n, d = 6e8, 1.6e10  # between the measured sizes and token counts
    doc = predict(law, points, entry, n, d)
    assert not doc["extrapolated"]
    by_quant = {p["quant"]: p for p in doc["predictions"]}
    assert list(by_quant) == ["fp16", "int8-b64", "int6-b64", "int5-b64", "int4-b64", "int3-b64"]
    for quant, p in by_quant.items():
        spec = QuantSpec.parse(quant)
        true = WORLD.loss16(n, d) + WORLD.damage(np.array(n), np.array(d), spec)
        sd = 0.001 * true  # the evaluation noise of one point: the law's band plus it covers the truth
        assert p["ci"][0] - 2 * sd <= true <= p["ci"][1] + 2 * sd, (quant, p, true)
        assert p["damage"] >= -0.005
    assert by_quant["int3-b64"]["damage"] > by_quant["int4-b64"]["damage"] > 0


def test_budget_picks_the_best_size_and_spec(fitted):
    law, points, entry = fitted
    doc = predict(law, points, entry, 1e9, 3.2e10, memory_gb=0.7)
    b = doc["budget"]
    assert b["status"] == "ok"
    losses = {o["quant"]: o["loss"] for o in b["options"]}
    assert b["best"]["loss"] == min(losses.values())
    assert sum(o["p_best"] for o in b["options"]) == pytest.approx(1.0)
    for o in b["options"]:  # each option is the largest model of its spec within the budget
        assert float(law.memory_bits(o["n_params"], o["quant"])) == pytest.approx(0.7 * 8e9)
    # 1e9 params, 15% of them 16-bit (embeddings): 0.75 GB at int4-b64, 0.65 GB at int3-b64
    assert b["planned"]["fits_at"] == ["int3-b64"] and b["planned"]["best_quant"] == "int3-b64"


def test_tokens_until_the_damage_threshold_match_the_truth(fitted):
    law, points, entry = fitted
    n, threshold = 1.6e8, 0.02
    doc = predict(law, points, entry, n, 1e10, threshold=threshold)
    (int4,) = [t for t in doc["damage_threshold"]["tokens"] if t["quant"] == "int4-b64"]
    spec = QuantSpec.parse("int4-b64")
    per_token = WORLD.damage(np.array(n), np.array(1.0), spec)
    true = (threshold / per_token) ** (1 / WORLD.damage_beta)
    assert int4["ci"][0] <= true <= int4["ci"][1], (int4, true)
    assert int4["tokens"] == pytest.approx(true, rel=0.5)


def test_a_run_in_progress_is_predicted_at_its_planned_end():
    full = simulate()
    biggest, last = SIZES[-1], TOKENS[-1]
    # the largest run has reached 1/4 of its plan; its last two checkpoints are still to come
    df = full.filter(~((pl.col("n_params") == int(biggest)) & (pl.col("tokens_seen") > last / 4)))
    df = df.with_columns(tokens_planned=pl.lit(last))
    law, points, entry = fit_for_prediction(df, CONFIG)
    doc = predict(law, points, entry, biggest, last)
    (run,) = doc["runs_in_progress"]
    assert run["n_params"] == biggest and run["tokens_seen"] == last / 4 and run["tokens_planned"] == last
    actual = full.filter(
        pl.col("n_params") == int(biggest), pl.col("tokens_seen") == last, pl.col("metric") == "loss"
    )
    for p in run["predictions"]:
        observed = actual.filter(pl.col("quant") == p["quant"])["value"][0]
        sd = 0.001 * observed
        assert p["ci"][0] - 2 * sd <= observed <= p["ci"][1] + 2 * sd, (p, observed)


def test_the_fit_document_and_the_report_carry_the_runs_in_progress():
    from kbitlaw.law.document import fit_laws
    from kbitlaw.report.html_joint import in_progress_html

    biggest, last = SIZES[-1], TOKENS[-1]
    df = simulate().filter(~((pl.col("n_params") == int(biggest)) & (pl.col("tokens_seen") > last / 4)))
    entry = fit_laws(df.with_columns(tokens_planned=pl.lit(last)), CONFIG).doc["joint_law"][0]
    (run,) = entry["in_progress"]
    assert run["tokens_planned"] == last and run["predictions"][0]["quant"] == "fp16"
    html = in_progress_html(entry["in_progress"], 0.9)
    assert "Runs in progress: predicted at their planned end" in html and run["checkpoint_id"] in html
    assert in_progress_html([], 0.9) == ""
    assert fit_laws(simulate(), CONFIG).doc["joint_law"][0]["in_progress"] == []  # every run finished


def test_bad_requests_say_why():
    two = pl.concat([simulate(0), simulate(1, family="other")])
    with pytest.raises(PredictError, match=r"2 families \(other, sim\); pick one with --family"):
        fit_for_prediction(two, CONFIG)
    with pytest.raises(PredictError, match="no family 'nope'"):
        fit_for_prediction(two, CONFIG, "nope")
    one_size = simulate_results([1e8], TOKENS, SPECS, [PPL], world=WORLD)
    with pytest.raises(PredictError, match="insufficient data for the joint law"):
        fit_for_prediction(one_size, CONFIG)


def kbitlaw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kbitlaw", *args], capture_output=True, text=True, timeout=300
    )


def test_the_command_prints_one_json_document_or_a_table(tmp_path):
    path = tmp_path / "results.parquet"
    simulate().write_parquet(path)
    args = ["predict", "--results", str(path), "--n-params", "6e8", "--tokens", "1.6e10", "--memory-gb", "1"]
    out = kbitlaw(*args, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) >= {
        "family",
        "n_params",
        "tokens",
        "law",
        "predictions",
        "budget",
        "damage_threshold",
        "runs_in_progress",
        "extrapolated",
    }
    assert doc["budget"]["best"]["quant"] in SPECS
    text = kbitlaw(*args)
    assert text.returncode == 0 and "int4-b64" in text.stdout and "within 1 GB" in text.stdout
    bad = kbitlaw("predict", "--results", str(path), "--n-params", "0", "--tokens", "1e10")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "kbitlaw: error: --n-params and --tokens must be > 0, got 0 and 1e+10"
    ]


def test_memory_follows_the_16_bit_parameters_as_sizes_grow():
    # Embeddings stay 16-bit and grow slower than the model: their count is fitted over the sizes
    # (here 5e6 (N/1e8)^0.5), so a budget at 10x the largest size does not assume their share stays.
    from kbitlaw.law.joint import sixteen_bit_params

    n = np.array([1e8, 4e8, 1.6e9])
    kept = 5e6 * (n / 1e8) ** 0.5
    bpp = 4.25
    df = pl.DataFrame(
        {"n_params": n, "total_bits": (n - kept) * bpp + kept * 16.0, "bits_per_param": [bpp] * 3}
    )
    share, (slope, intercept) = sixteen_bit_params(df)
    assert slope == pytest.approx(0.5) and np.exp(intercept) * 1e8**0.5 == pytest.approx(5e6)
    law, _, _ = fit_for_prediction(simulate(), CONFIG)
    law = type(law)(**{**law.__dict__, "unquantized": (slope, intercept), "quantized_share": share})
    big = 1.6e10
    assert float(law.memory_bits(big, "int4-b64")) == pytest.approx(
        (big - 5e6 * 160**0.5) * 4.25 + 5e6 * 160**0.5 * 16
    )
    one_size = df.head(1)
    assert sixteen_bit_params(one_size)[1] is None  # one size: the share


def test_the_command_reads_a_store(tmp_path):
    from kbitlaw.store import Store

    store = Store(str(tmp_path / "store"))
    store.write_parquet("results/sim/fp16/all.parquet", simulate())
    out = kbitlaw("predict", "--store", store.uri, "--n-params", "6e8", "--tokens", "1.6e10", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["family"] == "sim"
    both = kbitlaw("predict", "--store", store.uri, "--results", "x.csv", "--n-params", "1", "--tokens", "1")
    assert both.returncode == 1 and "use --store or --results, not both" in both.stderr
