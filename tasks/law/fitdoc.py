"""The fit document as its readers see it: one typed view of `fits/<sha>/fit.json`.

The law stage writes the document (law/document.py); the report, `kbitlaw predict`, the Prefect
artifacts and the console only read it, through this module, and honour each entry's `status`:
an entry is drawn, used in a prediction, a claim or the headline only when `usable()` says so.
A reader never recomputes what the document stores, and no document, however broken (a field
missing, null, NaN, infinite, of the wrong type), makes a reader raise: every accessor here
returns a safe default, and `describe()` says in words why an entry cannot be used.

Schema (version FIT_SCHEMA_VERSION; more keys may be added):
- results_sha, law_version, schema_version, families, n_rows, dropped_rows, config;
- recommendation: {status, reason, quant, bits, clear, contenders, p_best, ...};
- power_law, threshold, damage, curves, extrapolation, claims: lists of entries, each with
  `status` (kbitlaw.status.STATUSES) and `reason`;
- joint_law: a list (one entry per family), each with `status`, `reason`, its parameters, `ci`,
  `damage.schemes` and, for `predict`, `model` (the fitted law and its bootstrap replicates);
- gates: what the gates checked (law/gates.py), per law;
- datasets: [[name, sha], ...], the dataset versions the results were measured on.
The long table (fit.parquet, law/common.py TABLE_SCHEMA) carries the points: section "checkpoint"
(every checkpoint x spec x metric), "point" (each size's latest checkpoint), and the fitted curves,
bands, frontier, budgets and damage rows the report draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kbitlaw.status import FAILED, NO_DATA, NOT_TESTABLE, OK, STATUSES, UNIDENTIFIED

FIT_SCHEMA_VERSION = 5
SECTIONS = ("power_law", "threshold", "damage", "curves", "extrapolation", "claims", "recommendations")


def number(x: Any) -> float | None:
    """A finite float, or None for anything else (None, NaN, inf, a string, a list...)."""
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number as text, "-" for anything that is not a finite number (a reader's table cell)."""
    v = number(x)
    return "-" if v is None else format(v, spec)


def interval(x: Any) -> tuple[float | None, float | None]:
    """A [lo, hi] pair of finite floats (None for an end that is not one)."""
    if isinstance(x, (list, tuple)) and len(x) == 2:
        return number(x[0]), number(x[1])
    return None, None


def text(x: Any, default: str = "") -> str:
    return x if isinstance(x, str) else default


def status(entry: Any) -> str:
    """The entry's status; anything that is not one of STATUSES reads as failed."""
    s = entry.get("status") if isinstance(entry, dict) else None
    return s if s in STATUSES else FAILED


def usable(entry: Any) -> bool:
    """True only for an entry that passed its gates (status ok)."""
    return status(entry) == OK


def describe(entry: Any) -> str:
    """The status in words: 'ok', 'not identified: A, alpha', 'failed: <reason>', ..."""
    s = status(entry)
    reason = text(entry.get("reason")) if isinstance(entry, dict) else ""
    if s == OK:
        return OK
    if s == UNIDENTIFIED:
        names = entry.get("unidentified") if isinstance(entry, dict) else None
        names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        head = "not identified" + (f": {', '.join(names)}" if names else "")
        return head + (f" ({reason})" if reason and not names else "")
    if s in (NO_DATA, NOT_TESTABLE):
        return s + (f": {reason}" if reason else "")
    return f"failed: {reason or 'no reason recorded'}"


def entries(doc: Any, section: str) -> list[dict]:
    """The section's entries that are dicts (a missing or malformed section reads as empty)."""
    found = doc.get(section) if isinstance(doc, dict) else None
    if isinstance(found, dict):
        found = [found]
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def usable_entries(doc: Any, section: str) -> list[dict]:
    return [e for e in entries(doc, section) if usable(e)]


def joint_laws(doc: Any) -> list[dict]:
    """The joint-law entries (always a list in the document; older documents held one dict)."""
    return entries(doc, "joint_law")


def joint_law_for(doc: Any, family: str | None) -> dict | None:
    found = [e for e in joint_laws(doc) if family is None or e.get("family") == family]
    return found[0] if found else None


def recommendation(doc: Any) -> dict:
    rec = doc.get("recommendation") if isinstance(doc, dict) else None
    return rec if isinstance(rec, dict) else {"status": NO_DATA, "reason": "no recommendation in the fit"}


def path(obj: Any, *keys: Any, default: Any = None) -> Any:
    """obj[k1][k2]... or `default` where any step is missing or of the wrong type."""
    for k in keys:
        if isinstance(obj, dict) and k in obj:
            obj = obj[k]
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return default
    return obj


def strings(x: Any) -> list[str]:
    return [v for v in x if isinstance(v, str)] if isinstance(x, list) else []


@dataclass(frozen=True)
class FitDocument:
    """The typed view of one stored fit document (its dict stays available as `raw`)."""

    raw: dict

    @classmethod
    def of(cls, doc: Any) -> FitDocument:
        return cls(doc if isinstance(doc, dict) else {})

    @property
    def results_sha(self) -> str:
        return text(self.raw.get("results_sha"), "unknown")

    @property
    def schema_version(self) -> int | None:
        v = number(self.raw.get("schema_version"))
        return int(v) if v is not None else None

    @property
    def families(self) -> list[str]:
        return strings(self.raw.get("families"))

    @property
    def level(self) -> float:
        v = number(path(self.raw, "config", "level"))
        return v if v is not None and 0 < v < 1 else 0.9

    def entries(self, section: str) -> list[dict]:
        return entries(self.raw, section)

    def usable(self, section: str) -> list[dict]:
        return usable_entries(self.raw, section)

    @property
    def joint_laws(self) -> list[dict]:
        return joint_laws(self.raw)

    @property
    def recommendation(self) -> dict:
        return recommendation(self.raw)

    def not_usable(self, sections: Iterable[str] = ("power_law", "threshold", "damage")) -> list[dict]:
        """Entries of the given sections (and the joint laws) that are fitted but not usable:
        unidentified or failed (insufficient data and not testable are not faults)."""
        out = [e for s in sections for e in self.entries(s) if status(e) in (UNIDENTIFIED, FAILED)]
        return out + [e for e in self.joint_laws if status(e) in (UNIDENTIFIED, FAILED)]
