"""`kbitlaw evaluate`: one checkpoint, one dataset file, several quant specs, loaded once."""

from __future__ import annotations

import json

import polars as pl
import pytest

import kbitlaw.eval.run as flow
from kbitlaw.eval.results import RESULT_SCHEMA
from tests.conftest import kbitlaw, make_checkpoint
from tests.test_evaluate import cloze_rows, mc_rows

pytestmark = pytest.mark.slow  # subprocess commands


@pytest.fixture
def mc_file(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mc_rows(20, 3)))
    return path


def test_json_results_have_the_schema_columns(trained_checkpoint, mc_file):
    out = kbitlaw(
        "evaluate",
        str(trained_checkpoint),
        "--data",
        str(mc_file),
        "--quant",
        "fp16,int4-b64",
        "--limit",
        "12",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["results"]
    assert [(r["quant"], r["metric"]) for r in rows] == [
        ("fp16", "acc"),
        ("fp16", "acc_norm"),
        ("int4-b64", "acc"),
        ("int4-b64", "acc_norm"),
    ]
    for r in rows:
        assert list(r) == list(RESULT_SCHEMA)
        assert r["n_examples"] == 12 and r["kind"] == "multiple_choice" and r["dataset"] == "mc"
    assert rows[2]["bits_per_param"] == 4.25 and rows[2]["total_bits"] < rows[0]["total_bits"]


def test_csv_and_parquet_files(trained_checkpoint, tmp_path):
    rows = mc_rows(8, 4)
    csv = tmp_path / "mc.csv"
    pl.DataFrame(rows).with_columns(
        pl.col("choices").map_elements(lambda c: json.dumps(c.to_list()), return_dtype=pl.String)
    ).write_csv(csv)
    parquet = tmp_path / "cl.parquet"
    pl.DataFrame(cloze_rows(8, 4)).write_parquet(parquet)
    a = kbitlaw("evaluate", str(trained_checkpoint), "--data", str(csv), "--json")
    b = kbitlaw("evaluate", str(trained_checkpoint), "--data", str(parquet), "--kind", "cloze", "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["results"][0]["n_examples"] == 8
    assert {r["metric"] for r in json.loads(b.stdout)["results"]} == {"acc", "perplexity"}


def test_several_specs_load_the_checkpoint_once(trained_checkpoint, monkeypatch):
    calls = []
    real = flow.load_model
    monkeypatch.setattr(flow, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    rows = flow.evaluate_specs(
        str(trained_checkpoint), pl.DataFrame(mc_rows(10, 5)), "multiple_choice", "fp16,int8-b64,nf4-b64,int3"
    )
    assert len(calls) == 1
    assert len(rows) == 8
    by_spec = {r["quant"]: r["value"] for r in rows if r["metric"] == "acc"}
    assert set(by_spec) == {"fp16", "int8-b64", "nf4-b64", "int3"}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no-tokenizer", "no tokenizer files"),
        ("bad-gold", "row id=1: gold 9 out of range for 4 choices"),
        ("bad-spec", "k must be 2..8, got 9"),
        ("missing-file", "no such dataset file"),
    ],
)
def test_bad_input_gives_one_error_line(case, expected, trained_checkpoint, tmp_path):
    ckpt, rows = trained_checkpoint, mc_rows(4, 6)
    quant = "int9" if case == "bad-spec" else "fp16"
    if case == "no-tokenizer":
        ckpt = make_checkpoint(tmp_path / "notok", tokenizer=False)
    if case == "bad-gold":
        rows[1]["gold"] = 9
    data = tmp_path / ("absent.jsonl" if case == "missing-file" else "d.jsonl")
    if case != "missing-file":
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = kbitlaw("evaluate", str(ckpt), "--data", str(data), "--quant", quant, "--json")
    assert out.returncode == 1 and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if line.startswith("kbitlaw: error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr
