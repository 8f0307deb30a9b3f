"""Broken fit documents for the readers' fuzz tests: every field in turn missing, null, NaN, +-inf,
1e300 or negative, and every status field set to every status.

A field is a key path with list indices collapsed (`damage[].ci.C`): one mutation changes that
field in every entry of the list at once, so the number of documents grows with the schema, not
with the number of entries. `mutations(doc)` yields (label, document) pairs; `sample()` keeps a
deterministic, evenly spread subset when a reader is too slow to render them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from kbitlaw.status import STATUSES

MISSING = object()
VALUES: tuple[tuple[str, Any], ...] = (
    ("missing", MISSING),
    ("null", None),
    ("nan", math.nan),
    ("+inf", math.inf),
    ("-inf", -math.inf),
    ("1e300", 1e300),
    ("negative", -1.0),
)
Path = tuple  # of str keys and the marker [] for "every element"
EVERY = "[]"


def field_paths(obj: Any, prefix: Path = (), limit_depth: int = 7) -> list[Path]:
    """Every field's path (dict keys; EVERY for list elements), parents before children."""
    out: list[Path] = []
    if len(prefix) >= limit_depth:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out += field_paths(v, (*prefix, k), limit_depth)
    elif isinstance(obj, list) and obj:
        seen: set[Path] = set()
        for item in obj[:4]:  # entries of one list share a layout: the first few show it
            for p in field_paths(item, (*prefix, EVERY), limit_depth):
                if p not in seen:
                    seen.add(p)
                    out.append(p)
    return list(dict.fromkeys(out))


def _replaced(obj: Any, path: Path, value: Any) -> Any:
    """obj with the field at path set to value (MISSING: removed; a list element becomes null),
    copying only the containers on the path: the rest is shared with obj, so a broken document
    costs its path, not the whole document (deep copies were 70% of the fuzz tests' time)."""
    head, rest = path[0], path[1:]
    if head == EVERY:
        if not isinstance(obj, list):
            return obj
        if rest:
            return [_replaced(item, rest, value) for item in obj]
        return [None if value is MISSING else value for _ in obj]
    if not (isinstance(obj, dict) and head in obj):
        return obj
    out = dict(obj)
    if rest:
        out[head] = _replaced(obj[head], rest, value)
    elif value is MISSING:
        del out[head]
    else:
        out[head] = value
    return out


def mutate(doc: dict, path: Path, value: Any) -> dict:
    return _replaced(doc, path, value)


def label(path: Path) -> str:
    return ".".join(path).replace(".[]", "[]")


def mutations(doc: dict) -> Iterator[tuple[str, dict]]:
    """(label, broken document) for every field x every bad value, and every status x every
    status field. The broken documents share their unchanged parts with `doc`: a reader that
    changes the document it is given fails here, once every document has been yielded."""
    before = json.dumps(doc, sort_keys=True)
    for path in field_paths(doc):
        for name, value in VALUES:
            yield f"{label(path)}={name}", mutate(doc, path, value)
        if path[-1] == "status":
            for s in STATUSES:
                yield f"{label(path)}={s}", mutate(doc, path, s)
    for name, value in (("empty", {}), ("list", []), ("string", "x")):
        yield f"<document>={name}", value  # type: ignore[misc]
    assert json.dumps(doc, sort_keys=True) == before, "a reader changed the fit document it was given"


def sample(items: list, n: int) -> list:
    """n items evenly spread over the list (all of them when n >= len)."""
    if n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]
