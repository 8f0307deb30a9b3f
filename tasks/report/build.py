"""The report of one fit: reports/<results_sha>/index.html (self-contained), its figures as PNG, and
summary.json (the headline numbers, read back by the next report to say what changed);
reports/latest.json points at the newest. `kbitlaw report` builds it for fits/latest.json.

The report reads only the stored fit: its document (fits/<sha>/fit.json) and its long table
(fit.parquet), through report/inputs.py. It recomputes nothing: the points, claims, laws and the
recommendation are the fit's, and only entries with status `ok` are drawn or used in the headline
(the others are listed with their status in words). It covers one family (the one with the most
checkpoints; a note names any other).

No document makes it raise: each part of the page (the headline, each figure, each table, the
joint-law section...) is rendered in isolation (report/guard.py), a part that fails is replaced by
one line naming the error, and those lines come back as `section_errors`. A report whose fit has
not changed is not rebuilt (summary.json records the fit's hash), unless it had such errors.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from kbitlaw.hashing import sha256_bytes
from kbitlaw.law.common import json_safe
from kbitlaw.report.guard import Guard, error_line
from kbitlaw.report.headline import changes_since, datasets_from_store, fallback_summary, headline
from kbitlaw.report.html import headline_html, page
from kbitlaw.report.inputs import Inputs, as_key, load_inputs, report_sha
from kbitlaw.report.sections import family_claims, provenance_rows, render_sections
from kbitlaw.store import LATEST_REPORT, Store, StoreError, report_key


def report_keys(results_sha: str) -> dict[str, str]:
    return {"html": report_key(results_sha), "summary": report_key(results_sha, "summary.json")}


@dataclass(frozen=True)
class Rendered:
    summary: dict  # summary.json (JSON-safe), with its section_errors
    html: str  # the page
    figures: list  # report.figures.Figure, whose PNGs are stored beside the page
    errors: list[str]  # one line per part that failed to render


def render(
    store: Store,
    fit_key: str,
    inp: Inputs,
    *,
    datasets: list[dict] | None = None,
    provenance: dict | None = None,
    previous: dict | None = None,
    figures: bool = True,
    extra: dict | None = None,
    errors: list[str] | None = None,
) -> Rendered:
    """The page and summary of a fit's inputs, each part in isolation (nothing is written).
    `figures=False` leaves the figures out (a note in their place): the fuzz tests render every
    broken document this way. `extra`: more summary items (keys, URLs); `errors`: error lines
    found before rendering (a document that is not JSON)."""
    guard = Guard(list(errors or []))
    if datasets is None:
        datasets = guard.call("datasets", lambda line: [], datasets_from_store, store, inp.dataset_versions)
    datasets = [d for d in datasets if isinstance(d, dict)]
    claims = family_claims(inp.fit, inp.family)
    summary = guard.call(
        "headline",
        lambda line: fallback_summary(inp.fit, inp.family, line),
        headline,
        inp.doc,
        inp.table,
        inp.latest,
        inp.family,
        claims,
    )
    summary |= {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "datasets": [
            {"name": d.get("name"), "sha": d.get("sha"), "validation": d.get("validation") or {}}
            for d in datasets
        ],
        "provenance": provenance or {},
        **(extra or {}),
    }
    summary["changes"] = guard.call(
        "changes since the previous report",
        lambda line: {
            "previous_results_sha": None,
            "lines": [line],
            "new_checkpoints": [],
            "changed_conclusions": [],
        },
        changes_since,
        previous,
        summary,
    )
    rows = guard.call("provenance", lambda line: [], provenance_rows, store, fit_key, inp, provenance)
    parts, figs = render_sections(guard, store, inp, claims, datasets, rows, figures)
    summary["section_errors"] = list(guard.errors)
    summary = json_safe(summary)
    parts["headline"] = guard.html("headline", headline_html, summary)
    summary["section_errors"] = list(guard.errors)  # the headline's own, if it failed
    html = guard.call("page", lambda line: minimal_page(summary, line), page, summary, parts)
    summary["section_errors"] = list(guard.errors)
    return Rendered(summary, html, figs, list(guard.errors))


def minimal_page(summary: dict, line: str) -> str:
    """The page when even its assembly failed: the error lines, escaped, and nothing else."""
    import html

    lines = [*summary.get("section_errors", []), line]
    items = "".join(f"<li>{html.escape(str(x))}</li>" for x in lines)
    head = "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'></head>"
    return f"{head}<body><ul>{items}</ul></body></html>"


def previous_summary(store: Store, results_sha: str) -> dict | None:
    """The summary of the report latest.json points at, unless that is this one (a rebuild): then
    the report it was compared with."""
    try:
        pointer = store.read_json(LATEST_REPORT) if store.exists(LATEST_REPORT) else None
        if pointer is None:
            return None
        summary = store.read_json(pointer["summary"])
        if summary.get("results_sha") != results_sha:
            return summary
        before = (summary.get("changes") or {}).get("previous_results_sha")
        key = report_keys(before)["summary"] if before else None
        return store.read_json(key) if key and store.exists(key) else None
    except (KeyError, TypeError, AttributeError, ValueError, FileNotFoundError, StoreError):
        return None  # an unreadable previous report: this one starts a new history


def read_document(store: Store, fit_key: str) -> tuple[bytes, Any, list[str]]:
    """The document's bytes, its parsed JSON ({} when it is not JSON) and then that error line."""
    raw = store.read_bytes(fit_key)
    try:
        return raw, json.loads(raw), []
    except ValueError as exc:  # UnicodeDecodeError included
        return raw, {}, [error_line("fit document", exc)]


def build_report(
    store: Store,
    fit_key: str,
    *,
    results_keys: list[str] | None = None,
    datasets: list[dict] | None = None,
    provenance: dict | None = None,
    force: bool = False,
) -> dict:
    """Build (or find) the report of a fit. `fit_key`: fits/<sha>/fit.json, or its store URL.

    `results_keys`: the results the fit was made of (listed in the provenance; nothing is read
    from them); `datasets`: per dataset {"name", "sha", "summary", "validation": {"json", "html"}}
    (default: the versions the fit document names, read from the store); `provenance`: extra items
    to show (flow run id, grid, ...). Returns {"key", "url", "summary", "cached", "section_errors"}:
    `section_errors` lists one line per part of the page that failed to render (each replaced by
    that line on the page); latest.json then points at this report.
    Raises only when the store cannot be read or written (StoreError, FileNotFoundError).
    """
    fit_key = as_key(store, fit_key)
    raw, doc, errors = read_document(store, fit_key)
    fit_hash = sha256_bytes(raw)
    results_sha = report_sha(fit_key, doc)
    keys = report_keys(results_sha)
    if not force and store.exists(keys["summary"]) and store.exists(keys["html"]):
        try:
            summary = store.read_json(keys["summary"])
        except ValueError:  # a summary that is not JSON: the report is rebuilt
            summary = {}
        if (
            isinstance(summary, dict)
            and summary.get("fit_sha256") == fit_hash
            and not summary.get("section_errors")
        ):
            point_latest(store, summary)
            return {
                "key": keys["html"],
                "url": store.url(keys["html"]),
                "summary": summary,
                "cached": True,
                "section_errors": [],
            }
    inp = load_inputs(store, fit_key, doc, results_keys)
    extra = {
        "results_sha": results_sha,  # the key's sha, whatever the document says
        "fit_key": fit_key,
        "fit_url": store.url(fit_key),
        "fit_sha256": fit_hash,
        "report_key": keys["html"],
        "report_url": store.url(keys["html"]),
        "summary_key": keys["summary"],
    }
    out = render(
        store,
        fit_key,
        inp,
        datasets=datasets,
        provenance=provenance,
        previous=previous_summary(store, results_sha),
        extra=extra,
        errors=errors,
    )
    summary = out.summary
    for f in out.figures:
        if f.png is not None:
            store.write_bytes(report_key(results_sha, f"{f.id}.png"), f.png)
    store.write_bytes(keys["html"], out.html.encode())
    store.write_json(keys["summary"], summary)  # after the page: its presence means the report is complete
    point_latest(store, summary)
    return {
        "key": keys["html"],
        "url": store.url(keys["html"]),
        "summary": summary,
        "cached": False,
        "section_errors": out.errors,
    }


def point_latest(store: Store, summary: dict) -> None:
    pointer = {
        "results_sha": summary["results_sha"],
        "report": summary["report_key"],
        "summary": summary["summary_key"],
        "url": summary["report_url"],
    }
    if not store.exists(LATEST_REPORT) or store.read_json(LATEST_REPORT) != pointer:
        store.write_json(LATEST_REPORT, pointer)


def latest_report(store: Store) -> dict | None:
    """Where the newest report is: {"results_sha", "report" (key), "summary" (key), "url"}; None if none."""
    return store.read_json(LATEST_REPORT) if store.exists(LATEST_REPORT) else None
