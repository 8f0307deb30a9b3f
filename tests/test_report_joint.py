"""The report's "Where this family is heading" section: the joint law's forecast figure, its numbers
with intervals, and the running check (past predictions against what came in), on a simulated store
fitted twice (the second fit's new checkpoints are checked against the first fit's law); and the
section of a fit that predates the joint law, or whose joint law is a list or could not be fitted."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kbitlaw.law.document import FitConfig
from kbitlaw.law.io import LATEST, fit_store
from kbitlaw.law.sim import World, simulate_results
from kbitlaw.report.build import build_report
from kbitlaw.report.html_joint import NO_RUNNING_CHECK, RUNNING_CHECK_ROWS, sig
from kbitlaw.store import Store, fit_keys
from tests.test_report import CHANCE, put_results

SPECS = ["fp16", "int8-b64", "int4-b64", "int3-b64", "nf4-b64", "nf3-b64"]
SIZES = list(1e7 * 4.0 ** np.arange(4))
TOKENS = list(2e9 * 4.0 ** np.arange(4))  # a range of tokens wide enough for the gates to identify E
CONFIG = FitConfig(n_boot=50, chance=CHANCE)
PNG = b"\x89PNG\r\n\x1a\n"


def section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start : html.index("</section>", start)]


def page(store: Store, report: dict) -> str:
    return store.read_bytes(report["key"]).decode()


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory):
    """Fit the first three checkpoints of each size and report, then fit all four and report."""
    df = simulate_results(SIZES, TOKENS, SPECS, world=World(loss_noise=0.001), seed=3)
    root = tmp_path_factory.mktemp("joint") / "store"
    store = Store(root)
    put_results(store, df.filter(pl.col("tokens_seen") < max(TOKENS)))
    first = fit_store(store, CONFIG)
    first_report = build_report(store, first.key)
    put_results(store, df)
    second = fit_store(store, CONFIG)
    assert store.read_json(LATEST)["fit"] == second.key
    report = build_report(store, second.key)
    return {
        "root": root,
        "store": store,
        "first": first,
        "first_report": first_report,
        "doc": second.doc,
        "key": second.key,
        "report": report,
    }


def test_section_sits_after_the_laws_with_its_figures(two_fits):
    store, doc = two_fits["store"], two_fits["doc"]
    html = page(store, two_fits["report"])
    assert '<a href="#heading">Where this family is heading</a>' in html
    assert html.index('<section id="laws">') < html.index('<section id="heading">')
    assert html.index('<section id="heading">') < html.index('<section id="metrics">')
    part = section(html, "heading")
    assert "<h2>Where this family is heading</h2>" in part
    assert '<figure id="fig-heading"><img' in part and "90% prediction interval" in part
    assert '<figure id="fig-running_check"><img' in part
    for name in ("heading", "running_check"):
        assert store.read_bytes(f"reports/{doc['results_sha']}/{name}.png")[:8] == PNG


def test_law_line_shows_the_fitted_numbers(two_fits):
    entry = two_fits["doc"]["joint_law"][0]
    assert isinstance(entry, dict) and entry["status"] == "ok"
    part = section(page(two_fits["store"], two_fits["report"]), "heading")
    for p, name in (("E", "E"), ("A", "A"), ("alpha", "α"), ("B", "B"), ("beta", "β")):
        lo, hi = entry["ci"][p]
        assert f"{name} = {sig(entry[p])} [{sig(lo)}, {sig(hi)}]" in part
    assert "(90% intervals)" in part
    for scheme in entry["damage"]["schemes"]:
        code = scheme["scheme"].replace("<", "&lt;").replace(">", "&gt;")
        assert f"<code>{code}</code>: {scheme['form']} form" in part
        assert f"held-out error {sig(scheme['heldout_error'], 2)} noise SDs" in part
    for h in (entry["held_out"]["largest_size"], entry["held_out"]["latest_checkpoint"]):
        assert h["status"] == "ok"
        assert f"RMS error {sig(h['rms_error'], 2)} nats, {h['flagged']} of {h['points']} points" in part


def test_running_check_table_lists_past_predictions_newest_first(two_fits):
    doc, first = two_fits["doc"], two_fits["first"]
    running = doc["joint_law"][0]["running_check"]
    assert running and all(c["predicted_by"] == first.doc["results_sha"] for c in running)
    part = section(page(two_fits["store"], two_fits["report"]), "heading")
    assert "<h3>Past predictions against what came in</h3>" in part
    table = part[part.index('<table class="running">') :]
    rows = re.findall(r"<tr><td>(.*?)</tr>", table)
    assert len(rows) == min(len(running), RUNNING_CHECK_ROWS)
    flagged = sum(c["flagged"] for c in running)
    assert f"{len(running)} predictions checked so far, {flagged} outside the tolerance" in part
    newest = max(c["tokens_seen"] for c in running)
    top = max(c["n_params"] for c in running if c["tokens_seen"] == newest)
    first_row = next(
        c for c in running if (c["tokens_seen"], c["n_params"], c["quant"]) == (newest, top, "fp16")
    )
    assert f"<code>{first_row['held_out']}</code>" in rows[0] and "<td>fp16</td>" in rows[0]
    assert f"{sig(first_row['predicted'], 4)} [" in rows[0]
    assert sig(first_row["observed"], 4) in rows[0]
    assert first.doc["results_sha"][:12] in rows[0]
    assert all(("v-contradicted" in r) != ("v-supported" in r) for r in rows)  # inside or outside


def test_first_fit_has_no_running_check_yet(two_fits):
    store, first = two_fits["store"], two_fits["first"]
    assert first.doc["joint_law"][0]["running_check"] == []
    part = section(page(store, two_fits["first_report"]), "heading")
    assert NO_RUNNING_CHECK.replace("'", "&#x27;") in part
    assert '<table class="running">' not in part and "fig-running_check" not in part
    assert '<figure id="fig-heading"><img' in part  # the forecast is there from the first fit


def rewritten(two_fits, tmp_path: Path, change) -> tuple[Store, str, dict]:
    """A copy of the store (without its reports) whose latest fit document and table `change`
    rewrote; the report's heading section."""
    root = tmp_path / "store"
    shutil.copytree(two_fits["root"], root, ignore=shutil.ignore_patterns("reports"))
    store = Store(root)
    key = two_fits["key"]
    doc, table = change(
        dict(store.read_json(key)), store.read_parquet(fit_keys(two_fits["doc"]["results_sha"])[1])
    )
    store.write_json(key, doc)
    store.write_parquet(fit_keys(doc["results_sha"])[1], table)
    report = build_report(store, key, force=True)
    return store, section(page(store, report), "heading"), report


def test_a_fit_from_before_the_joint_law_still_renders(two_fits, tmp_path):
    def old(doc, table):
        doc.pop("joint_law")
        return doc, table.filter(pl.col("law").is_null() | (pl.col("law") != "joint"))

    store, part, report = rewritten(two_fits, tmp_path, old)
    assert "This fit predates the joint law" in part
    assert "<img" not in part and "Past predictions" not in part
    html = page(store, report)
    assert '<section id="laws">' in html and '<section id="metrics">' in html
    assert not store.exists(f"reports/{two_fits['doc']['results_sha']}/heading.png")


def test_a_list_of_joint_laws_picks_the_reports_family(two_fits, tmp_path):
    entry = two_fits["doc"]["joint_law"][0]

    def as_list(doc, table):
        other = {**entry, "family": "other", "E": 9.87654}
        return doc | {"joint_law": [other, entry]}, table

    _, part, _ = rewritten(two_fits, tmp_path, as_list)
    lo, hi = entry["ci"]["E"]
    assert f"E = {sig(entry['E'])} [{sig(lo)}, {sig(hi)}]" in part and "9.88" not in part
    assert '<figure id="fig-heading"><img' in part and '<table class="running">' in part


def test_an_unfitted_joint_law_says_insufficient_data(two_fits, tmp_path):
    def unfitted(doc, table):
        entry = {"family": "sim", "status": "insufficient data", "reason": "2 16-bit checkpoint losses"}
        return doc | {"joint_law": [entry]}, table

    _, part, _ = rewritten(two_fits, tmp_path, unfitted)
    assert "is not usable: insufficient data: 2 16-bit checkpoint losses" in part
    assert "fig-heading" in part and "<img" not in part


def test_a_joint_law_that_is_not_ok_shows_no_numbers(two_fits, tmp_path):
    entry = two_fits["doc"]["joint_law"][0]

    def failed(doc, table):
        return doc | {
            "joint_law": [entry | {"status": "unidentified", "unidentified": ["A", "alpha"]}]
        }, table

    _, part, report = rewritten(two_fits, tmp_path, failed)
    assert "is not usable: not identified: A, alpha" in part
    assert "16-bit law" not in part and f"E = {sig(entry['E'])}" not in part
    assert '<figure id="fig-heading"><img' not in part  # no forecast drawn from it
    assert "Past predictions against what came in" in part  # what came in is still shown
    assert report["section_errors"] == []
