"""What `kbitlaw fit` prints: the fit document in a few lines and a table, and `--check`.

Every entry is shown with its status: an `ok` entry with its estimates and interval, any other
with `fitdoc.describe(entry)` in their place (its numbers stay in the JSON for inspection, never
printed as if they meant something). The document is read through kbitlaw.law.fitdoc, so no
document, however broken, makes this raise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from kbitlaw.law.fitdoc import FitDocument, describe, fmt, interval, number, path, status, text, usable
from kbitlaw.vocab import MEAN_ACC

THRESHOLD_METRIC = MEAN_ACC  # the table shows S* of the headline metric (the JSON has every one)
ALL_PASS = "every ok entry passes its gates"


def _span(ci: Any) -> str:
    lo, hi = interval(ci)
    return f"{fmt(lo)}..{fmt(hi)}"


def recommendation_line(doc: FitDocument) -> str:
    """The recommended spec, clear or not, P(best) and the contenders; or why there is none."""
    rec = doc.recommendation
    quant, bits = text(rec.get("quant")), number(rec.get("bits"))
    if not usable(rec) or not quant or bits is None:
        return "recommended precision: none (" + (describe(rec) if not usable(rec) else "no spec named") + ")"
    width = str(int(bits))
    found = rec.get("p_best") if isinstance(rec.get("p_best"), dict) else {}
    p_best = {str(w): p for w, p in found.items() if number(p) is not None}
    if not p_best:
        sure = "noise unknown (no P(best))"
    elif rec.get("clear") is True:
        sure = f"clear, P(best) {fmt(p_best.get(width, 0), '.2f')}"
    else:
        rivals = rec.get("contenders") if isinstance(rec.get("contenders"), list) else []
        named = [str(c) for c in rivals if isinstance(c, str | int) and not isinstance(c, bool)]
        named.sort(key=lambda w: -(number(p_best.get(w)) or 0))  # the likeliest first
        sure = f"not clear, P(best) {fmt(p_best.get(width, 0), '.2f')}, contenders " + (
            ", ".join(f"{w}-bit" for w in named) or "none named"
        )
    share = number(rec.get("frontier_share"))
    over = f"over {share:.0%} of the budgets compared" if share is not None else "(share not recorded)"
    metric = text(rec.get("metric"), "quality")
    return f"recommended precision: {quant} ({width}-bit), best {metric} at equal memory {over}; {sure}"


def _rows(doc: FitDocument) -> list[tuple[str, ...]]:
    """(law, family, quant, metric, estimate, interval, status) per entry; not ok: why, no numbers."""
    rows = []

    def add(law: str, e: dict, what: str, metric: str, estimate: Callable[[], tuple[str, str]]) -> None:
        shown = estimate() if usable(e) else (describe(e), "-")
        rows.append((law, text(e.get("family")), what, metric, *shown, status(e)))

    for e in doc.entries("power_law"):
        add(
            "power law",
            e,
            text(e.get("quant")),
            text(e.get("metric")),
            lambda e=e: (
                f"E={fmt(e.get('E'))} A={fmt(e.get('A'))} alpha={fmt(e.get('alpha'))}",
                f"alpha {_span(path(e, 'ci', 'alpha'))}",
            ),
        )
    for e in doc.entries("threshold"):
        if e.get("metric") == THRESHOLD_METRIC:
            add(
                "threshold",
                e,
                text(e.get("quant")),
                THRESHOLD_METRIC,
                lambda e=e: (f"S*={fmt(e.get('s_star_bits'))} bits", _span(e.get("ci"))),
            )
    for e in doc.entries("damage"):
        add(
            f"damage {text(e.get('form'), '?')}",
            e,
            text(e.get("scheme")),
            "delta_loss",
            lambda e=e: (
                f"C={fmt(e.get('C'))} a={fmt(e.get('alpha'))} b={fmt(e.get('beta'))} g={fmt(e.get('gamma'))}",
                f"held-out err {fmt(e.get('heldout_error'))}",
            ),
        )
    return rows


def joint_law_line(e: dict) -> str:
    family = text(e.get("family"), "?")
    if not usable(e):
        return f"joint law {family}: {describe(e)}"
    ci = e.get("ci")
    form = text(path(e, "damage", "form")) or "none fitted"
    return (
        f"joint law {family}: L = {fmt(e.get('E'))} + {fmt(e.get('A'))}/N^{fmt(e.get('alpha'))} "
        f"[{_span(path(ci, 'alpha')).replace('..', ', ')}] + {fmt(e.get('B'))}/D^{fmt(e.get('beta'))} "
        f"[{_span(path(ci, 'beta')).replace('..', ', ')}] + damage ({form}); "
        f"held-out error {fmt(e.get('heldout_error'))} nats"
    )


def fit_summary(raw: Any, where: tuple[str, bool] | None, console: Any = None) -> None:
    """Print the fit: results, where it is, the recommendation, the laws, the joint laws."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    doc = FitDocument.of(raw)

    def say(line: str) -> None:  # one line stays one line (a reader may grep it)
        console.print(line, soft_wrap=True)

    rows, dropped = fmt(doc.raw.get("n_rows"), "g"), fmt(doc.raw.get("dropped_rows"), "g")
    say(f"results {escape(doc.results_sha[:12])}  rows {rows}  dropped {dropped}")
    if where:
        say(f"fit {'computed' if where[1] else 'unchanged (stored)'}: {escape(str(where[0]))}")
    say(escape(recommendation_line(doc)))
    table = Table("law", "family", "quant", "metric", "estimate", f"{doc.level:.0%} interval", "status")
    for row in _rows(doc):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    checks = doc.entries("extrapolation")
    flagged = sum(c.get("flagged") is True for c in checks)
    say(f"extrapolation checks: {len(checks)}, flagged: {flagged}")
    for e in doc.joint_laws:
        say(escape(joint_law_line(e)))
    if not_usable := doc.not_usable():
        say(f"{len(not_usable)} law(s) fitted but not usable: not drawn, not used in predictions")


def check_lines(raw: Any) -> list[str]:
    """`kbitlaw fit --check`: one line per `ok` entry that breaks a gate (law/document_gates.py)."""
    from kbitlaw.law.document_gates import check_document

    return [" ".join(str(line).split()) for line in check_document(raw)]
