"""What a run shows outside the report page: Prefect artifacts in the UI, and progress bars in a terminal.

Artifacts have fixed keys (lowercase letters, digits, dashes), so the UI keeps their history
across nightly runs: the summary, the Pareto frontier table, links to the report and to each
dataset's validation page, and a progress bar for the evaluations. Outside a flow or task run
every function here does nothing (no API is contacted), so tests and the CLI can call them freely.

The summary (flows/summary.py builds its markdown) answers "which precision?" without leaving the
UI: what the fit recommends and how sure it is, which laws are not usable and why, the first rows
of the Pareto frontier, every problem of the run and, when reports are served over HTTP
($KBITLAW_REPORT_URL, kbitlaw.report.web), the key figures as images.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kbitlaw.flows.summary import (  # noqa: F401 (re-exported: the artifacts' content)
    FRONTIER_KEY,
    figures_markdown,
    frontier_markdown,
    frontier_table,
    joint_law_markdown,
    report_store,
    store_link,
    summary_markdown,
)

SUMMARY_KEY = "kbitlaw-summary"
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


# -- publishing ---------------------------------------------------------------------------------


def publish_artifacts(
    report: dict | None,
    nightly_summary: dict,
    fit_doc: Any,
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
        description=f"kbitlaw {flow_name} summary: recommendation, usable laws, work done, problems",
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
    for d in ((report or {}).get("summary") or {}).get("datasets") or []:
        page = (d.get("validation") or {}).get("html") or (d.get("validation") or {}).get("json")
        if page and isinstance(d.get("name"), str):
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
