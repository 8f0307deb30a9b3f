"""`kbitlaw fit`: fit the k-bit laws to the stored results (or a results file) and show them.

The `fit` flow (a deployment) wraps the same store fit in a task. Domain logic lives
in tasks/law*.py; this file reads arguments, calls it and prints.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


def fit_command(store_uri: str | None, results_file: str | None, as_json: bool) -> int:
    """Run one fit; print the fit document (--json: one JSON document on stdout, nothing else)
    or a short summary. Returns the exit code: 0 ok, 1 unusable input or store failure."""
    from tasks.law import FitConfig, fit_laws
    from tasks.law_io import default_chance, fit_store, read_results_file
    from tasks.law_table import ResultsError
    from tasks.store import Store, StoreError

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
        console.print(
            f"recommended precision: [bold]{rec['quant']}[/] ({rec['bits']}-bit), on the {rec.get('metric')} "
            f"frontier over {rec['frontier_share']:.0%} of the log-budget range"
        )
    else:
        console.print("recommended precision: insufficient data")
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


@task(name="fit-laws", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def fit_task(store_uri: str, keys: list[str] | None = None) -> dict[str, Any]:
    """Fit the store's results, or just `keys` (or read the stored fit of exactly these results)."""
    from tasks.law_io import fit_store
    from tasks.store import Store

    started = time.perf_counter()
    store = Store(store_uri)
    stored = fit_store(store, keys=keys)
    seconds = time.perf_counter() - started
    return {"key": store.url(stored.key), "refitted": stored.refitted, "doc": stored.doc, "seconds": seconds}


@flow(name="fit", log_prints=True)
def fit_flow(store: str | None = None) -> dict[str, Any]:
    """Refit the k-bit laws to the store's results (the fit-laws deployment)."""
    from tasks.store import Store

    out = fit_task(Store(store).uri)
    return {"fit": out["key"], "refitted": out["refitted"]}
