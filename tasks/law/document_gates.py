"""The gates (law/gates.py) applied to a whole fit document.

`gate_document(doc)` gates every law entry of a fit document in place: the sections of per-spec
entries (GATED_SECTIONS: power laws, thresholds, damage forms, curves), the recommendation, each
joint law and its damage schemes. Gate 5 for a power law or threshold is its extrapolation check
(the largest size held out): a check that misses fails its law. An `ok` extrapolation check of a
law that is not `ok` becomes `not testable`.

`check_document(doc)` applies the same gates to a stored document: it lists every `ok` entry that
breaks one (`kbitlaw fit --check`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from kbitlaw.law.fitdoc import describe, entries, joint_laws, number, path, status
from kbitlaw.law.gates import HELDOUT_NOISE_MULTIPLE, REFERENCE_LEVEL, apply, standardized_rms
from kbitlaw.status import FAILED, NOT_TESTABLE, OK

GATED_SECTIONS = ("power_law", "threshold", "damage", "curves")


def document_level(doc: Any) -> float:
    v = number(path(doc, "config", "level"))
    return v if v is not None and 0 < v < 1 else REFERENCE_LEVEL


def gate_document(doc: dict) -> dict:
    """Apply the gates to every law entry of a fit document (in place) and return it."""
    level = document_level(doc)
    for section in GATED_SECTIONS:
        for e in entries(doc, section):
            apply(section, e, level)
    rec = doc.get("recommendation")
    if isinstance(rec, dict):
        apply("recommendation", rec, level)
    for e in joint_laws(doc):
        for s in path(e, "damage", "schemes", default=[]) or []:
            if isinstance(s, dict):
                apply("joint_damage", s, level)
        apply("joint_law", e, level)
    for check in entries(doc, "extrapolation"):  # gate 5 for the laws over sizes: their hold-out
        parent = _parent_law(doc, check)
        z = standardized_rms([check], level)
        if check.get("law") in ("power_law", "threshold") and parent is not None and status(parent) == OK:
            if z is not None and z > HELDOUT_NOISE_MULTIPLE:
                parent["status"] = FAILED
                limit = f"(at most {HELDOUT_NOISE_MULTIPLE:g}x)"
                parent["reason"] = f"held-out largest size: error {z:.3g}x the point's noise {limit}"
    for check in entries(doc, "extrapolation"):
        parent = _parent_law(doc, check)
        if parent is not None and status(parent) != OK and status(check) == OK:
            check["status"] = NOT_TESTABLE
            check["reason"] = f"the law it checks is {describe(parent)}"
        check.setdefault("reason", "predicted vs observed" if status(check) == OK else status(check))
    return doc


def _parent_law(doc: dict, check: dict) -> dict | None:
    """The law entry an extrapolation check belongs to (power law, threshold or damage form)."""
    law, family, quant = check.get("law"), check.get("family"), check.get("quant")
    if law in ("power_law", "threshold"):
        metric = check.get("metric")
        found = [
            e
            for e in entries(doc, law)
            if (e.get("family"), e.get("quant"), e.get("metric")) == (family, quant, metric)
        ]
        return found[0] if found else None
    if isinstance(law, str) and law.startswith("damage_") and isinstance(quant, str):
        from kbitlaw.quant.spec import QuantSpec

        try:
            scheme = QuantSpec.parse(quant).scheme
        except ValueError:
            return None
        form = law.removeprefix("damage_")
        found = [
            e
            for e in entries(doc, "damage")
            if (e.get("family"), e.get("scheme"), e.get("form")) == (family, scheme, form)
        ]
        return found[0] if found else None
    return None


def _law_entries(doc: dict) -> Iterator[tuple[str, dict]]:
    """(name, entry) of every gated entry, in document order."""
    for section in (*GATED_SECTIONS, "extrapolation"):
        for e in entries(doc, section):
            yield _name(section, e), e
    rec = doc.get("recommendation")
    if isinstance(rec, dict):
        yield "recommendation", rec
    for e in joint_laws(doc):
        yield f"joint law {e.get('family')}", e
        for s in path(e, "damage", "schemes", default=[]) or []:
            if isinstance(s, dict):
                yield f"joint law {e.get('family')} damage {s.get('scheme')}", s


def _name(section: str, e: dict) -> str:
    keys = ("family", "law", "quant", "scheme", "form", "metric", "held_out")
    return section + " " + " ".join(e[k] for k in keys if isinstance(e.get(k), str))


def check_document(doc: Any) -> list[str]:
    """One line per `ok` entry of a stored fit document that breaks a gate (empty: all pass): the
    gates are applied to a copy and every entry that they would move off `ok` is named."""
    if not isinstance(doc, dict):
        return ["the fit document is not a JSON object"]
    regated = gate_document(copy.deepcopy(doc))
    out = []
    for (name, before), (_, after) in zip(_law_entries(doc), _law_entries(regated), strict=True):
        if status(before) == OK and status(after) != OK:
            out.append(f"{name}: status ok but {after.get('reason')}")
    return out
