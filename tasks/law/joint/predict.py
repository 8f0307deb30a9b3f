"""Forward predictions from the joint law (law/joint/law.py): `kbitlaw predict`.

Predict reads the fit document; it never fits. Each joint-law entry of the document stores its law
as `model` (law/joint/model.py), and `predict_from_document` rebuilds it and predicts, honouring
every status on the way (law/fitdoc.py): a joint law that is not ok gives no prediction (the output
says why, `status` and `reason`, and `predictions` is empty), and a quantized spec whose scheme's
damage law is not ok is left out (`left_out` names it and why). A document too broken to read
raises PredictError with a one-line message, never anything else.

For a planned model (N parameters trained on D tokens) it gives the 16-bit loss and the loss at
every spec the family was measured at, each with its interval; for a memory budget, the best
(size, spec) that fits it at D tokens and whether the planned model fits; the tokens past which
each spec's damage exceeds a threshold (Ouyang et al.'s "tokens until 4-bit costs 0.1 nats"); and
for each run in progress (its latest checkpoint's `tokens_planned` beyond its `tokens_seen`), the
losses predicted at the end of the run (law/joint/predictions.py computes them all). Intervals are
the bootstrap's (law/joint/law.py); a budget's choice carries P(best), the share of replicates in
which that spec predicts the lowest loss. A law of the schedule form predicts at D tokens for the
family's schedule stretched to D (`schedule` says so: law/joint/anneal.py). How far
to trust it: `law.held_out` (how well the law predicted the family's largest size and latest
checkpoints when fitted without them) and `beyond_range` (how far N and D lie past the data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kbitlaw.law import fitdoc
from kbitlaw.law.common import num
from kbitlaw.law.joint.law import SCHEDULE_FORM
from kbitlaw.law.joint.model import JointModel, ModelError, usable_part
from kbitlaw.law.joint.predictions import (  # noqa: F401 (spec_order, loss_at, budget: callers)
    budget,
    loss_at,
    run_predictions,
    schedule_assumed,
    spec_order,
    tokens_until,
)
from kbitlaw.status import OK
from kbitlaw.vocab import gb_bits

DEFAULT_THRESHOLD = 0.1  # nats
TRUST = ("status", "points", "flagged", "rms_error", "n_params")  # what predict shows of a hold-out
UNBOUNDED_NATS = 100.0  # no language model's loss comes near it: an interval end past it is no bound
LAW_PARAMS = ("E", "A", "alpha", "B", "beta")  # and C in the schedule form


class PredictError(ValueError):
    """The prediction cannot be made; the message says why."""


# -- the `kbitlaw predict` document ------------------------------------------------------------------


def _held_out(held: Any) -> dict:
    """The entry's hold-out summaries as predict shows them (numbers finite or None)."""
    out = {}
    for name, v in held.items() if isinstance(held, dict) else ():
        if isinstance(name, str) and isinstance(v, dict):
            out[name] = {f: fitdoc.status(v) if f == "status" else fitdoc.number(v.get(f)) for f in TRUST}
    return out


def _law_summary(entry: dict) -> dict:
    """The joint-law entry's parameters, intervals and checks as predict shows them."""
    schemes = fitdoc.entries(entry.get("damage"), "schemes")
    params = (*LAW_PARAMS, "C") if entry.get("form") == SCHEDULE_FORM else LAW_PARAMS
    return {
        "status": fitdoc.status(entry),
        "form": fitdoc.text(entry.get("form"), "chinchilla"),
        **{p: fitdoc.number(entry.get(p)) for p in params},
        "ci": {p: list(fitdoc.interval(fitdoc.path(entry, "ci", p))) for p in params},
        "unidentified": fitdoc.strings(entry.get("unidentified")),
        "damage_forms": {
            s["scheme"]: fitdoc.text(s.get("form")) or None
            for s in schemes
            if isinstance(s.get("scheme"), str) and fitdoc.usable(s)
        },
        "heldout_error": fitdoc.number(entry.get("heldout_error")),
        "held_out": _held_out(entry.get("held_out")),
    }


def predict(
    model: JointModel,
    entry: dict,
    n_params: float,
    tokens: float,
    *,
    memory_gb: float | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    level: float = 0.9,
    left_out: list[dict] | None = None,
) -> dict[str, Any]:
    """The `kbitlaw predict --json` document of a usable joint law (`entry`: its fit-document
    entry; `left_out`: the specs the model was restricted away from, and why)."""
    _check_request(n_params, tokens, memory_gb, threshold)
    law, (n_lo, n_hi), (d_lo, d_hi) = model.law, model.n_range, model.d_range
    with np.errstate(all="ignore"):  # an overflowing replicate is an unbounded end, not a warning
        return {
            "family": law.family,
            "status": OK,
            "reason": fitdoc.text(entry.get("reason")) or None,
            "n_params": n_params,
            "tokens": tokens,
            "level": level,
            "law": _law_summary(entry),
            "schedule": schedule_assumed(law, tokens),
            "fitted_range": {"n_params": [n_lo, n_hi], "tokens": [d_lo, d_hi]},
            "extrapolated": bool(n_params > n_hi or n_params < n_lo or tokens > d_hi or tokens < d_lo),
            "beyond_range": {
                "n_params": num(max(n_params / n_hi, 1.0)),
                "tokens": num(max(tokens / d_hi, 1.0)),
            },
            "predictions": loss_at(law, n_params, tokens, level),
            "left_out": list(left_out or []),
            "budget": None if memory_gb is None else budget(law, memory_gb, n_params, tokens, level, n_hi),
            "damage_threshold": {
                "nats": threshold,
                "n_params": n_params,
                "tokens": tokens_until(law, n_params, threshold, level),
            },
            "runs_in_progress": run_predictions(law, model.runs, level),
        }


def _check_request(n_params: float, tokens: float, memory_gb: float | None, threshold: float) -> None:
    finite = all(math.isfinite(v) for v in (n_params, tokens))
    if not (finite and n_params > 0 and tokens > 0):
        raise PredictError(f"--n-params and --tokens must be > 0, got {n_params:g} and {tokens:g}")
    if memory_gb is not None and not (math.isfinite(gb_bits(memory_gb)) and memory_gb > 0):
        raise PredictError(f"--memory-gb must be > 0, got {memory_gb:g}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise PredictError(f"--threshold must be > 0 nats, got {threshold:g}")


def no_prediction(entry: dict, n_params: float, tokens: float, level: float) -> dict[str, Any]:
    """The document of a joint law that is not ok: its status and why, and no numbers of it."""
    s = fitdoc.status(entry)
    return {
        "family": fitdoc.text(entry.get("family"), "unknown"),
        "status": s,
        "reason": fitdoc.describe(entry),
        "n_params": n_params,
        "tokens": tokens,
        "level": level,
        "law": {"status": s},
        "schedule": None,
        "fitted_range": None,
        "extrapolated": None,
        "beyond_range": None,
        "predictions": [],
        "left_out": [],
        "budget": None,
        "damage_threshold": None,
        "runs_in_progress": [],
    }


def choose_entry(doc: Any, family: str | None) -> dict:
    """The joint-law entry of `family` (of the only family when None); PredictError if none."""
    entries = fitdoc.joint_laws(doc)
    names = sorted({e["family"] for e in entries if isinstance(e.get("family"), str)})
    if family is not None:
        found = fitdoc.joint_law_for(doc, family)
        if found is None:
            raise PredictError(f"no family {family!r} in the fit (families: {', '.join(names) or 'none'})")
        return found
    if not entries:
        raise PredictError("the fit holds no joint law")
    if len(entries) > 1:
        raise PredictError(
            f"the fit holds {len(entries)} families ({', '.join(names)}); pick one with --family"
        )
    return entries[0]


def predict_from_document(
    doc: Any,
    n_params: float,
    tokens: float,
    *,
    memory_gb: float | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    family: str | None = None,
) -> dict[str, Any]:
    """The `kbitlaw predict --json` document from a fit document: its stored joint law, honouring
    every status. PredictError (one line) when the request or the document cannot be used."""
    _check_request(n_params, tokens, memory_gb, threshold)
    fit = fitdoc.FitDocument.of(doc)
    entry = choose_entry(fit.raw, family)
    name = fitdoc.text(entry.get("family"), "unknown")
    if not fitdoc.usable(entry):
        return no_prediction(entry, n_params, tokens, fit.level)
    try:
        model = JointModel.from_dict(entry.get("model"), name)
    except ModelError as exc:
        raise PredictError(f"joint law for {name}: the stored model cannot be read ({exc})") from None
    usable, left = usable_part(model, entry, fit.raw)
    try:
        return predict(
            usable,
            entry,
            n_params,
            tokens,
            memory_gb=memory_gb,
            threshold=threshold,
            level=fit.level,
            left_out=left,
        )
    except (ValueError, ArithmeticError) as exc:  # numbers the reader let through but cannot use
        raise PredictError(f"joint law for {name}: cannot predict from the stored model ({exc})") from None
