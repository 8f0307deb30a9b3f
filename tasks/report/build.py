"""The report of one fit: reports/<results_sha>/index.html (self-contained), its figures as PNG, and
summary.json (the headline numbers, read back by the next report to say what changed);
reports/latest.json points at the newest. `kbitlaw report` builds it for fits/latest.json.

The report covers one family (the one with the most checkpoints; a note names any other) and
shows the fit's numbers: the recommendation and S* come from the fit document, the claims and
figures from the measured points and the fitted laws. A report whose fit has not changed is not
rebuilt (summary.json records the fit's hash).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import polars as pl

from kbitlaw.law.claims import check_claims
from kbitlaw.law.common import json_safe
from kbitlaw.law.io import read_results_store
from kbitlaw.law.table import (
    REQUIRED_COLUMNS,
    ResultsError,
    components,
    drop_unusable,
    matched_per_size,
    metric_points,
    normalise,
)
from kbitlaw.law.table import results_sha as compute_results_sha
from kbitlaw.report.figures import block_plot, dtype_plot, scaling_plot
from kbitlaw.report.figures_joint import joint_entry, joint_figures, level_of
from kbitlaw.report.figures_laws import law_figures
from kbitlaw.report.headline import changes_since, datasets_from_store, headline
from kbitlaw.report.html import (
    claims_html,
    damage_table,
    datasets_html,
    extrapolation_table,
    figure,
    link,
    metrics_html,
    page,
    provenance_html,
    threshold_table,
)
from kbitlaw.report.html_joint import in_progress_html, joint_law_html, running_check_table
from kbitlaw.store import LATEST_REPORT, Store, StoreError, fit_keys, report_key, sha256_bytes


def report_keys(results_sha: str) -> dict[str, str]:
    return {"html": report_key(results_sha), "summary": report_key(results_sha, "summary.json")}


def as_key(store: Store, key_or_url: str) -> str:
    """A store key from a key or from the URL store.url() made of it (as the fit task returns)."""
    root = store.url("x")[:-1]
    return key_or_url[len(root) :] if key_or_url.startswith(root) else key_or_url


@dataclass(frozen=True)
class Inputs:
    doc: dict
    table: pl.DataFrame  # fit.parquet
    points: pl.DataFrame  # every checkpoint's points, one family
    latest: pl.DataFrame  # each size's latest checkpoint
    family: str
    keys: list[str]  # results keys read
    dataset_versions: list[tuple[str, str]]  # (dataset, dataset_sha) the results used
    problems: list[str]  # what could not be read or does not match


def no_points() -> pl.DataFrame:
    """An empty points table with the usual columns, so every section can say "no data" itself."""
    empty = normalise(pl.DataFrame(schema=dict.fromkeys(REQUIRED_COLUMNS, pl.String)))
    return metric_points(components(empty))[0]


def read_points(store: Store, keys: list[str] | None, doc: dict):
    """Law points of the results (all families), the keys read, the dataset versions used and any
    problem to show."""
    keys = sorted(keys) if keys is not None else [k for k in store.list("results") if k.endswith(".parquet")]
    try:
        results = normalise(read_results_store(store, keys))
    except (ResultsError, StoreError, FileNotFoundError) as exc:
        return no_points(), keys, [], [f"results could not be read: {exc}"]
    versions = (
        results.select("dataset", pl.col("dataset_sha").cast(pl.String)).unique().drop_nulls().sort("dataset")
    )
    problems = []
    if compute_results_sha(results) != doc["results_sha"]:
        problems.append(
            "the results read now are not the ones fitted (their sha differs): tables and claims use "
            "the results now in the store, the laws and the recommendation the fitted ones"
        )
    usable, _ = drop_unusable(results)
    points, _ = metric_points(components(usable))
    return points, keys, [tuple(r) for r in versions.iter_rows()], problems


def load_inputs(store: Store, fit_key: str, results_keys: list[str] | None) -> Inputs:
    doc = store.read_json(fit_key)
    table = store.read_parquet(fit_keys(doc["results_sha"])[1])
    points, keys, versions, problems = read_points(store, results_keys, doc)
    if points.height:
        by_size = points.group_by("family").agg(pl.col("checkpoint_id").n_unique().alias("n"))
        family = by_size.sort(["n", "family"], descending=[True, False])["family"][0]
        points = points.filter(pl.col("family") == family)
    else:
        family = (doc.get("families") or ["(none)"])[0]
    others = [f for f in doc.get("families", []) if f != family]
    if others:
        problems.append(f"this report covers family {family}; also in the fit: {', '.join(others)}")
    latest, _ = matched_per_size(points)
    return Inputs(doc, table, points, latest, family, keys, versions, problems)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("kbitlaw", "polars", "numpy", "scipy", "matplotlib", "prefect"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def provenance_rows(
    store: Store, fit_key: str, inp: Inputs, provenance: dict | None
) -> list[tuple[str, Any]]:
    doc = inp.doc
    made_by = sorted(inp.points["family"].unique().to_list()) if inp.points.height else []
    rows: list[tuple[str, Any]] = [
        ("store", store.uri),
        ("fit", link(store.url(fit_key), fit_key)),
        ("results sha", doc["results_sha"]),
        ("law version", doc.get("law_version")),
        ("fit config", json.dumps(doc.get("config"), sort_keys=True)),
        (
            "result rows / dropped / incomplete points",
            f"{doc.get('n_rows')} / {doc.get('dropped_rows')} / {doc.get('incomplete_points')}",
        ),
        ("families in this report", ", ".join(made_by) or "-"),
        *((f"version: {k}", v) for k, v in versions().items()),
    ]
    rows += [
        (str(k), json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
        for k, v in sorted((provenance or {}).items())
    ]
    rows += [("warning", p) for p in inp.problems]
    return rows


def relative_pages(store: Store, dataset: dict) -> dict:
    """The dataset's validation pages linked relative to the report page (reports/<sha>/index.html):
    they then open wherever the store is read from, a local directory or the report server."""
    pages = {
        kind: "../../" + as_key(store, url) if url and as_key(store, url) != url else url
        for kind, url in (dataset.get("validation") or {}).items()
    }
    return dataset | {"validation": pages}


def sections(
    store: Store, fit_key: str, inp: Inputs, claims: list[dict], datasets: list[dict], provenance: dict | None
) -> tuple[dict[str, str], list]:
    """Each section's HTML, and the figures (whose PNGs are also stored beside the page)."""
    doc, fam = inp.doc, inp.family
    figs = [
        scaling_plot(inp.latest, inp.table, fam, fam),
        dtype_plot(inp.latest, fam),
        block_plot(inp.latest, fam),
        *law_figures(inp.latest, inp.table, doc, fam),
        *joint_figures(inp.table, doc, fam),
    ]
    by_id = {f.id: figure(f) for f in figs}
    thresholds = [e for e in doc.get("threshold", []) if e.get("family") == fam]
    parts = {
        "scaling": by_id["scaling"],
        "claims": claims_html(claims, fam),
        "types": by_id["dtypes"] + by_id["blocks"],
        "laws": "<h3>Critical size S*</h3>"
        + by_id["threshold"]
        + threshold_table([e for e in thresholds if e["metric"] == "mean_acc"])
        + "<details><summary>S* per dataset</summary>"
        + threshold_table([e for e in thresholds if e["metric"] != "mean_acc"])
        + "</details><h3>Quantization damage across training</h3>"
        + by_id["damage"]
        + damage_table([e for e in doc.get("damage", []) if e.get("family") == fam])
        + "<h3>Extrapolation checks</h3>"
        + by_id["extrapolation"]
        + extrapolation_table([c for c in doc.get("extrapolation", []) if c.get("family") == fam]),
        "heading": heading_html(doc, fam, by_id),
        "metrics": metrics_html(inp.points),
        "datasets": datasets_html([relative_pages(store, d) for d in datasets]),
        "provenance": provenance_html(provenance_rows(store, fit_key, inp, provenance), inp.keys),
    }
    return parts, figs


def heading_html(doc: dict, family: str, by_id: dict[str, str]) -> str:
    """Where the family is heading: the joint law's forecast, its numbers, and its running check."""
    entry, level = joint_entry(doc, family), level_of(doc)
    text = joint_law_html(entry, "joint_law" in doc, family, level)
    if entry is None:
        return text
    running = [c for c in entry.get("running_check") or [] if c.get("family", family) == family]
    check_fig = by_id["running_check"] if running and "<img" in by_id["running_check"] else ""
    return (
        by_id["heading"]
        + text
        + in_progress_html(entry.get("in_progress") or [], level)
        + "<h3>Past predictions against what came in</h3>"
        + running_check_table(running, level)
        + check_fig
    )


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
    except (KeyError, ValueError, FileNotFoundError, StoreError):
        return None  # an unreadable previous report: this one starts a new history


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

    `results_keys`: the results the fit was made of (default: every results object);
    `datasets`: per dataset {"name", "sha", "summary", "validation": {"json", "html"}} (default:
    read from the store); `provenance`: extra items to show (flow run id, grid, ...).
    Returns {"key", "url", "summary", "cached"}; latest.json then points at this report.
    """
    fit_key = as_key(store, fit_key)
    fit_hash = sha256_bytes(store.read_bytes(fit_key))
    results_sha = store.read_json(fit_key)["results_sha"]
    keys = report_keys(results_sha)
    if not force and store.exists(keys["summary"]) and store.exists(keys["html"]):
        summary = store.read_json(keys["summary"])
        if summary.get("fit_sha256") == fit_hash:
            point_latest(store, summary)
            return {"key": keys["html"], "url": store.url(keys["html"]), "summary": summary, "cached": True}
    inp = load_inputs(store, fit_key, results_keys)
    datasets = datasets if datasets is not None else datasets_from_store(store, inp.dataset_versions)
    # The fit document carries the verdicts (a fit from before they were part of it: checked here).
    stored = [c for c in inp.doc.get("claims", []) if c.get("family") == inp.family]
    claims = stored or check_claims(inp.latest, inp.points, inp.doc)
    summary = headline(inp.doc, inp.table, inp.latest, inp.family, claims)
    summary |= {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "fit_key": fit_key,
        "fit_url": store.url(fit_key),
        "fit_sha256": fit_hash,
        "report_key": keys["html"],
        "report_url": store.url(keys["html"]),
        "summary_key": keys["summary"],
        "datasets": [
            {"name": d.get("name"), "sha": d.get("sha"), "validation": d.get("validation") or {}}
            for d in datasets
        ],
        "provenance": provenance or {},
    }
    summary["changes"] = changes_since(previous_summary(store, results_sha), summary)
    summary = json_safe(summary)
    parts, figs = sections(store, fit_key, inp, claims, datasets, provenance)
    for f in figs:
        if f.png is not None:
            store.write_bytes(report_key(results_sha, f"{f.id}.png"), f.png)
    store.write_bytes(keys["html"], page(summary, parts).encode())
    store.write_json(keys["summary"], summary)  # after the page: its presence means the report is complete
    point_latest(store, summary)
    return {"key": keys["html"], "url": store.url(keys["html"]), "summary": summary, "cached": False}


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
