"""The joint law of every family as the fit document carries it (`joint_law`) and the long-table
rows the report draws: law/joint/usable.py chooses its form and checkpoints, law/joint/law.py fits
it, law/joint/checks.py checks it forwards on the checkpoints it was fitted on, and the runs still
training are predicted at their planned end (law/joint/predict.py). The entry's `form` says which
surface (chinchilla | schedule) and `checkpoints.note` why, in one sentence."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, FitConfig, num, table_rows
from kbitlaw.law.damage.design import PARAMS as DAMAGE_PARAMS
from kbitlaw.law.joint.anneal import PARAMS as ANNEAL_PARAMS
from kbitlaw.law.joint.checks import held_out_checks, running_check
from kbitlaw.law.joint.chinchilla import PARAMS as SURFACE_PARAMS
from kbitlaw.law.joint.law import (
    SCHEDULE_FORM,
    JointLaw,
    choose_forms,
    fit_joint,
    loss_points,
    sixteen_bit,
    warm_theta,
)
from kbitlaw.law.joint.model import JointModel
from kbitlaw.law.joint.predictions import runs_in_progress
from kbitlaw.law.joint.usable import CHINCHILLA_FORM, LAWS, Selection, select
from kbitlaw.law.numerics.solve import interval
from kbitlaw.vocab import LOSS

HORIZON = 4.0  # the heading figure draws each size out to this many times its latest tokens
METHODS = {
    CHINCHILLA_FORM: "Chinchilla approach 3: Huber(1e-3) on log L; grid of starts screened, "
    "Gauss-Newton, L-BFGS-B polish; case bootstrap",
    SCHEDULE_FORM: "Chinchilla approach 3 with the schedule's areas (Tissue et al. 2024): Huber(1e-3) on "
    "log L; grid of starts, each with its best C, screened; Gauss-Newton with C >= 0; case bootstrap",
}


def previous_entry(previous: Mapping | None, family: str) -> dict | None:
    """The previous fit document's joint-law entry for a family (one entry or a list)."""
    found = (previous or {}).get("joint_law")
    entries = found if isinstance(found, list) else [found] if isinstance(found, dict) else []
    return next((e for e in entries if isinstance(e, dict) and e.get("family") == family), None)


def damage_entry(forms: dict[str, dict], law: JointLaw) -> dict:
    """The chosen damage form per scheme, with its parameters and intervals (law/damage/law.py)."""
    schemes = []
    for scheme in sorted(forms):
        chosen, e = forms[scheme], forms[scheme]["entry"]
        fitted = scheme in law.damage
        schemes.append(
            {
                "scheme": scheme,
                "form": chosen["form"],
                "law": "ouyang" if chosen["form"] == "power" else "kumar",
                **{p: e.get(p) for p in DAMAGE_PARAMS},
                "ci": e.get("ci"),
                "ci_centre": e.get("ci_centre"),
                "dropped": e.get("dropped") or [],
                "nested": e.get("nested"),
                "heldout_error": num(chosen["heldout_error"]),
                "chosen_by": chosen["chosen_by"],
                "status": OK if fitted else NO_DATA,
            }
        )
    chosen_forms = [s["form"] for s in schemes if s["status"] == OK]
    form = max(set(chosen_forms), key=chosen_forms.count) if chosen_forms else None
    return {
        "form": form if len(set(chosen_forms)) <= 1 else "per scheme",
        "schemes": schemes,
        "status": OK if chosen_forms else NO_DATA,
    }


def log_centre(values: pl.Series) -> float:
    v = values.cast(pl.Float64).to_numpy()
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.log(v).mean()) if len(v) else float("nan")


def centred_scales(law: JointLaw, df: pl.DataFrame, level: float) -> dict:
    """A / N^alpha and B / D^beta (B / S1^beta, and C S2, in the schedule form) at the geometric
    centre of the 16-bit points, with intervals: where the data say how large each term is
    (law/gates.py judges the scales' widths there)."""
    base = sixteen_bit(df)
    schedule = law.form == SCHEDULE_FORM
    log_n = log_centre(base["n_params"])
    log_d = log_centre(base["lr_area" if schedule else "tokens_seen"])
    theta, boot = law.surface.theta, law.surface.boot
    with np.errstate(over="ignore", invalid="ignore"):
        a_term = np.exp(boot[:, 0] - boot[:, 3] * log_n)
        b_term = np.exp(boot[:, 1] - boot[:, 4] * log_d)
    out = {
        "centre": {
            "n_params": num(np.exp(log_n)),
            "tokens": num(np.exp(log_centre(base["tokens_seen"]))),
            "A_term": num(np.exp(theta[0] - theta[3] * log_n)),
            "B_term": num(np.exp(theta[1] - theta[4] * log_d)),
        },
        "ci_centre": {
            "A": [num(v) for v in interval(a_term, level)],
            "B": [num(v) for v in interval(b_term, level)],
        },
    }
    if schedule:  # the annealing term at the centre of the areas where the rate had annealed
        s2 = np.exp(log_centre(base["lr_anneal"]))
        c, c_boot = law.surface.params()["C"], law.surface.named(boot)[:, 5]
        out["centre"] |= {"lr_area": num(np.exp(log_d)), "lr_anneal": num(s2), "C_term": num(c * s2)}
        out["ci_centre"]["C"] = [num(v) for v in interval(c_boot * s2, level)]
    return out


def insufficient_entry(family: str, n_points: int, chosen: Selection | None = None) -> dict:
    form = chosen.form if chosen else CHINCHILLA_FORM
    params = ANNEAL_PARAMS if form == SCHEDULE_FORM else SURFACE_PARAMS
    about = {"form": form, "law": LAWS[form], "checkpoints": chosen.entry() if chosen else None}
    if chosen and chosen.left_out:  # what the gates would say, and why there are so few
        about["reason"] = f"too few sizes or checkpoints for this law ({chosen.note()})"
    return {
        "family": family,
        "status": NO_DATA,
        **about,
        **{p: None for p in params},
        "ci": {p: [None, None] for p in params},
        "unidentified": [],
        "damage": {"form": None, "schemes": [], "status": NO_DATA},
        "heldout_error": None,
        "held_out": None,
        "n_points": n_points,
        "running_check": [],
        "in_progress": [],
        "checkpoint_ids": [],
        "model": None,
    }


def bands(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise intervals of replicates [n_boot, m]: (lo [m], hi [m])."""
    # solve.interval column by column, in one pass: finite replicates only, NaN with fewer than 2
    b = np.where(np.isfinite(boot), boot, np.nan)
    tail = 50.0 * (1.0 - level)
    enough = np.isfinite(b).sum(axis=0) >= 2
    if not enough.any():
        return np.full(b.shape[1], np.nan), np.full(b.shape[1], np.nan)
    lo, hi = np.nanpercentile(b[:, enough], [tail, 100.0 - tail], axis=0)
    out_lo, out_hi = np.full(b.shape[1], np.nan), np.full(b.shape[1], np.nan)
    out_lo[enough], out_hi[enough] = lo, hi
    return out_lo, out_hi


def heading_rows(
    law: JointLaw, df: pl.DataFrame, level: float, n_grid: int, plans: pl.DataFrame | None = None
) -> list[pl.DataFrame]:
    """Where the family is heading: each size's predicted loss per spec over tokens, out to its
    planned tokens (read from `plans`, default df) or HORIZON times its latest (band: the
    prediction interval), and the observed points the law was fitted on. The schedule form draws
    finished runs of each length with the family's schedule (law/joint/anneal.py)."""
    plans = df if plans is None else plans
    rows = [
        table_rows(
            "observed",
            "joint",
            family=law.family,
            metric=LOSS,
            quant=df["quant"],
            bits=df["bits"],
            n_params=df["n_params"],
            tokens_seen=df["tokens_seen"],
            value=df["value"],
        )
    ]
    planned = (
        plans["tokens_planned"]
        if "tokens_planned" in plans.columns
        else pl.Series([None] * plans.height, dtype=pl.Float64)
    )
    ends = (
        plans.with_columns(planned=planned)
        .group_by("size")
        .agg(
            pl.col("n_params").median(),
            pl.col("tokens_seen").min().alias("d0"),
            pl.col("tokens_seen").max().alias("d1"),
            pl.col("planned").max(),
        )
    )
    for r in ends.sort("size").iter_rows(named=True):
        end = max(r["planned"] or 0.0, HORIZON * r["d1"])
        grid = np.geomspace(r["d0"], end, n_grid)
        base_est, base_boot = law.surface.loss(np.full(n_grid, r["n_params"]), grid)
        for quant, info in sorted(law.specs.items()):
            pred = law.loss(np.full(n_grid, r["n_params"]), grid, quant)
            if pred is None:
                continue
            est, boot = pred
            curves = [("joint", LOSS, est, boot)]
            if info.bits < 16:  # the damage on its own, from the same replicates (paired)
                curves.append(("joint_damage", "delta_loss", est - base_est, boot - base_boot[: len(boot)]))
            for name, metric, fitted, replicates in curves:
                lo, hi = bands(replicates, level)
                rows.append(
                    table_rows(
                        "fit",
                        name,
                        family=law.family,
                        metric=metric,
                        quant=quant,
                        bits=int(info.bits),
                        n_params=r["n_params"],
                        tokens_seen=grid,
                        fitted=fitted,
                        lo=lo,
                        hi=hi,
                    )
                )
    return rows


def fit_joint_laws(
    points: pl.DataFrame,
    damage_entries: list[dict],
    config: FitConfig,
    previous: Mapping | None = None,
) -> tuple[list[dict], list[pl.DataFrame], dict[str, JointLaw]]:
    """The joint law of every family: doc entries, long-table rows, the fitted laws."""
    entries, rows, laws = [], [], {}
    for family in sorted(points["family"].unique().to_list()):
        df = loss_points(points, family)
        chosen = select(df)
        used = chosen.used
        before = previous_entry(previous, family)
        warm = warm_theta(before)
        forms = choose_forms(damage_entries, family)
        form_of = {s: (f["form"], f["entry"].get("dropped") or []) for s, f in forms.items()}
        law = fit_joint(used, family, form_of, config, warm) if used.height else None
        if law is None:
            entries.append(insufficient_entry(family, sixteen_bit(used).height if used.height else 0, chosen))
            continue
        held, held_checks = held_out_checks(used, config)
        running = running_check(used, before, (previous or {}).get("results_sha"), config)
        errors = [c["error"] for c in held_checks if c["status"] == OK]
        schedule = law.form == SCHEDULE_FORM
        entries.append(
            {
                "family": family,
                "status": OK,
                "form": law.form,
                "law": LAWS[law.form],
                **law.surface.params(),
                "ci": law.surface.ci(config.level),
                **centred_scales(law, used, config.level),
                "unidentified": list(law.surface.unidentified),
                **({"dropped": list(law.surface.dropped), "bounds": {"C": [0.0, None]}} if schedule else {}),
                "checkpoints": chosen.entry(),
                "damage": damage_entry(forms, law),
                "heldout_error": num(np.sqrt(np.mean(np.square(errors)))) if errors else None,
                "held_out": held,
                "fit": {
                    "method": METHODS[law.form],
                    "objective": num(law.surface.objective),
                    "n_points": law.surface.n_points,
                    "n_sizes": int(used["size"].n_unique()),
                    "warm_started": law.surface.warm,
                    "quantized_share": num(law.quantized_share),
                    **(
                        {"s2_ref": num(law.surface.s2_ref), "shape": list(law.surface.shape)}
                        if schedule
                        else {}
                    ),
                },
                "running_check": running,
                "in_progress": runs_in_progress(law, df, config.level),
                "checkpoint_ids": law.checkpoint_ids,
                # what `kbitlaw predict` rebuilds the law from (law/joint/model.py)
                "model": JointModel.of(law, df).to_dict(),
            }
        )
        rows.extend(heading_rows(law, used, config.level, config.grid_points, plans=df))
        laws[family] = law
    return entries, rows, laws
