"""Forward predictions from the joint law (law/joint.py): `kbitlaw predict`.

For a planned model (N parameters trained on D tokens) it gives the 16-bit loss and the loss at
every spec the family was measured at, each with its interval; for a memory budget, the best
(size, spec) that fits it at D tokens and whether the planned model fits; the tokens past which
each spec's damage exceeds a threshold (Ouyang et al.'s "tokens until 4-bit costs 0.1 nats"); and
for each run in progress (its latest checkpoint's `tokens_planned` beyond its `tokens_seen`), the
losses predicted at the end of the run. Intervals are the bootstrap's (law/joint.py); a budget's
choice carries P(best), the share of replicates in which that spec predicts the lowest loss. How far
to trust it: `law.held_out` (how well the law predicted the family's largest size and latest
checkpoints when fitted without them) and `beyond_range` (how far N and D lie past the data).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, FitConfig, num
from kbitlaw.law.joint import JointLaw, loss_points

DEFAULT_THRESHOLD = 0.1  # nats
TRUST = ("status", "points", "flagged", "rms_error", "n_params")  # what predict shows of a hold-out
GB_BITS = 8e9
UNBOUNDED_NATS = 100.0  # no language model's loss comes near it: an interval end past it is no bound


class PredictError(ValueError):
    """The prediction cannot be made; the message says why."""


def fit_for_prediction(results: pl.DataFrame, config: FitConfig, family: str | None = None):
    """(JointLaw, its loss points, its doc entry) for the family (the only one, or `family`)."""
    from kbitlaw.law.damage import fit_damage
    from kbitlaw.law.joint_fit import fit_joint_laws
    from kbitlaw.law.table import components, drop_unusable, metric_points, normalise

    kept, _ = drop_unusable(normalise(results))
    points, _ = metric_points(components(kept))
    families = sorted(points["family"].unique().to_list())
    if family is None and len(families) > 1:
        names = ", ".join(families)
        raise PredictError(f"the results hold {len(families)} families ({names}); pick one with --family")
    family = family or (families[0] if families else None)
    if family not in families:
        raise PredictError(f"no family {family!r} in the results (families: {', '.join(families) or 'none'})")
    family_points = points.filter(pl.col("family") == family)
    damage, _, _ = fit_damage(family_points, config.n_boot, config.seed, config.level)
    entries, _, laws = fit_joint_laws(family_points, damage, config)
    if family not in laws:
        raise PredictError(
            f"family {family!r}: {NO_DATA} for the joint law (it needs 16-bit losses at 3 sizes and 3 token "
            "counts at least, and 8 checkpoints)"
        )
    return laws[family], loss_points(points, family), entries[0]


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
                "memory_gb": num(law.memory_bits(n, quant) / GB_BITS),
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

    low, high = 0.0, np.log(bits)  # 1 parameter, and as many parameters as bits (>= 1 bit each)
    if excess(low) > 0:
        return 0.0
    return float(np.exp(brentq(excess, low, high, xtol=1e-9)))


def budget(law: JointLaw, memory_gb: float, n: float, d: float, level: float, n_max: float = np.inf) -> dict:
    """The best (size, spec) within memory_gb at d tokens, and where the planned n stands;
    `beyond_range`: how many times the largest measured size (n_max) an option's size is."""
    options, draws = [], []
    for quant in spec_order(law):
        size = size_for_memory(law, memory_gb * GB_BITS, quant)
        pred = law.loss(np.array([size]), np.array([d]), quant)
        if pred is None:
            continue
        est, boot = pred
        ci = _ci(boot[:, 0], level)
        options.append(
            {
                "quant": quant,
                "n_params": num(size),
                "loss": num(est[0]),
                "ci": ci,
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
    best = min(options, key=lambda o: o["loss"] if o["loss"] is not None else np.inf)
    fitting = [o["quant"] for o in options if law.memory_bits(n, o["quant"]) <= memory_gb * GB_BITS]
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
            "best_quant": min(in_budget, key=lambda p: p["loss"])["quant"] if in_budget else None,
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


def runs_in_progress(law: JointLaw, points: pl.DataFrame, level: float) -> list[dict]:
    """Per size whose latest checkpoint plans more tokens than it has seen: the losses predicted at
    the end of the run."""
    if "tokens_planned" not in points.columns:
        return []
    latest = (
        points.sort("tokens_seen", descending=True)
        .group_by("size", maintain_order=True)
        .first()
        # a plan within 1% of what was seen is a finished run (budgets are rounded to whole batches)
        .filter(
            pl.col("tokens_planned").is_not_null(), pl.col("tokens_planned") > 1.01 * pl.col("tokens_seen")
        )
        .sort("n_params")
    )
    return [
        {
            "checkpoint_id": r["checkpoint_id"],
            "n_params": num(r["n_params"]),
            "tokens_seen": num(r["tokens_seen"]),
            "tokens_planned": num(r["tokens_planned"]),
            "predictions": loss_at(law, r["n_params"], r["tokens_planned"], level),
        }
        for r in latest.iter_rows(named=True)
    ]


def predict(
    law: JointLaw,
    points: pl.DataFrame,
    entry: dict,
    n_params: float,
    tokens: float,
    *,
    memory_gb: float | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    level: float = 0.9,
) -> dict[str, Any]:
    """The `kbitlaw predict --json` document."""
    if not (n_params > 0 and tokens > 0):
        raise PredictError(f"--n-params and --tokens must be > 0, got {n_params:g} and {tokens:g}")
    sizes, seen = points["n_params"], points["tokens_seen"]
    held = entry.get("held_out") or {}
    return {
        "family": law.family,
        "n_params": n_params,
        "tokens": tokens,
        "level": level,
        "law": {k: entry.get(k) for k in ("status", "E", "A", "alpha", "B", "beta", "ci", "unidentified")}
        | {
            "damage_forms": {s["scheme"]: s["form"] for s in entry["damage"]["schemes"]},
            "heldout_error": entry.get("heldout_error"),
            "held_out": {k: {f: v.get(f) for f in TRUST} for k, v in held.items()},
        },
        "fitted_range": {
            "n_params": [num(sizes.min()), num(sizes.max())],
            "tokens": [num(seen.min()), num(seen.max())],
        },
        "extrapolated": bool(
            n_params > sizes.max() or n_params < sizes.min() or tokens > seen.max() or tokens < seen.min()
        ),
        "beyond_range": {
            "n_params": num(max(n_params / sizes.max(), 1.0)),
            "tokens": num(max(tokens / seen.max(), 1.0)),
        },
        "predictions": loss_at(law, n_params, tokens, level),
        "budget": None
        if memory_gb is None
        else budget(law, memory_gb, n_params, tokens, level, float(sizes.max())),
        "damage_threshold": {
            "nats": threshold,
            "n_params": n_params,
            "tokens": tokens_until(law, n_params, threshold, level),
        },
        "runs_in_progress": runs_in_progress(law, points, level),
    }
