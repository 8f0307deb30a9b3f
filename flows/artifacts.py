"""What a run shows outside the report page: Prefect artifacts in the UI, and progress bars in a terminal.

Artifacts have fixed keys (lowercase letters, digits, dashes), so the UI keeps their history
across nightly runs: the summary, the Pareto frontier table, links to the report and to each
dataset's validation page, and a progress bar for the evaluations. Outside a flow or task run
every function here does nothing (no API is contacted), so tests and the CLI can call them freely.

The summary answers "which precision?" without leaving the UI: the recommendation, P(best), the
first rows of the Pareto frontier and, when reports are served over HTTP ($KBITLAW_REPORT_URL,
kbitlaw.report.web), the key figures as images. Links go through public_url(): a browser opens
http(s) links from the UI, but not file:// ones.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kbitlaw.report.web import clickable, public_url
from kbitlaw.status import NO_DATA
from kbitlaw.store import Store, StoreError

SUMMARY_KEY = "kbitlaw-summary"
FRONTIER_KEY = "kbitlaw-pareto-frontier"
REPORT_KEY = "kbitlaw-report"
VALIDATION_PREFIX = "kbitlaw-validation-"
PROGRESS_KEY = "kbitlaw-evaluation-progress"
# The figures (ids of the PNGs the report writes beside its page) that answer "which precision":
# quality against total bits at equal memory, and the data types at 3 and 4 bits.
SUMMARY_FIGURES = (("scaling", "Accuracy versus total model bits"), ("dtypes", "Data types at 3 and 4 bits"))
FRONTIER_ROWS = 8  # rows of the frontier in the summary; the table artifact has them all


def artifact_key(text: str) -> str:
    """A valid artifact key from any text: lowercase, runs of other characters become one dash."""
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key or "unnamed"


def in_run() -> bool:
    """Whether we are inside a Prefect flow or task run (artifacts then belong to it)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


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
    if url and key and url.endswith("/" + key):
        return Store(url[: -len(key) - 1])
    return None


# -- content ------------------------------------------------------------------------------------


def _recommendation_md(summary: dict | None, fit_doc: dict) -> list[str]:
    rec = (summary or {}).get("recommendation") or fit_doc.get("recommendation") or {}
    if rec.get("status", "ok") != "ok" or "quant" not in rec:
        return [f"**Recommended precision: {NO_DATA}.**"]
    lines = [f"**Recommended precision: `{rec['quant']}` ({rec['bits']}-bit)**"]
    if rec.get("confidence"):
        lines.append(rec["confidence"])
    else:
        lines.append(f"Best at {rec['frontier_share']:.0%} of the memory budgets compared.")
    if rec.get("p_best"):
        widths = sorted(rec["p_best"].items(), key=lambda kv: -kv[1])
        lines += ["", "| width | P(best) |", "|---|---|"]
        lines += [f"| {w}-bit | {p:.2f} |" for w, p in widths if p > 0 or w == str(rec["bits"])]
    return lines


def frontier_markdown(summary: dict | None, limit: int = FRONTIER_ROWS) -> list[str]:
    """The first rows of the Pareto frontier as a compact table: memory budget range -> best spec."""
    rows = (summary or {}).get("frontier") or []
    if not rows:
        return []
    metric = (summary.get("recommendation") or {}).get("metric", "value")
    out = ["**Pareto frontier** (best model for each memory budget):", ""]
    out += [f"| budget (GB) | spec | parameters | {metric} |", "|---|---|---|---|"]
    for r in rows[:limit]:
        until = "…" if r.get("until") is None else f"{r['until'] / 8e9:.3g}"
        budget = f"{r['total_bits'] / 8e9:.3g} – {until}"
        out.append(f"| {budget} | `{r['quant']}` | {r['n_params']:.3g} | {r['value']:.4g} |")
    if len(rows) > limit:
        out.append(f"\n{len(rows) - limit} more rows in the `{FRONTIER_KEY}` table artifact.")
    return [*out, ""]


def figures_markdown(store: Store | None, report: dict | None) -> list[str]:
    """The key figures as markdown images, when the report is served over HTTP (the UI would not
    show file:// or s3:// images) and the figure exists (a small grid draws no data-type figure)."""
    key = (report or {}).get("key") or ((report or {}).get("summary") or {}).get("report_key")
    if store is None or not key:
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


def summary_markdown(
    report: dict | None, nightly_summary: dict, fit_doc: dict, store: Store | None = None
) -> str:
    """The run's summary: recommendation, P(best), S*, the Pareto frontier, the key figures, new
    versus cached work, what changed, the report link. `store`: the report's store (links and
    figures); None: report_store(report)."""
    store = store or report_store(report)
    summary = (report or {}).get("summary")
    family = (summary or {}).get("family") or ", ".join(fit_doc.get("families", [])) or "-"
    out = [f"# kbitlaw: {family}", "", *_recommendation_md(summary, fit_doc), ""]
    out += [f"- {line}" for line in (summary or {}).get("headline_lines", [])]
    out += ["", *frontier_markdown(summary), *figures_markdown(store, report)]
    out += joint_law_markdown(fit_doc, family)
    ev = nightly_summary.get("evaluations") or {}
    n, new = nightly_summary.get("checkpoints", "-"), nightly_summary.get("new_checkpoints", 0)
    out += [
        "| work | count |",
        "|---|---|",
        f"| checkpoints | {n} ({new} new) |",
        f"| evaluations computed | {ev.get('computed', '-')} |",
        f"| evaluations cached | {ev.get('cached', '-')} |",
        f"| evaluations failed | {ev.get('failed', '-')} |",
        "",
    ]
    changes = ((summary or {}).get("changes") or {}).get("lines") or []
    if changes:
        out += ["**Since the previous report:**", *[f"- {c}" for c in changes], ""]
    for problem in nightly_summary.get("failures", []) + nightly_summary.get("invalid_datasets", []):
        out.append(f"- ⚠ {problem}")
    if report:
        link = store_link(store, report.get("key") or report["url"])
        out.append(f"[Open the report]({link}) · `{report['url']}`")
    out.append(f"\nresults `{fit_doc.get('results_sha', '-')[:12]}`")
    return "\n".join(out)


def joint_law_markdown(fit_doc: dict, family: str) -> list[str]:
    """Where the family is heading, in two lines: the joint law's hold-out errors, and how the
    checkpoints that arrived since the previous fit compare with what it predicted."""
    found = fit_doc.get("joint_law")
    entries = found if isinstance(found, list) else [found] if isinstance(found, dict) else []
    entry = next((e for e in entries if e.get("family") == family), entries[0] if len(entries) == 1 else None)
    if not entry or entry.get("status") != "ok":
        return []
    held = entry.get("held_out") or {}
    parts = [
        f"{name}: RMS {h['rms_error']:.3g} nats, {h['flagged']} of {h['points']} outside"
        for name, h in (
            ("largest size", held.get("largest_size")),
            ("latest checkpoints", held.get("latest_checkpoint")),
        )
        if h and h.get("status") == "ok"
    ]
    out = [
        "**Where this family is heading** (the joint law, predicting what it did not see): "
        + "; ".join(parts)
    ]
    newest = entry.get("running_check") or []
    batch = [c for c in newest if newest and c.get("predicted_by") == newest[-1].get("predicted_by")]
    if batch:
        missed = sum(bool(c.get("flagged")) for c in batch)
        out.append(
            f"- the {len(batch)} newest checkpoint-spec points against the previous fit's law: "
            f"{len(batch) - missed} inside the tolerance, {missed} outside"
        )
    for run in entry.get("in_progress") or []:
        p = (run.get("predictions") or [{}])[0]
        if p.get("loss") is not None:
            out.append(
                f"- `{run['checkpoint_id']}` at {run['tokens_seen']:.3g} of {run['tokens_planned']:.3g} "
                f"tokens: {p['quant']} loss {p['loss']:.4f} predicted at the end"
            )
    return [*out, ""]


def frontier_table(report: dict | None) -> list[dict[str, Any]]:
    """The Pareto frontier as rows: from which budget on each point is the best model that fits."""
    summary = (report or {}).get("summary") or {}
    metric = (summary.get("recommendation") or {}).get("metric", "value")
    return [
        {
            "budget from (bits)": f"{r['total_bits']:.3g}",
            "budget to (bits)": "-" if r.get("until") is None else f"{r['until']:.3g}",
            "memory from (GB)": f"{r['total_bits'] / 8e9:.3g}",
            "spec": r["quant"],
            "bits": r["bits"],
            "parameters": f"{r['n_params']:.3g}",
            metric: f"{r['value']:.4g}",
        }
        for r in summary.get("frontier", [])
    ]


# -- publishing ---------------------------------------------------------------------------------


def publish_artifacts(
    report: dict | None,
    nightly_summary: dict,
    fit_doc: dict,
    flow_name: str = "nightly",
    store_uri: str | None = None,
) -> list[str]:
    """Create the run's artifacts in the current flow run; returns the keys created ([] outside
    a run). `report`: {"key", "url", "summary"} as build_report returns (None when no report could
    be built); `flow_name` names the flow in the descriptions; `store_uri`: the report's store
    (default: the one the report's URL names)."""
    if not in_run():
        return []
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    store = report_store(report, store_uri)
    keys = [SUMMARY_KEY]
    create_markdown_artifact(
        markdown=summary_markdown(report, nightly_summary, fit_doc, store),
        key=SUMMARY_KEY,
        description=f"kbitlaw {flow_name} summary: recommendation, S*, new versus cached work",
    )
    rows = frontier_table(report)
    if rows:
        create_table_artifact(
            table=rows,
            key=FRONTIER_KEY,
            description=f"kbitlaw {flow_name}: Pareto frontier of total bits vs quality",
        )
        keys.append(FRONTIER_KEY)
    if report:
        create_link_artifact(
            link=store_link(store, report.get("key") or report["url"]),
            link_text="kbitlaw report",
            key=REPORT_KEY,
            description=f"kbitlaw {flow_name}: the HTML report of this fit",
        )
        keys.append(REPORT_KEY)
    for d in (report or {}).get("summary", {}).get("datasets", []):
        page = (d.get("validation") or {}).get("html") or (d.get("validation") or {}).get("json")
        if page and d.get("name"):
            key = artifact_key(VALIDATION_PREFIX + d["name"])
            create_link_artifact(
                link=store_link(store, page),
                link_text=f"validation: {d['name']}",
                key=key,
                description=f"kbitlaw {flow_name}: Great Expectations validation of dataset {d['name']}",
            )
            keys.append(key)
    return keys


def progress_artifact(total: int, description: str, key: str = PROGRESS_KEY) -> Callable[[int], None]:
    """A progress artifact at 0%; returns update(done), which sets it to done/total (thread-safe,
    sent only when the whole percentage changes). A no-op outside a flow or task run."""
    if not in_run() or total <= 0:
        return lambda done: None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = create_progress_artifact(progress=0.0, key=artifact_key(key), description=description)
    lock, sent = threading.Lock(), [0]

    def update(done: int) -> None:
        percent = min(100, int(100 * done / total))
        with lock:
            if percent == sent[0]:
                return
            sent[0] = percent
        update_progress_artifact(artifact_id=artifact_id, progress=float(percent))

    return update


# -- terminal -----------------------------------------------------------------------------------


def interactive() -> bool:
    """A person is watching: stderr is a terminal and this is not CI."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return sys.stderr.isatty() and not ci


@contextmanager
def progress_bar(total: int, description: str, enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr (stdout stays clean for --json); yields advance(n=1).

    `enabled`: None decides by interactive(); pass False for --json. Disabled, it prints nothing.
    """
    if not (interactive() if enabled is None else enabled):
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
