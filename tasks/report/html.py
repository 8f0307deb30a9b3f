"""The report page: one self-contained HTML file (inline CSS, figures as base64 PNG, no script and
no network). Every string from the data is escaped; sections appear in the order a reader asks:
what to deploy, why (the scaling plot and the claims), the laws, where the family is heading (the
joint law's forecast and its running check), then the tables."""

from __future__ import annotations

import base64
import html
import math
from pathlib import PurePosixPath
from typing import Any

import polars as pl

from kbitlaw.report.figures import Figure
from kbitlaw.status import NO_DATA

MAX_TABLE_ROWS = 3000  # the metrics table; beyond this the results in the store are the reference

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d232b;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 26px; margin: 8px 0 2px; } h2 { font-size: 21px; margin: 36px 0 8px;
  border-bottom: 2px solid #dde1e6; padding-bottom: 4px; } h3 { font-size: 17px; margin: 22px 0 6px; }
.meta { color: #5b6573; font-size: 13px; }
.headline { background: #fff; border: 1px solid #d5dbe2; border-left: 6px solid #1f77b4; border-radius: 6px;
            padding: 14px 20px; margin: 14px 0; }
.headline.none { border-left-color: #999; }
.deploy { font-size: 24px; font-weight: 650; margin: 2px 0 6px; }
.pbest td { padding: 2px 8px; text-align: center; } .pbest td.win { font-weight: 650; background: #e6f4ea; }
.headline ul { margin: 6px 0; padding-left: 20px; }
nav a { margin-right: 14px; font-size: 14px; }
figure { background: #fff; border: 1px solid #d5dbe2; border-radius: 6px; margin: 14px 0; padding: 10px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 14px; color: #37404c; margin-top: 6px; }
.note { padding: 18px; color: #5b6573; font-style: italic; }
table { border-collapse: collapse; background: #fff; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #d5dbe2; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 600; padding: 1px 8px; border-radius: 10px; white-space: nowrap; font-size: 12px; }
.v-supported { background: #d8f0dc; color: #145a22; } .v-contradicted { background: #f8d7d7; color: #8a1616; }
.v-inconclusive { background: #fff0c2; color: #6b5200; } .v-other { background: #e6e8eb; color: #4a525c; }
.small { font-size: 12px; color: #5b6573; } details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
table.claims { width: 100%; } table.claims td:nth-child(2) { width: 24%; }
table.claims td:nth-child(4) { width: 42%; } table.claims td:nth-child(5) { width: 22%; }
.scroll { max-height: 560px; overflow: auto; }
code { font-size: 12px; background: #eef1f4; padding: 1px 4px; border-radius: 3px; }
"""

SECTIONS = (
    ("scaling", "Scaling"),
    ("claims", "Known claims"),
    ("types", "Data types & blocks"),
    ("laws", "Laws"),
    ("heading", "Where this family is heading"),
    ("metrics", "Metrics"),
    ("datasets", "Datasets"),
    ("provenance", "Provenance"),
)


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number for a table cell: '-' for missing or non-finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def href(url: str) -> str:
    """A link target: local absolute paths become file:// URIs; other URLs are kept."""
    if url.startswith("/"):
        return PurePosixPath(url).as_uri()
    return url


def link(url: str | None, text: str | None = None) -> str:
    if not url:
        return "-"
    return f'<a href="{esc(href(url))}">{esc(text or url)}</a>'


def table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None, cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML, `numeric` columns are right-aligned."""
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure(f: Figure) -> str:
    if f.png is None:
        return (
            f'<figure id="fig-{esc(f.id)}"><div class="note">{esc(f.title)}: {esc(f.note)}</div>'
            f"<figcaption>{esc(f.caption)}</figcaption></figure>"
        )
    data = base64.b64encode(f.png).decode()
    return (
        f'<figure id="fig-{esc(f.id)}"><img alt="{esc(f.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)}</figcaption></figure>"
    )


def verdict_badge(verdict: str) -> str:
    cls = verdict if verdict in ("supported", "contradicted", "inconclusive") else "other"
    return f'<span class="verdict v-{cls}">{esc(verdict)}</span>'


# -- sections ----------------------------------------------------------------------------------


def headline_html(s: dict) -> str:
    rec = s["recommendation"]
    if rec.get("status") != "ok":
        deploy = f'<div class="deploy">Recommended precision: {NO_DATA}</div>'
        why = f"<p>{esc(rec.get('reason'))}</p>"
        cls = "headline none"
    else:
        deploy = (
            f'<div class="deploy">Deploy at {esc(rec["bits"])}-bit: <code>{esc(rec["quant"])}</code></div>'
        )
        why = f"<p>{esc(rec['confidence'])}</p>" + p_best_html(rec)
        cls = "headline"
    items = [f"<li>{esc(line)}</li>" for line in s["headline_lines"]]
    changes = s.get("changes") or {}
    change_lines = changes.get("lines") or []
    since = changes.get("previous_results_sha")
    change_html = (
        "<p><b>Since the previous report</b>"
        + (f" (<code>{esc(since[:12])}</code>)" if since else "")
        + ":</p><ul>"
        + "".join(f"<li>{esc(c)}</li>" for c in change_lines)
        + "</ul>"
        if since or change_lines
        else "<p><b>Since the previous report:</b> this is the first report in this store.</p>"
    )
    return f'<section class="{cls}">{deploy}{why}<ul>{"".join(items)}</ul>{change_html}</section>'


def p_best_html(rec: dict) -> str:
    """P(best) per bit width, as a small table (empty when the noise was unknown)."""
    p_best = rec.get("p_best") or {}
    if not p_best:
        return ""
    cells = "".join(
        ("<td class='win'>" if w == str(rec["bits"]) else "<td>") + f"{esc(w)}-bit<br>{p:.2f}</td>"
        for w, p in sorted(p_best.items(), key=lambda kv: int(kv[0]))
    )
    verdict = (
        "clear" if rec.get("clear") else "contenders: " + ", ".join(f"{w}-bit" for w in rec["contenders"])
    )
    return f"<table class='pbest'><tr><th>P(best)</th>{cells}</tr></table><p class='small'>{esc(verdict)}</p>"


def claims_html(claims: list[dict], family: str) -> str:
    rows = [
        [
            esc(c["id"]),
            f"<b>{esc(c['claim'])}</b><br><span class='small'>{esc(c['paper'])}</span>",
            verdict_badge(c["verdict"]),
            "<br>".join(esc(n) for n in c["numbers"]),
            f"<span class='small'>{esc(c['test'])}</span>",
        ]
        for c in claims
    ]
    return (
        f"<p>The checkable claims of the k-bit papers, tested on family <code>{esc(family)}</code>. "
        "Differences are advantages of the first spec named (accuracy in percentage points, loss in "
        "nats, positive = better) with their standard error; beyond 2 SE counts as real.</p>"
        + table(["id", "Claim", "Verdict", "Numbers behind it", "Test"], rows, cls="claims")
    )


def threshold_table(entries: list[dict]) -> str:
    rows = [
        [
            esc(e["quant"]),
            esc(e["metric"]),
            fmt(e.get("s_star_bits")),
            "-" if None in (e.get("ci") or [None]) else f"{fmt(e['ci'][0])} – {fmt(e['ci'][1])}",
            fmt(e.get("s_star_bits") and e["s_star_bits"] / 8e9),
            esc(e.get("n_sizes")),
            esc(e["status"]),
        ]
        for e in entries
    ]
    return table(
        ["spec", "metric", "S* (bits)", "90% interval", "S* (GB)", "sizes", "status"], rows, {2, 3, 4, 5}
    )


def damage_table(entries: list[dict]) -> str:
    def with_ci(e: dict, p: str) -> str:
        lo, hi = e["ci"][p]
        ci = "" if lo is None or hi is None else f" [{fmt(lo)}, {fmt(hi)}]"
        return fmt(e.get(p)) + ci

    rows = [
        [
            esc(e["scheme"]),
            esc(e["form"]) + (" ✓" if e.get("heldout_better") else ""),
            *(with_ci(e, p) for p in ("C", "beta", "alpha", "gamma")),
            fmt(e.get("heldout_error")),
            esc(e.get("n_points")),
            esc(e["status"]),
        ]
        for e in entries
    ]
    headers = [
        "scheme",
        "form (✓ extrapolates better)",
        "C",
        "beta (tokens)",
        "alpha (size)",
        "gamma (bits)",
        "held-out RMS error (noise SDs)",
        "points",
        "status",
    ]
    return table(headers, rows, {6, 7})


def extrapolation_table(checks: list[dict]) -> str:
    flagged = [c for c in checks if c.get("flagged")]
    if not flagged:
        return f"<p>{len(checks)} extrapolation checks, none flagged.</p>"
    rows = [
        [
            esc(c["law"]),
            esc(c["quant"]),
            esc(c["metric"]),
            esc(c["held_out"]),
            fmt(c["predicted"]),
            f"{fmt(c['ci'][0])} – {fmt(c['ci'][1])}",
            fmt(c["observed"]),
        ]
        for c in flagged
    ]
    return f"<p>{len(checks)} extrapolation checks, {len(flagged)} flagged:</p>" + table(
        ["law", "spec", "metric", "held out", "predicted", "90% interval", "observed"], rows, {4, 5, 6}
    )


# -- the joint law --------------------------------------------------------------------------------


def metrics_html(points: pl.DataFrame) -> str:
    """Per checkpoint and spec: size, tokens, bits and every metric (mean_acc, loss, acc:<dataset>)."""
    if points.height == 0:
        return "<p>No result rows could be read.</p>"
    keys = ["checkpoint_id", "quant", "n_params", "tokens_seen", "bits", "bits_per_param", "total_bits"]
    wide = points.pivot(on="metric", index=keys, values="value", aggregate_function="mean")
    wide = wide.sort(["n_params", "tokens_seen", "bits", "quant"], descending=[False, False, True, False])
    metrics = [m for m in ("mean_acc", "loss") if m in wide.columns] + sorted(
        c for c in wide.columns if c.startswith("acc:")
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
        f"<p class='small'>Showing {MAX_TABLE_ROWS} of {wide.height} rows; all are in the results store.</p>"
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
        return "<p>No dataset information was passed to this report.</p>"
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


def provenance_html(prov: list[tuple[str, Any]], results_keys: list[str]) -> str:
    rows = [[esc(k), v if isinstance(v, str) and v.startswith("<") else esc(v)] for k, v in prov]
    keys = "".join(f"<li><code>{esc(k)}</code></li>" for k in results_keys[:MAX_TABLE_ROWS])
    return table(["item", "value"], rows) + (
        f"<details><summary>{len(results_keys)} results keys</summary><ul class='small'>{keys}</ul></details>"
        if results_keys
        else ""
    )


def page(s: dict, parts: dict[str, str]) -> str:
    """The whole document; `parts` maps section id -> its HTML."""
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in SECTIONS)
    body = "".join(
        f'<section id="{sid}"><h2>{esc(name)}</h2>{parts[sid]}</section>'
        for sid, name in SECTIONS
        if sid in parts
    )
    title = f"kbitlaw report: {s['family']}"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"  # no favicon request: the page needs nothing from outside
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><div class='meta'>results <code>{esc(s['results_sha'][:12])}</code> · "
        f"{esc(s['n_checkpoints'])} checkpoints · {esc(s['n_specs'])} specs · "
        f"generated {esc(s['created_at'])}</div>"
        f"{headline_html(s)}<nav>{nav}</nav>{body}</main></body></html>"
    )
