"""Quantization damage across training: how much loss k-bit quantization costs as a checkpoint sees
more tokens.

dL = loss(quantized) - loss(16-bit) of the same checkpoint, per family and quantization scheme
(damage/design.py), is fitted in two forms:
- power (Ouyang et al.):        dL = C * D^beta / (N^alpha * k^gamma)
- exponential (Kumar et al.):   dL = C * D^beta / N^alpha * exp(-k/gamma)
with N = n_params (the results schema has no non-embedding count; Ouyang use non-embedding N, so
alpha here is not numerically comparable), D = tokens_seen, k = bits. Both are fitted to dL itself
by weighted nonlinear least squares (law/damage/fit.py): points with dL <= 0 are kept (noise makes
small damages come out negative; dropping them, as a fit of log dL must, biased the exponents
toward 0) and counted in `nonpositive`. Weights come from the losses' stderrs, or, when the losses
have none, from noise relative to the loss with a scale estimated from the residuals, plus any
scatter of dL around the law in proportion to it (`noise`); intervals from a parametric bootstrap.
An exponent whose variable takes one value in the data (one model size, one k) is not identified:
it is reported null and its effect folds into C (as do the dtype and block factors).

Each form is also refit without the family's latest checkpoint and predicts it (damage/checks.py):
`heldout_error` is the RMS error of those predictions in units of the points' noise SD (pooled over
the two forms; ~1 when a form extrapolates within the noise), which tells which form extrapolates
better, and each held-out point is an extrapolation check (its noise: the losses' stderrs, else the
refit's noise estimate). Each form also predicts dL at the next checkpoint of the latest
checkpoint's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import f as f_dist

from kbitlaw.law.common import NO_DATA, OK, json_safe, num, table_rows
from kbitlaw.law.damage.checks import (
    held_out_check,
    heldout_errors,
    next_checkpoint,
    standardized_errors,
    width_holdout,
)
from kbitlaw.law.damage.design import (
    FORMS,
    PARAMS,
    SchemeData,
    damage_points,
    design,
    free_columns,
    identifiable,
    predict,
    scheme_data,
    to_params,
)
from kbitlaw.law.damage.fit import DamageFit, fit_damage_law, noise_variance
from kbitlaw.law.numerics.solve import child_rng, interval


@dataclass(frozen=True)
class DamageModel:
    """One form fitted to one scheme's damage: predicts dL at any (N, D, k)."""

    scheme: str
    form: str
    cols: np.ndarray  # the free design columns
    fit: DamageFit

    def predict(self, n: np.ndarray, d: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dL: the estimate [m] and the bootstrap predictions [n_boot, m]."""
        n, d, k = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (n, d, k)))
        return predict(design(d.ravel(), n.ravel(), k.ravel(), self.form)[:, self.cols], self.fit)

    def damage_at(self, n: np.ndarray, d: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
        """predict() at one bit width k."""
        return self.predict(n, d, np.full(np.shape(n), k))


def fit_damage_model(
    data: SchemeData, form: str, n_boot: int, seed: int, cols: np.ndarray | None = None
) -> DamageModel | None:
    """One form on one scheme's points (on the design columns `cols`: by default every one whose
    variable varies); None when the data do not identify it."""
    if data.rows.height == 0:
        return None
    x = data.design(form)
    cols = free_columns(x) if cols is None else cols
    if not identifiable(x, data.checkpoints, cols):
        return None
    rng = child_rng(seed, f"damage|{data.family}|{data.scheme}|{form}")
    fit = fit_damage_law(x[:, cols], data.y, data.noise(), n_boot, rng)
    if fit is None or not np.isfinite(fit.theta).all():  # e.g. D proportional to N: not identifiable
        return None
    return DamageModel(data.scheme, form, cols, fit)


def insufficient(base: dict) -> dict:
    none = {p: None for p in PARAMS}
    return {
        **base,
        **none,
        "ci": {p: [None, None] for p in PARAMS},
        "noise": None,
        "heldout_error": None,
        "width_holdout_errors": None,
        "held_out": None,
        "unidentified": [],
        "dropped": [],
        "nested": None,
        "next_checkpoint": None,
        "status": NO_DATA,
    }


def nested_columns(cols: np.ndarray) -> list[np.ndarray]:
    """The full form's columns, then its nested forms: without the N term, without the k term,
    without both. The D term (beta) stays: it is what the law is about."""
    out = [cols]
    for drop in ((2,), (3,), (2, 3)):
        if all(d in cols for d in drop):
            out.append(np.array([c for c in cols if c not in drop]))
    return out


def fit_form(
    data: SchemeData,
    form: str,
    all_rows: pl.DataFrame,
    n_boot: int,
    seed: int,
    level: float,
    with_checks: bool = True,
):
    """One damage form on one scheme: (doc entry, extrapolation checks, long-table rows, held-out).

    The full form first; when its parameters do not pass the gates (law/gates.py: a parameter the
    data cannot pin down, or an implausible estimate), the nested forms in turn (nested_columns),
    and the first that passes is kept, with `dropped` and `nested` saying what was left out and
    why. When none passes, the full form is reported and the gates mark it."""
    from kbitlaw.law.gates import DAMAGE, gate_params

    full = fit_one_form(data, form, all_rows, n_boot, seed, level, None, with_checks)
    entry = full[0]
    verdict = gate_params(json_safe(entry), DAMAGE, level=level)
    if entry["status"] != OK or verdict.status == OK:
        return full
    x = data.design(form)
    for cols in nested_columns(free_columns(x))[1:]:
        nested = fit_one_form(data, form, all_rows, n_boot, seed, level, cols, with_checks)
        e = nested[0]
        if e["status"] != OK or gate_params(json_safe(e), DAMAGE, level=level).status != OK:
            continue
        if resolved(data, full, nested):
            continue  # the data show the dropped terms: the nested form is not the law
        extra = [p for p in e["dropped"] if p not in entry["dropped"]]
        e["nested"] = f"{', '.join(extra)} dropped from the form: in the full form, {verdict.reason}"
        return nested
    return full


# A nested form is refuted below this p-value. Strict: a true nested form fails 1% of the time. In
# simulation (a damage scatter of 50-100%) dropping an N term the truth lacks gave p 0.06-1.0, and
# dropping the k term of a scheme at 3, 4 and 8 bits p < 1e-9; on the demo's int<k>-b64 (seed 1), 1e-65.
REFUTED_P = 0.01


def resolved(data: SchemeData, full: tuple, nested: tuple) -> bool:
    """Do the data refute the nested form? An F test of the nested fit's extra residuals, both
    weighed by the full form's noise model (its evaluation noise and scatter).

    A nested form is a simplification the data cannot refute, not a refuge: without it a scheme
    measured at 3, 4 and 8 bits whose full form has an implausible N exponent could drop the N and
    k terms together, pass the gates on a wide scatter and predict 8-bit damage equal to 3-bit damage
    (the demo family's int<k>-b64 did, on seed 1)."""
    (e_full, _, rows_full, _), (e_nested, _, rows_nested, _) = full, nested
    y, unit = data.y, data.noise().unit
    f_full, f_nested = rows_full[0]["fitted"].to_numpy(), rows_nested[0]["fitted"].to_numpy()
    s_e, s_m = e_full["noise"]["eval_scale"], e_full["noise"]["scatter"]
    var = noise_variance(s_e**2, s_m**2, unit, f_full, y)
    chi_full = float(np.sum((y - f_full) ** 2 / var))
    chi_nested = float(np.sum((y - f_nested) ** 2 / var))
    n, p_full = len(y), len(PARAMS) - len(e_full["dropped"])
    extra = len(e_nested["dropped"]) - len(e_full["dropped"])
    if n <= p_full or extra <= 0:
        return False
    if chi_full <= 0:
        return chi_nested > 0
    stat = (chi_nested - chi_full) / extra / (chi_full / (n - p_full))
    return float(f_dist.sf(stat, extra, n - p_full)) < REFUTED_P


def fit_one_form(
    data: SchemeData,
    form: str,
    all_rows: pl.DataFrame,
    n_boot: int,
    seed: int,
    level: float,
    cols: np.ndarray | None,
    with_checks: bool = True,
):
    """One damage form on one scheme's points, on the design columns `cols` (default: all free)."""
    base = {
        "family": data.family,
        "scheme": data.scheme,
        "form": form,
        "n_points": data.rows.height,
        "n_checkpoints": len(np.unique(data.checkpoints)),
        "nonpositive": int((data.y <= 0).sum()),  # kept in the fit
        "dropped_nonpositive": 0,
        "level": level,  # of the intervals (the gates judge their widths at it)
    }
    if data.rows.height == 0:
        return insufficient(base), [], [], None
    model = fit_damage_model(data, form, n_boot, seed, cols)
    if model is None:
        return insufficient(base), [], [], None
    x, cols, fit, noise = data.design(form), model.cols, model.fit, data.noise()
    est, samples = to_params(fit.theta, cols, form), to_params(fit.boot, cols, form)
    # C's scale where the data are: dL at the geometric centre of the points (gates.py)
    centre = x[:, cols].mean(axis=0)
    with np.errstate(over="ignore"):
        at_centre = np.exp(fit.boot @ centre)
    held, extrapolation = held_out_check(data, form, cols, n_boot, seed, level, with_checks)
    by_width = width_holdout(data, form, cols, seed)
    entry = {
        **base,
        **{p: num(est[i]) for i, p in enumerate(PARAMS)},
        "ci": {p: [num(v) for v in interval(samples[:, i], level)] for i, p in enumerate(PARAMS)},
        "noise": {
            "weights": "stderr" if noise.known else "relative to the loss",
            "eval_scale": num(fit.eval_scale),
            "scatter": num(fit.scatter),
        },
        "heldout_error": None,  # filled in by fit_damage (heldout_errors)
        "held_out": data.latest["checkpoint_id"],
        "ci_centre": {"C": [num(v) for v in interval(at_centre, level)]},
        "centre": {"delta_loss": num(np.exp(centre @ fit.theta))},
        # a variable that takes one value in the data, or a term a nested form left out
        "dropped": [p for i, p in enumerate(PARAMS) if i not in cols],
        "unidentified": [],
        "nested": None,
        "next_checkpoint": next_checkpoint(data, all_rows, form, cols, fit, level),
        "status": OK,
    }
    r = data.rows
    rows = table_rows(
        "damage",
        f"damage_{form}",
        family=data.family,
        metric="delta_loss",
        quant=r["quant"],
        bits=r["bits"],
        n_params=r["n_params"],
        tokens_seen=r["tokens_seen"],
        value=r["delta"],
        fitted=np.exp(x[:, cols] @ fit.theta),
    )
    return entry, extrapolation, [rows], (held, by_width)


def fit_damage(
    points: pl.DataFrame, n_boot: int, seed: int, level: float, with_checks: bool = True
) -> tuple[list, list, list]:
    """Both damage forms per (family, scheme): doc entries, extrapolation checks, table rows.
    `with_checks=False` (a refit that only chooses forms) skips the held-out checks' bootstrap."""
    dp = damage_points(points)
    entries, checks, rows = [], [], []
    for data in scheme_data(points):
        both = [fit_form(data, form, dp, n_boot, seed, level, with_checks) for form in FORMS]
        helds = [h for *_, h in both]
        errors = heldout_errors([h and h[0] for h in helds])
        width_errors = standardized_errors([h and h[1] for h in helds])
        for (entry, c, r, _), error, werr in zip(both, errors, width_errors, strict=True):
            entry["heldout_error"] = num(error)
            entry["heldout_better"] = None if None in errors else entry["heldout_error"] == min(errors)
            # per point, in the order of the scheme's rows: the two forms' errors pair up
            entry["width_holdout_errors"] = None if werr is None else [num(v) for v in werr]
            entries.append(entry)
            checks.extend(c)
            rows.extend(r)
    return entries, checks, rows
