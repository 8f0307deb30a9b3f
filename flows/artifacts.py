"""What a run shows outside the report page: Prefect artifacts in the UI, and progress bars in a terminal.

Artifacts have fixed keys (lowercase letters, digits, dashes), so the UI keeps their history
across nightly runs: the summary, the Pareto frontier table, links to the report and to each
dataset's validation page, and a progress bar for the evaluations. Outside a flow or task run
every function here does nothing (no API is contacted), so tests and the CLI can call them freely.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

from kbitlaw.status import NO_DATA

SUMMARY_KEY = "kbitlaw-summary"
FRONTIER_KEY = "kbitlaw-pareto-frontier"
REPORT_KEY = "kbitlaw-report"
VALIDATION_PREFIX = "kbitlaw-validation-"
PROGRESS_KEY = "kbitlaw-evaluation-progress"


def artifact_key(text: str) -> str:
    """A valid artifact key from any text: lowercase, runs of other characters become one dash."""
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key or "unnamed"


def in_run() -> bool:
    """Whether we are inside a Prefect flow or task run (artifacts then belong to it)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def clickable(url: str) -> str:
    """Local paths as file:// URIs so the UI renders a link; s3:// and http(s) stay as they are."""
    return PurePosixPath(url).as_uri() if url.startswith("/") else url


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


def summary_markdown(report: dict | None, nightly_summary: dict, fit_doc: dict) -> str:
    """The run's summary: recommendation, S*, new versus cached work, what changed, the report link."""
    summary = (report or {}).get("summary")
    family = (summary or {}).get("family") or ", ".join(fit_doc.get("families", [])) or "-"
    out = [f"# kbitlaw: {family}", "", *_recommendation_md(summary, fit_doc), ""]
    out += [f"- {line}" for line in (summary or {}).get("headline_lines", [])]
    ev = nightly_summary.get("evaluations") or {}
    n, new = nightly_summary.get("checkpoints", "-"), nightly_summary.get("new_checkpoints", 0)
    out += [
        "",
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
        out.append(f"[Open the report]({clickable(report['url'])}) · `{report['url']}`")
    out.append(f"\nresults `{fit_doc.get('results_sha', '-')[:12]}`")
    return "\n".join(out)


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


def publish_artifacts(report: dict | None, nightly_summary: dict, fit_doc: dict) -> list[str]:
    """Create the nightly's artifacts in the current flow run; returns the keys created ([] outside
    a run). `report`: build_report's return (None when no report could be built)."""
    if not in_run():
        return []
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    keys = [SUMMARY_KEY]
    create_markdown_artifact(
        markdown=summary_markdown(report, nightly_summary, fit_doc),
        key=SUMMARY_KEY,
        description="kbitlaw nightly summary: recommendation, S*, new versus cached work",
    )
    rows = frontier_table(report)
    if rows:
        create_table_artifact(
            table=rows, key=FRONTIER_KEY, description="Pareto frontier of total bits vs quality"
        )
        keys.append(FRONTIER_KEY)
    if report:
        create_link_artifact(
            link=clickable(report["url"]),
            link_text="kbitlaw report",
            key=REPORT_KEY,
            description="The HTML report of this fit",
        )
        keys.append(REPORT_KEY)
    for d in (report or {}).get("summary", {}).get("datasets", []):
        page = (d.get("validation") or {}).get("html") or (d.get("validation") or {}).get("json")
        if page and d.get("name"):
            key = artifact_key(VALIDATION_PREFIX + d["name"])
            create_link_artifact(
                link=clickable(page),
                link_text=f"validation: {d['name']}",
                key=key,
                description=f"Great Expectations validation of dataset {d['name']}",
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
