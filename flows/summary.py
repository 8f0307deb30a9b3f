"""The run summary's markdown (the `kbitlaw-summary` artifact): pure functions of the report, the
run's summary and the fit document, so tests render it without a Prefect server.

It says what the fit says and nothing more: the recommended spec, whether it is clear, P(best) and
the contenders; which laws are not usable and why (their numbers are never shown as if they
meant something: `fitdoc.describe` says why instead); and every problem of the run. The fit
document is read through kbitlaw.law.fitdoc, so no document, however broken, makes it raise.
Links go through public_url(): a browser opens http(s) links from the UI, but not file:// ones.
"""

from __future__ import annotations

from typing import Any

from kbitlaw.law.fitdoc import FitDocument, describe, fmt, number, path, strings, text, usable
from kbitlaw.report.web import clickable, public_url
from kbitlaw.store import Store, StoreError
from kbitlaw.vocab import gb

FRONTIER_KEY = "kbitlaw-pareto-frontier"
# The figures (ids of the PNGs the report writes beside its page) that answer "which precision":
# quality against total bits at equal memory, and the data types at 3 and 4 bits.
SUMMARY_FIGURES = (("scaling", "Accuracy versus total model bits"), ("dtypes", "Data types at 3 and 4 bits"))
FRONTIER_ROWS = 8  # rows of the frontier in the summary; the table artifact has them all
NOT_USABLE_ROWS = 12  # laws listed by name; the rest are counted (the report lists them all)
LAW_SECTIONS = (("damage", "damage laws"), ("power_law", "power laws"), ("threshold", "thresholds S*"))


def store_link(store: Store | None, url_or_key: str) -> str:
    """The link a person opens for a key of `store` (or the URL store.url() made of it): see
    public_url. A URL of no known store is linked as it is."""
    if store is None:
        return clickable(url_or_key)
    from kbitlaw.report.build import as_key  # here: build imports matplotlib

    try:
        return public_url(store, as_key(store, url_or_key))
    except ValueError:  # not a key of this store (an absolute path, another store's URL)
        return clickable(url_or_key)


def report_store(report: dict | None, store_uri: str | None = None) -> Store | None:
    """The store the report lives in: `store_uri` when given, else the one its URL names (the URL
    is store.url(key), so the store's root is what precedes the key); None when unknown."""
    if store_uri:
        return Store(store_uri)
    summary = (report or {}).get("summary") or {}
    url, key = (report or {}).get("url"), (report or {}).get("key") or summary.get("report_key")
    if isinstance(url, str) and isinstance(key, str) and key and url.endswith("/" + key):
        return Store(url[: -len(key) - 1])
    return None


def _md(words: str) -> str:
    """Free text (a reason, a problem, a headline) for the UI's markdown: a `<...>` in it would be
    taken for an HTML tag and dropped."""
    return words.replace("<", "&lt;").replace(">", "&gt;")


# -- what the fit says ---------------------------------------------------------------------------


def _p_best(rec: dict) -> dict[str, float]:
    found = rec.get("p_best") if isinstance(rec.get("p_best"), dict) else {}
    out = {str(w): number(p) for w, p in found.items()}
    return {w: p for w, p in out.items() if p is not None and 0 <= p <= 1}


def recommendation_markdown(fit_doc: Any) -> list[str]:
    """The recommended spec, clear or not, P(best) and the contenders; or why there is none."""
    rec = FitDocument.of(fit_doc).recommendation
    quant, bits = text(rec.get("quant")), number(rec.get("bits"))
    if not usable(rec) or not quant or bits is None:
        why = describe(rec) if not usable(rec) else "the fit names no spec"
        return [f"**Recommended precision: none** ({_md(why)})"]
    width, p_best = str(int(bits)), _p_best(rec)
    head = f"**Recommended precision: `{quant}` ({width}-bit)** — "
    if not p_best:
        lines = [head + "not known whether clear: no P(best) (the noise is unknown)"]
    elif rec.get("clear") is True:
        lines = [head + f"clear: P(best) {p_best.get(width, 0):.2f}"]
    else:
        found = rec.get("contenders") if isinstance(rec.get("contenders"), list) else []
        named = list(
            dict.fromkeys(str(c) for c in found if isinstance(c, str | int) and not isinstance(c, bool))
        )
        named.sort(key=lambda w: -(p_best.get(w) or 0))
        rivals = ", ".join(f"{w}-bit (P(best) {p_best.get(w, 0):.2f})" for w in named)
        lines = [
            head
            + f"**not clear**: P(best) {p_best.get(width, 0):.2f}; "
            + (f"contenders {rivals}" if rivals else "no contenders named")
        ]
    share, budgets = number(rec.get("frontier_share")), number(rec.get("budgets_compared"))
    if share is not None:
        metric = text(rec.get("metric"), "quality")
        over = f"the {budgets:.0f} memory budgets compared" if budgets else "the memory budgets compared"
        lines.append(f"Best {metric} at equal memory over {share:.0%} of {over}.")
    if p_best:
        lines += ["", "| width | P(best) |", "|---|---|"]
        ranked = sorted(p_best.items(), key=lambda kv: -kv[1])
        lines += [f"| {w}-bit | {p:.2f} |" for w, p in ranked if p > 0 or w == width]
    return lines


def _law_name(section: str, e: dict) -> str:
    """'damage law `int<k>-b64` `power` (demo)', 'joint law demo'."""
    label = {"power_law": "power law", "threshold": "S*", "damage": "damage law", "joint_law": "joint law"}
    what = [f"`{text(e.get(k))}`" for k in ("quant", "scheme", "form", "metric") if text(e.get(k))]
    family = text(e.get("family"))
    if section == "joint_law":  # its `form` (chinchilla | schedule) is said in its own line
        return " ".join([label[section], *([family] if family else [])])
    return " ".join([label.get(section, section), *what, *([f"({family})"] if family else [])])


def laws_markdown(fit_doc: Any) -> list[str]:
    """How many laws of each kind are usable, and each fitted law that is not, with the reason
    (FitDocument.not_usable: unidentified or failed; too little data is not a fault)."""
    doc = FitDocument.of(fit_doc)
    # the joint law first: predictions and the family's direction rest on it
    by_section = [("joint_law", "joint laws", doc.joint_laws)]
    by_section += [(s, label, doc.entries(s)) for s, label in LAW_SECTIONS]
    counts = [
        f"{label} {sum(usable(e) for e in found)} of {len(found)}" for _, label, found in by_section if found
    ]
    if not counts:
        return []
    out = ["**Laws usable** (drawn, used in predictions): " + "; ".join(counts) + ".", ""]
    faulty = {id(e) for e in doc.not_usable(s for s, _ in LAW_SECTIONS)}
    bad = [(s, e) for s, _, found in by_section for e in found if id(e) in faulty]
    if bad:
        out.append(
            f"**Not usable** ({len(bad)}: fitted, but not drawn or used; their numbers are not shown):"
        )
        out += [f"- {_law_name(s, e)}: {_md(describe(e))}" for s, e in bad[:NOT_USABLE_ROWS]]
        if len(bad) > NOT_USABLE_ROWS:
            out.append(f"- and {len(bad) - NOT_USABLE_ROWS} more (the report lists every law)")
        out.append("")
    return out


def joint_law_markdown(fit_doc: Any, family: str | None) -> list[str]:
    """Where the family is heading, in two lines: the joint law's hold-out errors, and how the
    checkpoints that arrived since the previous fit compare with what it predicted. Nothing for a
    joint law that is not usable (laws_markdown says why)."""
    entries = FitDocument.of(fit_doc).joint_laws
    entry = next((e for e in entries if e.get("family") == family), entries[0] if len(entries) == 1 else None)
    if not entry or not usable(entry):
        return []
    parts = []
    for name, key in (("largest size", "largest_size"), ("latest checkpoints", "latest_checkpoint")):
        h = path(entry, "held_out", key)
        rms, flagged, points = (number(path(h, k)) for k in ("rms_error", "flagged", "points"))
        if usable(h) and None not in (rms, flagged, points):
            parts.append(f"{name}: RMS {rms:.3g} nats, {flagged:.0f} of {points:.0f} outside")
        elif isinstance(h, dict):
            parts.append(f"{name}: {_md(describe(h))}")
    out = [
        "**Where this family is heading** (the joint law, predicting what it did not see): "
        + ("; ".join(parts) or "no held-out check")
    ]
    newest = [c for c in entry.get("running_check") or [] if isinstance(c, dict)]
    if isinstance(entry.get("running_check"), list) and newest:
        batch = [c for c in newest if c.get("predicted_by") == newest[-1].get("predicted_by")]
        missed = sum(c.get("flagged") is True for c in batch)
        out.append(
            f"- the {len(batch)} newest checkpoint-spec points against the previous fit's law: "
            f"{len(batch) - missed} inside the tolerance, {missed} outside"
        )
    runs = entry.get("in_progress") if isinstance(entry.get("in_progress"), list) else []
    for run in runs:
        p = path(run, "predictions", 0, default={})
        loss = number(path(p, "loss"))
        if loss is not None:
            out.append(
                f"- `{text(path(run, 'checkpoint_id'), '?')}` at {fmt(path(run, 'tokens_seen'))} of "
                f"{fmt(path(run, 'tokens_planned'))} tokens: {text(path(p, 'quant'), '?')} loss {loss:.4f} "
                "predicted at the end"
            )
    note = text(path(entry, "checkpoints", "note"))  # which law form, on which checkpoints
    if note:
        out.append(f"- {_md(note)}")
    return [*out, ""]


# -- the run ---------------------------------------------------------------------------------------


def frontier_markdown(summary: dict | None, limit: int = FRONTIER_ROWS) -> list[str]:
    """The first rows of the Pareto frontier as a compact table: memory budget range -> best spec."""
    rows = [r for r in (summary or {}).get("frontier") or [] if isinstance(r, dict)]
    if not rows:
        return []
    metric = text(path(summary, "recommendation", "metric"), "value")
    out = ["**Pareto frontier** (best model for each memory budget):", ""]
    out += [f"| budget (GB) | spec | parameters | {metric} |", "|---|---|---|---|"]
    for r in rows[:limit]:
        bits, until = number(r.get("total_bits")), number(r.get("until"))
        start = "-" if bits is None else f"{gb(bits):.3g}"
        budget = f"{start} – {'…' if until is None else f'{gb(until):.3g}'}"
        spec = text(r.get("quant"), "?")
        out.append(f"| {budget} | `{spec}` | {fmt(r.get('n_params'))} | {fmt(r.get('value'), '.4g')} |")
    if len(rows) > limit:
        out.append(f"\n{len(rows) - limit} more rows in the `{FRONTIER_KEY}` table artifact.")
    return [*out, ""]


def figures_markdown(store: Store | None, report: dict | None) -> list[str]:
    """The key figures as markdown images, when the report is served over HTTP (the UI would not
    show file:// or s3:// images) and the figure exists (a small grid draws no data-type figure)."""
    key = (report or {}).get("key") or ((report or {}).get("summary") or {}).get("report_key")
    if store is None or not isinstance(key, str) or not key:
        return []
    out = []
    for fig_id, title in SUMMARY_FIGURES:
        png = f"{key.rsplit('/', 1)[0]}/{fig_id}.png"  # the report writes its figures beside the page
        url = store_link(store, png)
        try:
            shown = url.startswith(("http://", "https://")) and store.exists(png)
        except StoreError:  # a summary without a picture beats a run that fails over one
            shown = False
        if shown:
            out += [f"![{title}]({url})", ""]  # a paragraph each: full width, one under the other
    return out


def problems_of(run: dict) -> list[str]:
    """Every problem of the run, one line each: the run summary's own list, else (a summary from
    before it had one) the unreadable checkpoints, invalid datasets and failures."""
    if isinstance(run.get("problems"), list):
        return strings(run["problems"])
    old = [*strings(run.get("unusable_checkpoints")), *strings(run.get("invalid_datasets"))]
    return old + strings(run.get("failures"))


def work_markdown(run: dict) -> list[str]:
    """New versus cached work, and what failed, as a table."""
    ev = run.get("evaluations") if isinstance(run.get("evaluations"), dict) else {}
    n, new = run.get("checkpoints", "-"), run.get("new_checkpoints", 0)
    unreadable = run.get("failed_checkpoints", len(strings(run.get("unusable_checkpoints"))))
    return [
        "| work | count |",
        "|---|---|",
        f"| checkpoints | {n} ({new} new) |",
        f"| checkpoints failed (unreadable) | {unreadable} |",
        f"| evaluations computed | {ev.get('computed', '-')} |",
        f"| evaluations cached | {ev.get('cached', '-')} |",
        f"| evaluations failed | {ev.get('failed', '-')} |",
        "",
    ]


def summary_markdown(
    report: dict | None, nightly_summary: dict, fit_doc: Any, store: Store | None = None
) -> str:
    """The run's summary: what the fit recommends and how sure it is, the headline, the Pareto
    frontier, the key figures, which laws are usable, new versus cached work, every problem of the
    run, what changed, the report link. `store`: the report's store (links and figures); None:
    report_store(report)."""
    doc = FitDocument.of(fit_doc)
    store = store or report_store(report)
    summary = (report or {}).get("summary") if isinstance((report or {}).get("summary"), dict) else None
    family = text((summary or {}).get("family")) or ", ".join(doc.families) or "-"
    out = [f"# kbitlaw: {family}", "", *recommendation_markdown(doc.raw), ""]
    out += [f"- {_md(line)}" for line in strings((summary or {}).get("headline_lines"))]
    out += ["", *frontier_markdown(summary), *figures_markdown(store, report)]
    out += joint_law_markdown(doc.raw, family) + laws_markdown(doc.raw)
    out += work_markdown(nightly_summary)
    problems = problems_of(nightly_summary)
    if problems:
        out += [f"**Problems of this run** ({len(problems)}):", *[f"- ⚠ {_md(p)}" for p in problems], ""]
    changes = strings(path(summary, "changes", "lines"))
    if changes:
        out += ["**Since the previous report:**", *[f"- {_md(c)}" for c in changes], ""]
    if report and (report.get("key") or report.get("url")):
        link = store_link(store, report.get("key") or report["url"])
        out.append(f"[Open the report]({link}) · `{report.get('url') or report.get('key')}`")
    out.append(f"\nresults `{doc.results_sha[:12]}`")
    return "\n".join(out)


def frontier_table(report: dict | None) -> list[dict[str, Any]]:
    """The Pareto frontier as rows: from which budget on each point is the best model that fits."""
    summary = (report or {}).get("summary") or {}
    metric = text(path(summary, "recommendation", "metric"), "value")
    rows = [r for r in summary.get("frontier") or [] if isinstance(r, dict)]
    return [
        {
            "budget from (bits)": fmt(r.get("total_bits")),
            "budget to (bits)": fmt(r.get("until")),
            "memory from (GB)": fmt(gb(number(r.get("total_bits")) or 0)),
            "spec": text(r.get("quant"), "?"),
            "bits": r.get("bits"),
            "parameters": fmt(r.get("n_params")),
            metric: fmt(r.get("value"), ".4g"),
        }
        for r in rows
    ]
