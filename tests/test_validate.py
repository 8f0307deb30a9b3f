"""Great Expectations validation: clean data passes; each broken rule fails by name with its row count."""

from __future__ import annotations

import json
import pickle

import polars as pl
import pytest

from kbitlaw.data.validate import (
    ValidationFailed,
    require_valid,
    store_validation,
    stored_validation,
    validate_frame,
)
from kbitlaw.store import Store

N = 20  # rows in each clean frame


def mc(n: int = N) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"mc-{i}" for i in range(n)],
            "context": [f"Question {i}: which one?" for i in range(n)],
            "choices": [["red", "green", "blue", "gold"]] * n,
            "gold": [i % 4 for i in range(n)],
        }
    )


def text(n: int = N) -> pl.DataFrame:
    words = ["key", "coin", "map", "ring", "shell"]
    rows = [f"the box held a {words[i % 5]} and a {words[i // 5 % 5]}" for i in range(n)]
    return pl.DataFrame({"id": [f"t-{i}" for i in range(n)], "text": rows})


def put(df: pl.DataFrame, column: str, rows: dict[int, object]) -> pl.DataFrame:
    """`df` with column values replaced at the given row positions."""
    values = df[column].to_list()
    for i, v in rows.items():
        values[i] = v
    return df.with_columns(pl.Series(column, values, dtype=df.schema[column]))


def failures(df: pl.DataFrame, kind: str, **kwargs) -> dict[str, int]:
    report = validate_frame(df, kind, name="t", sha="0" * 8, **kwargs)
    assert report.success is (not report.failures)
    return dict(report.failures)


@pytest.mark.parametrize("kind", ["multiple_choice", "cloze", "perplexity"])
def test_clean_dataset_passes(kind):
    df = mc() if kind == "multiple_choice" else text()
    report = validate_frame(df, kind, name="clean", sha="abc123", min_rows=N)
    assert report.success and report.failures == ()
    assert report.message() == f"dataset clean: ok, {N} rows"
    assert report.n_rows == N and report.kind == kind and report.sha == "abc123"
    assert report.result["success"] is True
    assert report.result["statistics"]["unsuccessful_expectations"] == 0
    json.dumps(report.result, allow_nan=False)  # strictly JSON-able, as the store writes it
    require_valid(report)  # does not raise


@pytest.mark.parametrize(
    "kind, make, kwargs, expected",
    [
        ("perplexity", lambda: put(text(), "id", {3: "t-0", 7: "t-0"}), {},
         {"expect_column_values_to_be_unique(id)": 3}),
        ("cloze", lambda: put(text(), "id", {5: None}), {},
         {"expect_column_values_to_not_be_null(id)": 1}),
        ("multiple_choice", lambda: put(mc(), "gold", {1: 4, 2: -1, 9: 17}), {},
         {"expect_column_values_to_be_in_set(gold_in_range)": 3}),
        ("multiple_choice", lambda: put(mc(), "gold", {4: None}), {},
         {"expect_column_values_to_not_be_null(gold)": 1}),
        ("multiple_choice", lambda: put(mc(), "choices", {0: ["only"], 8: ["only"]}), {},
         {"expect_column_values_to_be_between(n_choices, 2..16)": 2}),
        ("multiple_choice", lambda: put(mc(), "choices", {3: [f"c{j}" for j in range(6)]}),
         {"max_choices": 5}, {"expect_column_values_to_be_between(n_choices, 2..5)": 1}),
        ("multiple_choice", lambda: put(mc(), "choices", {6: ["red", "", "x", "y"]}), {},
         {"expect_column_values_to_be_between(shortest_choice, min 1)": 1}),
        ("multiple_choice", lambda: put(mc(), "context", {2: "", 11: ""}), {},
         {"expect_column_value_lengths_to_be_between(context, 1..20000)": 2}),
        ("multiple_choice", lambda: put(mc(), "context", {2: "x" * 51}), {"max_chars": 50},
         {"expect_column_value_lengths_to_be_between(context, 1..50)": 1}),
        ("perplexity", lambda: put(text(), "text", {0: "", 1: "y" * 41, 2: "z" * 40}), {"max_chars": 40},
         {"expect_column_value_lengths_to_be_between(text, 1..40)": 2}),
        ("perplexity", lambda: put(text(), "text", {12: None}), {},
         {"expect_column_values_to_not_be_null(text)": 1}),
        ("cloze", lambda: put(text(), "text", {4: "lonely", 5: "  spaced\n"}), {},
         {"expect_column_values_to_be_between(n_words, min 2)": 2}),
        ("cloze", lambda: put(text(), "text", {4: ""}), {},
         {"expect_column_value_lengths_to_be_between(text, 1..20000)": 1,
          "expect_column_values_to_be_between(n_words, min 2)": 1}),
        ("multiple_choice", lambda: mc(40), {"min_rows": 100},
         {"expect_table_row_count_to_be_between(min 100)": 40}),
        ("perplexity", lambda: put(text(), "text", {0: "Capital", 9: "digit 9"}),
         {"extra": [{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "text",
                                                                             "regex": r"^[a-z ]+$"}}]},
         {"expect_column_values_to_match_regex(text)": 2}),
    ],
)  # fmt: skip
def test_each_broken_rule_fails_by_name_with_its_row_count(kind, make, kwargs, expected):
    assert failures(make(), kind, **kwargs) == expected


def test_extra_regex_counts_only_offending_rows():
    df = put(text(), "text", {0: "Capital letters", 9: "digit 9"})
    extra = [
        {
            "type": "expect_column_values_to_match_regex",
            "kwargs": {"column": "text", "regex": r"^[a-z ]+\d*$"},
        }
    ]
    report = validate_frame(df, "perplexity", name="regex", sha="s1", extra=extra)
    assert report.failures == (("expect_column_values_to_match_regex(text)", 1),)
    assert (
        report.message()
        == "dataset regex: validation failed: expect_column_values_to_match_regex(text): 1 row"
    )
    failed = [r for r in report.result["results"] if not r["success"]]
    assert failed[0]["result"]["partial_unexpected_list"] == ["Capital letters"]
    assert failed[0]["result"]["partial_unexpected_ids"] == ["t-0"]  # which row, by id


def test_message_is_one_line_listing_every_failure_and_raises():
    df = put(put(mc(30), "id", {1: "mc-0", 2: "mc-0"}), "gold", {5: 9})
    report = validate_frame(df, "multiple_choice", name="mmlu", sha="s2", min_rows=100)
    assert not report.success
    assert report.message() == (
        "dataset mmlu: validation failed: expect_column_values_to_be_unique(id): 3 rows; "
        "expect_table_row_count_to_be_between(min 100): 30 rows; "
        "expect_column_values_to_be_in_set(gold_in_range): 1 row"
    )
    with pytest.raises(ValidationFailed) as info:
        require_valid(report)
    assert str(info.value) == report.message() and info.value.report is report
    assert isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))  # Prefect persists a failed task's exception
    assert str(again) == report.message() and again.report.failures == report.failures


def test_continuation_column_allows_an_empty_context_but_not_an_empty_continuation():
    df = mc().with_columns(context=pl.lit(""), continuation=pl.lit("is the answer"))
    assert failures(df, "multiple_choice") == {}
    df = put(df, "continuation", {3: ""})
    assert failures(df, "multiple_choice") == {
        "expect_column_value_lengths_to_be_between(continuation, 1..20000)": 1
    }


def test_store_validation_writes_json_and_escaped_html(tmp_path):
    store = Store(str(tmp_path))
    hostile = "<script>alert('x')</script>"
    df = put(text(), "id", {0: hostile, 1: hostile})
    report = validate_frame(df, "perplexity", name="wiki-text", sha="f00d", min_rows=50)
    urls = store_validation(store, report)

    keys = {
        "json": "datasets/validation/wiki-text/f00d.json",
        "html": "datasets/validation/wiki-text/f00d.html",
    }
    assert urls == {kind: store.url(key) for kind, key in keys.items()}
    assert all(store.exists(key) for key in keys.values())
    doc = store.read_json(keys["json"])
    assert doc["name"] == "wiki-text" and doc["sha"] == "f00d" and doc["success"] is False
    assert doc["message"] == report.message()
    assert {f["expectation"]: f["count"] for f in doc["failures"]} == {
        "expect_column_values_to_be_unique(id)": 2,
        "expect_table_row_count_to_be_between(min 50)": N,
    }
    assert len(doc["result"]["results"]) == len(report.result["results"])

    page = store.read_bytes(keys["html"]).decode()
    assert "wiki-text" in page and "f00d" in page and "FAILED" in page
    assert "expect_column_values_to_be_unique(id)" in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page  # the hostile id is shown, escaped


def test_stored_validation_is_reused_only_under_the_same_settings(tmp_path):
    store = Store(str(tmp_path))
    settings = {"kind": "perplexity", "min_rows": 50}
    report = validate_frame(text(), "perplexity", name="prose", sha="ab12", min_rows=50)
    urls = store_validation(store, report, settings)
    again = stored_validation(store, "prose", "ab12", settings)
    assert again is not None and again == (report, urls)
    assert again[0].message() == report.message() and not again[0].success
    assert stored_validation(store, "prose", "ab12", settings | {"min_rows": 5}) is None  # a changed suite
    assert stored_validation(store, "prose", "cd34", settings) is None  # changed data
    store.delete("datasets/validation/prose/ab12.html")
    assert stored_validation(store, "prose", "ab12", settings) is None  # an incomplete pair


def test_passing_report_page_says_passed(tmp_path):
    store = Store(str(tmp_path))
    report = validate_frame(mc(), "multiple_choice", name="arith", sha="beef")
    store_validation(store, report)
    page = store.read_bytes("datasets/validation/arith/beef.html").decode()
    assert "PASSED" in page and "FAILED" not in page
    assert store.read_json("datasets/validation/arith/beef.json")["message"] == "dataset arith: ok, 20 rows"


@pytest.mark.parametrize(
    "extra, needle",
    [
        ([{"type": "expect_column_values_to_be_purple", "kwargs": {"column": "text"}}],
         "expect_column_values_to_be_purple"),
        ([{"type": "not_an_expectation", "kwargs": {}}], "not_an_expectation"),
        ([{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "nope", "regex": "a"}}],
         "'nope'"),
        ([{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "text", "mostly": 5}}],
         "expect_column_values_to_match_regex .* is invalid"),
        ([{"kwargs": {"column": "text"}}], "needs a 'type'"),
    ],
)  # fmt: skip
def test_bad_extra_expectations_raise_value_error_naming_them(extra, needle):
    with pytest.raises(ValueError, match=needle):
        validate_frame(text(), "perplexity", name="t", sha="s", extra=extra)


def test_bad_kind_or_missing_column_is_a_value_error():
    with pytest.raises(ValueError, match="unknown kind 'essay'"):
        validate_frame(text(), "essay", name="t", sha="s")
    with pytest.raises(ValueError, match="missing column.*gold"):
        validate_frame(mc().drop("gold"), "multiple_choice", name="t", sha="s")
