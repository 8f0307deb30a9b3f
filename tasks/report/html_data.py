"""The report's reference tables: every checkpoint's metrics (the fit table's "checkpoint" rows),
the dataset versions the fitted results used, and the provenance of the fit and the report."""

from __future__ import annotations

from typing import Any

import polars as pl

from kbitlaw.report.html import MAX_TABLE_ROWS, esc, fmt, link, table
from kbitlaw.report.inputs import PREDATES_POINTS
from kbitlaw.vocab import ACC_OF, LOSS, MEAN_ACC


def metrics_html(points: pl.DataFrame, predates: bool = False) -> str:
    """Per checkpoint and spec: size, tokens, bits and every metric (mean_acc, loss, acc:<dataset>).
    `predates`: the fit's table has no "checkpoint" rows (written before they were added)."""
    if predates:
        return f"<p>No metrics: {esc(PREDATES_POINTS)}.</p>"
    if points.height == 0:
        return "<p>The fit holds no points for this family.</p>"
    keys = ["checkpoint_id", "quant"]
    # One row per (checkpoint, spec): its attributes agree across metrics up to rounding (a mean
    # over different rows), which must not split the row.
    attrs = points.group_by(keys).agg(
        pl.col(c).drop_nulls().first()
        for c in ("n_params", "tokens_seen", "bits", "bits_per_param", "total_bits")
    )
    wide = points.pivot(on="metric", index=keys, values="value", aggregate_function="mean").join(
        attrs, on=keys, how="left", nulls_equal=True
    )
    wide = wide.sort(["n_params", "tokens_seen", "bits", "quant"], descending=[False, False, True, False])
    metrics = [m for m in (MEAN_ACC, LOSS) if m in wide.columns] + sorted(
        c for c in wide.columns if c.startswith(ACC_OF)
    )
    shown = wide.head(MAX_TABLE_ROWS)
    rows = [
        [
            esc(r["checkpoint_id"]),
            esc(r["quant"]),
            fmt(r["n_params"]),
            fmt(r["tokens_seen"]),
            fmt(r["bits"], "g"),
            fmt(r["bits_per_param"], ".4g"),
            fmt(r["total_bits"]),
        ]
        + [fmt(r[m], ".4g") for m in metrics]
        for r in shown.iter_rows(named=True)
    ]
    headers = ["checkpoint", "spec", "params", "tokens", "k", "bits/param", "total bits", *metrics]
    more = (
        f"<p class='small'>Showing {MAX_TABLE_ROWS} of {wide.height} rows; all are in the fit's "
        "table (fit.parquet).</p>"
        if wide.height > MAX_TABLE_ROWS
        else ""
    )
    return (
        f"<details><summary>{wide.height} (checkpoint, spec) rows</summary>{more}<div class='scroll'>"
        + table(headers, rows, set(range(2, len(headers))))
        + "</div></details>"
    )


def datasets_html(datasets: list[dict]) -> str:
    if not datasets:
        return "<p>No dataset versions: the fit document names none (a fit from before it did: refit).</p>"
    rows = []
    for d in datasets:
        s = d.get("summary") or {}
        v = d.get("validation") or {}
        reasons = ", ".join(f"{esc(k)}: {esc(n)}" for k, n in sorted((s.get("reasons") or {}).items())) or "-"
        rows.append(
            [
                esc(d.get("name")),
                f"<code>{esc(str(d.get('sha') or s.get('sha') or '')[:12])}</code>",
                esc(s.get("kind") or d.get("kind")),
                fmt(s.get("rows_in")),
                fmt(s.get("rows_out")),
                fmt(s.get("quarantined")),
                reasons,
                esc(d.get("status", "-")),
                link(v.get("html"), "data docs") + " · " + link(v.get("json"), "json"),
            ]
        )
    headers = [
        "dataset",
        "sha",
        "kind",
        "rows in",
        "rows clean",
        "quarantined",
        "reasons",
        "validation",
        "pages",
    ]
    return table(headers, rows, {3, 4, 5})


class RawHtml(str):
    """A provenance value that is already HTML (a link made here): not escaped again. Any other
    value, whatever it looks like, is text from the data and is escaped."""


def provenance_html(prov: list[tuple[str, Any]], results_keys: list[str]) -> str:
    rows = [[esc(k), v if isinstance(v, RawHtml) else esc(v)] for k, v in prov]
    keys = "".join(f"<li><code>{esc(k)}</code></li>" for k in results_keys[:MAX_TABLE_ROWS])
    return table(["item", "value"], rows) + (
        f"<details><summary>{len(results_keys)} results keys</summary><ul class='small'>{keys}</ul></details>"
        if results_keys
        else ""
    )
