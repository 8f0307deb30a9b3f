"""Per-example scores: the samples every metric averages, stored beside each result."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kbitlaw.checkpoint_loading import load_model, load_tokenizer
from kbitlaw.checkpoints import discover
from kbitlaw.data.prepare import select_dataset_specs
from kbitlaw.data.specs import clean_dataset
from kbitlaw.eval import sweep
from kbitlaw.eval.engine import evaluate_model, prepare, ratio_stderr
from kbitlaw.eval.results import SAMPLE_SCHEMAS
from kbitlaw.eval.run import LoadedCheckpoint, evaluate_specs
from kbitlaw.eval.scoring import Scorer
from kbitlaw.store import Store, samples_key
from tests.conftest import make_family, write_specs
from tests.test_evaluate import WINDOW, cloze_rows, mc_rows, ppl_rows

KINDS = {
    "multiple_choice": mc_rows(40, 3, long_context=True),
    "cloze": cloze_rows(40, 4),
    "perplexity": ppl_rows(5),
}


@pytest.fixture(scope="module")
def toy(trained_checkpoint):
    return load_model(str(trained_checkpoint)), load_tokenizer(str(trained_checkpoint))


def direct_loss_stderr(loss: np.ndarray, tokens: np.ndarray) -> float:
    """The delta-method stderr of sum(loss) / sum(tokens), written out with numpy."""
    n, ratio = len(loss), loss.sum() / tokens.sum()
    return float(np.std(loss - ratio * tokens, ddof=1) / (np.sqrt(n) * tokens.mean()))


def check_means(kind: str, samples: pl.DataFrame, rows: list[dict]) -> None:
    """The aggregate metrics are exactly the samples' means (and the loss its ratio estimate)."""
    by = {r["metric"]: r for r in rows}
    assert all(r["n_examples"] == samples.height for r in rows)
    if kind == "multiple_choice":
        assert by["acc"]["value"] == pytest.approx(samples["correct"].mean(), rel=1e-12)
        assert by["acc_norm"]["value"] == pytest.approx(samples["correct_norm"].mean(), rel=1e-12)
        acc = samples["correct"].cast(pl.Float64).to_numpy()
        assert by["acc"]["stderr"] == pytest.approx(acc.std(ddof=1) / math.sqrt(len(acc)), rel=1e-9)
    elif kind == "cloze":
        assert by["acc"]["value"] == pytest.approx(samples["correct"].mean(), rel=1e-12)
        assert by["perplexity"]["value"] == pytest.approx(
            math.exp(-samples["loglikelihood"].mean()), rel=1e-12
        )
    else:
        loss, tokens = samples["loss"].to_numpy(), samples["n_tokens"].to_numpy().astype(float)
        assert by["loss"]["value"] == pytest.approx(loss.sum() / tokens.sum(), rel=1e-12)
        assert by["bits_per_byte"]["value"] == pytest.approx(
            loss.sum() / samples["n_bytes"].sum() / math.log(2), rel=1e-12
        )
        assert by["word_perplexity"]["value"] == pytest.approx(
            math.exp(loss.sum() / samples["n_words"].sum()), rel=1e-12
        )
        assert by["loss"]["stderr"] > 0
        assert by["loss"]["stderr"] == pytest.approx(direct_loss_stderr(loss, tokens), rel=1e-9)
        assert by["word_perplexity"]["stderr"] is None


@pytest.mark.parametrize("kind", list(KINDS))
def test_samples_are_what_the_metrics_average(toy, kind):
    model, tokenizer = toy
    df = pl.DataFrame(KINDS[kind])
    rows, samples = evaluate_model(model, tokenizer, df, kind, samples=True)
    assert dict(samples.schema) == SAMPLE_SCHEMAS[kind]
    assert samples["id"].to_list() == df["id"].to_list()  # one row per dataset row, in order
    check_means(kind, samples, rows)
    plain = evaluate_model(model, tokenizer, df, kind)  # the default still returns just the rows
    assert [(r["metric"], r["value"], r["stderr"]) for r in plain] == [
        (r["metric"], r["value"], r["stderr"]) for r in rows
    ]


def test_multiple_choice_samples_hold_every_choice(toy):
    model, tokenizer = toy
    df = pl.DataFrame(KINDS["multiple_choice"])
    _, samples = evaluate_model(model, tokenizer, df, "multiple_choice", samples=True)
    prepared = prepare(df, "multiple_choice", tokenizer, WINDOW)
    scores = Scorer(model).score(prepared.requests)
    per_doc: dict[int, list] = {}
    for owner, s in zip(prepared.owners, scores, strict=True):
        per_doc.setdefault(owner, []).extend(s)
    assert samples["loglikelihood"].list.len().to_list() == [len(c) for c in df["choices"]]
    assert samples["gold"].to_list() == df["gold"].to_list()
    for i, lls in enumerate(samples["loglikelihood"].to_list()):
        assert lls == pytest.approx([s.loglikelihood for s in per_doc[i]], rel=1e-5, abs=1e-6)
        assert samples["correct"][i] == (int(np.argmax(lls)) == samples["gold"][i])


def test_ratio_stderr_edge_cases():
    assert ratio_stderr([3.0], [2.0]) is None  # one document: no spread to estimate
    assert ratio_stderr([2.0, 4.0], [1.0, 2.0]) == 0.0  # every document has the same per-token loss
    loss, tokens = np.array([5.0, 1.0, 7.0, 2.5]), np.array([3.0, 2.0, 4.0, 1.0])
    assert ratio_stderr(list(loss), list(tokens)) == pytest.approx(
        direct_loss_stderr(loss, tokens), rel=1e-12
    )


def test_evaluate_specs_samples_pair_up_on_id(trained_checkpoint, toy):
    from kbitlaw.checkpoints import resolve

    loaded = LoadedCheckpoint(resolve(str(trained_checkpoint)), *toy)
    df = pl.DataFrame(KINDS["multiple_choice"])
    rows, samples = evaluate_specs(loaded, df, "multiple_choice", "fp16,int3-b64", dataset="mc", samples=True)
    assert samples.columns[:3] == ["checkpoint_id", "quant", "dataset"]
    a, b = (samples.filter(pl.col("quant") == q) for q in ("fp16", "int3-b64"))
    assert a["id"].to_list() == b["id"].to_list() == df["id"].to_list()
    assert a["loglikelihood"].to_list() != b["loglikelihood"].to_list()  # quantization moved the scores
    for quant, part in (("fp16", a), ("int3-b64", b)):
        check_means("multiple_choice", part, [r for r in rows if r["quant"] == quant])


def test_sweep_writes_samples_beside_results(store_uri, tmp_path):
    make_family(tmp_path / "ckpts", sizes=(("h32", 32, 1),), steps=(10,))
    (ckpt,), errors = discover(str(tmp_path / "ckpts"))
    assert not errors
    store = Store(store_uri)
    refs = []
    for spec in select_dataset_specs(None, str(write_specs(tmp_path / "specs"))):
        cleaned = clean_dataset(store, spec)
        refs.append(sweep.DatasetRef(spec.name, spec.kind, cleaned.key, cleaned.sha, spec.delimiter))
    specs, written, write = ["fp16", "int4-b64"], [], store.write_parquet
    store.write_parquet = lambda key, df: (written.append(key), write(key, df))[1]
    for spec in specs:
        out = sweep.evaluate_checkpoint_spec(store, ckpt, spec, refs, device="cpu")
        assert sorted(out["computed"]) == sorted(r.name for r in refs)
    assert len(store.list("samples")) == len(store.list("results")) == len(specs) * len(refs)
    for key in written:  # each samples file is written before its result
        if key.startswith("results/"):
            assert written.index("samples/" + key.removeprefix("results/")) < written.index(key)
    for ds in refs:
        frames = {}
        for spec in specs:
            key = sweep.samples_key(ckpt.fingerprint, spec, ds)
            assert key == samples_key(ckpt.fingerprint, spec, sweep.eval_key(ds))
            assert key.startswith(f"samples/{ckpt.fingerprint}/{spec}/") and key.endswith(".parquet")
            assert Path(key).name == Path(sweep.result_key(ckpt.fingerprint, spec, ds)).name
            frames[spec] = store.read_parquet(key)
            assert dict(frames[spec].schema) == SAMPLE_SCHEMAS[ds.kind]
            result = store.read_parquet(sweep.result_key(ckpt.fingerprint, spec, ds))
            check_means(ds.kind, frames[spec], result.to_dicts())
        clean_ids = store.read_parquet(ds.key)["id"].to_list()
        assert frames["fp16"]["id"].to_list() == frames["int4-b64"]["id"].to_list() == clean_ids
    # Incremental as before: nothing is recomputed, nothing rewritten.
    again = sweep.evaluate_checkpoint_spec(store, ckpt, "fp16", refs, device="cpu")
    assert again["computed"] == [] and len(store.list("samples")) == len(specs) * len(refs)
    # The fit reads them back, labelled by the result beside each, and pairs the two specs on them.
    from kbitlaw.law.io import read_result_frames, read_results_store
    from kbitlaw.law.numerics.paired import paired_samples, read_samples_store

    back = read_samples_store(store, read_result_frames(store))
    assert back.height == sum(
        store.read_parquet(sweep.samples_key(ckpt.fingerprint, s, ds)).height for s in specs for ds in refs
    )
    assert set(back["quant"]) == set(specs) and set(back["checkpoint_id"]) == {ckpt.id}
    results = read_results_store(store)
    acc = results.filter(pl.col("metric") == "acc").group_by("quant").agg(pl.col("value").mean())
    by_quant = dict(acc.iter_rows())
    diff, se, n = paired_samples(back, [ckpt.id], "int4-b64", "fp16", "mean_acc")
    assert n == 1 and se >= 0  # 0 when the int4 model answers every example as fp16 does
    assert diff == pytest.approx(by_quant["int4-b64"] - by_quant["fp16"], abs=1e-9)
    assert read_samples_store(store, {"results/none/fp16/x.parquet": results.head(1)}) is None
