"""What the `kbitlaw` commands print: the fit summary, the report location (stdout for results,
stderr for progress and errors)."""

from __future__ import annotations

import json
import sys
from typing import Any

from kbitlaw.law.common import json_safe
from kbitlaw.law.fitdoc import fmt
from kbitlaw.status import NO_DATA


def fit_command(store_uri: str | None, results_file: str | None, as_json: bool, check: bool = False) -> int:
    """Run one fit; print the fit document (--json: one JSON document on stdout, nothing else)
    or a short summary. `check`: also check every `ok` entry against its gates (law/gates.py)
    and print one line per entry that breaks one (on stderr with --json). Returns the exit code:
    0 ok, 1 unusable input, a store failure or (with `check`) an ok entry that breaks a gate."""
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
    if not check:
        return 0
    from kbitlaw.flows.cli.console_fit import ALL_PASS, check_lines

    broken = check_lines(doc)
    out = sys.stderr if as_json else sys.stdout  # --json: stdout holds the document only
    for line in broken or [ALL_PASS]:
        print(line, file=out)
    return 1 if broken else 0


def _log_to_stderr() -> None:
    """kbitlaw's own log lines (e.g. runs left out of a fit) on stderr; stdout stays for results."""
    import logging

    logger = logging.getLogger("kbitlaw")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _fit_document(store_uri: str | None, results_file: str | None) -> dict[str, Any]:
    """The fit document predict reads: the law stage's, never a fit of predict's own. --results
    FILE: the law stage fits the file once; the store: fits/latest.json's fit when the results are
    unchanged since (fit_store reads it back), else the law stage's fit of the current results."""
    from kbitlaw.law.document import FitConfig, fit_laws
    from kbitlaw.law.io import default_chance, fit_store, read_results_file
    from kbitlaw.store import Store

    if results_file:
        results = read_results_file(results_file)
        return fit_laws(results, FitConfig(chance=default_chance(results))).doc
    return fit_store(Store(store_uri)).doc


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
    """`kbitlaw predict`: the stored joint law's predictions for a planned (N, D). Exit 1 on bad
    input or an unreadable fit; 0 when the joint law is not usable (it says why, no prediction)."""
    from kbitlaw.law.joint.predict import PredictError, predict_from_document
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
        fit = _fit_document(store_uri, results_file)
        doc = predict_from_document(
            fit, n_params, tokens, memory_gb=memory_gb, threshold=threshold, family=family
        )
    except (ResultsError, StoreError, PredictError, ValueError) as exc:
        return _error(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(json_safe(doc), allow_nan=False, sort_keys=True) + "\n")
    else:
        _prediction_summary(doc)
    return 0


def _nats_interval(ci: Any, spec: str) -> str:
    """'lo..hi', with 'unbounded' for an upper end the data do not bound (bootstrap refits of a
    noise-dominated damage law diverge when extrapolated; the JSON keeps the numbers)."""
    from kbitlaw.law.fitdoc import interval
    from kbitlaw.law.joint.predict import UNBOUNDED_NATS

    lo, hi = interval(ci)
    unbounded = (hi is None and lo is not None) or (hi is not None and hi > UNBOUNDED_NATS)
    top = "unbounded" if unbounded else fmt(hi, spec)
    return f"{fmt(lo, spec)}..{top}"


def _prediction_summary(doc: dict[str, Any], console: Any = None) -> None:
    """The predict document in words and a table. A joint law that is not ok is one line and no
    numbers; every number is read through fitdoc.number, so no document makes this raise."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from kbitlaw.law.fitdoc import number, path, strings, text

    console = console or (Console() if sys.stdout.isatty() else Console(width=160))

    def say(line: str) -> None:  # a line stays one line (a reader may grep it), however long
        console.print(line, soft_wrap=True)

    family = escape(text(doc.get("family"), "unknown"))
    if doc.get("status") != "ok":
        say(f"joint law for {family}: {escape(text(doc.get('reason'), 'not usable'))}; no prediction")
        return
    pct = f"{number(doc.get('level')) or 0.9:.0%}"
    law = doc.get("law") if isinstance(doc.get("law"), dict) else {}
    p = {k: fmt(number(law.get(k))) for k in ("E", "A", "alpha", "B", "beta")}
    unidentified = ", ".join(strings(law.get("unidentified")))
    say(
        f"family {family}: L(N, D) = {p['E']} + {p['A']}/N^{p['alpha']} + {p['B']}/D^{p['beta']} "
        "+ damage(N, D, k)" + (f"; not identified: {unidentified}" if unidentified else "")
    )
    if text(doc.get("reason")):
        say(f"joint law ok: {escape(doc['reason'])}")
    n, d = number(doc.get("n_params")), number(doc.get("tokens"))
    (n0, n1), (d0, d1) = (
        [number(path(doc, "fitted_range", k, i)) for i in (0, 1)] for k in ("n_params", "tokens")
    )
    where = "outside" if doc.get("extrapolated") else "inside"
    say(
        f"N = {fmt(n)} params, D = {fmt(d)} tokens ({where} the fitted range: "
        f"N {fmt(n0)}..{fmt(n1)}, D {fmt(d0)}..{fmt(d1)})"
    )
    past_n, past_d = (number(path(doc, "beyond_range", k)) or 1.0 for k in ("n_params", "tokens"))
    if past_n > 1 or past_d > 1:
        say(
            f"[yellow]extrapolating {past_n:.3g}x past the largest size and "
            f"{past_d:.3g}x past the most tokens measured[/]"
        )
        if unidentified:
            say(
                f"[yellow]{unidentified} not identified by the data: the intervals "
                "below do not carry its uncertainty, which grows with the extrapolation[/]"
            )
    held = law.get("held_out") if isinstance(law.get("held_out"), dict) else {}
    for name, h in held.items():
        flagged, points = number(path(h, "flagged")), number(path(h, "points"))
        if path(h, "status") != "ok" or flagged is None or not points:
            continue  # a check that is not ok shows no numbers
        red = flagged / points > 0.25
        say(
            f"{'[red]' if red else ''}held-out check ({escape(str(name)).replace('_', ' ')}): "
            f"{flagged:.0f} of {points:.0f} points outside their intervals, RMS error "
            f"{fmt(number(path(h, 'rms_error')))} nats{'[/]' if red else ''}"
        )
    table = Table("spec", "bits/param", "memory GB", "loss", f"{pct} interval", "damage", f"{pct} interval")
    for row in doc.get("predictions") or []:
        table.add_row(
            escape(text(row.get("quant"))),
            fmt(number(row.get("bits_per_param")), ".3f"),
            fmt(number(row.get("memory_gb")), ".3g"),
            fmt(number(row.get("loss")), ".4f"),
            _nats_interval(row.get("ci"), ".4f"),
            fmt(number(row.get("damage")), "+.4f"),
            _nats_interval(row.get("damage_ci"), "+.4f"),
        )
    console.print(table)
    _left_out_lines(doc.get("left_out"), say)
    _budget_line(doc.get("budget"), say)
    t = doc.get("damage_threshold") if isinstance(doc.get("damage_threshold"), dict) else {}
    reach = [
        f"{escape(text(x.get('quant')))} {fmt(number(x.get('tokens')))}"
        for x in t.get("tokens") or []
        if isinstance(x, dict) and number(x.get("tokens")) is not None
    ]
    if reach:
        say(
            f"tokens until the damage reaches {fmt(number(t.get('nats')), 'g')} nats at "
            f"N = {fmt(number(t.get('n_params')))}: " + ", ".join(reach)
        )
    for run in doc.get("runs_in_progress") or []:
        preds = ", ".join(
            f"{escape(text(q.get('quant')))} {fmt(number(q.get('loss')), '.4f')}"
            for q in (run.get("predictions") or [])[:6]
        )
        seen, planned = (fmt(number(run.get(k))) for k in ("tokens_seen", "tokens_planned"))
        say(
            f"run in progress {escape(text(run.get('checkpoint_id')))}: {seen} of {planned} tokens; "
            f"predicted at the end: {preds}"
        )


def _left_out_lines(left: Any, say: Any) -> None:
    """One line per reason: the specs left out of the predictions, because their scheme's damage
    law is not ok."""
    from rich.markup import escape

    by_reason: dict[str, list[str]] = {}
    for x in left if isinstance(left, list) else []:
        if isinstance(x, dict) and isinstance(x.get("quant"), str):
            why = f"{x.get('scheme') or '?'}: {x.get('reason') or x.get('status') or 'not usable'}"
            by_reason.setdefault(why, []).append(x["quant"])
    for why, quants in by_reason.items():
        say(f"no prediction for {escape(', '.join(quants))} (damage law {escape(why)})")


def _budget_line(b: Any, say: Any) -> None:
    from rich.markup import escape

    from kbitlaw.law.fitdoc import number, path, strings, text

    if not isinstance(b, dict):
        return
    best = b.get("best") if isinstance(b.get("best"), dict) else None
    if b.get("status") != "ok" or best is None:
        say(f"memory budget: {NO_DATA}")
        return
    beyond = number(best.get("beyond_range")) or 1.0
    fits_at = ", ".join(strings(path(b, "planned", "fits_at"))) or "no spec"
    best_quant = text(path(b, "planned", "best_quant"))
    say(
        f"within {fmt(number(b.get('memory_gb')), 'g')} GB at D = {fmt(number(b.get('tokens')))}: "
        f"best {escape(text(best.get('quant')))} at N = {fmt(number(best.get('n_params')))} "
        f"(loss {fmt(number(best.get('loss')), '.4f')}, P(best) {fmt(number(best.get('p_best')), '.2f')}"
        + (f"; {beyond:.3g}x the largest size measured" if beyond > 1 else "")
        + f"); the planned N fits at: {escape(fits_at)}"
        + (f" (best of those: {escape(best_quant)})" if best_quant else "")
    )


def _error(message: str) -> int:
    print(f"kbitlaw: error: {message}", file=sys.stderr)
    return 1


def _summary(doc: Any, where: tuple[str, bool] | None) -> None:
    """The fit in a few lines and a table; entries that are not ok say why instead of showing
    numbers; never raises on a broken document (cli/console_fit.py)."""
    from kbitlaw.flows.cli.console_fit import fit_summary

    fit_summary(doc, where)


def report_command(store_uri: str | None) -> int:
    """`kbitlaw report`: build the report of fits/latest.json if missing and print its location.
    Returns the exit code: 0 ok, 1 no fit, an unreadable store, or a section of the report that
    failed to render (the report is still written; one line per failed section on stderr)."""
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
        return _error(" ".join(str(exc).split()))
    state = "unchanged" if report["cached"] else "written"
    print(f"report {state}: {report['url']}", file=sys.stderr)
    print(report["url"])
    failed = [" ".join(str(line).split()) for line in report.get("section_errors", [])]
    for line in failed:
        print(f"kbitlaw: error: report section {line}", file=sys.stderr)
    return 1 if failed else 0
