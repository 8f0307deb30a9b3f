"""Validating clean datasets with Great Expectations (GX Core 1.x), and storing the reports.

One suite per kind, run on the whole clean frame through an ephemeral GX context:
    all kinds        id not null and unique; row count >= min_rows
    multiple_choice  context not null, 1..max_chars characters (0.. when a `continuation` column
                     carries the scored text, winogrande-style; then continuation 1..max_chars);
                     n_choices not null (the choices list exists) and in 2..max_choices;
                     shortest_choice >= 1 and longest_choice <= max_chars characters;
                     gold not null; gold_in_range is True
    cloze            text not null, 1..max_chars characters; n_words >= 2 (a context and a target)
    perplexity       text not null, 1..max_chars characters
plus the spec's `expectations: [{type: expect_..., kwargs: {...}}]`.

GX 1.x has no polars datasource, and per-row checks across columns ("gold < number of choices")
are not single-column expectations. So the per-row facts are derived in polars first, as helper
columns (n_choices, shortest_choice, longest_choice, gold_in_range, n_words), and only the columns
the suite reads are converted to pandas: list columns never cross over, which keeps 1M rows fast.
Failures name the expectation and its column, and count the offending rows (GX `unexpected_count`;
for the row-count expectation, the rows observed). GX is imported lazily: it takes seconds.
"""

from __future__ import annotations

import html
import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kbitlaw.store import validation_keys
from kbitlaw.vocab import DATASET_COLUMNS, KINDS

VALIDATOR_VERSION = 1  # bump when a suite changes: stored validation results are then re-run
EXAMPLES = 5  # unexpected values (and their ids) kept per failed expectation
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}
_GX_LOCK = threading.Lock()


@dataclass(frozen=True)
class ValidationReport:
    name: str  # dataset name
    kind: str
    sha: str  # content sha of the clean data
    success: bool
    n_rows: int
    failures: tuple[tuple[str, int], ...]  # (expectation with its column, offending rows)
    result: dict = field(repr=False, compare=False)  # the GX suite result, JSON-able

    def message(self) -> str:
        """One line: 'dataset x: ok, 300 rows' or 'dataset x: validation failed: <exp>: 3 rows; ...'."""
        if self.success:
            return f"dataset {self.name}: ok, {_rows(self.n_rows)}"
        parts = "; ".join(f"{desc}: {_rows(count)}" for desc, count in self.failures)
        return f"dataset {self.name}: validation failed: {parts or 'unknown failure'}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "sha": self.sha,
            "success": self.success,
            "n_rows": self.n_rows,
            "failures": [{"expectation": d, "count": c} for d, c in self.failures],
            "message": self.message(),
            "result": self.result,
        }

    @classmethod
    def from_dict(cls, doc: dict) -> ValidationReport:
        failures = tuple((f["expectation"], int(f["count"])) for f in doc["failures"])
        return cls(
            doc["name"],
            doc["kind"],
            doc["sha"],
            bool(doc["success"]),
            int(doc["n_rows"]),
            failures,
            doc["result"],
        )


class ValidationFailed(ValueError):
    """A dataset failed validation; `.report` holds the details, str() is the one-line message."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.message())
        self.report = report

    def __reduce__(self):  # pickles with its report (Prefect stores exceptions in failed states)
        return (type(self), (self.report,))


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


# -- the suite ---------------------------------------------------------------------------------


def _derive(df: pl.DataFrame, kind: str) -> pl.DataFrame:
    """Add the per-row helper columns the suite expects (polars, vectorised)."""
    if kind == "multiple_choice":
        chars = pl.col("choices").list.eval(pl.element().str.len_chars())
        n_choices = pl.col("choices").list.len()
        return df.with_columns(
            n_choices.alias("n_choices"),
            chars.list.min().alias("shortest_choice"),
            chars.list.max().alias("longest_choice"),
            # null when gold or choices is null: those rows are counted by their not-null expectations
            ((pl.col("gold") >= 0) & (pl.col("gold") < n_choices)).alias("gold_in_range"),
        )
    if kind == "cloze":
        return df.with_columns(pl.col("text").str.count_matches(r"\S+").alias("n_words"))
    return df


def _suite_spec(
    kind: str, columns: list[str], *, min_rows: int, max_chars: int, max_choices: int
) -> list[tuple[str, dict]]:
    """The kind's expectations as (snake_case type, kwargs), in report order."""
    spec: list[tuple[str, dict]] = [
        ("expect_column_values_to_not_be_null", {"column": "id"}),
        ("expect_column_values_to_be_unique", {"column": "id"}),
        ("expect_table_row_count_to_be_between", {"min_value": min_rows}),
    ]
    between, lengths = "expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"
    not_null = "expect_column_values_to_not_be_null"
    if kind == "multiple_choice":
        continuation = "continuation" in columns  # then the context may be empty (cleaning allows it)
        spec += [
            (not_null, {"column": "context"}),
            (lengths, {"column": "context", "min_value": 0 if continuation else 1, "max_value": max_chars}),
            (not_null, {"column": "n_choices"}),
            (between, {"column": "n_choices", "min_value": 2, "max_value": max_choices}),
            (between, {"column": "shortest_choice", "min_value": 1}),
            (between, {"column": "longest_choice", "max_value": max_chars}),
            (not_null, {"column": "gold"}),
            ("expect_column_values_to_be_in_set", {"column": "gold_in_range", "value_set": [True]}),
        ]
        if continuation:
            spec += [
                (not_null, {"column": "continuation"}),
                (lengths, {"column": "continuation", "min_value": 1, "max_value": max_chars}),
            ]
    else:
        spec += [
            (not_null, {"column": "text"}),
            (lengths, {"column": "text", "min_value": 1, "max_value": max_chars}),
        ]
        if kind == "cloze":
            spec.append((between, {"column": "n_words", "min_value": 2}))
    return spec


def _expectation(gx: Any, type_: str, kwargs: dict) -> Any:
    """gx.expectations.<CamelCase>(**kwargs) from a snake_case type; ValueError if unknown or bad."""
    from great_expectations.expectations.expectation import Expectation

    camel = "".join(part.capitalize() for part in str(type_).split("_"))
    cls = getattr(gx.expectations, camel, None)
    if not str(type_).startswith("expect_") or not (isinstance(cls, type) and issubclass(cls, Expectation)):
        raise ValueError(f"unknown expectation type {type_!r} (GX has no gx.expectations.{camel})")
    try:
        return cls(**kwargs)
    except Exception as exc:  # pydantic's ValidationError: name the expectation, keep it on one line
        detail = " ".join(str(exc).split())
        raise ValueError(f"expectation {type_} with kwargs {kwargs!r} is invalid: {detail}") from exc


def _check_extra(extra: list[dict], columns: list[str]) -> list[tuple[str, dict]]:
    out = []
    for item in extra:
        if not isinstance(item, dict) or "type" not in item:
            raise ValueError(f"extra expectation {item!r} needs a 'type' (and 'kwargs')")
        kwargs = dict(item.get("kwargs") or {})
        for key in ("column", "column_A", "column_B"):
            if key in kwargs and kwargs[key] not in columns:
                raise ValueError(
                    f"expectation {item['type']} names column {kwargs[key]!r}, "
                    f"which the data does not have (columns: {', '.join(columns)})"
                )
        out.append((item["type"], kwargs))
    return out


def _describe(config: dict) -> str:
    """'expect_column_values_to_be_unique(id)', 'expect_table_row_count_to_be_between(min 100)'."""
    kwargs = config.get("kwargs", {})
    args = [str(kwargs[k]) for k in ("column", "column_A", "column_B") if k in kwargs]
    if "column_list" in kwargs:
        args.append(",".join(map(str, kwargs["column_list"])))
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is not None and hi is not None:
        args.append(f"{_num(lo)}..{_num(hi)}")
    elif lo is not None:
        args.append(f"min {_num(lo)}")
    elif hi is not None:
        args.append(f"max {_num(hi)}")
    return f"{config.get('type', '?')}({', '.join(args)})"


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _offending(one: dict, n_rows: int) -> int:
    """Rows behind a failed expectation: unexpected_count, else the observed count, else all rows."""
    res = one.get("result") or {}
    if isinstance(res.get("unexpected_count"), int):
        return res["unexpected_count"]
    if isinstance(res.get("observed_value"), int) and not isinstance(res["observed_value"], bool):
        return res["observed_value"]  # the row-count expectation: the rows there are
    return n_rows


def _error(info: dict) -> str:
    """The exception message GX caught while computing an expectation, on one line ('' if none)."""
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = [i.get("exception_message") for i in infos if i.get("raised_exception")]
    return " ".join(str(messages[0]).split()) if messages else ""


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, tuples -> lists: the store writes strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def validate_frame(
    df: pl.DataFrame,
    kind: str,
    *,
    name: str,
    sha: str,
    min_rows: int = 1,
    max_chars: int = 20_000,
    max_choices: int = 16,
    extra: list[dict] | None = None,
) -> ValidationReport:
    """Run the kind's suite (and `extra`) on a clean frame; never raises for bad data, only bad specs."""
    if kind not in KINDS:
        raise ValueError(f"dataset {name}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    missing = [c for c in DATASET_COLUMNS[kind] if c not in df.columns]
    if missing:
        raise ValueError(f"dataset {name}: missing column(s) {', '.join(missing)} for kind {kind}")
    derived = _derive(df, kind)
    spec = _suite_spec(kind, derived.columns, min_rows=min_rows, max_chars=max_chars, max_choices=max_choices)
    spec += _check_extra(extra or [], derived.columns)
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # read when the context is created; no network
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    expectations = [_expectation(gx, type_, kwargs) for type_, kwargs in spec]  # bad spec: fail early
    # Only scalar columns the suite reads cross to pandas (list columns are slow and unneeded).
    wanted = {kw[k] for _, kw in spec for k in ("column", "column_A", "column_B") if k in kw}
    wanted |= {c for _, kw in spec for c in kw.get("column_list", ())}
    pdf = derived.select([c for c in derived.columns if c in wanted]).to_pandas()
    # GX keeps a process-wide "current context" that suites resolve through, so validations in
    # threads (Prefect's thread runner) take turns. A fresh ephemeral context costs milliseconds.
    with _GX_LOCK:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        suite = gx.ExpectationSuite(name=f"kbitlaw-{kind}", expectations=expectations)
        batch = (
            context.data_sources.add_pandas(name="kbitlaw")
            .add_dataframe_asset(name=name)
            .add_batch_definition_whole_dataframe("whole")
            .get_batch(batch_parameters={"dataframe": pdf})
        )
        result = _json_safe(batch.validate(suite, result_format=RESULT_FORMAT).to_json_dict())

    failures = []
    for one in result.get("results", []):
        res = one.get("result") or {}
        # GX reports row positions; the ids say which rows to look at (gathered here, not by GX's
        # unexpected_index_column_names, which is slow when many rows fail).
        idx = [i for i in res.get("partial_unexpected_index_list") or [] if isinstance(i, int)]
        if idx and "id" in df.columns:
            res["partial_unexpected_ids"] = _json_safe(df["id"].gather(idx[:EXAMPLES]).to_list())
        if one.get("success"):
            continue
        desc = _describe(one.get("expectation_config") or {})
        error = _error(one.get("exception_info") or {})
        if error:
            desc += f" [error: {error}]"
        failures.append((desc, _offending(one, df.height)))
    return ValidationReport(
        name=name,
        kind=kind,
        sha=sha,
        success=bool(result.get("success")),
        n_rows=df.height,
        failures=tuple(failures),
        result=result,
    )


def require_valid(report: ValidationReport) -> None:
    if not report.success:
        raise ValidationFailed(report)


# -- storing: JSON for machines, one self-contained HTML page for people -------------------------


def store_validation(store: Any, report: ValidationReport, settings: dict | None = None) -> dict[str, str]:
    """Write the report as JSON and HTML (the JSON last: it marks a complete pair) with the suite
    `settings` it was run with; return {"json": url, "html": url}."""
    keys = validation_keys(report.name, report.sha)
    store.write_bytes(keys["html"], render_html(report).encode("utf-8"))
    store.write_json(keys["json"], report.to_dict() | {"settings": settings})
    return {kind: store.url(key) for kind, key in keys.items()}


def stored_validation(
    store: Any, name: str, sha: str, settings: dict
) -> tuple[ValidationReport, dict] | None:
    """The stored report of this clean data under exactly these suite settings, or None: a dataset
    that did not change is not validated again (GX costs seconds per dataset)."""
    keys = validation_keys(name, sha)
    if not store.exists(keys["json"]):
        return None
    doc = store.read_json(keys["json"])
    if doc.get("settings") != json.loads(json.dumps(settings)) or not store.exists(keys["html"]):
        return None
    return ValidationReport.from_dict(doc), {kind: store.url(key) for kind, key in keys.items()}


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
.badge{display:inline-block;padding:.2em .7em;border-radius:1em;color:#fff;font-weight:bold}
.ok{background:#2e7d32}.fail{background:#c62828}
table{border-collapse:collapse;margin-top:1em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
tr.failed{background:#fdecea}code{font-size:90%}
"""


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)  # strings quoted: an empty one stays visible
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_html(report: ValidationReport) -> str:
    """A page built from the GX result (GX Data Docs would need a file context and a site)."""
    e = html.escape
    rows = []
    for one in report.result.get("results", []):
        res = one.get("result") or {}
        ok = bool(one.get("success"))
        if "unexpected_count" in res:
            count = f"{res['unexpected_count']} of {res.get('element_count', report.n_rows)}"
        elif "observed_value" in res:
            count = f"observed {_short(res['observed_value'])}"
        else:
            count = "error" if not ok else ""
        examples = ", ".join(_short(v) for v in (res.get("partial_unexpected_list") or [])[:EXAMPLES])
        examples = examples or _error(one.get("exception_info") or {})
        ids = ", ".join(_short(v) for v in res.get("partial_unexpected_ids") or [])
        rows.append(
            f'<tr class="{"passed" if ok else "failed"}"><td><code>'
            f"{e(_describe(one.get('expectation_config') or {}))}</code></td>"
            f"<td>{'pass' if ok else 'FAIL'}</td><td>{e(count)}</td>"
            f"<td>{e(examples)}</td><td>{e(ids)}</td></tr>"
        )
    stats = report.result.get("statistics") or {}
    badge = (
        '<span class="badge ok">PASSED</span>' if report.success else '<span class="badge fail">FAILED</span>'
    )
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>Validation: {e(report.name)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>Dataset {e(report.name)} {badge}</h1>\n"
        f"<p>kind {e(report.kind)} · sha <code>{e(report.sha)}</code> · {report.n_rows} rows · "
        f"{e(str(stats.get('successful_expectations', '?')))} of "
        f"{e(str(stats.get('evaluated_expectations', '?')))} expectations met</p>\n"
        f"<p>{e(report.message())}</p>\n"
        "<table><tr><th>expectation</th><th>result</th><th>unexpected rows</th>"
        "<th>example values</th><th>example ids</th></tr>\n" + "\n".join(rows) + "\n</table>\n"
        "<p>Validated with Great Expectations (GX Core); the full result is in the JSON beside this page.</p>"
        "\n</body></html>\n"
    )
