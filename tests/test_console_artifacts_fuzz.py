"""The console fit summary and the Prefect summary artifact on real data and on every broken
version of it (tests/fitdoc_fuzz.py): they say what the fit says, and never raise.

The real data is a demo family trained on another machine (tests/realdata.py: ../shared/realdata,
present in CI; a missing archive fails, it is not skipped); its fit has laws that are not
identified or failed.
"""

from __future__ import annotations

import io

import pytest

from kbitlaw.flows.cli.console_fit import _rows, fit_summary, joint_law_line, recommendation_line
from kbitlaw.flows.summary import summary_markdown
from kbitlaw.law.fitdoc import FitDocument, describe, usable
from tests.fitdoc_fuzz import mutations

pytestmark = pytest.mark.slow

FULL_CONSOLE_EVERY = 10  # rich's table rendering costs ~30 ms: the full print on every 10th document
RUN = {
    "checkpoints": 11,
    "new_checkpoints": 0,
    "failed_checkpoints": 1,
    "evaluations": {"computed": 0, "cached": 121, "failed": 0},
    "problems": ["unusable checkpoint: demo/h128-l4/step-400: model.safetensors: truncated"],
}


def console_text(doc, where=("fits/x/fit.json", True)) -> str:
    from rich.console import Console

    out = io.StringIO()
    fit_summary(doc, where, Console(file=out, width=160))
    return out.getvalue()


def test_the_summary_says_what_the_real_fit_says(finished_real_doc):
    doc = FitDocument.of(finished_real_doc)
    rec = doc.recommendation
    md = summary_markdown(None, RUN, finished_real_doc)
    assert f"**Recommended precision: `{rec['quant']}` ({rec['bits']}-bit)**" in md
    if rec.get("clear"):
        assert "clear: P(best)" in md
    else:  # this family's answer is not clear: say so, and name the contenders
        assert "**not clear**" in md
        for width in rec["contenders"]:
            assert f"{width}-bit (P(best)" in md
    assert "| checkpoints failed (unreadable) | 1 |" in md and RUN["problems"][0] in md
    bad = doc.not_usable()
    assert f"**Not usable** ({len(bad)}:" in md
    first = [e for e in doc.joint_laws + doc.entries("damage") if any(e is b for b in bad)]
    for e in first[:3]:  # the joint law and the damage laws first, each with its reason
        assert describe(e) in md
    for e in doc.joint_laws:
        if not usable(e):  # a law that is not usable shows no numbers, only why
            assert "Where this family is heading" not in md
            assert f"joint law {e['family']}: {describe(e)}" in md
            rms = (e.get("held_out") or {}).get("latest_checkpoint", {}).get("rms_error")
            assert rms is None or f"RMS {rms:.3g}" not in md


def test_the_console_says_what_the_real_fit_says(finished_real_doc):
    doc = FitDocument.of(finished_real_doc)
    text = console_text(finished_real_doc)
    assert "recommended precision" in text and doc.results_sha[:12] in text
    rows = _rows(doc)
    for row, e in zip(rows, [e for e in doc.entries("power_law")], strict=False):
        assert row[-1] == e["status"]
        if not usable(e):
            assert row[4] == describe(e) and row[5] == "-"  # the reason, never the estimates
    for e in doc.joint_laws:
        line = joint_law_line(e)
        assert line in " ".join(text.split()) or not usable(e)
        if not usable(e):
            assert line == f"joint law {e['family']}: {describe(e)}"


def test_no_broken_document_makes_them_raise(finished_real_doc):
    """Every field of the real fit in turn missing, null, NaN, +-inf, 1e300, negative, every status
    field at every status: the artifact's markdown and the console summary render."""
    failures, count = [], 0
    for i, (label, broken) in enumerate(mutations(finished_real_doc)):
        count += 1
        try:
            summary_markdown(None, RUN, broken)
            summary_markdown({"key": "reports/x/index.html", "url": "/s/reports/x/index.html"}, {}, broken)
            doc = FitDocument.of(broken)
            recommendation_line(doc)
            _rows(doc)
            for e in doc.joint_laws:
                joint_law_line(e)
            if i % FULL_CONSOLE_EVERY == 0 or label.startswith("<document>"):
                console_text(broken)
        except Exception as exc:  # collect them all: one run names every field that breaks
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
    assert count > 1000, count  # the real document has hundreds of fields
    assert failures == [], f"{len(failures)} of {count}:\n" + "\n".join(failures[:40])
