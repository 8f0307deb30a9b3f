"""Results in, fits out: results_sha, incremental fits in a store, and `kbitlaw fit`."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import kbitlaw.law.io as law_io
from kbitlaw.flows.cli.console import fit_command
from kbitlaw.hashing import sha256_bytes
from kbitlaw.law.document import FitConfig, fit_laws
from kbitlaw.law.io import LATEST, default_chance, fit_store, read_results_file
from kbitlaw.law.sim import simulate_results
from kbitlaw.law.table import ResultsError, normalise, results_sha
from kbitlaw.store import Store

STABLE_KEYS = {"results_sha", "recommendation", "threshold", "power_law", "damage", "extrapolation"}
SPECS = ["fp16", "int8-b64", "int4-b64", "int3-b64"]
SIZES = list(np.geomspace(2e7, 1.4e9, 4))


@pytest.fixture(scope="module")
def results() -> pl.DataFrame:
    return simulate_results(SIZES, [2e9, 2e10], SPECS, seed=8)


def put_results(store: Store, df: pl.DataFrame) -> None:
    """One object per (checkpoint, spec), as evaluation writes them."""
    for (ckpt, quant), part in df.group_by(["checkpoint_id", "quant"]):
        fp = ckpt.replace("/", "_")
        store.write_parquet(
            f"results/{fp}/{quant}/{sha256_bytes(f'{ckpt}|{quant}'.encode())[:16]}.parquet", part
        )


# -- results_sha ------------------------------------------------------------------------------------


def test_results_sha_ignores_row_and_column_order_and_volatile_columns(results):
    sha = results_sha(normalise(results))
    shuffled = results.sample(fraction=1.0, shuffle=True, seed=1).select(reversed(results.columns))
    assert results_sha(normalise(shuffled)) == sha
    rerun = results.with_columns(
        seconds=pl.col("seconds") * 3, created_at=pl.lit("2030-01-01"), device=pl.lit("x")
    )
    assert results_sha(normalise(rerun)) == sha


def test_results_sha_changes_when_a_value_changes(results):
    changed = (
        results.with_row_index("i")
        .with_columns(value=pl.when(pl.col("i") == 17).then(pl.col("value") + 1e-9).otherwise("value"))
        .drop("i")
    )
    assert results_sha(normalise(changed)) != results_sha(normalise(results))
    assert results_sha(normalise(results.head(results.height - 1))) != results_sha(normalise(results))


# -- incremental fits in the store ------------------------------------------------------------------


def test_second_fit_of_unchanged_results_reads_the_stored_fit(tmp_path, results, monkeypatch):
    store = Store(str(tmp_path))
    put_results(store, results)
    config = FitConfig(n_boot=20)
    calls = []
    real = law_io.fit_laws
    monkeypatch.setattr(law_io, "fit_laws", lambda *a, **k: calls.append(k.get("previous")) or real(*a, **k))

    first = fit_store(store, config)
    sha = results_sha(normalise(results))
    assert first.refitted and first.doc["results_sha"] == sha and len(calls) == 1 and calls[0] is None
    assert store.exists(f"fits/{sha}/fit.json") and store.exists(f"fits/{sha}/fit.parquet")
    assert store.read_json(LATEST)["results_sha"] == sha
    assert store.read_parquet(f"fits/{sha}/fit.parquet").height > 0

    second = fit_store(store, config)
    assert not second.refitted and len(calls) == 1
    assert second.doc == first.doc

    # a new checkpoint's results: a refit, warm-started from the previous fit
    newer = simulate_results(SIZES, [6e10], SPECS, seed=9).with_columns(
        checkpoint_id=pl.col("checkpoint_id").str.replace("step-1000", "step-3000"), step=pl.lit(3000)
    )
    put_results(store, newer)
    third = fit_store(store, config)
    assert third.refitted and len(calls) == 2 and calls[1]["results_sha"] == sha
    assert third.doc["results_sha"] != sha and third.doc["warm_started"] > 0
    assert store.read_json(LATEST)["results_sha"] == third.doc["results_sha"]

    # back to the first results (the new checkpoint's files removed): the stored fit, re-pointed
    for key in store.list("results"):
        if "step-3000" in key:
            store.delete(key)
    fourth = fit_store(store, config)
    assert not fourth.refitted and len(calls) == 2 and fourth.doc == first.doc
    assert store.read_json(LATEST)["results_sha"] == sha


def test_a_stored_fit_with_other_settings_is_not_reused(tmp_path, results):
    store = Store(str(tmp_path))
    put_results(store, results)
    assert fit_store(store, FitConfig(n_boot=10)).refitted
    again = fit_store(store, FitConfig(n_boot=12))
    assert again.refitted and again.doc["config"]["n_boot"] == 12


# -- the command ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_fit_command_with_a_results_file_prints_one_json_document(tmp_path, results, capsys, suffix):
    path = tmp_path / f"results.{suffix}"
    getattr(results, f"write_{suffix}")(path)
    assert fit_command(None, str(path), as_json=True) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # the whole of stdout is one document
    assert STABLE_KEYS <= set(doc)
    assert doc["results_sha"] == results_sha(normalise(results))
    assert doc["recommendation"]["quant"] in SPECS and isinstance(doc["recommendation"]["bits"], int)
    for e in doc["threshold"]:
        assert {"quant", "metric", "s_star_bits", "ci", "width", "status"} <= set(e)
    for e in doc["power_law"]:
        assert {"quant", "metric", "E", "A", "alpha", "ci", "status"} <= set(e)
    for e in doc["damage"]:
        assert {"form", "C", "alpha", "beta", "gamma", "ci", "heldout_error", "status"} <= set(e)
    for e in doc["extrapolation"]:
        assert {"law", "quant", "metric", "predicted", "observed", "error", "flagged"} <= set(e)


def test_fit_command_with_a_store_writes_the_fit_and_prints_a_summary(tmp_path, results, capsys):
    store = Store(str(tmp_path))
    put_results(store, results)
    assert fit_command(str(tmp_path), None, as_json=False) == 0
    out = capsys.readouterr().out
    sha = results_sha(normalise(results))
    assert sha[:12] in out and "recommended precision" in out
    assert store.exists(f"fits/{sha}/fit.json")
    assert fit_command(str(tmp_path), None, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["results_sha"] == sha


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ("missing", "no such file"),
        ("checkpoint_id,family\na,b\n", "missing column 'n_params'"),
        ("not,a\n\x00\x01parquet", "cannot read as parquet"),
    ],
)
def test_fit_command_with_a_bad_file_gives_one_error_line(tmp_path, capsys, content, cause):
    suffix = "parquet" if "parquet" in cause else "csv"
    path = tmp_path / f"bad.{suffix}"
    if content != "missing":
        path.write_bytes(content.encode())
    assert fit_command(None, str(path), as_json=True) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and cause in lines[0]


def test_non_numeric_value_column_is_named(tmp_path, results):
    path = tmp_path / "r.csv"
    results.with_columns(value=pl.lit("high")).write_csv(path)
    with pytest.raises(ResultsError, match="column 'value' is not numeric"):
        read_results_file(path)


def test_empty_store_is_an_error(tmp_path, capsys):
    assert fit_command(str(tmp_path), None, as_json=True) == 1
    assert "no results" in capsys.readouterr().err


def test_fit_from_file_and_store_agree(tmp_path, results):
    store = Store(str(tmp_path / "s"))
    put_results(store, results)
    config = FitConfig(n_boot=15)
    assert fit_store(store, config).doc == fit_laws(results, config).doc


def test_default_chance_from_kinds_and_stored_datasets(tmp_path, results):
    store = Store(str(tmp_path))
    # hellaswag's clean file has 4 and 2 choices: chance (1/4 + 1/2) / 2; piqa's file is absent
    clean = pl.DataFrame(
        {
            "id": ["a", "b"],
            "context": ["c", "d"],
            "choices": [["w", "x", "y", "z"], ["u", "v"]],
            "gold": [0, 1],
        }
    )
    store.write_parquet("datasets/clean/hellaswag/sha-hellaswag.parquet", clean)
    chance = default_chance(normalise(results), store)
    assert chance == {"lambada": 0.0, "hellaswag": pytest.approx(0.375)}
    assert default_chance(normalise(results)) == {"lambada": 0.0}


def test_kbitlaw_fit_subprocess_stdout_is_only_the_json_document(tmp_path, results):
    import subprocess
    import sys

    path = tmp_path / "results.parquet"
    results.write_parquet(path)
    run = [sys.executable, "-m", "kbitlaw", "fit", "--json", "--results"]
    ok = subprocess.run([*run, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert STABLE_KEYS <= set(json.loads(ok.stdout))
    bad = subprocess.run([*run, str(tmp_path / "nope.csv")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "nope.csv: no such file" in bad.stderr
