"""`kbitlaw predict` never crashes on a broken fit document: every field of a real fit's joint law
(and the config predict reads) missing, null, NaN, +-inf, 1e300 or negative, and every status set
to every status (tests/fitdoc_fuzz.py). Each broken document either gives a prediction or a clean
one-line PredictError, renders as text and JSON, and never shows a number of an entry that is not
ok."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import pytest
from fitdoc_fuzz import mutations
from rich.console import Console

from kbitlaw.flows.cli.console import _prediction_summary
from kbitlaw.law import fitdoc
from kbitlaw.law.common import json_safe
from kbitlaw.law.joint.predict import PredictError, predict_from_document

pytestmark = pytest.mark.slow

READ = ("results_sha", "schema_version", "families", "config", "damage", "joint_law")  # what predict reads
REQUEST = {"n_params": 3e5, "tokens": 5e5, "memory_gb": 1e-4, "threshold": 0.1}  # inside the data


@pytest.fixture(scope="module")
def real_fit(real_fit_store: Path) -> dict:
    """The law stage's fit of the real demo family (tests/realdata.py), as `kbitlaw fit` stored it."""
    from kbitlaw.store import LATEST_FIT, Store

    store = Store(str(real_fit_store))
    return store.read_json(store.read_json(LATEST_FIT)["fit"])


@pytest.fixture(scope="module")
def base(finished_real_doc) -> dict:
    """The real results' fit (finished_real_doc), cut to what predict reads, with its joint law and
    every damage scheme made ok (whatever the gates say of the real data, the fuzz must reach the
    numbers), and a run in progress added so that its fields are fuzzed too."""
    doc = copy.deepcopy({k: finished_real_doc[k] for k in READ if k in finished_real_doc})
    (entry,) = doc["joint_law"]
    assert entry["model"] is not None, entry.get("reason")
    entry["status"] = entry["damage"]["status"] = "ok"
    for scheme in entry["damage"]["schemes"]:
        scheme["status"] = "ok"
    lo, hi = entry["model"]["range"]["n_params"]
    entry["model"]["runs_in_progress"] = [
        {"checkpoint_id": "demo/run", "n_params": hi, "tokens_seen": 1e5, "tokens_planned": 4e6}
    ]
    return doc


def render(out: dict) -> str:
    buffer = io.StringIO()
    _prediction_summary(out, Console(file=buffer, width=160))
    json.dumps(json_safe(out), allow_nan=False)  # the --json output
    return buffer.getvalue()


def run(doc) -> tuple[dict | None, str]:
    """(the predict document or None, its text or the error's message)."""
    try:
        out = predict_from_document(doc, **REQUEST)
    except PredictError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return None, str(exc)
    return out, render(out)


def test_the_real_fit_predicts_or_says_why(real_fit):
    """The real fit as the law stage left it, statuses and all."""
    out, text = run(real_fit)
    (entry,) = real_fit["joint_law"]
    if not fitdoc.usable(entry):
        assert out["predictions"] == [] and text.splitlines() == [
            f"joint law for demo: {fitdoc.describe(entry)}; no prediction"
        ]
    else:
        assert out["predictions"] and "fp16" in text


def test_predict_reads_only_what_the_fuzz_covers(finished_real_doc, base):
    """Predict reads the joint law and the config alone, so fuzzing those covers it."""
    full = {**finished_real_doc, "joint_law": base["joint_law"]}
    assert predict_from_document(full, **REQUEST) == predict_from_document(base, **REQUEST)
    out, text = run(base)
    assert out["status"] == "ok" and out["predictions"] and out["runs_in_progress"], text
    assert out["budget"]["status"] == "ok" and "within 0.0001 GB" in text


def shown_numbers_are_usable(doc: dict, out: dict, text: str) -> None:
    """What the output shows comes from ok entries only."""
    entries = fitdoc.joint_laws(doc)
    entry = entries[0] if len(entries) == 1 else None
    if entry is None or not fitdoc.usable(entry):
        assert out["predictions"] == [] and out["budget"] is None and out["runs_in_progress"] == []
        assert not any(k in out["law"] for k in ("E", "A", "alpha", "B", "beta")), out["law"]
        assert len(text.splitlines()) == 1 and text.rstrip().endswith("; no prediction"), text
        return
    damage = entry.get("damage")
    schemes = {s.get("scheme"): s for s in fitdoc.entries(damage, "schemes")}
    specs = fitdoc.path(entry, "model", "specs", default={})
    shown = [p["quant"] for p in out["predictions"]] + [o["quant"] for o in out["budget"]["options"]]
    shown += [t["quant"] for t in out["damage_threshold"]["tokens"]]
    for quant in shown:
        info = specs[quant]
        if info["bits"] < 16:  # a quantized spec needs its scheme's damage law ok
            assert fitdoc.usable(damage) and fitdoc.usable(schemes.get(info["scheme"])), quant
    for name, h in out["law"]["held_out"].items():
        if h["status"] != "ok":
            assert f"held-out check ({name.replace('_', ' ')})" not in text


def test_no_broken_document_crashes_predict(base):
    failures, counts = [], {"predicted": 0, "no prediction": 0, "error": 0}
    for label, doc in mutations(base):
        try:
            out, text = run(doc)
            if out is None:
                counts["error"] += 1
                continue
            counts["predicted" if out["status"] == "ok" else "no prediction"] += 1
            shown_numbers_are_usable(doc, out, text)
        except Exception as exc:  # noqa: BLE001 -- collect every failure, report them together
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
    assert not failures, f"{len(failures)} broken documents crashed predict:\n" + "\n".join(failures[:40])
    assert min(counts.values()) > 0, counts  # every outcome was reached


@pytest.mark.parametrize("key", ["n_params", "tokens", "memory_gb", "threshold"])
def test_bad_requests_are_clean_errors(base, key):
    flag = "--" + key.replace("_", "-")
    for bad in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(PredictError, match=flag):
            predict_from_document(base, **{**REQUEST, key: bad})
    try:  # far out of range, yet a number: it predicts, or says it cannot
        render(predict_from_document(base, **{**REQUEST, key: 1e300}))
    except PredictError as exc:
        assert flag in str(exc)
