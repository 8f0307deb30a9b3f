"""The report's "Where this family is heading" text and tables: the joint law with its intervals
and hold-out errors, the runs still training, and the running check of past predictions."""

from __future__ import annotations

import math
from typing import Any

from kbitlaw.law.predict import UNBOUNDED_NATS
from kbitlaw.report.html import esc, fmt, table
from kbitlaw.status import NO_DATA

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
    lo, hi = (list(ci) + [None, None])[:2] if isinstance(ci, (list, tuple)) else (None, None)
    unknown = any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in (lo, hi))
    if unknown:
        return sig(value, digits)
    top = "unbounded" if nats and hi > UNBOUNDED_NATS else sig(hi, digits)
    return sig(value, digits) + f" [{sig(lo, digits)}, {top}]"


def held_out_text(name: str, h: dict | None) -> str:
    if not h or h.get("status") != "ok":
        return f"{name}: {NO_DATA}"
    return (
        f"{name}: RMS error {sig(h.get('rms_error'), 2)} nats, "
        f"{esc(h.get('flagged'))} of {esc(h.get('points'))} points outside the tolerance"
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
    if entry.get("status") != "ok":
        return (
            f"<p>The joint law of <code>{esc(family)}</code> could not be fitted ({NO_DATA}: "
            f"{esc(entry.get('n_points'))} 16-bit checkpoint losses).</p>"
        )
    ci = entry.get("ci") or {}
    unseen = set(entry.get("unidentified") or [])
    params = ", ".join(
        f"{name} = {esc(with_interval(entry.get(p), ci.get(p)))}"
        + (" (not identified: its term stays under 0.1% of the loss)" if p in unseen else "")
        for p, name in (("E", "E"), ("A", "A"), ("alpha", "α"), ("B", "B"), ("beta", "β"))
    )
    fit = entry.get("fit") or {}
    about = f" on {esc(fit.get('n_points'))} checkpoints of {esc(fit.get('n_sizes'))} sizes" if fit else ""
    warm = " (warm-started from the previous fit)" if fit.get("warm_started") else ""
    law = (
        f"<p class='law'><b>16-bit law</b> L(N, D) = E + A/N<sup>α</sup> + B/D<sup>β</sup>{about}{warm}: "
        f"{params} ({level:.0%} intervals).</p>"
    )
    schemes = (entry.get("damage") or {}).get("schemes") or []
    damage = "; ".join(
        f"<code>{esc(d.get('scheme'))}</code>: "
        + (
            f"{esc(DAMAGE_LAWS.get(d.get('form'), d.get('form')))}, held-out error "
            f"{sig(d.get('heldout_error'), 2)} noise SDs, chosen by {esc(d.get('chosen_by'))}"
            if d.get("status") == "ok"
            else NO_DATA
        )
        for d in schemes
    )
    damage_html = f"<p><b>Damage dL</b> per scheme: {damage or NO_DATA}.</p>"
    held = entry.get("held_out") or {}
    top = held.get("largest_size") or {}
    size = f" (N = {fmt(top.get('n_params'))})" if top.get("n_params") is not None else ""
    held_html = (
        "<p><b>Held out and predicted</b> (RMS error over every spec, in nats): "
        + esc(held_out_text(f"the largest size{size}", top))
        + "; "
        + esc(held_out_text("every size's latest checkpoint", held.get("latest_checkpoint")))
        + ".</p>"
    )
    latest = held.get("latest_checkpoint") or {}
    if latest.get("points") and (latest.get("flagged") or 0) > 0.5 * latest["points"]:
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
    for run in runs:
        preds = sorted(run.get("predictions") or [], key=lambda p: p.get("loss") or math.inf)
        best = preds[0]["quant"] if preds else None
        for p in run.get("predictions") or []:
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
        for p in (r.get("predictions") or [])[:1]  # the widest spec first: 16-bit
    )
    return (
        f"<h3>Runs in progress: predicted at their planned end</h3><p>{len(runs)} run(s) have not "
        f"reached the tokens their <code>kbitlaw.json</code> plans; the joint law's loss at the end of "
        f"each ({level:.0%} intervals): {ends}.</p>"
        + "<details><summary>every run and spec</summary>"
        + table(["latest checkpoint", "tokens seen", "spec", "loss at the end", "damage"], rows)
        + "</details>"
    )


def newest_first(entries: list[dict]) -> list[dict]:
    """The newest RUNNING_CHECK_ROWS running-check entries, newest fit first; within a fit the
    latest checkpoint first, the largest size first, the 16-bit spec first."""
    batches = {b: i for i, b in enumerate(dict.fromkeys(e.get("predicted_by") for e in entries))}

    def key(e: dict) -> tuple:
        return (
            -batches[e.get("predicted_by")],
            -(e.get("tokens_seen") or 0.0),
            -(e.get("n_params") or 0.0),
            e.get("quant") not in ("fp16", "bf16"),
            str(e.get("quant")),
        )

    return sorted(entries[-RUNNING_CHECK_ROWS:], key=key)


def running_check_table(entries: list[dict], level: float) -> str:
    """Past predictions against what came in: the newest RUNNING_CHECK_ROWS entries, newest first."""
    if not entries:
        return f"<p>{esc(NO_RUNNING_CHECK)}</p>"
    flagged = sum(bool(e.get("flagged")) for e in entries)
    shown = newest_first(entries)[:RUNNING_CHECK_ROWS]
    rows = [
        [
            f"<code>{esc(e.get('held_out'))}</code>",
            esc(e.get("quant")),
            fmt(e.get("n_params")),
            fmt(e.get("tokens_seen")),
            esc(with_interval(e.get("predicted"), e.get("ci"), 4, nats=True)),
            sig(e.get("observed"), 4),
            fmt(e.get("error"), "+.2g"),
            (
                '<span class="verdict v-contradicted">outside</span>'
                if e.get("flagged")
                else '<span class="verdict v-supported">inside</span>'
                if e.get("status") == "ok"
                else f'<span class="verdict v-other">{esc(e.get("status"))}</span>'
            ),
            f"<code>{esc(str(e.get('predicted_by') or '-')[:12])}</code>",
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
