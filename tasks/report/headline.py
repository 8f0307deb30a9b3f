"""The report's headline: what to deploy, over which budgets, how sure, S*, and what changed since the
previous report. The result is the summary stored as reports/<sha>/summary.json (and what the
Prefect artifacts show), so every number in it comes from the fit document and its long table.
Only `ok` entries give a number here; for any other the headline says why, in words (law/fitdoc.py
describe), and no document, however broken, makes it raise.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from kbitlaw.law.fitdoc import FitDocument, describe, interval, number, path, status, strings, text, usable
from kbitlaw.status import FAILED, NO_DATA, OK
from kbitlaw.store import Store, StoreError, clean_keys, key_name, validation_prefix
from kbitlaw.vocab import LOSS, MEAN_ACC, METRIC_WORDS, gb


def gb_text(bits: float) -> str:
    return f"{gb(bits):.3g} GB"


def frontier_rows(table: pl.DataFrame, family: str, metric: str) -> pl.DataFrame:
    """The frontier points with the budget range each holds: [total_bits, until)."""
    points = table.filter(
        pl.col("section") == "point", pl.col("family") == family, pl.col("metric") == metric
    )
    s_max = float(points["total_bits"].max()) if points.height else None
    front = table.filter(
        pl.col("section") == "frontier", pl.col("family") == family, pl.col("metric") == metric
    ).sort("total_bits")
    return front.with_columns(until=pl.col("total_bits").shift(-1).fill_null(s_max)).select(
        "quant", "bits", "n_params", "tokens_seen", "total_bits", "until", "value"
    )


def budget_ranges(front: pl.DataFrame, quant: str) -> list[list[float]]:
    """The budget intervals (bits) over which `quant` is on the frontier, adjacent ones merged."""
    ranges: list[list[float]] = []
    for r in front.filter(pl.col("quant") == quant).iter_rows(named=True):
        if ranges and ranges[-1][1] == r["total_bits"]:
            ranges[-1][1] = r["until"]
        else:
            ranges.append([r["total_bits"], r["until"]])
    return ranges


NO_RECOMMENDATION = "Too few model sizes (or no spread in total bits) to compare precisions at equal memory."


def family_recommendation(fit: FitDocument, family: str) -> tuple[dict | None, str, str]:
    """The fit's usable recommendation for the family, on the fit's headline metric (else the
    other one); or None with the status and reason why there is none. The document's own
    recommendation, when it is the family's and not usable, says why (its metric is not swapped
    for another behind its back)."""
    top = fit.recommendation
    if top.get("family") in (family, None) and not usable(top):
        return None, status(top), describe(top)
    wanted = text(top.get("metric")) or MEAN_ACC
    recs: dict[str, dict] = {}
    for r in fit.entries("recommendations"):
        if r.get("family") == family and isinstance(r.get("metric"), str):
            recs.setdefault(r["metric"], r)
    for metric in (wanted, MEAN_ACC, LOSS):
        r = recs.get(metric)
        if (
            r is not None
            and usable(r)
            and isinstance(r.get("quant"), str)
            and number(r.get("bits")) is not None
        ):
            return r, OK, ""
    if not recs:
        return None, NO_DATA, NO_RECOMMENDATION
    first = recs.get(wanted) or next(iter(recs.values()))
    why = "; ".join(f"{m}: {describe(r)}" for m, r in recs.items())
    return None, status(first) if status(first) != OK else FAILED, why


def p_best_of(rec: dict) -> dict[str, float]:
    """P(best) per bit width ('4' -> 0.8): only integer widths with a probability."""
    found = rec.get("p_best")
    out = {}
    for w, p in found.items() if isinstance(found, dict) else []:
        p = number(p)
        if str(w).isdigit() and p is not None and 0 <= p <= 1:
            out[str(w)] = p
    return out


def share(x: Any) -> float:
    """A share of budgets in [0, 1] (0 when the document's is not one)."""
    v = number(x)
    return v if v is not None and 0 <= v <= 1 else 0.0


def shares(x: Any) -> dict[str, float]:
    return {str(k): share(v) for k, v in x.items()} if isinstance(x, dict) else {}


def confidence(rec: dict, ranges: list[list[float]], n_sizes: int) -> str:
    """Plain sentences: which width wins at equal memory, how sure (P(best) under the evaluation
    noise), and the contenders when it is not clear."""
    metric = METRIC_WORDS.get(rec["metric"], rec["metric"])
    k, share_ = rec["bits"], rec["budget_share"]
    p_best = {int(w): p for w, p in rec["p_best"].items()}
    spec_share = rec["shares_by_quant"].get(rec["quant"], share_)
    spec = f"{rec['quant']} is its best spec ({spec_share:.0%} of budgets)"
    if not p_best:
        text_ = (
            f"Uncertain: {k}-bit gives the best {metric} at {share_:.0%} of the memory budgets compared, "
            f"but the measurement noise is unknown (no stderr, too few sizes to estimate it), so no "
            f"P(best); {spec}"
        )
    elif rec["clear"]:
        text_ = (
            f"Clear: {k}-bit gives the best {metric} at equal memory, P(best) = {p_best.get(k, 0):.2f} "
            f"under the evaluation noise ({share_:.0%} of budgets); {spec}"
        )
    else:
        named = sorted((int(w) for w in rec["contenders"]), key=lambda w: -p_best.get(w, 0))
        text_ = (
            f"Not clear: contenders {', '.join(f'{w}-bit (P(best) {p_best.get(w, 0):.2f})' for w in named)}"
            f" at equal memory on {metric}; {spec}. More sizes or examples would separate them"
        )
    return text_ + f". Based on {n_sizes} model sizes."


def recommendation_summary(fit: FitDocument, table: pl.DataFrame, family: str, n_sizes: int) -> dict:
    rec, state, why = family_recommendation(fit, family)
    if rec is None:
        return {"status": state, "reason": why}
    metric = text(rec.get("metric"), MEAN_ACC)
    front = frontier_rows(table, family, metric)
    ranges = budget_ranges(front, rec["quant"])
    frontier_share = share(rec.get("frontier_share"))
    out = {
        "status": "ok",
        "quant": rec["quant"],
        "bits": int(number(rec["bits"])),
        "metric": metric,
        "frontier_share": frontier_share,
        "budget_share": share(rec.get("budget_share", frontier_share)),
        "p_best": p_best_of(rec),
        "contenders": [str(int(c)) for c in rec.get("contenders") or [] if number(c) is not None]
        if isinstance(rec.get("contenders"), list)
        else [],
        "clear": rec.get("clear") is True,
        "shares_by_bits": shares(rec.get("shares_by_bits")),
        "shares_by_quant": shares(rec.get("shares_by_quant")),
        "budgets_bits": ranges,
    }
    return out | {"confidence": confidence(out, ranges, n_sizes)}


def s_star_summary(fit: FitDocument, family: str, quant: str | None) -> dict:
    """S* of the recommended spec on mean accuracy, as fitted (or why there is none)."""
    entry = next(
        (
            e
            for e in fit.entries("threshold")
            if e.get("family") == family and e.get("quant") == quant and e.get("metric") == MEAN_ACC
        ),
        None,
    )
    s_star = number(entry.get("s_star_bits")) if entry is not None else None
    if entry is None or not usable(entry) or s_star is None or s_star <= 0:
        if entry is None:
            reason = "no accuracy data or no recommended spec"
        elif not usable(entry):
            reason = describe(entry)
        else:
            reason = "failed: the fit holds no S* for it"
        return {
            "status": NO_DATA if entry is None else status(entry) if not usable(entry) else FAILED,
            "quant": quant,
            "reason": reason,
        }
    n_sizes = number(entry.get("n_sizes"))
    return {
        "status": "ok",
        "quant": quant,
        "s_star_bits": s_star,
        "ci": list(interval(entry.get("ci"))),
        "in_range": entry.get("s_star_in_range") if isinstance(entry.get("s_star_in_range"), bool) else None,
        "n_sizes": int(n_sizes) if n_sizes is not None else None,
    }


def headline_lines(rec: dict, s_star: dict, claims: list[dict], fit: FitDocument, family: str) -> list[str]:
    lines = []
    if rec["status"] == "ok":
        spans = [f"{lo:.2g}–{hi:.2g} bits ({gb(lo):.2g}–{gb(hi):.2g} GB)" for lo, hi in rec["budgets_bits"]]
        more = f" and {len(spans) - 3} more stretches" if len(spans) > 3 else ""
        lines.append(
            f"{rec['quant']} is on the Pareto frontier at budgets {'; '.join(spans[:3]) or '(none)'}{more}."
        )
    if s_star["status"] == "ok":
        lo, hi = s_star["ci"]
        interval_ = f", 90% interval {lo:.3g}–{hi:.3g}" if None not in (lo, hi) else ", interval unknown"
        where = "" if s_star.get("in_range") else " (outside the measured sizes: an extrapolation)"
        lines.append(
            f"Critical size S* at {s_star['quant']}: {s_star['s_star_bits']:.3g} bits "
            f"({gb_text(s_star['s_star_bits'])}){interval_}{where}; accuracy is halfway from chance to its "
            "ceiling there."
        )
    else:
        lines.append(f"Critical size S*: {s_star['reason']}.")
    first = next((c for c in claims if c.get("id") == "four_bit_optimal"), None)
    if first:
        lines.append(
            f"Paper check, '{text(first.get('claim'))}': {text(first.get('verdict'), 'no verdict')}."
        )
    checks = [c for c in fit.entries("extrapolation") if c.get("family") == family and usable(c)]
    flagged = sum(c.get("flagged") is True for c in checks)
    lines.append(
        f"Extrapolation checks: {flagged} of {len(checks)} held-out points outside the law's interval."
    )
    return lines


def headline(doc: Any, table: pl.DataFrame, latest: pl.DataFrame, family: str, claims: list[dict]) -> dict:
    """The summary dict (summary.json): headline numbers, the lists the next report compares."""
    fit = FitDocument.of(doc)
    n_sizes = latest["n_params"].n_unique() if latest.height else 0
    rec = recommendation_summary(fit, table, family, n_sizes)
    s_star = s_star_summary(fit, family, rec.get("quant"))
    front = frontier_rows(table, family, rec["metric"]) if rec["status"] == "ok" else None
    checkpoints = sorted(latest["checkpoint_id"].drop_nulls().unique().to_list()) if latest.height else []
    return {
        "results_sha": fit.results_sha,
        "family": family,
        "families": fit.families,
        "recommendation": rec,
        "s_star": s_star,
        "claims": {
            c["id"]: {"claim": text(c.get("claim")), "verdict": text(c.get("verdict"), "no verdict")}
            for c in claims
            if isinstance(c.get("id"), str)
        },
        "frontier": [] if front is None else front.to_dicts(),
        "headline_lines": headline_lines(rec, s_star, claims, fit, family),
        "n_checkpoints": len(checkpoints),
        "n_sizes": n_sizes,
        "n_specs": latest["quant"].n_unique() if latest.height else 0,
        "checkpoints": checkpoints,
        "specs": sorted(latest["quant"].drop_nulls().unique().to_list()) if latest.height else [],
    }


def fallback_summary(fit: FitDocument, family: str, error: str) -> dict:
    """The summary when the headline itself failed to render: no numbers, the error as its reason."""
    return {
        "results_sha": fit.results_sha,
        "family": family,
        "families": fit.families,
        "recommendation": {"status": "failed", "reason": error},
        "s_star": {"status": "failed", "quant": None, "reason": error},
        "claims": {},
        "frontier": [],
        "headline_lines": [],
        "n_checkpoints": 0,
        "n_sizes": 0,
        "n_specs": 0,
        "checkpoints": [],
        "specs": [],
    }


# -- what changed ----------------------------------------------------------------------------------


def _listed(kind: str, names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} {kind}: {', '.join(names[:limit])}{more}"


def changes_since(prev: dict | None, now: dict) -> dict:
    """New/removed checkpoints and specs, and changed conclusions, against the previous summary."""
    if prev is None:
        return {"previous_results_sha": None, "lines": [], "new_checkpoints": [], "changed_conclusions": []}
    before = set(strings(prev.get("checkpoints")))  # an older or broken summary: lists of names
    new = sorted(set(now["checkpoints"]) - before)
    gone = sorted(before - set(now["checkpoints"]))
    new_specs = sorted(set(now["specs"]) - set(strings(prev.get("specs"))))
    lines = [
        _listed(kind, names)
        for kind, names in (
            ("new checkpoints", new),
            ("checkpoints no longer in the results", gone),
            ("new specs", new_specs),
        )
        if names
    ]
    changed = []
    rec_prev = prev.get("recommendation") if isinstance(prev.get("recommendation"), dict) else {}
    was, is_ = rec_prev.get("quant"), now["recommendation"].get("quant")
    if was != is_:
        gone_why = now["recommendation"].get("status", NO_DATA)
        changed.append(f"recommendation changed: {was or NO_DATA} → {is_ or gone_why}")
    s_prev = prev.get("s_star") if isinstance(prev.get("s_star"), dict) else {}
    s_now = now["s_star"]
    if s_prev.get("status") == OK and s_now["status"] == OK and s_prev.get("quant") == s_now["quant"]:
        lo, hi = interval(s_prev.get("ci"))
        outside = lo is not None and hi is not None and not lo <= s_now["s_star_bits"] <= hi
        if outside and number(s_prev.get("s_star_bits")) is not None:
            changed.append(
                f"S* for {s_now['quant']} moved outside its previous interval: "
                f"{number(s_prev['s_star_bits']):.3g} → {s_now['s_star_bits']:.3g} bits"
            )
    elif s_prev.get("status") != s_now["status"]:
        changed.append(f"S*: {s_prev.get('status', 'absent')} → {s_now['status']}")
    claims_prev = prev.get("claims") if isinstance(prev.get("claims"), dict) else {}
    for cid, c in now["claims"].items():
        verdict = path(claims_prev, cid, "verdict")
        if isinstance(verdict, str) and verdict != c["verdict"]:
            changed.append(f"claim {cid} ({c['claim']}): {verdict} → {c['verdict']}")
    lines += changed or ["conclusions unchanged"]
    return {
        "previous_results_sha": text(prev.get("results_sha")) or None,
        "lines": lines,
        "new_checkpoints": new,
        "changed_conclusions": changed,
    }


# -- datasets ---------------------------------------------------------------------------------------


def datasets_from_store(store: Store, versions: list[tuple[str, str]]) -> list[dict]:
    """Cleaning summary and validation pages of the dataset versions (name, sha) the results used,
    from the store layout: datasets/clean/<name>/<sha>.json, datasets/validation/<name>/<sha>.json
    and the validation HTML beside it. A version the store does not hold is listed as such."""
    out = []
    for name, sha in versions:
        entry: dict = {"name": name, "sha": sha, "summary": {}, "status": "not in store", "validation": {}}
        try:
            clean = clean_keys(name, sha)["summary"]
            if store.exists(clean):
                entry["summary"], entry["status"] = store.read_json(clean), "-"
            pages = [k for k in store.list(validation_prefix(name)) if sha in key_name(k)]
            vjson = next((k for k in pages if k.endswith(".json")), None)
            vhtml = next((k for k in pages if k.endswith(".html")), None)
            if vjson:
                ok = store.read_json(vjson).get("success")
                entry["status"] = {True: "passed", False: "failed"}.get(ok, entry["status"])
            entry["validation"] = {"json": vjson and store.url(vjson), "html": vhtml and store.url(vhtml)}
        except (StoreError, ValueError, FileNotFoundError, AttributeError):
            entry["status"] = "unreadable"
        out.append(entry)
    return out


def headline_line(report_summary: dict) -> str:
    """One line a person can act on: the recommended precision (or why there is none)."""
    rec = report_summary.get("recommendation") if isinstance(report_summary, dict) else None
    rec = rec if isinstance(rec, dict) else {}
    if rec.get("status", OK) != OK or not isinstance(rec.get("quant"), str):
        return f"recommended precision: none ({describe(rec) if rec else NO_DATA})"
    line = f"recommended precision: {rec['quant']} ({rec.get('bits')}-bit)"
    return f"{line}. {rec['confidence']}" if isinstance(rec.get("confidence"), str) else line
