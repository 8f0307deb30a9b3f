"""The report's sections, each part rendered in isolation (report/guard.py): the figures, the
claims, the laws (S*, the loss power law, damage, the extrapolation checks), where the family is
heading (the joint law), the metrics, the datasets and the provenance. Everything comes from the
fit's document and table (report/inputs.py); a part that fails becomes one error line in place.
"""

from __future__ import annotations

import functools
import json
import platform
from importlib import metadata
from typing import Any

from kbitlaw.law.fitdoc import FitDocument, entries, joint_law_for, usable
from kbitlaw.report.figures import Figure, block_plot, dtype_plot, scaling_plot
from kbitlaw.report.figures_joint import heading_plot, running_check_plot, running_checks
from kbitlaw.report.figures_laws import damage_plot, extrapolation_plot, threshold_plot
from kbitlaw.report.guard import Guard
from kbitlaw.report.html import (
    claims_html,
    damage_table,
    extrapolation_table,
    figure,
    link,
    power_law_table,
    threshold_table,
)
from kbitlaw.report.html_data import RawHtml, datasets_html, metrics_html, provenance_html
from kbitlaw.report.html_joint import in_progress_html, joint_law_html, running_check_table
from kbitlaw.report.inputs import PREDATES_POINTS, Inputs, as_key
from kbitlaw.store import Store
from kbitlaw.vocab import MEAN_ACC

# id, title (the title names a figure that failed before it could say its own)
FIGURES = (
    ("scaling", "Accuracy versus total model bits"),
    ("dtypes", "Data types compared at 3 and 4 bits"),
    ("blocks", "Block size against bits"),
    ("threshold", "Threshold law and the critical size S*"),
    ("damage", "Quantization damage versus training tokens"),
    ("extrapolation", "Extrapolation checks"),
    ("heading", "Where this family is heading"),
    ("running_check", "Past predictions against what came in"),
)
NOT_DRAWN = "figures are not drawn in this rendering"


def family_claims(fit: FitDocument, family: str) -> list[dict]:
    """The fit's checked claims for the family (the fit holds the verdicts; none are re-checked)."""
    return [c for c in fit.entries("claims") if c.get("family") == family]


def draw_figures(guard: Guard, inp: Inputs, draw: bool) -> dict[str, Figure]:
    """Every figure by id, each drawn in isolation; with draw=False, a note in each's place."""
    doc, fam, table, latest = inp.doc, inp.family, inp.table, inp.latest
    calls = {
        "scaling": (scaling_plot, latest, table, fam, fam),
        "dtypes": (dtype_plot, latest, fam),
        "blocks": (block_plot, latest, fam),
        "threshold": (threshold_plot, latest, table, doc, fam),
        "damage": (damage_plot, table, doc, fam),
        "extrapolation": (extrapolation_plot, doc, fam),
        "heading": (heading_plot, table, doc, fam),
        "running_check": (running_check_plot, doc, fam),
    }
    out = {}
    for fig_id, title in FIGURES:
        fn, *args = calls[fig_id]
        out[fig_id] = (
            guard.figure(fig_id, title, fn, *args) if draw else Figure(fig_id, title, "", note=NOT_DRAWN)
        )
    return out


def laws_html(guard: Guard, inp: Inputs, by_id: dict[str, str]) -> str:
    """S*, the loss power law, damage across training and the extrapolation checks: each table
    lists every entry of the family, with numbers only for the ok ones."""
    fam = inp.family
    mine = {s: [e for e in inp.fit.entries(s) if e.get("family") == fam] for s in ("threshold", "power_law")}
    on_acc = [e for e in mine["threshold"] if e.get("metric") == MEAN_ACC]
    per_dataset = [e for e in mine["threshold"] if e.get("metric") != MEAN_ACC]
    damage = [e for e in inp.fit.entries("damage") if e.get("family") == fam]
    checks = [c for c in inp.fit.entries("extrapolation") if c.get("family") == fam]
    return (
        "<h3>Critical size S*</h3>"
        + by_id["threshold"]
        + guard.html("S* table", threshold_table, on_acc)
        + "<details><summary>S* per dataset</summary>"
        + guard.html("S* per dataset table", threshold_table, per_dataset)
        + "</details><details><summary>Loss power law over total bits, per spec</summary>"
        + guard.html("power law table", power_law_table, mine["power_law"])
        + "</details><h3>Quantization damage across training</h3>"
        + by_id["damage"]
        + guard.html("damage table", damage_table, damage)
        + "<h3>Extrapolation checks</h3>"
        + by_id["extrapolation"]
        + guard.html("extrapolation table", extrapolation_table, checks)
    )


def heading_html(guard: Guard, inp: Inputs, by_id: dict[str, str]) -> str:
    """Where the family is heading: the joint law's forecast, its numbers (ok entries only), the
    runs in progress, and its running check (past predictions against what came in)."""
    fam, level = inp.family, inp.fit.level
    entry = joint_law_for(inp.doc, fam)
    text = guard.html("joint law", joint_law_html, entry, "joint_law" in inp.doc, fam, level)
    if entry is None:
        return text
    running = running_checks(entry, fam)
    check_fig = by_id["running_check"] if running and "<img" in by_id["running_check"] else ""
    progress = (
        guard.html("runs in progress", in_progress_html, entries(entry, "in_progress"), level)
        if usable(entry)  # a law that is not usable predicts nothing
        else ""
    )
    return (
        by_id["heading"]
        + text
        + progress
        + "<h3>Past predictions against what came in</h3>"
        + guard.html("running check table", running_check_table, running, level)
        + check_fig
    )


def render_sections(
    guard: Guard,
    store: Store,
    inp: Inputs,
    claims: list[dict],
    datasets: list[dict],
    provenance: list[tuple[str, Any]],
    draw: bool = True,
) -> tuple[dict[str, str], list[Figure]]:
    """Each section's HTML, and the figures (whose PNGs are stored beside the page)."""
    figs = draw_figures(guard, inp, draw)
    by_id = {i: guard.html(f"figure {i}", figure, f) for i, f in figs.items()}
    predates = PREDATES_POINTS in inp.problems
    parts = {
        "scaling": by_id["scaling"],
        "claims": guard.html("claims table", claims_html, claims, inp.family),
        "types": by_id["dtypes"] + by_id["blocks"],
        "laws": laws_html(guard, inp, by_id),
        "heading": heading_html(guard, inp, by_id),
        "metrics": guard.html("metrics table", metrics_html, inp.points, predates),
        "datasets": guard.html(
            "datasets table",
            datasets_html,
            [relative_pages(store, d) for d in datasets if isinstance(d, dict)],
        ),
        "provenance": guard.html("provenance", provenance_html, provenance, inp.keys),
    }
    return parts, list(figs.values())


def relative_pages(store: Store, dataset: dict) -> dict:
    """The dataset's validation pages linked relative to the report page (reports/<sha>/index.html):
    they then open wherever the store is read from, a local directory or the report server."""
    found = dataset.get("validation")
    pages = {
        kind: "../../" + as_key(store, url) if isinstance(url, str) and as_key(store, url) != url else url
        for kind, url in (found.items() if isinstance(found, dict) else [])
    }
    return dataset | {"validation": pages}


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """The software that made the report (looked up once: reading package metadata is slow)."""
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
    """The fit's identity and settings, the software, the caller's items and the warnings. Values
    from the document are text (escaped on the page); only the link made here is HTML."""
    doc = inp.doc
    rows: list[tuple[str, Any]] = [
        ("store", store.uri),
        ("fit", RawHtml(link(store.url(fit_key), fit_key))),
        ("results sha", inp.fit.results_sha),
        ("law version", doc.get("law_version")),
        ("schema version", doc.get("schema_version")),
        ("fit config", json.dumps(doc.get("config"), sort_keys=True, default=str)),
        (
            "result rows / dropped / incomplete points",
            f"{doc.get('n_rows')} / {doc.get('dropped_rows')} / {doc.get('incomplete_points')}",
        ),
        ("family in this report", inp.family),
        ("results keys", len(inp.keys) if inp.keys else "not passed to this report"),
        *((f"version: {k}", v) for k, v in dict(versions()).items()),
    ]
    rows += [
        (str(k), json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v)
        for k, v in sorted((provenance or {}).items())
    ]
    rows += [("warning", p) for p in inp.problems]
    return rows
