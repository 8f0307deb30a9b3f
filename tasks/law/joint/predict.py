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
losses predicted at the end of the run. Intervals are the bootstrap's (law/joint/law.py); a budget's
choice carries P(best), the share of replicates in which that spec predicts the lowest loss. How far
to trust it: `law.held_out` (how well the law predicted the family's largest size and latest
checkpoints when fitted without them) and `beyond_range` (how far N and D lie past the data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from kbitlaw.law import fitdoc
from kbitlaw.law.common import num
from kbitlaw.law.joint.law import JointLaw
from kbitlaw.law.joint.model import JointModel, ModelError, Run, usable_part
from kbitlaw.law.joint.model import in_progress as in_progress_runs
from kbitlaw.status import NO_DATA, OK
from kbitlaw.vocab import gb, gb_bits

DEFAULT_THRESHOLD = 0.1  # nats
TRUST = ("status", "points", "flagged", "rms_error", "n_params")  # what predict shows of a hold-out
UNBOUNDED_NATS = 100.0  # no language model's loss comes near it: an interval end past it is no bound
LAW_PARAMS = ("E", "A", "alpha", "B", "beta")


class PredictError(ValueError):
    """The prediction cannot be made; the message says why."""


# -- the law's predictions ----------------------------------------------------------------------------


def _ci(boot: np.ndarray, level: float) -> list[float | None]:
    """The equal-tailed interval of the replicates, keeping those that diverged to +-inf (a
    replicate whose law never reaches a value, or overflows, still counts): an end that lands on
    one is None, i.e. unbounded. NaN replicates (failed refits) are left out."""
    s = np.asarray(boot, dtype=float)
    s = s[~np.isnan(s)]
    if s.size < 2:
        return [None, None]
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(s, [tail, 1.0 - tail], method="inverted_cdf")
    return [num(lo), num(hi)]


def spec_order(law: JointLaw) -> list[str]:
    """16-bit first, then by bits per parameter, widest first."""
    return sorted(law.specs, key=lambda q: (-law.specs[q].bits_per_param, q))


def loss_at(law: JointLaw, n: float, d: float, level: float) -> list[dict]:
    """The predicted loss at (n, d) for each spec with a law, and its damage over 16 bits."""
    base_est, base_boot = law.surface.loss(np.array([n]), np.array([d]))
    out = []
    for quant in spec_order(law):
        pred = law.loss(np.array([n]), np.array([d]), quant)
        if pred is None:
            continue
        est, boot = pred
        m = len(boot)
        out.append(
            {
                "quant": quant,
                "bits": int(law.specs[quant].bits),
                "bits_per_param": num(law.specs[quant].bits_per_param),
                "memory_gb": num(gb(law.memory_bits(n, quant))),
                "loss": num(est[0]),
                "ci": _ci(boot[:, 0], level),
                "damage": num(est[0] - base_est[0]),
                "damage_ci": _ci(boot[:, 0] - base_boot[:m, 0], level),
            }
        )
    return out


def size_for_memory(law: JointLaw, bits: float, quant: str) -> float:
    """The largest size whose weights fit `bits` at a spec (memory grows with N: bisection)."""
    from scipy.optimize import brentq

    def excess(log_n: float) -> float:
        return float(np.log(law.memory_bits(np.exp(log_n), quant))) - np.log(bits)

    # memory >= n * min(bits per param, 16) (every parameter is stored at one or the other), so
    # this many parameters overflow the budget: the root lies below
    bpp = law.specs[quant].bits_per_param if quant in law.specs else 16.0
    low, high = 0.0, np.log(bits) - np.log(min(bpp, 16.0)) + 1e-6
    if excess(low) > 0:
        return 0.0
    return float(np.exp(brentq(excess, low, high, xtol=1e-9)))


def _order_key(loss: float | None) -> float:
    return loss if loss is not None else math.inf


def budget(law: JointLaw, memory_gb: float, n: float, d: float, level: float, n_max: float = np.inf) -> dict:
    """The best (size, spec) within memory_gb at d tokens, and where the planned n stands;
    `beyond_range`: how many times the largest measured size (n_max) an option's size is."""
    options, draws = [], []
    for quant in spec_order(law):
        size = size_for_memory(law, gb_bits(memory_gb), quant)
        pred = law.loss(np.array([size]), np.array([d]), quant)
        if pred is None:
            continue
        est, boot = pred
        options.append(
            {
                "quant": quant,
                "n_params": num(size),
                "loss": num(est[0]),
                "ci": _ci(boot[:, 0], level),
                "beyond_range": num(max(size / n_max, 1.0)),
            }
        )
        draws.append(boot[:, 0])
    if not options:
        return {"memory_gb": memory_gb, "status": NO_DATA}
    m = min(len(b) for b in draws)
    stacked = np.stack([b[:m] for b in draws])
    finite = ~np.isnan(stacked).any(axis=0)  # a diverged (inf) spec simply does not win
    wins = np.bincount(np.argmin(stacked[:, finite], axis=0), minlength=len(options)) / max(finite.sum(), 1)
    for option, p in zip(options, wins, strict=True):
        option["p_best"] = num(p)
    best = min(options, key=lambda o: _order_key(o["loss"]))
    fitting = [o["quant"] for o in options if law.memory_bits(n, o["quant"]) <= gb_bits(memory_gb)]
    planned = loss_at(law, n, d, level)
    in_budget = [p for p in planned if p["quant"] in fitting]
    return {
        "memory_gb": memory_gb,
        "status": OK,
        "tokens": d,
        "best": best,
        "options": options,
        "planned": {
            "n_params": n,
            "fits_at": fitting,
            "best_quant": min(in_budget, key=lambda p: _order_key(p["loss"]))["quant"] if in_budget else None,
        },
    }


def tokens_until(law: JointLaw, n: float, threshold: float, level: float) -> list[dict]:
    """Per quantized spec: the tokens D at which its damage at size n reaches `threshold` nats.
    Damage is C(N, k) D^beta in both forms, so D = D_ref (threshold / dL(D_ref))^(1/beta)."""
    out = []
    d_ref = 1e9
    for quant in spec_order(law):
        info = law.specs[quant]
        model = law.damage.get(info.scheme)
        if info.bits >= 16 or model is None or 1 not in model.cols:
            continue
        j = list(model.cols).index(1)
        d_est, d_boot = model.damage_at(np.array([n]), np.array([d_ref]), info.bits)
        beta, beta_boot = model.fit.theta[j], model.fit.boot[:, j]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            est = d_ref * (threshold / d_est[0]) ** (1.0 / beta) if beta > 0 else np.inf
            boot = np.where(beta_boot > 0, d_ref * (threshold / d_boot[:, 0]) ** (1.0 / beta_boot), np.inf)
            boot[np.isnan(beta_boot)] = np.nan  # a failed refit, not one whose damage never grows
        finite = np.isfinite(est)
        out.append(
            {
                "quant": quant,
                "tokens": num(est),
                "ci": _ci(boot, level) if finite else [None, None],
                "note": None if np.isfinite(est) else "damage does not grow with tokens in this law",
            }
        )
    return out


def run_predictions(law: JointLaw, runs: tuple[Run, ...], level: float) -> list[dict]:
    """The losses predicted at the planned end of each run in progress."""
    return [
        {
            "checkpoint_id": r.checkpoint_id,
            "n_params": num(r.n_params),
            "tokens_seen": num(r.tokens_seen),
            "tokens_planned": num(r.tokens_planned),
            "predictions": loss_at(law, r.n_params, r.tokens_planned, level),
        }
        for r in runs
    ]


def runs_in_progress(law: JointLaw, points: pl.DataFrame, level: float) -> list[dict]:
    """Per size whose latest checkpoint plans more tokens than it has seen (the family's loss
    points, law/joint/law.py): the losses predicted at the end of the run (the fit document's
    `in_progress`)."""
    return run_predictions(law, in_progress_runs(points), level)


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
    return {
        "status": fitdoc.status(entry),
        **{p: fitdoc.number(entry.get(p)) for p in LAW_PARAMS},
        "ci": {p: list(fitdoc.interval(fitdoc.path(entry, "ci", p))) for p in LAW_PARAMS},
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
