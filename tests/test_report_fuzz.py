"""The report never crashes on a fit document, however broken, and honours every entry's status.

The base document is the law stage's fit of the real demo family (../shared/realdata, fitted once
per session: tests/realdata.py), with every status set to ok so that the broken numbers reach the
code that draws and prints them, and a run in progress and a running check added so that their
fields are broken too. Every field of it in turn missing, null, NaN, +-inf, 1e300 or negative, and
every status field set to every status (tests/fitdoc_fuzz.py), is rendered through every section
(without figures, which are slow); an evenly spread sample goes through the whole build_report
with its figures. Each must render with no part failing, show no NaN or inf, and an entry made
not ok must read as its status in words ("not identified: ...", "failed: ...") instead of numbers.

Then the real document as the gates left it, and the isolation itself: a part that raises is
replaced by its error line, on the page and in `section_errors`, the headline intact.
"""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fitdoc_fuzz import mutations, sample

import kbitlaw.report.figures as figures_module
from kbitlaw.law import fitdoc
from kbitlaw.report import sections
from kbitlaw.report.build import build_report, render
from kbitlaw.report.inputs import inputs_from
from kbitlaw.status import OK, STATUSES
from kbitlaw.store import LATEST_FIT, Store

pytestmark = pytest.mark.slow

FIGURE_SAMPLE = 8  # mutated documents built with their figures (about 2 s each at a low DPI)
LAW_SECTIONS = ("threshold", "power_law", "damage")
NON_FINITE = re.compile(r"(?<![\w.-])-?(nan|inf|infinity)(?![\w-])", re.IGNORECASE)


@pytest.fixture(scope="module")
def real(real_fit_store: Path, tmp_path_factory) -> SimpleNamespace:
    """A copy of the fitted real store (reports are written into it), its fit key, document, table."""
    root = tmp_path_factory.mktemp("report-fuzz") / "store"
    shutil.copytree(real_fit_store, root, ignore=shutil.ignore_patterns("reports"))
    store = Store(str(root))
    key = store.read_json(LATEST_FIT)["fit"]
    table = store.read_parquet(key.replace("fit.json", "fit.parquet"))
    return SimpleNamespace(root=root, store=store, key=key, doc=store.read_json(key), table=table)


def set_ok(obj: object) -> None:
    """Every entry with a status made ok, in place (whatever the gates said of the real data)."""
    if isinstance(obj, dict):
        if obj.get("status") in STATUSES:
            obj["status"], obj["reason"] = OK, "passed its gates"
        for v in obj.values():
            set_ok(v)
    elif isinstance(obj, list):
        for v in obj:
            set_ok(v)


@pytest.fixture(scope="module")
def base(finished_real_doc: dict) -> dict:
    # every checkpoint declared finished (conftest.finished_real_doc): the joint law has numbers to break
    return report_base(finished_real_doc)


# What the report does not read, left out of the base so that the fuzz spends its time on what it
# does: the gates' description, the curves (their samples are in the table), how sizes were matched,
# predict's joint-law model, the held-out checks behind each summary, the damage laws' predictions
# for the next checkpoint and their noise settings.
UNREAD = ("gates", "curves", "matching")
UNREAD_IN_ENTRY = {
    "joint_law": ("model", "checkpoint_ids", "centre", "ci_centre"),
    "damage": ("next_checkpoint", "centre", "ci_centre", "noise", "bounds", "width_holdout_errors"),
    "threshold": ("bounds",),
    "power_law": ("bounds", "centre", "ci_centre"),
    "recommendations": ("p_best_quant",),
}


def few(entries: list, key: str, n: int) -> list:
    """The first n entries of each value of `key`: the long lists keep every kind of entry (each
    mutation changes a field in all of them alike) at a fraction of the time to copy and render."""
    seen: dict = {}
    return [e for e in entries if seen.setdefault(e.get(key), []).append(e) or len(seen[e.get(key)]) <= n]


def report_base(real_doc: dict) -> dict:
    """The real document as the report reads it (UNREAD left out, the per-dataset S* fits and the
    extrapolation checks cut to a few of each kind), every status ok, and a run in progress and a
    running check added to its joint law."""
    doc = {k: copy.deepcopy(v) for k, v in real_doc.items() if k not in UNREAD}
    on_acc = [e for e in doc["threshold"] if e["metric"] == "mean_acc"]  # the figure's candidates
    doc["threshold"] = on_acc + few([e for e in doc["threshold"] if e not in on_acc], "metric", 1)
    doc["extrapolation"] = few(doc["extrapolation"], "law", 3)
    for section, keys in UNREAD_IN_ENTRY.items():
        for e in fitdoc.entries(doc, section):
            for k in keys:
                e.pop(k, None)
    doc["recommendation"].pop("p_best_quant", None)
    (entry,) = doc["joint_law"]
    checks = entry["held_out"]["largest_size"]["checks"][:2]
    for held in entry["held_out"].values():
        held.pop("checks", None)
    entry["running_check"] = [c | {"predicted_by": "0" * 64} for c in checks]
    entry["in_progress"] = [
        {
            "checkpoint_id": "demo/run/step-10",
            "tokens_seen": 1e5,
            "tokens_planned": 4e6,
            "predictions": [
                {"quant": "fp16", "loss": 1.5, "ci": [1.4, 1.6], "damage": 0.0, "damage_ci": [0.0, 0.0]},
                {
                    "quant": "int4-b64",
                    "loss": 1.52,
                    "ci": [1.41, 1.63],
                    "damage": 0.02,
                    "damage_ci": [0.01, 0.03],
                },
            ],
        }
    ]
    set_ok(doc)
    return json.loads(json.dumps(doc))


def page_text(page: str, drop: tuple[str, ...] = ("provenance", "metrics")) -> str:
    """The page's text without its tags, the dropped sections left out: the provenance shows the
    document's settings verbatim (NaN included), the metrics come from the table alone."""
    for sid in drop:
        start = page.find(f'<section id="{sid}">')
        if start >= 0:
            page = page[:start] + page[page.index("</section>", start) :]
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"data:image/png;base64,[^\"']+", "", page)))


def check_page(label: str, doc: object, out, page: str, family: str = "demo") -> None:
    """No part failed, no NaN or inf shown, and a section whose status was broken reads as its
    status in words, without its numbers."""
    assert out["errors"] == [], (label, out["errors"])
    text = page_text(page)
    found = NON_FINITE.search(text)
    assert found is None, (label, text[max(found.start() - 80, 0) : found.end() + 40])
    section, _, field = label.partition("[]")
    if field.startswith(".status=") or label.startswith("recommendation.status="):
        check_status(section.split(".")[0], doc, out, text, family)


def check_status(section: str, doc: dict, out, text: str, family: str) -> None:
    summary = out["summary"]
    mine = [e for e in fitdoc.entries(doc, section) if e.get("family") == family]
    if section in LAW_SECTIONS:
        for e in mine:  # every entry is listed; those not ok by their status in words
            if not fitdoc.usable(e):
                assert fitdoc.describe(e) in text, (section, fitdoc.describe(e))
    if section == "threshold" and mine and not fitdoc.usable(mine[0]):
        assert summary["s_star"]["status"] != OK and "Critical size S*: " in text
    if section == "joint_law" and mine and not fitdoc.usable(mine[0]):
        assert f"is not usable: {fitdoc.describe(mine[0])}" in text
        assert "16-bit law" not in text and "Runs in progress" not in text
    if section == "recommendations" and mine and not any(fitdoc.usable(r) for r in mine):
        assert summary["recommendation"]["status"] != OK and "Deploy at" not in text
    if section == "recommendation" and not fitdoc.usable(fitdoc.recommendation(doc)):
        assert summary["recommendation"]["status"] != OK and "Deploy at" not in text
        assert fitdoc.describe(fitdoc.recommendation(doc)) in text


def test_every_broken_document_renders_without_figures(real, base, monkeypatch):
    # The metrics table is the table's alone (no field of the document reaches it) and the
    # slowest part to render: once, here, instead of once per document.
    metrics = sections.metrics_html(inputs_from(base, real.table).points)
    monkeypatch.setattr(sections, "metrics_html", lambda *args: metrics)
    count = 0
    for label, doc in mutations(base):  # lazily: it checks at its end that no reader changed base
        count += 1
        inp = inputs_from(doc, real.table)
        out = render(real.store, real.key, inp, datasets=[], figures=False)
        check_page(label, doc, {"errors": out.errors, "summary": out.summary}, out.html)
    assert count > 1000  # every field of every section the report reads


def test_a_sample_builds_with_its_figures(real, base, monkeypatch):
    monkeypatch.setattr(figures_module, "DPI", 30)  # the same drawing code, a smaller PNG
    drawn = ("threshold", "damage", "extrapolation", "joint_law", "recommendation", "config")
    before = json.dumps(base, sort_keys=True)  # the broken documents share its unchanged parts
    broken = [(label, doc) for label, doc in mutations(base) if label.startswith(drawn)]
    for label, doc in [("<base>", base), *sample(broken, FIGURE_SAMPLE)]:
        real.store.write_bytes(real.key, json.dumps(doc).encode())  # NaN and inf as JSON allows them
        report = build_report(real.store, real.key, force=True, datasets=[])
        page = real.store.read_bytes(report["key"]).decode()
        out = {"errors": report["section_errors"], "summary": report["summary"]}
        check_page(label, doc, out, page)
        if label == "<base>":
            assert page.count("<img") >= 7, "every figure of an all-ok document is drawn"
    real.store.write_json(real.key, real.doc)
    assert json.dumps(base, sort_keys=True) == before, "building a report changed its fit document"


def test_the_real_document_as_gated(real):
    """The real fit as the gates left it: every entry that is not ok is listed by its status in
    words, the headline uses only ok entries, and nothing fails."""
    real.store.write_json(real.key, real.doc)
    report = build_report(real.store, real.key, force=True)
    assert report["section_errors"] == []
    text = page_text(real.store.read_bytes(report["key"]).decode(), drop=("provenance",))
    doc = real.doc
    for section in LAW_SECTIONS:
        for e in fitdoc.entries(doc, section):
            if not fitdoc.usable(e):
                assert fitdoc.describe(e) in text, (section, e.get("quant") or e.get("scheme"))
    (joint,) = fitdoc.joint_laws(doc)
    if not fitdoc.usable(joint):
        assert f"is not usable: {fitdoc.describe(joint)}" in text and "16-bit law" not in text
    s_star = report["summary"]["s_star"]
    if s_star["status"] == OK:
        entry = next(
            e
            for e in fitdoc.entries(doc, "threshold")
            if e["quant"] == s_star["quant"] and e["metric"] == "mean_acc"
        )
        assert fitdoc.usable(entry)
    assert "Metrics" in text and "(checkpoint, spec) rows" in text  # from the fit's table


def test_a_part_that_raises_is_one_line_in_its_place(real, monkeypatch):
    real.store.write_json(real.key, real.doc)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the damage table")

    monkeypatch.setattr(sections, "damage_table", broken)
    monkeypatch.setattr(sections, "extrapolation_plot", broken)
    report = build_report(real.store, real.key, force=True, datasets=[])
    lines = report["section_errors"]
    assert lines == [
        "figure extrapolation: ZeroDivisionError: a bug in the damage table",
        "damage table: ZeroDivisionError: a bug in the damage table",
    ]
    page = real.store.read_bytes(report["key"]).decode()
    for line in lines:
        assert page.count(html.escape(line)) == 2  # in its place, and listed under the headline
    assert report["summary"]["section_errors"] == lines
    assert report["summary"]["recommendation"] == build_headline(real)  # the headline intact
    again = build_report(real.store, real.key, datasets=[])
    assert not again["cached"], "a report with a failed part is rebuilt, not served from the cache"


def build_headline(real) -> dict:
    from kbitlaw.report.headline import headline

    inp = inputs_from(real.doc, real.table)
    return headline(real.doc, inp.table, inp.latest, inp.family, sections.family_claims(inp.fit, inp.family))[
        "recommendation"
    ]


def test_a_failing_headline_still_writes_the_page(real, monkeypatch):
    from kbitlaw.report import build

    def broken(*args, **kwargs):
        raise KeyError("recommendation")

    monkeypatch.setattr(build, "headline", broken)
    report = build_report(real.store, real.key, force=True, datasets=[])
    assert report["section_errors"] == ["headline: KeyError: 'recommendation'"]
    assert report["summary"]["recommendation"]["status"] == "failed"
    page = real.store.read_bytes(report["key"]).decode()
    assert "Recommended precision: failed" in page and '<section id="laws">' in page


def test_a_document_that_is_not_json(real):
    real.store.write_bytes(real.key, b"{not json")
    try:
        report = build_report(real.store, real.key, force=True, datasets=[])
    finally:
        real.store.write_json(real.key, real.doc)
    (line,) = report["section_errors"]
    assert line.startswith("fit document: JSONDecodeError: ")
    page = real.store.read_bytes(report["key"]).decode()
    assert html.escape(line) in page and "Recommended precision: insufficient data" in page


def test_a_page_that_cannot_be_assembled_still_names_its_error(real, monkeypatch):
    from kbitlaw.report import build

    def broken(*args, **kwargs):
        raise RuntimeError("the page template")

    monkeypatch.setattr(build, "page", broken)
    report = build_report(real.store, real.key, force=True, datasets=[])
    assert report["section_errors"] == ["page: RuntimeError: the page template"]
    assert "page: RuntimeError: the page template" in real.store.read_bytes(report["key"]).decode()
