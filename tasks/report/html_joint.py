"""The report's "Where this family is heading" text and tables: the joint law with its intervals
and hold-out errors, the runs still training, and the running check of past predictions.

Numbers of the joint law and its predictions are shown only when its entry is `ok`; otherwise
the entry's status in words (law/fitdoc.py describe). Every field is read defensively: a broken
document shows '-' or its status, never raises."""

from __future__ import annotations

import math
from typing import Any

from kbitlaw.law.fitdoc import describe, entries, interval, number, path, strings, text, usable
from kbitlaw.law.joint.predict import UNBOUNDED_NATS
from kbitlaw.report.html import esc, fmt, table
from kbitlaw.vocab import BASELINES

RUNNING_CHECK_ROWS = 30  # the newest running-check entries shown
DAMAGE_LAWS = {
    "power": "power form (Ouyang et al.: C D^beta / (N^alpha k^gamma))",
    "exponential": "exponential form (Kumar et al.: C D^beta / N^alpha e^(-k/gamma))",
}
NO_RUNNING_CHECK = (
    "No checkpoint has arrived since the first fit of the joint law; the next one will be checked "
    "against this fit's prediction."
)


def sig(x: Any, digits: int = 3) -> str:
    """A number to `digits` significant digits, trailing zeros kept (2.00, 0.320, 420, 1.60e+08)."""
    out = fmt(x, f"#.{digits}g")
    return out[:-1] if out.endswith(".") else out


def with_interval(value: Any, ci: Any, digits: int = 3, nats: bool = False) -> str:
    """A number and its interval, '1.92 [1.90, 1.93]' (the number alone when the interval is unknown).
    nats=True: a loss, whose upper end past UNBOUNDED_NATS (a diverged bootstrap) reads 'unbounded'."""
    lo, hi = interval(ci)
    if lo is None or hi is None:
        return sig(number(value), digits)
    top = "unbounded" if nats and hi > UNBOUNDED_NATS else sig(hi, digits)
    return sig(number(value), digits) + f" [{sig(lo, digits)}, {top}]"


def count(x: Any) -> str:
    """A count as the document holds it ('-' when it is not a finite number)."""
    return fmt(number(x), "g")


def held_out_text(name: str, h: object) -> str:
    if not usable(h):
        return f"{name}: {describe(h)}"
    return (
        f"{name}: RMS error {sig(number(h.get('rms_error')), 2)} nats, "
        f"{count(h.get('flagged'))} of {count(h.get('points'))} points outside the tolerance"
    )


def joint_law_html(entry: dict | None, has_key: bool, family: str, level: float) -> str:
    """The fitted joint law in a few lines: parameters with intervals, the damage forms chosen and
    the held-out errors. `has_key`: whether the document has a joint law at all."""
    if entry is None:
        if not has_key:
            return (
                "<p>This fit predates the joint law (its document has no <code>joint_law</code>): "
                "refit to see where the family is heading.</p>"
            )
        return f"<p>The fit has no joint law for family <code>{esc(family)}</code>.</p>"
    if not usable(entry):
        return f"<p>The joint law of <code>{esc(family)}</code> is not usable: {esc(describe(entry))}.</p>"
    unseen = set(strings(entry.get("unidentified")))
    schedule = entry.get("form") == "schedule"
    names = (("E", "E"), ("A", "A"), ("alpha", "α"), ("B", "B"), ("beta", "β"))
    names = (*names, ("C", "C")) if schedule else names
    params = ", ".join(
        f"{name} = {esc(with_interval(entry.get(p), path(entry, 'ci', p)))}"
        + (" (not identified: its term stays under 0.1% of the loss)" if p in unseen else "")
        + (" (dropped: no checkpoint had annealed)" if p in strings(entry.get("dropped")) else "")
        for p, name in names
    )
    fit = path(entry, "fit", default={})
    fit = fit if isinstance(fit, dict) else {}
    about = (
        f" on {count(fit.get('n_points'))} checkpoints of {count(fit.get('n_sizes'))} sizes" if fit else ""
    )
    warm = " (warm-started from the previous fit)" if fit.get("warm_started") is True else ""
    form = (
        "L(N, S1, S2) = E + A/N<sup>α</sup> + B/S1<sup>β</sup> − C·S2 (S1, S2: the learning-rate "
        "schedule's forward and annealing areas, in tokens)"
        if schedule
        else "L(N, D) = E + A/N<sup>α</sup> + B/D<sup>β</sup>"
    )
    note = text(path(entry, "checkpoints", "note"))
    law = f"<p class='law'><b>16-bit law</b> {form}{about}{warm}: {params} ({level:.0%} intervals).</p>" + (
        f"<p class='note'>{esc(note)}</p>" if note else ""
    )
    schemes = entries(path(entry, "damage"), "schemes")
    damage = "; ".join(
        f"<code>{esc(d.get('scheme'))}</code>: "
        + (
            f"{esc(DAMAGE_LAWS.get(d.get('form'), d.get('form')))}, held-out error "
            f"{sig(number(d.get('heldout_error')), 2)} noise SDs, chosen by {esc(d.get('chosen_by'))}"
            if usable(d)
            else esc(describe(d))
        )
        for d in schemes
    )
    damage_html = f"<p><b>Damage dL</b> per scheme: {damage or 'no damage law in the fit'}.</p>"
    held = path(entry, "held_out", default={})
    top = path(held, "largest_size", default={})
    n_top = number(path(top, "n_params"))
    size = f" (N = {fmt(n_top)})" if n_top is not None else ""
    latest = path(held, "latest_checkpoint")
    held_html = (
        "<p><b>Held out and predicted</b> (RMS error over every spec, in nats): "
        + esc(held_out_text(f"the largest size{size}", top))
        + "; "
        + esc(held_out_text("every size's latest checkpoint", latest))
        + ".</p>"
    )
    points, flagged = number(path(latest, "points")), number(path(latest, "flagged"))
    if usable(latest) and points and flagged is not None and flagged > 0.5 * points:
        held_html += (
            "<p class='note'>The law missed most of the latest checkpoints. A possible cause: fitted on "
            "the checkpoints of training runs, it treats each as a model trained to its token count, "
            "and when the learning rate decays to the end of a run (the demo's cosine schedule does) "
            "the last checkpoint drops below the trend of the earlier ones. Until the running check "
            "says otherwise, trust its predictions along a run less than across sizes.</p>"
        )
    return law + damage_html + held_html


def in_progress_html(runs: list[dict], level: float) -> str:
    """The runs still training (their latest checkpoint's tokens_planned beyond tokens_seen) and
    the loss the joint law predicts at each one's planned end, per spec; nothing when none."""
    if not runs:
        return ""
    rows = []
    unpredicted = "".join(
        f"<p class='note'><code>{esc(r.get('checkpoint_id'))}</code>: {esc(text(r.get('note')))}.</p>"
        for r in runs
        if not entries(r, "predictions") and text(r.get("note"))
    )
    for run in runs:
        preds = sorted(entries(run, "predictions"), key=lambda p: number(p.get("loss")) or math.inf)
        best = preds[0].get("quant") if preds else None
        for p in entries(run, "predictions"):
            rows.append(
                [
                    f"<code>{esc(run.get('checkpoint_id'))}</code>",
                    f"{sig(run.get('tokens_seen'))} of {sig(run.get('tokens_planned'))}",
                    esc(p.get("quant")) + (" (lowest)" if p.get("quant") == best else ""),
                    esc(with_interval(p.get("loss"), p.get("ci"), 4, nats=True)),
                    esc(with_interval(p.get("damage"), p.get("damage_ci"), 2, nats=True)),
                ]
            )
    ends = "; ".join(
        f"<code>{esc(r.get('checkpoint_id'))}</code>: "
        f"{esc(with_interval(p.get('loss'), p.get('ci'), 4, nats=True))} "
        f"at {esc(p.get('quant'))}"
        for r in runs
        for p in entries(r, "predictions")[:1]  # the widest spec first: 16-bit
    )
    return (
        f"<h3>Runs in progress: predicted at their planned end</h3><p>{len(runs)} run(s) have not "
        f"reached the tokens their <code>kbitlaw.json</code> plans; the joint law's loss at the end of "
        f"each ({level:.0%} intervals): {ends}.</p>"
        + "<details><summary>every run and spec</summary>"
        + table(["latest checkpoint", "tokens seen", "spec", "loss at the end", "damage"], rows)
        + "</details>"
        + unpredicted
    )


def newest_first(entries: list[dict]) -> list[dict]:
    """The newest RUNNING_CHECK_ROWS running-check entries, newest fit first; within a fit the
    latest checkpoint first, the largest size first, the 16-bit spec first."""
    batches = {b: i for i, b in enumerate(dict.fromkeys(str(e.get("predicted_by")) for e in entries))}

    def key(e: dict) -> tuple:
        return (
            -batches[str(e.get("predicted_by"))],
            -(number(e.get("tokens_seen")) or 0.0),
            -(number(e.get("n_params")) or 0.0),
            e.get("quant") not in BASELINES,
            str(e.get("quant")),
        )

    return sorted(entries[-RUNNING_CHECK_ROWS:], key=key)


def running_check_table(entries: list[dict], level: float) -> str:
    """Past predictions against what came in: the newest RUNNING_CHECK_ROWS entries, newest first."""
    if not entries:
        return f"<p>{esc(NO_RUNNING_CHECK)}</p>"
    flagged = sum(e.get("flagged") is True for e in entries)
    shown = newest_first(entries)[:RUNNING_CHECK_ROWS]
    rows = [
        [
            f"<code>{esc(e.get('held_out'))}</code>",
            esc(e.get("quant")),
            fmt(number(e.get("n_params"))),
            fmt(number(e.get("tokens_seen"))),
            esc(with_interval(e.get("predicted"), e.get("ci"), 4, nats=True)),
            sig(number(e.get("observed")), 4),
            fmt(number(e.get("error")), "+.2g"),
            (
                f'<span class="verdict v-other">{esc(describe(e))}</span>'
                if not usable(e)
                else '<span class="verdict v-contradicted">outside</span>'
                if e.get("flagged") is True
                else '<span class="verdict v-supported">inside</span>'
            ),
            f"<code>{esc(text(e.get('predicted_by'), '-')[:12])}</code>",
        ]
        for e in shown
    ]
    intro = (
        f"<p>{len(entries)} predictions checked so far, {flagged} outside the tolerance "
        f"(the {level:.0%} interval widened by the observation's own noise)"
        + (f"; the newest {len(shown)} shown" if len(shown) < len(entries) else "")
        + ", newest first.</p>"
    )
    headers = [
        "checkpoint",
        "spec",
        "params",
        "tokens",
        f"predicted [{level:.0%} interval]",
        "observed",
        "predicted − observed (nats)",
        "tolerance",
        "refit on the checkpoints of (fit)",
    ]
    return intro + table(headers, rows, {2, 3, 4, 5, 6}, cls="running")
