"""The joint law's predictions (law/joint/law.py): the loss of every spec at a size and token count,
the best (size, spec) within a memory budget, the tokens at which a spec's damage reaches a
threshold, and the end of each run in progress. `kbitlaw predict` (law/joint/predict.py) and the law
stage (law/joint/fit.py `in_progress`) both call these, so the fit document and predict agree.
Intervals are the bootstrap's; a budget's choice carries P(best), the share of replicates in which
that spec predicts the lowest loss.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from kbitlaw.law.common import num, tolerance_interval
from kbitlaw.law.joint.law import SCHEDULE_FORM, JointLaw
from kbitlaw.law.joint.model import Run
from kbitlaw.law.joint.model import in_progress as in_progress_runs
from kbitlaw.status import NO_DATA, OK
from kbitlaw.vocab import gb, gb_bits


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


def loss_at(law: JointLaw, n: float, d: float, level: float, areas: tuple = (None, None)) -> list[dict]:
    """The predicted loss at (n, d) for each spec with a law, and its damage over 16 bits; the
    schedule form at the schedule's `areas` (S1, S2) where given (law/joint/anneal.py)."""
    s1, s2 = (None, None) if None in areas else (np.array([areas[0]]), np.array([areas[1]]))
    base_est, base_boot = law.surface.loss(np.array([n]), np.array([d]), s1, s2)
    out = []
    for quant in spec_order(law):
        pred = law.loss(np.array([n]), np.array([d]), quant, s1, s2)
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


UNPLANNED = (
    "not predictable: the rest of its learning-rate schedule is unknown (give the whole planned "
    "schedule as lr_schedule in kbitlaw.json)"
)


def run_predictions(law: JointLaw, runs: tuple[Run, ...], level: float) -> list[dict]:
    """The losses predicted at the planned end of each run in progress, each with its `tolerance`:
    where the end checkpoint's observed loss should fall (the law's interval and a point's noise,
    as the forward checks judge: law/common.py extrapolation_entry). The schedule form predicts at
    the planned schedule's areas; a run whose planned schedule is unknown gets no prediction and
    a `note` saying so."""
    out = []
    for r in runs:
        areas = (r.lr_area_planned, r.lr_anneal_planned)
        unknown = law.form == SCHEDULE_FORM and None in areas
        preds = [] if unknown else loss_at(law, r.n_params, r.tokens_planned, level, areas)
        for p in preds:
            p["tolerance"] = tolerance(p, law, level)
        run = {
            "checkpoint_id": r.checkpoint_id,
            "n_params": num(r.n_params),
            "tokens_seen": num(r.tokens_seen),
            "tokens_planned": num(r.tokens_planned),
            "predictions": preds,
        }
        if law.form == SCHEDULE_FORM:
            run |= {"lr_area_planned": num(areas[0]), "lr_anneal_planned": num(areas[1])}
            run["note"] = UNPLANNED if unknown else None
        out.append(run)
    return out


def tolerance(pred: dict, law: JointLaw, level: float) -> list[float | None]:
    """The prediction's interval widened by one point's noise (point_noise without a stderr: the
    surface's residual scale, a Student t on its spare points); None where either is unknown."""
    lo, hi = pred["ci"]
    est = pred["loss"]
    if est is None or lo is None or hi is None or not math.isfinite(law.surface.log_scale):
        return [None, None]
    se, dof = point_noise(law, est, None)
    return [num(v) for v in tolerance_interval(est, lo, hi, se, level, dof)]


def point_noise(law: JointLaw, predicted: float, stderr: float | None) -> tuple[float, int | None]:
    """One checkpoint's noise SD about the law, and the degrees of freedom it is estimated on (None:
    known). Its evaluation stderr is not all of it: a checkpoint also sits off the law by its own
    training noise (seed, data order), shared by all its results and in no stderr. The fit's
    residual scale holds both, so the larger of the two is the point's noise: where the residuals
    are wider than the stderr, the excess is that training noise (on the demo family, seeds differ
    by 0.01-0.06 nats where the evaluations' paired stderr is 0.002-0.005)."""
    known = stderr is not None and np.isfinite(stderr) and stderr > 0  # metric_points gives 0 for none
    n, dof = law.surface.n_points, max(law.surface.n_points - len(law.surface.theta), 1)
    # residuals of a fit are smaller than the noise by sqrt(dof / n): its parameters took up some
    residual = predicted * law.surface.log_scale * np.sqrt(n / dof)
    if known and not (np.isfinite(residual) and residual > stderr):
        return float(stderr), None
    return float(residual), dof


def runs_in_progress(law: JointLaw, points: pl.DataFrame, level: float) -> list[dict]:
    """Per size whose latest checkpoint plans more tokens than it has seen (the family's loss
    points, law/joint/law.py): the losses predicted at the end of the run (the fit document's
    `in_progress`)."""
    return run_predictions(law, in_progress_runs(points), level)


ASSUMED = (
    "the law is of the schedule form: at D tokens it assumes the family's learning-rate schedule with "
    "its steps unchanged and D / D_run tokens per step"
)


def schedule_assumed(law: JointLaw, d: float) -> dict | None:
    """The areas a schedule-form law predicts at D tokens with (law/joint/anneal.py), and why."""
    if law.form != SCHEDULE_FORM:
        return None
    r1, r2 = law.surface.shape
    return {"lr_area": num(r1 * d), "lr_anneal": num(r2 * d), "note": ASSUMED}
