"""Fault injection, results and datasets: rows the laws cannot use, and dataset errors that a
retry cannot fix. Each case gives its exit code and one user-facing line, and nothing torn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kbitlaw.law.sim import simulate_results
from kbitlaw.store import Store
from tests.conftest import kbitlaw, write_specs

SPECS = ["fp16", "int8-b64", "int4-b64", "int3-b64"]


def torn(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".kbitlaw-tmp-" in p.name]


@pytest.fixture(scope="module")
def results() -> pl.DataFrame:
    return simulate_results(list(np.geomspace(2e7, 1.4e9, 4)), [2e9, 2e10], SPECS, seed=8)


def test_all_nan_results_file_is_one_line(results, tmp_path):
    path = tmp_path / "nan.parquet"
    results.with_columns(value=pl.lit(float("nan"))).write_parquet(path)
    out = kbitlaw("fit", "--results", str(path), "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"kbitlaw: error: no usable result rows in {path}: all {results.height} rows have a "
        "NaN/inf/null value, size or bit count, a size or total bits <= 0, or a null key"
    ]


def test_all_nan_results_in_the_store_write_no_fit(results, tmp_path):
    store = Store(str(tmp_path / "store"))
    store.write_parquet("results/sim/all.parquet", results.with_columns(value=pl.lit(None, pl.Float64)))
    out = kbitlaw("fit", "--store", store.uri, "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"kbitlaw: error: no usable result rows in {store.uri}/results: all {results.height} rows "
        "have a NaN/inf/null value, size or bit count, a size or total bits <= 0, or a null key"
    ]
    assert store.list("fits") == [] and torn(tmp_path) == []


def test_zero_size_rows_are_dropped_without_a_warning(results, tmp_path):
    first = results["checkpoint_id"].min()
    zero = pl.when(pl.col("checkpoint_id") == first)
    bad = results.with_columns(n_params=zero.then(0.0).otherwise(pl.col("n_params")))
    path = tmp_path / "zero.parquet"
    bad.write_parquet(path)
    out = kbitlaw("fit", "--results", str(path), "--json")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no numpy divide-by-zero (or any other) warning leaks
    doc = json.loads(out.stdout)
    n_bad = results.filter(pl.col("checkpoint_id") == first).height
    assert doc["n_rows"] == results.height and doc["dropped_rows"] == n_bad > 0
    assert doc["families"] == ["sim"]  # the other checkpoints were fitted


def _task_runs(flow_run_id) -> dict[str, int]:
    """task run name -> how many times it ran, for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.run_count for r in runs}


def test_dataset_that_cannot_pass_is_not_retried(tmp_path, prefect_api):
    from kbitlaw.flows.datasets import clean_datasets_flow

    specs = write_specs(tmp_path / "specs", n=8)
    too_few = {
        "name": "few",
        "kind": "cloze",
        "source": "builtin:cloze",
        "params": {"n": 8},
        "min_rows": 1000,
    }
    (specs / "few.yaml").write_text(json.dumps(too_few))  # cleans, then fails validation
    gone = {"name": "gone", "kind": "cloze", "source": str(tmp_path / "missing.jsonl")}
    (specs / "gone.yaml").write_text(json.dumps(gone))  # DatasetError: no such file
    store = tmp_path / "store"
    state = clean_datasets_flow(store=str(store), dataset_specs=str(specs), return_state=True)
    states = state.result(raise_on_failure=False)
    runs = _task_runs(state.state_details.flow_run_id)
    assert runs == {f"clean {n}": 1 for n in ("cloze", "few", "gone", "logic", "text")}  # each ran once
    assert state.is_failed() and state.message == "2/5 states failed."
    failed = sorted(s.message for s in states if s.is_failed())
    assert len(failed) == 2 and all("\n" not in m for m in failed)
    assert f"{tmp_path / 'missing.jsonl'}: no such file" in failed[0]
    assert "few" in failed[1] and "Retries" not in " ".join(failed)
    assert sum(s.is_completed() for s in states) == 3  # the good datasets were cleaned
    clean = Store(str(store)).list("datasets/clean")
    assert {k.split("/")[2] for k in clean} == {"cloze", "few", "logic", "text"}  # few: cleaned, invalid
    assert torn(store) == []
