"""How the flows say what went wrong (flows/problems.py): only transient errors are retried; a run
with problems ends Failed in one line, with no engine traceback, its summary readable back; a
failed report section fails the run and `kbitlaw report`; `kbitlaw fit --check`; the run form's
parameter schema (what the Prefect UI draws)."""

from __future__ import annotations

import json
import logging
import sys
import time
import types

import pytest
from prefect import flow, task

from kbitlaw.flows import refit
from kbitlaw.flows.problems import (
    SUMMARY_ATTR,
    PlannedFailureFilter,
    failed_run,
    retry_transient,
    run_summary,
    transient,
)
from kbitlaw.store import StoreError

pytestmark = pytest.mark.slow  # Prefect flow runs


def wrapped(cause: BaseException) -> StoreError:
    try:
        raise StoreError("s3://b/p: read 'k' failed") from cause
    except StoreError as exc:
        return exc


class EndpointConnectionError(Exception):
    """Named like botocore's: recognised by name, no import of botocore needed."""


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'"), False),
        (ValueError("bad spec"), False),
        (KeyError("x"), False),
        (FileNotFoundError("no such file"), False),
        (PermissionError("denied"), False),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), True),
        (wrapped(ConnectionRefusedError("refused")), True),
        (wrapped(EndpointConnectionError("could not connect")), True),
        (wrapped(FileNotFoundError("gone")), False),
        (wrapped(ValueError("bad")), False),
        (StoreError("s3://b: An error occurred (SlowDown) when calling PutObject"), True),
        (StoreError("s3://b: no bucket 'b' at this endpoint"), False),
    ],
)
def test_only_transient_errors_are_retried(exc, expected):
    from prefect.states import Failed

    assert transient(exc) is expected
    assert retry_transient(None, None, Failed(data=exc)) is expected
    assert retry_transient(None, None, Failed(message="returned, no exception")) is False


def test_every_task_with_retries_retries_only_transient_errors():
    from kbitlaw.flows.fit import fit_task
    from kbitlaw.flows.nightly import discover_checkpoints

    for t in (fit_task, refit.report_task, discover_checkpoints):
        assert t.retries > 0 and t.retry_condition_fn is retry_transient, t.name


def test_planned_failure_round_trip_and_log_filter():
    summary = {"checkpoints": 3, "problems": ["a", "b\nc"]}
    state = failed_run(summary, summary["problems"])
    assert state.is_failed() and state.message == "2 problem(s): a; b c"
    assert run_summary(state) == summary
    keep = PlannedFailureFilter()
    planned = logging.LogRecord("prefect.flow_runs", 40, "", 0, "engine", (), (None, state.data, None))
    bug = logging.LogRecord("prefect.flow_runs", 40, "", 0, "engine", (), (None, TypeError("x"), None))
    assert not keep.filter(planned) and keep.filter(bug)  # a real crash keeps its traceback


# -- in a Prefect run ------------------------------------------------------------------------------


def logs_of(flow_run_id, timeout: float = 120) -> list:
    """The run's log lines (sent in batches: wait for the flow's "Finished in state" line)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                sort=LogSort.TIMESTAMP_ASC,
            )
            if (
                any(log.message.startswith("Finished in state") for log in logs)
                or time.monotonic() > deadline
            ):
                return logs
            time.sleep(0.5)


def run_like_a_worker(flow_obj, parameters: dict):
    """Run a flow as a worker's flow-run process does (prefect.engine's __main__: run_flow with the
    run's logger as error_logger, which logs any exception the run ends with); returns the final
    state read back from the API and the run's logs."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import flow_run_logger, run_flow

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(flow_obj, parameters=parameters)
    try:
        run_flow(flow_obj, flow_run=flow_run, parameters=parameters, error_logger=flow_run_logger(flow_run))
    except Exception:  # the engine re-raises a Failed run's exception to the process, as in a worker
        pass
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    return state, logs_of(flow_run.id)


calls: list[str] = []


@task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
def flaky(kind: str) -> str:
    calls.append(kind)
    if kind == "bug":
        raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")
    if len(calls) == 1:
        raise ConnectionResetError("connection reset by peer")
    return "ok"


@flow(persist_result=True)
def planned_failure() -> dict:
    summary = {"checkpoints": 2, "problems": ["unusable checkpoint: x/step-1: truncated"]}
    return failed_run(summary, summary["problems"])


@flow
def run_flaky(kind: str) -> bool:
    return flaky(kind, return_state=True).is_completed()


def test_in_a_run_a_bug_runs_once_and_a_hiccup_is_retried(prefect_api):
    calls.clear()
    assert run_flaky("bug") is False and calls == ["bug"]  # deterministic: one traceback, no retry
    calls.clear()
    assert run_flaky("hiccup") is True and calls == ["hiccup", "hiccup"]


def test_a_run_with_problems_ends_failed_in_one_line_without_a_traceback(prefect_api):
    state, logs = run_like_a_worker(planned_failure, {})
    assert state.is_failed() and state.message == "1 problem(s): unusable checkpoint: x/step-1: truncated"
    text = "\n".join(log.message for log in logs)
    assert "Traceback" not in text and "Engine execution" not in text, text
    assert run_summary(state)["checkpoints"] == 2  # read back from the API's persisted result
    assert getattr(state.result(raise_on_failure=False), SUMMARY_ATTR)["checkpoints"] == 2


# -- a report section that failed ------------------------------------------------------------------


def fake_build(monkeypatch, build_report) -> None:
    """kbitlaw.report.build with only build_report, ours (the tasks import it when they run)."""
    module = types.ModuleType("kbitlaw.report.build")
    module.build_report = build_report
    monkeypatch.setitem(sys.modules, "kbitlaw.report.build", module)


def test_a_failed_report_section_fails_the_run_with_its_line(prefect_api, monkeypatch, tmp_path):
    from kbitlaw.store import Store

    line = "figures: TypeError: unsupported operand type(s) for *: 'NoneType' and 'float'"

    @task
    def fake_fit(store_uri: str, keys: list[str]) -> dict:
        return {"key": "fits/x/fit.json", "refitted": True, "doc": {}, "seconds": 0.0}

    def fake_report(store, fit_key, **kwargs) -> dict:
        summary = {"recommendation": {"status": "ok", "quant": "nf4-b64", "bits": 4}}
        return {"key": "reports/x/index.html", "url": "u", "summary": summary, "cached": False} | {
            "section_errors": [line]
        }

    monkeypatch.setattr(refit, "fit_task", fake_fit)
    fake_build(monkeypatch, fake_report)
    monkeypatch.setattr(refit, "headline_line", lambda summary: "recommended precision: nf4-b64")

    @flow
    def step() -> dict:
        return refit.fit_and_report(Store(str(tmp_path / "store")), ["results/a/b/c.parquet"], {})

    out = step()
    assert out["failures"] == [f"report section {line}"]
    assert out["report"]["headline"] == "recommended precision: nf4-b64"  # the report is still there


def test_report_command_fails_on_a_failed_section(monkeypatch, tmp_path, capsys):
    from kbitlaw.flows.cli.console import report_command
    from kbitlaw.store import LATEST_FIT, Store

    store = Store(str(tmp_path / "store"))
    store.write_json(LATEST_FIT, {"fit": "fits/x/fit.json"})
    errors = ["claims: KeyError: 'verdict'"]
    fake_build(
        monkeypatch,
        lambda store, key: {
            "key": "k",
            "url": "file:///r/index.html",
            "cached": False,
            "section_errors": errors,
        },
    )
    assert report_command(store.uri) == 1
    out, err = capsys.readouterr()
    assert out == "file:///r/index.html\n"  # the report is written: its location, as always
    assert "kbitlaw: error: report section claims: KeyError: 'verdict'" in err.splitlines()


# -- kbitlaw fit --check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "code"), [([], 0), (["damage demo int<k> power: status ok but C = nan"], 1)]
)
def test_fit_check(monkeypatch, tmp_path, capsys, broken, code):
    from kbitlaw.flows.cli.console import fit_command
    from kbitlaw.law import document_gates, io

    doc = {"results_sha": "ab" * 32, "n_rows": 1, "dropped_rows": 0, "recommendation": {"status": "failed"}}
    monkeypatch.setattr(
        io, "fit_store", lambda store: io.StoredFit(doc, refitted=True, key="fits/x/fit.json")
    )
    monkeypatch.setattr(
        document_gates, "check_document", lambda d: broken if d is doc else ["wrong document"]
    )
    assert fit_command(str(tmp_path), None, False, check=True) == code
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (broken[0] if broken else "every ok entry passes its gates")
    assert fit_command(str(tmp_path), None, True, check=True) == code  # --json: the lines on stderr
    captured = capsys.readouterr()
    assert (
        json.loads(captured.out) == doc and (broken or ["every ok entry passes its gates"])[0] in captured.err
    )


# -- the run form ----------------------------------------------------------------------------------


def test_the_run_forms_draw_one_field_per_parameter():
    """The Prefect UI renders each parameter's description as markdown (`<store>` became an empty
    HTML tag) and offers a type toggle for a union (`Literal[...] | str` showed 'str | str')."""
    from prefect.utilities.callables import parameter_schema

    from kbitlaw.flows.datasets import clean_datasets_flow
    from kbitlaw.flows.fit import fit_flow
    from kbitlaw.flows.nightly import evaluate_checkpoint, nightly

    for f in (nightly, evaluate_checkpoint, fit_flow, clean_datasets_flow):
        props = parameter_schema(f.fn).model_dump()["properties"]
        for name, prop in props.items():
            assert "anyOf" not in prop and prop.get("type") in ("string", "integer"), (f.name, name, prop)
            assert "<" not in prop.get("description", "") and ">" not in prop.get("description", ""), (
                f.name,
                name,
            )
    grid = parameter_schema(nightly.fn).model_dump()["properties"]["grid"]
    assert grid["type"] == "string" and grid["default"] == "default"
    assert "checkpoints/ folder of the store" in parameter_schema(nightly.fn).model_dump()["properties"][
        "checkpoints"
    ]["description"].replace("\n", " ").replace("  ", " ")
