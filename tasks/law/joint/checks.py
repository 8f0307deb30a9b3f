"""The joint law checked forwards (law/joint/law.py): refit on part of a family's checkpoints and predict
the rest. The largest size and every size's latest checkpoint are left out by cold refits; the
running check refits on the checkpoints the previous fit had and predicts the ones new since.
Only the checkpoints the law is fitted on are checked (law/joint/usable.py): an intermediate
checkpoint of a decaying run, where the law has no schedule, is not a point the law describes."""

from __future__ import annotations

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, FitConfig, extrapolation_entry, num
from kbitlaw.law.damage.law import fit_damage
from kbitlaw.law.joint.law import SCHEDULE_FORM, JointLaw, choose_forms, fit_joint, warm_theta
from kbitlaw.law.joint.predictions import point_noise
from kbitlaw.vocab import LOSS

RUNNING_CHECK_KEEP = 1000  # running-check entries kept across fits


def predict_points(law: JointLaw, held: pl.DataFrame, name: str, level: float) -> list[dict]:
    """Extrapolation checks of the law against observed loss points (16-bit and quantized)."""
    checks = []
    for r in held.sort(["n_params", "tokens_seen", "quant"]).iter_rows(named=True):
        pred = law.loss(np.array([r["n_params"]]), np.array([r["tokens_seen"]]), r["quant"], *areas(law, r))
        if pred is None:
            continue
        est, boot = pred
        se, dof = point_noise(law, float(est[0]), r["stderr"])
        entry = extrapolation_entry(
            name,
            law.family,
            r["quant"],
            LOSS,
            r["checkpoint_id"],
            float(est[0]),
            boot[:, 0],
            float(r["value"]),
            se,
            level,
            noise_dof=dof,
        )
        checks.append({**entry, "n_params": num(r["n_params"]), "tokens_seen": num(r["tokens_seen"])})
    return checks


def areas(law: JointLaw, point: dict) -> tuple[float | None, float | None]:
    """A point's schedule areas (S1, S2) where the law is of the schedule form, else (None, None)."""
    if law.form != SCHEDULE_FORM:
        return None, None
    return point.get("lr_area"), point.get("lr_anneal")


def holdout(df: pl.DataFrame, train: pl.Expr, name: str, config: FitConfig, warm=None) -> list[dict] | None:
    """Refit on the `train` rows alone, damage forms chosen again from them too, and predict the
    others; None when the rest cannot be fitted."""
    rows, family = df.filter(train), df["family"][0]
    entries, _, _ = fit_damage(
        rows.drop("scheme", "size"), config.n_boot, config.seed, config.level, with_checks=False
    )
    forms = {
        s: (f["form"], f["entry"].get("dropped") or []) for s, f in choose_forms(entries, family).items()
    }
    law = fit_joint(rows, family, forms, config, warm, salt=name)
    if law is None:
        return None
    return predict_points(law, df.filter(~train), name, config.level)


def summary(checks: list[dict] | None, **about) -> dict:
    ok = [c for c in checks or [] if c["status"] == OK]
    if not ok:
        return {**about, "status": NO_DATA, "points": 0, "rms_error": None, "flagged": None}
    errors = np.array([c["error"] for c in ok])
    return {
        **about,
        "status": OK,
        "points": len(ok),
        "rms_error": num(np.sqrt(np.mean(errors**2))),
        "flagged": sum(c["flagged"] for c in ok),
    }


def held_out_checks(df: pl.DataFrame, config: FitConfig) -> tuple[dict, list[dict]]:
    """The largest size, then every size's latest checkpoint, left out and predicted by a cold
    refit on the rest (nothing of the left-out points reaches it, not even as a starting point)."""
    largest = pl.col("size") == df["size"].max()
    latest_d = pl.col("tokens_seen") == pl.col("tokens_seen").max().over("size")
    by_size = holdout(df, ~largest, "joint_largest_size", config)
    by_step = holdout(df, ~latest_d, "joint_latest_checkpoint", config)
    top = df.filter(largest)
    out = {
        "largest_size": {
            **summary(by_size, n_params=num(top["n_params"].median()) if top.height else None),
            "checks": by_size or [],
        },
        "latest_checkpoint": {**summary(by_step), "checks": by_step or []},
    }
    return out, (by_size or []) + (by_step or [])


def running_check(
    df: pl.DataFrame, previous: dict | None, previous_sha: str | None, config: FitConfig
) -> list[dict]:
    """Past predictions against what came in: the previous entries, then for the checkpoints new
    since the previous fit, what the law predicts for them when refitted, from the previous fit's
    parameters, on the checkpoints that fit had (`predicted_by` names that fit). It is a refit, not
    the stored prediction: the old checkpoints' results are today's (a re-evaluation shows), and
    the damage forms are chosen again on them."""
    if not previous or previous.get("status") != OK:
        return []
    past = list(previous.get("running_check") or [])
    seen = set(previous.get("checkpoint_ids") or [])
    is_old = pl.col("checkpoint_id").is_in(list(seen))
    new = df.filter(~is_old)
    if not seen or new.height == 0:
        return past[-RUNNING_CHECK_KEEP:]
    warm = warm_theta(previous)
    checks = holdout(df, is_old, "joint_running_check", config, warm) or []
    fresh = [{**c, "predicted_by": previous_sha} for c in checks]
    return (past + fresh)[-RUNNING_CHECK_KEEP:]
