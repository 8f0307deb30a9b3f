"""`tokens_planned`, a training run's planned length: from a checkpoint's kbitlaw.json through the
results rows into the law points, without changing old fingerprints or old results shas."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import polars as pl
import pytest

from kbitlaw.checkpoint_files import CheckpointError, check_sidecar
from kbitlaw.checkpoints import IDENTITY_FIELDS, discover, fingerprint_of, resolve
from kbitlaw.demo import train
from kbitlaw.eval.results import RESULT_SCHEMA, results_frame
from kbitlaw.eval.run import evaluate_specs
from kbitlaw.law.table import RESULT_COLUMNS, components, metric_points, normalise, results_sha
from kbitlaw.store import Store
from tests.conftest import make_checkpoint

META = {"family": "tiny", "size": "h32", "step": 100, "tokens_seen": 6400}
PLANNED = 64_000

# Computed before tokens_planned existed (same files, same sidecar): these must never change, or
# every stored result would be re-evaluated and every fit document's sha would move.
FILES = [("config.json", 512, "etag-a"), ("model.safetensors", 4096, "etag-b")]
OLD_SIDECAR = {"family": "f", "size": "s", "step": 10, "tokens_seen": 6400, "recipe": "x"}
OLD_FINGERPRINT = "28499658fbb6fe0a8090b797c2332fdcc07b24e43d5908b7685874d3eca07966"
OLD_FILES_ONLY_FINGERPRINT = "27e40b69cbcc56bea904eaf4618e63a3a81a5e3647735de531357a73a6a64ea7"
OLD_RESULTS_SHA = "84d42b5e62a1cd301aae714dd5a2ec10b0f58d84b0113dcd62696dc1f22e6a35"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A tiny checkpoint whose sidecar gives its run's planned length."""
    return make_checkpoint(
        tmp_path_factory.mktemp("planned") / "c", seed=2, sidecar={**META, "tokens_planned": PLANNED}
    )


# -- the sidecar -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 1.5, "64000", True, [1]])
def test_a_bad_tokens_planned_is_one_line_naming_the_field(value):
    with pytest.raises(CheckpointError) as err:
        check_sidecar({**META, "tokens_planned": value}, "ckpt/kbitlaw.json")
    assert str(err.value) == (
        f"ckpt/kbitlaw.json: field 'tokens_planned' must be a whole number >= 0, got {value!r}"
    )


@pytest.mark.parametrize("value", [None, 0, PLANNED, 64000.0])
def test_a_good_or_absent_tokens_planned_passes(value):
    check_sidecar({**META, "tokens_planned": value}, "ckpt/kbitlaw.json")


def test_discover_fails_a_bad_plan_alone_with_one_line(planned, tmp_path):
    good = shutil.copytree(planned, tmp_path / "tree" / "good")
    bad = shutil.copytree(planned, tmp_path / "tree" / "bad")
    (bad / "kbitlaw.json").write_text(json.dumps({**META, "step": 200, "tokens_planned": -5}))
    found, errors = discover(str(tmp_path / "tree"))
    assert [c.uri for c in found] == [str(good)]
    assert [str(e) for e in errors] == [
        f"{bad}/kbitlaw.json: field 'tokens_planned' must be a whole number >= 0, got -5"
    ]


def test_checkpoint_reads_tokens_planned(planned, tmp_path):
    ckpt = resolve(str(planned))
    assert ckpt.tokens_planned == PLANNED and isinstance(ckpt.tokens_planned, int)
    as_float = shutil.copytree(planned, tmp_path / "float")
    (as_float / "kbitlaw.json").write_text(json.dumps({**META, "tokens_planned": float(PLANNED)}))
    assert resolve(str(as_float)).tokens_planned == PLANNED
    without = shutil.copytree(planned, tmp_path / "without")
    (without / "kbitlaw.json").write_text(json.dumps(META))
    assert resolve(str(without)).tokens_planned is None
    assert resolve(str(make_checkpoint(tmp_path / "no-sidecar", seed=2))).tokens_planned is None


# -- the fingerprint --------------------------------------------------------------------------------


def test_an_old_sidecar_fingerprints_exactly_as_before():
    assert IDENTITY_FIELDS == ("family", "size", "step", "tokens_seen")
    assert fingerprint_of(FILES, OLD_SIDECAR) == OLD_FINGERPRINT
    assert fingerprint_of(FILES, {}) == OLD_FILES_ONLY_FINGERPRINT
    # A plan is not identity: adding one leaves the fingerprint (and the cached results) alone.
    assert fingerprint_of(FILES, {**OLD_SIDECAR, "tokens_planned": 1}) == OLD_FINGERPRINT


def test_adding_a_plan_to_a_checkpoint_keeps_its_fingerprint(planned, tmp_path):
    copy = shutil.copytree(planned, tmp_path / "c")
    (copy / "kbitlaw.json").write_text(json.dumps(META))
    before = resolve(str(copy)).fingerprint
    (copy / "kbitlaw.json").write_text(json.dumps({**META, "tokens_planned": PLANNED}))
    assert resolve(str(copy)).fingerprint == before == resolve(str(planned)).fingerprint


# -- the results rows -------------------------------------------------------------------------------


def test_evaluate_writes_the_tokens_planned_column(planned, tmp_path):
    df = pl.DataFrame({"id": ["0", "1"], "text": ["the cat sat on the mat", "a dog was big"]})
    rows = evaluate_specs(str(planned), df, "cloze", "fp16", dataset="toy")
    assert rows and all(list(r) == list(RESULT_SCHEMA) for r in rows)
    assert {r["tokens_planned"] for r in rows} == {PLANNED}
    frame = results_frame(rows)
    assert frame.schema["tokens_planned"] == pl.Int64
    without = shutil.copytree(planned, tmp_path / "without")
    (without / "kbitlaw.json").write_text(json.dumps(META))
    old_rows = evaluate_specs(str(without), df, "cloze", "fp16", dataset="toy")
    assert results_frame(old_rows)["tokens_planned"].is_null().all()


# -- the law table ----------------------------------------------------------------------------------


def old_results() -> pl.DataFrame:
    """Results as they were written before tokens_planned existed (no such column)."""
    return pl.DataFrame(
        {
            "checkpoint_id": ["a", "b"],
            "family": ["f", "f"],
            "n_params": [10, 20],
            "tokens_seen": [100, 200],
            "step": [1, 2],
            "quant": ["int4", "fp16"],
            "bits": [4, 16],
            "total_bits": [40.0, 320.0],
            "dataset": ["d", "d"],
            "kind": ["perplexity", "perplexity"],
            "metric": ["loss", "loss"],
            "value": [1.0, 0.5],
        }
    )


def test_results_sha_without_plans_is_unchanged():
    old = old_results()
    assert "tokens_planned" not in RESULT_COLUMNS
    assert results_sha(normalise(old)) == OLD_RESULTS_SHA
    no_plans = old.with_columns(tokens_planned=pl.lit(None, dtype=pl.Int64))  # the new schema, no plan
    assert results_sha(normalise(no_plans)) == OLD_RESULTS_SHA
    with_plan = old.with_columns(tokens_planned=pl.Series([None, 400], dtype=pl.Int64))
    assert results_sha(normalise(with_plan)) != OLD_RESULTS_SHA
    # Parquet's Int64 and a CSV's text hash alike after normalise()
    as_text = with_plan.with_columns(pl.col("tokens_planned").cast(pl.String))
    assert results_sha(normalise(as_text)) == results_sha(normalise(with_plan))


def test_normalise_makes_tokens_planned_an_optional_float():
    assert normalise(old_results())["tokens_planned"].dtype == pl.Float64
    assert normalise(old_results())["tokens_planned"].is_null().all()
    given = normalise(old_results().with_columns(tokens_planned=pl.lit(400, dtype=pl.Int64)))
    assert given["tokens_planned"].dtype == pl.Float64 and given["tokens_planned"].to_list() == [400.0] * 2


def point_results(plans: list[int | None] | None) -> pl.DataFrame:
    """One checkpoint at one spec: two accuracy datasets and one perplexity dataset."""
    df = pl.DataFrame(
        {
            "checkpoint_id": ["c"] * 3,
            "family": ["f"] * 3,
            "n_params": [1000] * 3,
            "tokens_seen": [500] * 3,
            "quant": ["fp16"] * 3,
            "bits": [16] * 3,
            "total_bits": [16000.0] * 3,
            "dataset": ["x", "y", "z"],
            "kind": ["cloze", "multiple_choice", "perplexity"],
            "metric": ["acc", "acc", "loss"],
            "value": [0.5, 0.7, 2.0],
        }
    )
    return df if plans is None else df.with_columns(tokens_planned=pl.Series(plans, dtype=pl.Int64))


def test_metric_points_carry_tokens_planned():
    # Dataset y's row has no plan (a result cached before the sidecar gave one): acc:y still gets
    # its checkpoint's plan; another checkpoint without a plan gets none.
    other = point_results(None).with_columns(checkpoint_id=pl.lit("d"), tokens_seen=pl.lit(900))
    df = pl.concat([point_results([2000, None, 2000]), other], how="diagonal_relaxed")
    points, incomplete = metric_points(components(normalise(df)))
    assert incomplete == 0
    mine = points.filter(pl.col("checkpoint_id") == "c")
    assert sorted(mine["metric"].to_list()) == ["acc:x", "acc:y", "loss", "mean_acc"]
    assert mine["tokens_planned"].to_list() == [2000.0] * 4
    assert points.filter(pl.col("checkpoint_id") == "d")["tokens_planned"].is_null().all()
    old, _ = metric_points(components(normalise(point_results(None))))
    assert old["tokens_planned"].dtype == pl.Float64 and old["tokens_planned"].is_null().all()


# -- the demo trainer -------------------------------------------------------------------------------


def test_the_demo_trainer_writes_the_planned_length(tmp_path):
    store = Store(str(tmp_path / "store"))
    one = (train.Size("t8", 8, 1, lr=0.03, heads=2),)
    config = train.TrainConfig(
        budget_tokens=8 * 64 * 8, seq_len=64, batch_size=8, corpus_docs=3000, save_fracs=(0.5, 1.0)
    )
    train.build_family(store, "mini", sizes=one, config=config, workers=1)
    found, errors = discover(store.url("checkpoints/mini"))
    assert errors == [] and sorted(c.step for c in found) == [4, 8]
    for ckpt in found:
        assert ckpt.sidecar["tokens_planned"] == ckpt.tokens_planned == 8 * 8 * 64
        assert ckpt.tokens_seen == ckpt.step * 8 * 64
    # The plan is the budget rounded to whole batches, not the budget asked for.
    assert replace(config, budget_tokens=8 * 64 * 8 + 100).planned_tokens == 8 * 8 * 64
