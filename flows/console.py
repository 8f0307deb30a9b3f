"""What the `kbitlaw` commands print: the fit summary, the report location (stdout for results,
stderr for progress and errors)."""

from __future__ import annotations

import json
import sys
from typing import Any

from kbitlaw.status import NO_DATA


def fit_command(store_uri: str | None, results_file: str | None, as_json: bool) -> int:
    """Run one fit; print the fit document (--json: one JSON document on stdout, nothing else)
    or a short summary. Returns the exit code: 0 ok, 1 unusable input or store failure."""
    from kbitlaw.law.document import FitConfig, fit_laws
    from kbitlaw.law.io import default_chance, fit_store, read_results_file
    from kbitlaw.law.table import ResultsError
    from kbitlaw.store import Store, StoreError

    if store_uri and results_file:
        return _error("use --store or --results, not both")
    try:
        if results_file:
            results = read_results_file(results_file)
            doc, where = fit_laws(results, FitConfig(chance=default_chance(results))).doc, None
        else:
            store = Store(store_uri)
            stored = fit_store(store)
            doc, where = stored.doc, (store.url(stored.key), stored.refitted)
    except (ResultsError, StoreError, ValueError) as exc:
        return _error(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(doc, allow_nan=False, sort_keys=True) + "\n")
    else:
        _summary(doc, where)
    return 0


def _error(message: str) -> int:
    print(f"kbitlaw: error: {message}", file=sys.stderr)
    return 1


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _summary(doc: dict[str, Any], where: tuple[str, bool] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(f"results {doc['results_sha'][:12]}  rows {doc['n_rows']}  dropped {doc['dropped_rows']}")
    if where:
        console.print(f"fit {'computed' if where[1] else 'unchanged (stored)'}: {where[0]}")
    rec = doc["recommendation"]
    if rec.get("status", "ok") == "ok":
        p_best = rec.get("p_best") or {}
        sure = (
            f"P(best) {p_best.get(str(rec['bits']), 0):.2f}, "
            + ("clear" if rec.get("clear") else f"contenders {', '.join(rec.get('contenders', []))}-bit")
            if p_best
            else "noise unknown"
        )
        console.print(
            f"recommended precision: [bold]{rec['quant']}[/] ({rec['bits']}-bit), best {rec.get('metric')} "
            f"at equal memory over {rec['frontier_share']:.0%} of the budgets compared; {sure}"
        )
    else:
        console.print(f"recommended precision: {NO_DATA}")
    table = Table("law", "family", "quant", "metric", "estimate", "90% interval", "status")
    for e in doc["power_law"]:
        est = f"E={_fmt(e['E'])} A={_fmt(e['A'])} alpha={_fmt(e['alpha'])}"
        table.add_row(
            "power law",
            e["family"],
            e["quant"],
            e["metric"],
            est,
            f"alpha {_fmt(e['ci']['alpha'][0])}..{_fmt(e['ci']['alpha'][1])}",
            e["status"],
        )
    for e in doc["threshold"]:
        if e["metric"] == "mean_acc":
            table.add_row(
                "threshold",
                e["family"],
                e["quant"],
                e["metric"],
                f"S*={_fmt(e['s_star_bits'])} bits",
                f"{_fmt(e['ci'][0])}..{_fmt(e['ci'][1])}",
                e["status"],
            )
    for e in doc["damage"]:
        est = f"C={_fmt(e['C'])} a={_fmt(e['alpha'])} b={_fmt(e['beta'])} g={_fmt(e['gamma'])}"
        table.add_row(
            f"damage {e['form']}",
            e["family"],
            e["scheme"],
            "delta_loss",
            est,
            f"held-out err {_fmt(e['heldout_error'])}",
            e["status"],
        )
    console.print(table)
    flagged = [c for c in doc["extrapolation"] if c["flagged"]]
    console.print(f"extrapolation checks: {len(doc['extrapolation'])}, flagged: {len(flagged)}")


def report_command(store_uri: str | None) -> int:
    """`kbitlaw report`: build the report of fits/latest.json if missing and print its location.
    Returns the exit code: 0 ok, 1 no fit or an unreadable store."""
    from kbitlaw.law.table import ResultsError
    from kbitlaw.report.build import build_report
    from kbitlaw.store import LATEST_FIT, Store, StoreError

    try:
        store = Store(store_uri)
        if not store.exists(LATEST_FIT):
            print(f"kbitlaw: error: {store.uri}: no fit yet (run `kbitlaw fit` first)", file=sys.stderr)
            return 1
        fit_key = store.read_json(LATEST_FIT)["fit"]
        print(f"building the report of {fit_key} ...", file=sys.stderr)
        report = build_report(store, fit_key)
    except (StoreError, ResultsError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"kbitlaw: error: {exc}", file=sys.stderr)
        return 1
    state = "unchanged" if report["cached"] else "written"
    print(f"report {state}: {report['url']}", file=sys.stderr)
    print(report["url"])
    return 0
