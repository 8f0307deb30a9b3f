"""The report page: one self-contained HTML file (inline CSS, figures as base64 PNG, no script and
no network). Every string from the data is escaped; sections appear in the order a reader asks:
what to deploy, why (the scaling plot and the claims), the laws, where the family is heading (the
joint law's forecast and its running check), then the tables.

Tables list every entry of the fit: an `ok` one with its numbers, any other with its status in
words (law/fitdoc.py describe) and no numbers (they stay in fit.json for inspection). A part that
failed to render is one line (`error_html`, report/guard.py)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import PurePosixPath
from typing import Any

from kbitlaw.law.fitdoc import describe, interval, number, path, strings, text, usable
from kbitlaw.report.figures import Figure
from kbitlaw.vocab import gb

MAX_TABLE_ROWS = 3000  # the metrics table; beyond this the fit's table (fit.parquet) is the reference

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
.error { padding: 8px 12px; color: #8a1616; background: #fdecec; border-left: 4px solid #d62728;
         font-family: ui-monospace, monospace; font-size: 13px; }
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
    """Text for the page, escaped: None is empty, a NaN or infinite number '-' (the document's
    numbers are JSON, and a broken one must not print as 'nan')."""
    if isinstance(x, float) and not math.isfinite(x):
        return "-"
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


def error_html(line: str) -> str:
    """A part that failed to render, in its place: the one-line error (report/guard.py)."""
    return f'<p class="error">{esc(line)}</p>'


def figure(f: Figure) -> str:
    if f.error:
        return f'<figure id="fig-{esc(f.id)}">{error_html(f.note or "")}</figure>'
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


def status_cell(entry: dict) -> str:
    return f'<span class="small">{esc(describe(entry))}</span>'


def verdict_badge(verdict: object) -> str:
    cls = verdict if verdict in ("supported", "contradicted", "inconclusive") else "other"
    return f'<span class="verdict v-{cls}">{esc(verdict)}</span>'


# -- sections ----------------------------------------------------------------------------------


def headline_html(s: dict) -> str:
    """The headline box: what to deploy (or why nothing is recommended), the headline lines, what
    changed, and any part of the page that failed to render."""
    rec = s.get("recommendation") or {}
    if rec.get("status") != "ok":
        status = "not identified" if rec.get("status") == "unidentified" else rec.get("status", "failed")
        deploy = f'<div class="deploy">Recommended precision: {esc(status)}</div>'
        why = f"<p>{esc(rec.get('reason'))}</p>"
        cls = "headline none"
    else:
        spec = f"{esc(rec.get('bits'))}-bit: <code>{esc(rec.get('quant'))}</code>"
        deploy = f'<div class="deploy">Deploy at {spec}</div>'
        why = f"<p>{esc(rec.get('confidence'))}</p>" + p_best_html(rec)
        cls = "headline"
    items = [f"<li>{esc(line)}</li>" for line in strings(s.get("headline_lines"))]
    changes = s.get("changes") or {}
    change_lines = strings(changes.get("lines"))
    since = text(changes.get("previous_results_sha"))
    change_html = (
        "<p><b>Since the previous report</b>"
        + (f" (<code>{esc(since[:12])}</code>)" if since else "")
        + ":</p><ul>"
        + "".join(f"<li>{esc(c)}</li>" for c in change_lines)
        + "</ul>"
        if since or change_lines
        else "<p><b>Since the previous report:</b> this is the first report in this store.</p>"
    )
    errors = strings(s.get("section_errors"))
    error_list = (
        f"<p><b>{len(errors)} part(s) of this page failed to render</b> (shown in place):</p>"
        + "".join(error_html(e) for e in errors)
        if errors
        else ""
    )
    return f'<section class="{cls}">{deploy}{why}<ul>{"".join(items)}</ul>{change_html}{error_list}</section>'


def p_best_html(rec: dict) -> str:
    """P(best) per bit width, as a small table (empty when the noise was unknown)."""
    p_best = rec.get("p_best") or {}
    if not p_best:
        return ""
    cells = "".join(
        ("<td class='win'>" if w == str(rec.get("bits")) else "<td>") + f"{esc(w)}-bit<br>{p:.2f}</td>"
        for w, p in sorted(p_best.items(), key=lambda kv: int(kv[0]))
    )
    verdict = (
        "clear"
        if rec.get("clear")
        else "contenders: " + ", ".join(f"{w}-bit" for w in strings(rec.get("contenders")))
    )
    return f"<table class='pbest'><tr><th>P(best)</th>{cells}</tr></table><p class='small'>{esc(verdict)}</p>"


def claims_html(claims: list[dict], family: str) -> str:
    if not claims:
        return (
            f"<p>The fit holds no checked claims for family <code>{esc(family)}</code> (a fit from before "
            "they were part of its document: refit to see them).</p>"
        )
    rows = [
        [
            esc(c.get("id")),
            f"<b>{esc(c.get('claim'))}</b><br><span class='small'>{esc(c.get('paper'))}</span>",
            verdict_badge(c.get("verdict")),
            "<br>".join(esc(n) for n in strings(c.get("numbers"))),
            f"<span class='small'>{esc(c.get('test'))}</span>",
        ]
        for c in claims
    ]
    return (
        f"<p>The checkable claims of the k-bit papers, tested on family <code>{esc(family)}</code>. "
        "Differences are advantages of the first spec named (accuracy in percentage points, loss in "
        "nats, positive = better) with their standard error; beyond 2 SE counts as real.</p>"
        + table(["id", "Claim", "Verdict", "Numbers behind it", "Test"], rows, cls="claims")
    )


def with_ci(value: object, ci: object) -> str:
    """A number with its interval, '1.2 [0.9, 1.5]' ('-' for a number that is not finite)."""
    lo, hi = interval(ci)
    return fmt(number(value)) + ("" if lo is None or hi is None else f" [{fmt(lo)}, {fmt(hi)}]")


def threshold_table(entries: list[dict]) -> str:
    """S* per spec: the numbers of the ok entries, the status in words of the others."""
    rows = []
    for e in entries:
        ok, s_star = usable(e), number(e.get("s_star_bits"))
        lo, hi = interval(e.get("ci"))
        rows.append(
            [
                esc(e.get("quant")),
                esc(e.get("metric")),
                fmt(s_star if ok else None),
                f"{fmt(lo)} – {fmt(hi)}" if ok and None not in (lo, hi) else "-",
                fmt(gb(s_star) if ok and s_star is not None else None),
                fmt(number(e.get("n_sizes")), "g"),
                status_cell(e),
            ]
        )
    return table(
        ["spec", "metric", "S* (bits)", "90% interval", "S* (GB)", "sizes", "status"], rows, {2, 3, 4, 5}
    )


def power_law_table(entries: list[dict]) -> str:
    """The loss power law L(S) = E + A/S^alpha per spec: numbers of the ok entries only."""
    rows = [
        [
            esc(e.get("quant")),
            esc(e.get("metric")),
            *(with_ci(e.get(p), path(e, "ci", p)) if usable(e) else "-" for p in ("E", "A", "alpha")),
            fmt(number(e.get("n_sizes")), "g"),
            status_cell(e),
        ]
        for e in entries
    ]
    return table(["spec", "metric", "E", "A", "alpha", "sizes", "status"], rows, {2, 3, 4, 5})


def damage_table(entries: list[dict]) -> str:
    """The damage laws per scheme and form: numbers of the ok entries, the status of the others."""
    rows = [
        [
            esc(e.get("scheme")),
            esc(e.get("form")) + (" ✓" if usable(e) and e.get("heldout_better") is True else ""),
            *(
                with_ci(e.get(p), path(e, "ci", p)) if usable(e) else "-"
                for p in ("C", "beta", "alpha", "gamma")
            ),
            fmt(number(e.get("heldout_error")) if usable(e) else None),
            fmt(number(e.get("n_points")), "g"),
            status_cell(e),
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
    """The flagged ones of the ok extrapolation checks (the others are counted)."""
    ok = [c for c in checks if usable(c)]
    flagged = [c for c in ok if c.get("flagged") is True]
    other = len(checks) - len(ok)
    head = f"{len(ok)} extrapolation checks" + (f" ({other} more could not be made)" if other else "")
    if not flagged:
        return f"<p>{head}, none flagged.</p>"
    rows = [
        [
            esc(c.get("law")),
            esc(c.get("quant")),
            esc(c.get("metric")),
            esc(c.get("held_out")),
            fmt(number(c.get("predicted"))),
            "{} – {}".format(*(fmt(v) for v in interval(c.get("ci")))),
            fmt(number(c.get("observed"))),
        ]
        for c in flagged
    ]
    return f"<p>{head}, {len(flagged)} flagged:</p>" + table(
        ["law", "spec", "metric", "held out", "predicted", "90% interval", "observed"], rows, {4, 5, 6}
    )


def page(s: dict, parts: dict[str, str]) -> str:
    """The whole document; `parts` maps section id -> its HTML (and "headline" -> the headline box,
    rendered from the summary when absent)."""
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in SECTIONS)
    body = "".join(
        f'<section id="{sid}"><h2>{esc(name)}</h2>{parts[sid]}</section>'
        for sid, name in SECTIONS
        if sid in parts
    )
    title = f"kbitlaw report: {s.get('family')}"
    sha = text(s.get("results_sha"))[:12]
    head = parts.get("headline") or headline_html(s)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"  # no favicon request: the page needs nothing from outside
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><div class='meta'>results <code>{esc(sha)}</code> · "
        f"{esc(s.get('n_checkpoints'))} checkpoints · {esc(s.get('n_specs'))} specs · "
        f"generated {esc(s.get('created_at'))}</div>"
        f"{head}<nav>{nav}</nav>{body}</main></body></html>"
    )
