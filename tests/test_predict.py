"""`kbitlaw predict`: the joint law's forward predictions, read from the fit document (never refit),
against simulated truths; statuses honoured; and the command."""

from __future__ import annotations

import copy
import json

import numpy as np
import polars as pl
import pytest

from kbitlaw.law.common import FitConfig, json_safe
from kbitlaw.law.document import fit_laws
from kbitlaw.law.joint.model import JointModel
from kbitlaw.law.joint.predict import PredictError, predict, predict_from_document
from kbitlaw.law.sim import Dataset, World, simulate_results
from kbitlaw.quant.spec import QuantSpec
from tests.conftest import kbitlaw

PPL = Dataset("ppl", "perplexity")
SPECS = ["fp16", "int3-b64", "int4-b64", "int5-b64", "int6-b64", "int8-b64"]
SIZES = 1e7 * 4.0 ** np.arange(5)
TOKENS = 2e9 * 2.0 ** np.arange(6)
WORLD = World(loss_noise=0.001)
CONFIG = FitConfig(n_boot=200)


def simulate(seed: int = 0, **kw) -> pl.DataFrame:
    return simulate_results(SIZES, TOKENS, SPECS, [PPL], world=WORLD, seed=seed, **kw)


def stored(doc: dict) -> dict:
    """The document as fits/<sha>/fit.json holds it (a JSON round trip)."""
    return json.loads(json.dumps(doc, allow_nan=False))


def fit_document(df: pl.DataFrame) -> dict:
    return stored(fit_laws(df, CONFIG).doc)


def stored_law(doc: dict):
    """The joint law the document stores (what predict rebuilds)."""
    (entry,) = doc["joint_law"]
    return JointModel.from_dict(entry["model"], entry["family"]).law


@pytest.fixture(scope="module")
def doc() -> dict:
    fitted = fit_document(simulate())
    (entry,) = fitted["joint_law"]
    assert entry["status"] == "ok", entry.get("reason")  # clean simulated data pass the gates
    return fitted


def test_predictions_cover_the_truth_inside_the_fitted_range(doc):
    n, d = 6e8, 1.6e10  # between the measured sizes and token counts
    out = predict_from_document(doc, n, d)
    assert out["status"] == "ok" and not out["extrapolated"] and out["left_out"] == []
    by_quant = {p["quant"]: p for p in out["predictions"]}
    assert list(by_quant) == ["fp16", "int8-b64", "int6-b64", "int5-b64", "int4-b64", "int3-b64"]
    for quant, p in by_quant.items():
        spec = QuantSpec.parse(quant)
        true = WORLD.loss16(n, d) + WORLD.damage(np.array(n), np.array(d), spec)
        sd = 0.001 * true  # the evaluation noise of one point: the law's band plus it covers the truth
        assert p["ci"][0] - 2 * sd <= true <= p["ci"][1] + 2 * sd, (quant, p, true)
        assert p["damage"] >= -0.005
    assert by_quant["int3-b64"]["damage"] > by_quant["int4-b64"]["damage"] > 0


def test_budget_picks_the_best_size_and_spec(doc):
    b = predict_from_document(doc, 1e9, 3.2e10, memory_gb=0.7)["budget"]
    assert b["status"] == "ok"
    losses = {o["quant"]: o["loss"] for o in b["options"]}
    assert b["best"]["loss"] == min(losses.values())
    assert sum(o["p_best"] for o in b["options"]) == pytest.approx(1.0)
    law = stored_law(doc)
    for o in b["options"]:  # each option is the largest model of its spec within the budget
        assert float(law.memory_bits(o["n_params"], o["quant"])) == pytest.approx(0.7 * 8e9)
    # 1e9 params, 15% of them 16-bit (embeddings): 0.75 GB at int4-b64, 0.65 GB at int3-b64
    assert b["planned"]["fits_at"] == ["int3-b64"] and b["planned"]["best_quant"] == "int3-b64"


def test_tokens_until_the_damage_threshold_match_the_truth(doc):
    n, threshold = 1.6e8, 0.02
    out = predict_from_document(doc, n, 1e10, threshold=threshold)
    (int4,) = [t for t in out["damage_threshold"]["tokens"] if t["quant"] == "int4-b64"]
    spec = QuantSpec.parse("int4-b64")
    per_token = WORLD.damage(np.array(n), np.array(1.0), spec)
    true = (threshold / per_token) ** (1 / WORLD.damage_beta)
    assert int4["ci"][0] <= true <= int4["ci"][1], (int4, true)
    assert int4["tokens"] == pytest.approx(true, rel=0.5)


def test_a_run_in_progress_is_predicted_at_its_planned_end_and_the_document_and_report_carry_it():
    from kbitlaw.report.html_joint import in_progress_html

    full = simulate()
    biggest, last = SIZES[-1], TOKENS[-1]
    # the largest run has reached 1/4 of its plan; its last two checkpoints are still to come
    df = full.filter(~((pl.col("n_params") == int(biggest)) & (pl.col("tokens_seen") > last / 4)))
    # every checkpoint a finished model of its tokens (each its own run): all are fitted
    fitted = fit_document(df.with_columns(tokens_planned=pl.lit(last), finished=pl.lit(True)))
    (run,) = predict_from_document(fitted, biggest, last)["runs_in_progress"]
    assert run["n_params"] == biggest and run["tokens_seen"] == last / 4 and run["tokens_planned"] == last
    actual = full.filter(
        pl.col("n_params") == int(biggest), pl.col("tokens_seen") == last, pl.col("metric") == "loss"
    )
    for p in run["predictions"]:
        observed = actual.filter(pl.col("quant") == p["quant"])["value"][0]
        sd = 0.001 * observed
        assert p["ci"][0] - 2 * sd <= observed <= p["ci"][1] + 2 * sd, (p, observed)
    entry = fitted["joint_law"][0]
    (in_doc,) = entry["in_progress"]
    assert in_doc == run  # the law stage's own prediction of the run, and predict's, are one
    html = in_progress_html(entry["in_progress"], 0.9)
    assert "Runs in progress: predicted at their planned end" in html and run["checkpoint_id"] in html
    assert in_progress_html([], 0.9) == ""


def test_every_run_finished_means_none_in_progress(doc):
    assert doc["joint_law"][0]["in_progress"] == []
    assert predict_from_document(doc, 1e8, 1e10)["runs_in_progress"] == []


def test_predictions_read_from_the_document_equal_the_fitted_law():
    """The stored model rebuilds the law the law stage fitted: the same predictions to 1e-9."""
    from kbitlaw.law.damage.law import fit_damage
    from kbitlaw.law.joint.fit import fit_joint_laws
    from kbitlaw.law.joint.law import loss_points
    from kbitlaw.law.table import components, drop_unusable, metric_points, normalise

    biggest, last = SIZES[-1], TOKENS[-1]
    df = simulate(3).filter(~((pl.col("n_params") == int(biggest)) & (pl.col("tokens_seen") > last / 4)))
    kept, _ = drop_unusable(normalise(df.with_columns(tokens_planned=pl.lit(last), finished=pl.lit(True))))
    points, _ = metric_points(components(kept))
    damage, _, _ = fit_damage(points, CONFIG.n_boot, CONFIG.seed, CONFIG.level)
    entries, _, laws = fit_joint_laws(points, damage, CONFIG)
    entry = stored(json_safe(entries[0]))
    in_memory = JointModel.of(laws["sim"], loss_points(points, "sim"))
    document = {"joint_law": [entry], "config": {"level": CONFIG.level}}
    for n, d, gb in ((6e8, 1.6e10, 0.7), (1e11, 1e12, 50.0), (2e7, 3e9, 0.01)):
        kw = {"memory_gb": gb, "threshold": 0.05}
        want = predict(in_memory, entry, n, d, level=CONFIG.level, **kw)
        got = predict_from_document(document, n, d, **kw)
        assert_close(got, want)
        assert len(got["predictions"]) == len(SPECS) and got["runs_in_progress"]


def assert_close(got, want, where="") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def test_a_joint_law_that_is_not_ok_gives_no_prediction(doc, capsys):
    from kbitlaw.flows.cli.console import _prediction_summary

    broken = copy.deepcopy(doc)
    broken["joint_law"][0] |= {"status": "failed", "reason": "alpha = 4.4 outside its plausible range"}
    out = predict_from_document(broken, 6e8, 1.6e10, memory_gb=1.0)
    assert out["status"] == "failed" and out["predictions"] == [] and out["budget"] is None
    assert out["reason"] == "failed: alpha = 4.4 outside its plausible range"
    assert "E" not in out["law"]  # none of its numbers
    _prediction_summary(out)
    assert capsys.readouterr().out.splitlines() == [
        "joint law for sim: failed: alpha = 4.4 outside its plausible range; no prediction"
    ]


def test_a_scheme_whose_damage_law_is_not_ok_gives_no_prediction_for_its_specs(doc, capsys):
    from kbitlaw.flows.cli.console import _prediction_summary

    broken = copy.deepcopy(doc)
    (scheme,) = broken["joint_law"][0]["damage"]["schemes"]
    scheme |= {"status": "unidentified", "unidentified": ["gamma"], "reason": ""}
    out = predict_from_document(broken, 6e8, 1.6e10, memory_gb=1.0)
    assert out["status"] == "ok" and [p["quant"] for p in out["predictions"]] == ["fp16"]
    quantized = ["int3-b64", "int4-b64", "int5-b64", "int6-b64", "int8-b64"]
    assert [x["quant"] for x in out["left_out"]] == quantized
    assert {x["reason"] for x in out["left_out"]} == {"not identified: gamma"}
    assert [o["quant"] for o in out["budget"]["options"]] == ["fp16"]
    assert out["damage_threshold"]["tokens"] == []
    _prediction_summary(out)
    text = capsys.readouterr().out
    assert f"no prediction for {', '.join(quantized)} (damage law int<k>-b64: not identified" in text
    assert "int4-b64 " not in text.split("no prediction for")[0]  # not in the table


def test_bad_requests_say_why(doc):
    entry = doc["joint_law"][0]
    two = {**doc, "joint_law": [entry, {**entry, "family": "other"}]}
    with pytest.raises(PredictError, match=r"2 families \(other, sim\); pick one with --family"):
        predict_from_document(two, 1e8, 1e10)
    with pytest.raises(PredictError, match="no family 'nope'"):
        predict_from_document(two, 1e8, 1e10, family="nope")
    assert predict_from_document(two, 1e8, 1e10, family="other")["family"] == "other"
    with pytest.raises(PredictError, match="the stored model cannot be read"):
        predict_from_document({**doc, "joint_law": [{**entry, "model": None}]}, 1e8, 1e10)
    one_size = fit_document(simulate_results([1e8], TOKENS, SPECS, [PPL], world=WORLD))
    out = predict_from_document(one_size, 1e8, 1e10)
    assert out["status"] == "insufficient data" and out["predictions"] == []



@pytest.mark.slow
def test_the_command_prints_one_json_document_or_a_table(tmp_path):
    path = tmp_path / "results.parquet"
    simulate().write_parquet(path)
    args = ["predict", "--results", str(path), "--n-params", "6e8", "--tokens", "1.6e10", "--memory-gb", "1"]
    out = kbitlaw(*args, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) >= {
        "family",
        "status",
        "reason",
        "n_params",
        "tokens",
        "law",
        "predictions",
        "left_out",
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


def test_memory_follows_the_16_bit_parameters_as_sizes_grow(doc):
    # Embeddings stay 16-bit and grow slower than the model: their count is fitted over the sizes
    # (here 5e6 (N/1e8)^0.5), so a budget at 10x the largest size does not assume their share stays.
    from kbitlaw.law.joint.law import sixteen_bit_params

    n = np.array([1e8, 4e8, 1.6e9])
    kept = 5e6 * (n / 1e8) ** 0.5
    bpp = 4.25
    df = pl.DataFrame(
        {"n_params": n, "total_bits": (n - kept) * bpp + kept * 16.0, "bits_per_param": [bpp] * 3}
    )
    share, (slope, intercept) = sixteen_bit_params(df)
    assert slope == pytest.approx(0.5) and np.exp(intercept) * 1e8**0.5 == pytest.approx(5e6)
    law = stored_law(doc)
    law = type(law)(**{**law.__dict__, "unquantized": (slope, intercept), "quantized_share": share})
    big = 1.6e10
    assert float(law.memory_bits(big, "int4-b64")) == pytest.approx(
        (big - 5e6 * 160**0.5) * 4.25 + 5e6 * 160**0.5 * 16
    )
    one_size = df.head(1)
    assert sixteen_bit_params(one_size)[1] is None  # one size: the share


@pytest.mark.slow
def test_the_command_reads_the_stored_fit_and_does_not_refit(tmp_path):
    from kbitlaw.law.io import fit_store
    from kbitlaw.store import Store

    store = Store(str(tmp_path / "store"))
    store.write_parquet("results/sim/fp16/all.parquet", simulate())
    fitted = fit_store(store)  # the law stage
    fit_file = tmp_path / "store" / fitted.key
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "fits").rglob("*")}
    args = ["predict", "--store", store.uri, "--n-params", "6e8", "--tokens", "1.6e10", "--memory-gb", "1"]
    out = kbitlaw(*args, "--json")
    assert out.returncode == 0, out.stderr
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "fits").rglob("*")}
    assert after == before and fit_file in after  # nothing fitted, nothing written
    want = predict_from_document(stored(fitted.doc), 6e8, 1.6e10, memory_gb=1.0)
    assert json.loads(out.stdout) == stored(json_safe(want))
    both = kbitlaw("predict", "--store", store.uri, "--results", "x.csv", "--n-params", "1", "--tokens", "1")
    assert both.returncode == 1 and "use --store or --results, not both" in both.stderr
