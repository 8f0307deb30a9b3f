"""What the `kbitlaw` commands print: the fit summary, the report location (stdout for results,
stderr for progress and errors)."""

from __future__ import annotations

import json
import sys
from typing import Any

from kbitlaw.law.common import json_safe
from kbitlaw.status import NO_DATA


def fit_command(store_uri: str | None, results_file: str | None, as_json: bool) -> int:
    """Run one fit; print the fit document (--json: one JSON document on stdout, nothing else)
    or a short summary. Returns the exit code: 0 ok, 1 unusable input or store failure."""
    from kbitlaw.law.document import FitConfig, fit_laws
    from kbitlaw.law.io import default_chance, fit_store, read_results_file
    from kbitlaw.law.table import ResultsError
    from kbitlaw.store import Store, StoreError

    _log_to_stderr()
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


def _log_to_stderr() -> None:
    """kbitlaw's own log lines (e.g. runs left out of a fit) on stderr; stdout stays for results."""
    import logging

    logger = logging.getLogger("kbitlaw")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _read_results(store_uri: str | None, results_file: str | None):
    """The results of --results FILE, else of the store (every stored result)."""
    from kbitlaw.law.io import read_results_file, read_results_store
    from kbitlaw.store import Store

    if results_file:
        return read_results_file(results_file)
    return read_results_store(Store(store_uri))


def predict_command(
    store_uri: str | None,
    results_file: str | None,
    n_params: float,
    tokens: float,
    memory_gb: float | None,
    threshold: float,
    family: str | None,
    as_json: bool,
) -> int:
    """`kbitlaw predict`: the joint law's predictions for a planned (N, D). Exit 1 on bad input."""
    from kbitlaw.law.common import FitConfig
    from kbitlaw.law.io import default_chance
    from kbitlaw.law.predict import PredictError, fit_for_prediction, predict
    from kbitlaw.law.table import ResultsError
    from kbitlaw.store import StoreError

    _log_to_stderr()
    if store_uri and results_file:
        return _error("use --store or --results, not both")
    if memory_gb is not None and not memory_gb > 0:
        return _error(f"--memory-gb must be > 0, got {memory_gb:g}")
    if not threshold > 0:
        return _error(f"--threshold must be > 0 nats, got {threshold:g}")
    try:
        results = _read_results(store_uri, results_file)
        config = FitConfig(chance=default_chance(results))
        law, points, entry = fit_for_prediction(results, config, family)
        doc = predict(
            law, points, entry, n_params, tokens, memory_gb=memory_gb, threshold=threshold, level=config.level
        )
    except (ResultsError, StoreError, PredictError, ValueError) as exc:
        return _error(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(json_safe(doc), allow_nan=False, sort_keys=True) + "\n")
    else:
        _prediction_summary(doc)
    return 0


def _nats_interval(ci: list, spec: str) -> str:
    """'lo..hi', with 'unbounded' for an upper end the data do not bound (bootstrap refits of a
    noise-dominated damage law diverge when extrapolated; the JSON keeps the numbers)."""
    from kbitlaw.law.predict import UNBOUNDED_NATS

    lo, hi = ci
    unbounded = (hi is None and lo is not None) or (hi is not None and hi > UNBOUNDED_NATS)
    top = "unbounded" if unbounded else _fmt(hi, spec)
    return f"{_fmt(lo, spec)}..{top}"


def _prediction_summary(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    pct = f"{doc['level']:.0%}"
    law = doc["law"]
    console.print(
        f"family {doc['family']}: L(N, D) = {_fmt(law['E'])} + {_fmt(law['A'])}/N^{_fmt(law['alpha'])} "
        f"+ {_fmt(law['B'])}/D^{_fmt(law['beta'])} + damage(N, D, k)"
        + (f"; not identified: {', '.join(law['unidentified'])}" if law.get("unidentified") else "")
    )
    lo, hi = doc["fitted_range"]["n_params"], doc["fitted_range"]["tokens"]
    where = "outside" if doc["extrapolated"] else "inside"
    console.print(
        f"N = {doc['n_params']:.3g} params, D = {doc['tokens']:.3g} tokens ({where} the fitted range: "
        f"N {_fmt(lo[0])}..{_fmt(lo[1])}, D {_fmt(hi[0])}..{_fmt(hi[1])})"
    )
    beyond = doc["beyond_range"]
    if beyond["n_params"] > 1 or beyond["tokens"] > 1:
        console.print(
            f"[yellow]extrapolating {beyond['n_params']:.3g}x past the largest size and "
            f"{beyond['tokens']:.3g}x past the most tokens measured[/]"
        )
        if law.get("unidentified"):
            console.print(
                f"[yellow]{', '.join(law['unidentified'])} not identified by the data: the intervals "
                "below do not carry its uncertainty, which grows with the extrapolation[/]"
            )
    for name, h in law["held_out"].items():
        if h.get("status") == "ok":
            miss = h["flagged"] / h["points"]
            console.print(
                f"{'[red]' if miss > 0.25 else ''}held-out check ({name.replace('_', ' ')}): "
                f"{h['flagged']} of {h['points']} points outside their intervals, RMS error "
                f"{_fmt(h['rms_error'])} nats{'[/]' if miss > 0.25 else ''}"
            )
    table = Table("spec", "bits/param", "memory GB", "loss", f"{pct} interval", "damage", f"{pct} interval")
    for p in doc["predictions"]:
        table.add_row(
            p["quant"],
            _fmt(p["bits_per_param"], ".3f"),
            _fmt(p["memory_gb"], ".3g"),
            _fmt(p["loss"], ".4f"),
            _nats_interval(p["ci"], ".4f"),
            _fmt(p["damage"], "+.4f"),
            _nats_interval(p["damage_ci"], "+.4f"),
        )
    console.print(table)
    b = doc["budget"]
    if b and b["status"] == "ok":
        best = b["best"]
        console.print(
            f"within {b['memory_gb']:g} GB at D = {b['tokens']:.3g}: best {best['quant']} at N = "
            f"{best['n_params']:.3g} (loss {_fmt(best['loss'], '.4f')}, "
            f"P(best) {_fmt(best['p_best'], '.2f')}"
            + (f"; {best['beyond_range']:.3g}x the largest size measured" if best["beyond_range"] > 1 else "")
            + "); "
            f"the planned N fits at: {', '.join(b['planned']['fits_at']) or 'no spec'}"
            + (f" (best of those: {b['planned']['best_quant']})" if b["planned"]["best_quant"] else "")
        )
    elif b:
        console.print(f"memory budget: {NO_DATA}")
    t = doc["damage_threshold"]
    reach = [f"{x['quant']} {_fmt(x['tokens'])}" for x in t["tokens"] if x["tokens"] is not None]
    if reach:
        head = f"tokens until the damage reaches {t['nats']:g} nats at N = {t['n_params']:.3g}: "
        console.print(head + ", ".join(reach))
    for run in doc["runs_in_progress"]:
        preds = ", ".join(f"{p['quant']} {_fmt(p['loss'], '.4f')}" for p in run["predictions"][:6])
        console.print(
            f"run in progress {run['checkpoint_id']}: {run['tokens_seen']:.3g} of "
            f"{run['tokens_planned']:.3g} tokens; predicted at the end: {preds}"
        )


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
    joint = doc.get("joint_law")
    for e in joint if isinstance(joint, list) else [joint] if joint else []:
        if e["status"] != "ok":
            console.print(f"joint law {e['family']}: {NO_DATA}")
            continue
        ci = e["ci"]
        console.print(
            f"joint law {e['family']}: L = {_fmt(e['E'])} + {_fmt(e['A'])}/N^{_fmt(e['alpha'])} "
            f"[{_fmt(ci['alpha'][0])}, {_fmt(ci['alpha'][1])}] + {_fmt(e['B'])}/D^{_fmt(e['beta'])} "
            f"[{_fmt(ci['beta'][0])}, {_fmt(ci['beta'][1])}] + damage "
            f"({e['damage']['form'] or 'none fitted'}); "
            f"held-out error {_fmt(e['heldout_error'])} nats"
        )


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
