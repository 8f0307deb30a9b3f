"""The report's headline: what to deploy, over which budgets, how sure, S*, and what changed since the
previous report. The result is the summary stored as reports/<sha>/summary.json (and what the
Prefect artifacts show), so every number in it comes from the fit document and its long table.
"""

from __future__ import annotations

import polars as pl

from kbitlaw.status import NO_DATA
from kbitlaw.store import Store, StoreError, clean_keys

METRIC_NAME = {"mean_acc": "mean zero-shot accuracy", "loss": "loss"}


def gb(bits: float) -> str:
    return f"{bits / 8e9:.3g} GB"


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


def family_recommendation(doc: dict, family: str) -> dict | None:
    """The fit's recommendation for the family, on the fit's headline metric (else the other one)."""
    wanted = (doc.get("recommendation") or {}).get("metric") or "mean_acc"
    recs = {r["metric"]: r for r in doc.get("recommendations", []) if r.get("family") == family}
    for metric in (wanted, "mean_acc", "loss"):
        if recs.get(metric, {}).get("status") == "ok":
            return recs[metric]
    return None


def confidence(rec: dict, ranges: list[list[float]], n_sizes: int) -> str:
    """Plain sentences: which width wins at equal memory, how sure (P(best) under the evaluation
    noise), and the contenders when it is not clear."""
    metric = METRIC_NAME.get(rec["metric"], rec["metric"])
    k, share = rec["bits"], rec.get("budget_share", rec.get("frontier_share", 0.0))
    p_best = {int(w): p for w, p in (rec.get("p_best") or {}).items()}
    spec_share = (rec.get("shares_by_quant") or {}).get(rec["quant"], share)
    spec = f"{rec['quant']} is its best spec ({spec_share:.0%} of budgets)"
    if not p_best:
        text = (
            f"Uncertain: {k}-bit gives the best {metric} at {share:.0%} of the memory budgets compared, "
            f"but the measurement noise is unknown (no stderr, too few sizes to estimate it), so no "
            f"P(best); {spec}"
        )
    elif rec.get("clear"):
        text = (
            f"Clear: {k}-bit gives the best {metric} at equal memory, P(best) = {p_best.get(k, 0):.2f} "
            f"under the evaluation noise ({share:.0%} of budgets); {spec}"
        )
    else:
        named = sorted((int(w) for w in rec.get("contenders", [])), key=lambda w: -p_best.get(w, 0))
        text = (
            f"Not clear: contenders {', '.join(f'{w}-bit (P(best) {p_best.get(w, 0):.2f})' for w in named)}"
            f" at equal memory on {metric}; {spec}. More sizes or examples would separate them"
        )
    return text + f". Based on {n_sizes} model sizes."


def recommendation_summary(doc: dict, table: pl.DataFrame, family: str, n_sizes: int) -> dict:
    rec = family_recommendation(doc, family)
    if rec is None:
        return {
            "status": NO_DATA,
            "reason": "Too few model sizes (or no spread in total bits) to compare precisions at "
            "equal memory.",
        }
    front = frontier_rows(table, family, rec["metric"])
    ranges = budget_ranges(front, rec["quant"])
    return {
        "status": "ok",
        "quant": rec["quant"],
        "bits": rec["bits"],
        "metric": rec["metric"],
        "frontier_share": rec["frontier_share"],
        "budget_share": rec.get("budget_share", rec["frontier_share"]),
        "p_best": rec.get("p_best"),
        "contenders": rec.get("contenders", []),
        "clear": rec.get("clear", False),
        "shares_by_bits": rec.get("shares_by_bits", {}),
        "shares_by_quant": rec.get("shares_by_quant", {}),
        "budgets_bits": ranges,
        "confidence": confidence(rec, ranges, n_sizes),
    }


def s_star_summary(doc: dict, family: str, quant: str | None) -> dict:
    """S* of the recommended spec on mean accuracy, as fitted (or why there is none)."""
    entry = next(
        (
            e
            for e in doc.get("threshold", [])
            if e.get("family") == family and e.get("quant") == quant and e.get("metric") == "mean_acc"
        ),
        None,
    )
    if entry is None or entry.get("status") != "ok":
        reason = "no accuracy data or no recommended spec" if entry is None else NO_DATA
        return {"status": NO_DATA, "quant": quant, "reason": reason}
    return {
        "status": "ok",
        "quant": quant,
        "s_star_bits": entry["s_star_bits"],
        "ci": entry["ci"],
        "in_range": entry.get("s_star_in_range"),
        "n_sizes": entry.get("n_sizes"),
    }


def headline_lines(rec: dict, s_star: dict, claims: list[dict], doc: dict, family: str) -> list[str]:
    lines = []
    if rec["status"] == "ok":
        spans = [
            f"{lo:.2g}–{hi:.2g} bits ({lo / 8e9:.2g}–{hi / 8e9:.2g} GB)" for lo, hi in rec["budgets_bits"]
        ]
        more = f" and {len(spans) - 3} more stretches" if len(spans) > 3 else ""
        lines.append(
            f"{rec['quant']} is on the Pareto frontier at budgets {'; '.join(spans[:3]) or '(none)'}{more}."
        )
    if s_star["status"] == "ok":
        lo, hi = s_star["ci"]
        interval = f", 90% interval {lo:.3g}–{hi:.3g}" if None not in (lo, hi) else ", interval unknown"
        where = "" if s_star.get("in_range") else " (outside the measured sizes: an extrapolation)"
        lines.append(
            f"Critical size S* at {s_star['quant']}: {s_star['s_star_bits']:.3g} bits "
            f"({gb(s_star['s_star_bits'])}){interval}{where}; accuracy is halfway from chance to its "
            "ceiling there."
        )
    else:
        lines.append(f"Critical size S*: {s_star['reason']}.")
    first = next((c for c in claims if c["id"] == "four_bit_optimal"), None)
    if first:
        lines.append(f"Paper check, '{first['claim']}': {first['verdict']}.")
    checks = [
        c for c in doc.get("extrapolation", []) if c.get("family") == family and c.get("status") == "ok"
    ]
    flagged = sum(bool(c.get("flagged")) for c in checks)
    lines.append(
        f"Extrapolation checks: {flagged} of {len(checks)} held-out points outside the law's interval."
    )
    return lines


def headline(doc: dict, table: pl.DataFrame, latest: pl.DataFrame, family: str, claims: list[dict]) -> dict:
    """The summary dict (summary.json): headline numbers, the lists the next report compares."""
    n_sizes = latest["n_params"].n_unique() if latest.height else 0
    rec = recommendation_summary(doc, table, family, n_sizes)
    s_star = s_star_summary(doc, family, rec.get("quant"))
    front = frontier_rows(table, family, rec["metric"]) if rec["status"] == "ok" else None
    checkpoints = sorted(latest["checkpoint_id"].unique().to_list()) if latest.height else []
    return {
        "results_sha": doc["results_sha"],
        "family": family,
        "families": doc.get("families", []),
        "recommendation": rec,
        "s_star": s_star,
        "claims": {c["id"]: {"claim": c["claim"], "verdict": c["verdict"]} for c in claims},
        "frontier": [] if front is None else front.to_dicts(),
        "headline_lines": headline_lines(rec, s_star, claims, doc, family),
        "n_checkpoints": len(checkpoints),
        "n_sizes": n_sizes,
        "n_specs": latest["quant"].n_unique() if latest.height else 0,
        "checkpoints": checkpoints,
        "specs": sorted(latest["quant"].unique().to_list()) if latest.height else [],
    }


# -- what changed ----------------------------------------------------------------------------------


def _listed(kind: str, names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} {kind}: {', '.join(names[:limit])}{more}"


def changes_since(prev: dict | None, now: dict) -> dict:
    """New/removed checkpoints and specs, and changed conclusions, against the previous summary."""
    if prev is None:
        return {"previous_results_sha": None, "lines": [], "new_checkpoints": [], "changed_conclusions": []}
    new = sorted(set(now["checkpoints"]) - set(prev.get("checkpoints", [])))
    gone = sorted(set(prev.get("checkpoints", [])) - set(now["checkpoints"]))
    new_specs = sorted(set(now["specs"]) - set(prev.get("specs", [])))
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
    was, is_ = (prev.get("recommendation") or {}).get("quant"), now["recommendation"].get("quant")
    if was != is_:
        changed.append(f"recommendation changed: {was or 'insufficient data'} → {is_ or 'insufficient data'}")
    s_prev, s_now = prev.get("s_star") or {}, now["s_star"]
    if s_prev.get("status") == "ok" and s_now["status"] == "ok" and s_prev.get("quant") == s_now["quant"]:
        lo, hi = s_prev["ci"]
        outside = lo is not None and hi is not None and not lo <= s_now["s_star_bits"] <= hi
        if outside:
            changed.append(
                f"S* for {s_now['quant']} moved outside its previous interval: "
                f"{s_prev['s_star_bits']:.3g} → {s_now['s_star_bits']:.3g} bits"
            )
    elif s_prev.get("status") != s_now["status"]:
        changed.append(f"S*: {s_prev.get('status', 'absent')} → {s_now['status']}")
    for cid, c in now["claims"].items():
        before = (prev.get("claims") or {}).get(cid, {}).get("verdict")
        if before is not None and before != c["verdict"]:
            changed.append(f"claim {cid} ({c['claim']}): {before} → {c['verdict']}")
    lines += changed or ["conclusions unchanged"]
    return {
        "previous_results_sha": prev.get("results_sha"),
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
            pages = [k for k in store.list(f"datasets/validation/{name}") if sha in k.rsplit("/", 1)[-1]]
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
    rec = report_summary.get("recommendation") or {}
    if rec.get("status", "ok") != "ok" or "quant" not in rec:
        return f"recommended precision: {NO_DATA}"
    line = f"recommended precision: {rec['quant']} ({rec['bits']}-bit)"
    return f"{line}. {rec['confidence']}" if rec.get("confidence") else line
