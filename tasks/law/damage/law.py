"""Quantization damage across training: how much loss k-bit quantization costs as a checkpoint sees
more tokens.

dL = loss(quantized) - loss(16-bit) of the same checkpoint (mean perplexity-kind `loss`), fitted per
family and quantization scheme (a data type, block size and outlier share with k varying, written
e.g. `int<k>-b64`) in two forms:
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

Each form is also refit without the family's latest checkpoint and predicts it: `heldout_error` is
the RMS error of those predictions in units of the points' noise SD (pooled over the two forms; ~1
when a form extrapolates within the noise), which tells which form extrapolates better, and each
held-out point is an extrapolation check (its noise: the losses' stderrs, else the refit's noise
estimate). Each form also predicts dL at the next checkpoint of the latest checkpoint's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, extrapolation_entry, json_safe, num, table_rows
from kbitlaw.law.damage.fit import DamageFit, Noise, fit_damage_law
from kbitlaw.law.numerics.solve import child_rng, interval
from kbitlaw.quant.spec import QuantSpec
from kbitlaw.vocab import BASELINES, LOSS

FORMS = ("power", "exponential")
PARAMS = ("C", "beta", "alpha", "gamma")  # coefficient order: log C, beta, alpha, gamma-term


def scheme_column(quant: pl.Series) -> pl.Expr:
    """The `scheme` of each spec in `quant` (QuantSpec.scheme: `int4-b64` -> `int<k>-b64`)."""
    schemes = {q: QuantSpec.parse(q).scheme for q in quant.unique().to_list()}
    return pl.col("quant").replace_strict(schemes, return_dtype=pl.String)


def damage_points(points: pl.DataFrame) -> pl.DataFrame:
    """dL per (checkpoint, quantized spec) against the checkpoint's fp16 (else bf16) loss, with the
    16-bit loss (`base`) and its stderr (`base_stderr`)."""
    loss = points.filter(pl.col("metric") == LOSS)
    base = (
        loss.filter(pl.col("quant").is_in(list(BASELINES)))
        .sort("quant", descending=True)  # fp16 before bf16
        .group_by(["family", "checkpoint_id"], maintain_order=True)
        .first()
        .select(
            "family", "checkpoint_id", pl.col("value").alias("base"), pl.col("stderr").alias("base_stderr")
        )
    )
    return (
        loss.filter(pl.col("bits") < 16, pl.col("tokens_seen").is_finite(), pl.col("tokens_seen") > 0)
        .join(base, on=["family", "checkpoint_id"])
        .with_columns(
            delta=pl.col("value") - pl.col("base"),
            scheme=scheme_column(loss["quant"]),
        )
        .sort(["family", "scheme", "checkpoint_id", "quant"])
    )


def design(d: np.ndarray, n: np.ndarray, k: np.ndarray, form: str) -> np.ndarray:
    """Columns whose coefficients are (log C, beta, alpha, gamma or 1/gamma): dL = exp(x @ coef)."""
    last = -np.log(k) if form == "power" else -k
    return np.column_stack([np.ones_like(d), np.log(d), -np.log(n), last])


def free_columns(x: np.ndarray) -> np.ndarray:
    """The intercept plus every regressor that varies in the data."""
    varies = np.array([True] + [len(np.unique(x[:, j])) > 1 for j in range(1, x.shape[1])])
    return np.flatnonzero(varies)


def to_params(coef: np.ndarray, cols: np.ndarray, form: str) -> np.ndarray:
    """Coefficient rows [..., len(cols)] -> (C, beta, alpha, gamma) rows, NaN where not identified."""
    full = np.full((*coef.shape[:-1], 4), np.nan)
    full[..., cols] = coef
    with np.errstate(over="ignore"):  # a diverged bootstrap refit gives inf: quantiles tolerate it
        full[..., 0] = np.exp(full[..., 0])
    if form == "exponential":
        with np.errstate(divide="ignore"):
            full[..., 3] = 1.0 / full[..., 3]
    return full


def _known(v: np.ndarray) -> np.ndarray:
    return np.isfinite(v) & (v > 0)


@dataclass(frozen=True)
class SchemeData:
    """One family's damage points for one scheme, every dL (negative ones too)."""

    family: str
    scheme: str
    rows: pl.DataFrame

    @property
    def y(self) -> np.ndarray:
        return self.rows["delta"].to_numpy().astype(float)

    @property
    def checkpoints(self) -> np.ndarray:
        return self.rows["checkpoint_id"].to_numpy()

    @property
    def latest(self) -> dict:
        """The checkpoint that saw the most tokens (then the later step, the larger model)."""
        order = ["tokens_seen", "step", "n_params", "checkpoint_id"]
        return self.rows.sort(order, descending=True, nulls_last=True).row(0, named=True)

    def noise(self) -> Noise:
        """Variance units: squared stderrs when every loss has one, else squared losses."""
        col = lambda c: self.rows[c].fill_null(np.nan).to_numpy().astype(float)  # noqa: E731
        se_q, se_b = col("stderr"), col("base_stderr")
        _, cluster = np.unique(self.checkpoints, return_inverse=True)
        if _known(se_q).all() and _known(se_b).all():
            return Noise(se_q**2, se_b**2, cluster, known=True)
        return Noise(col("value") ** 2, col("base") ** 2, cluster, known=False)

    def design(self, form: str) -> np.ndarray:
        d, n, k = (self.rows[c].to_numpy().astype(float) for c in ("tokens_seen", "n_params", "bits"))
        return design(d, n, k, form)


def identifiable(x: np.ndarray, checkpoints: np.ndarray, cols: np.ndarray) -> bool:
    """D varies (beta is the point of the law), two checkpoints at least, and a residual left."""
    return 1 in cols and len(np.unique(checkpoints)) >= 2 and len(x) > len(cols)


def predict(x_new: np.ndarray, fit: DamageFit) -> tuple[np.ndarray, np.ndarray]:
    """dL at design rows (free columns only): the estimate [m] and bootstrap predictions [n_boot, m]."""
    with np.errstate(over="ignore"):  # as in to_params: a diverged bootstrap refit predicts inf
        return np.exp(x_new @ fit.theta), np.exp(fit.boot @ x_new.T)


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


@dataclass(frozen=True)
class HeldOut:
    """A form's predictions of the held-out checkpoint's dL, the observations and their noise SD."""

    predicted: np.ndarray
    observed: np.ndarray
    sd: np.ndarray


def held_out_check(
    data: SchemeData,
    form: str,
    cols: np.ndarray,
    n_boot: int,
    seed: int,
    level: float,
    with_checks: bool = True,
):
    """Refit without the latest checkpoint and predict its points: (HeldOut or None, checks).

    A held-out point is flagged when it lies outside the refit's prediction interval combined in
    quadrature with the point's own noise (its stderrs, else the refit's noise estimate)."""
    x, y, ckpt, noise = data.design(form)[:, cols], data.y, data.checkpoints, data.noise()
    latest = data.latest["checkpoint_id"]
    train = ckpt != latest
    if not set(cols) <= set(free_columns(data.design(form)[train])) or not identifiable(
        x[train], ckpt[train], cols
    ):
        return None, []
    rng = child_rng(seed, f"damage|{data.family}|{data.scheme}|{form}|heldout")
    rows = np.flatnonzero(train)
    # without checks only the held-out errors are wanted (choosing a form): no bootstrap needed
    fit = fit_damage_law(x[rows], y[rows], noise.take(rows), n_boot if with_checks else 0, rng)
    if fit is None:
        return None, []
    pred, pred_boot = predict(x[~train], fit)
    obs = y[~train]
    obs_sd = fit.sd(x[~train], noise.unit[~train])
    dof = None if noise.known else fit.dof
    quants = data.rows["quant"].to_numpy()[~train]
    checks = [
        extrapolation_entry(
            f"damage_{form}",
            data.family,
            q,
            "delta_loss",
            latest,
            float(pred[j]),
            pred_boot[:, j],
            float(obs[j]),
            float(obs_sd[j]),
            level,
            noise_dof=dof,
        )
        for j, q in enumerate(quants)
    ]
    return HeldOut(pred, obs, obs_sd), checks


def width_holdout(data: SchemeData, form: str, cols: np.ndarray, seed: int) -> HeldOut | None:
    """Leave one bit width out: refit without each k in turn and predict its points. The forms
    differ only in how damage falls with k (k^-gamma against e^(-k/gamma)), so predicting an unseen
    width, the extreme ones above all, is what tells them apart; a held-out checkpoint is not (both
    forms share its D and N terms). None with fewer than 3 widths."""
    x, y, noise = data.design(form)[:, cols], data.y, data.noise()
    ks = data.rows["bits"].to_numpy()
    widths = np.unique(ks)
    if len(widths) < 3 or 3 not in cols:
        return None
    predicted, observed, sd = (np.full(len(y), np.nan) for _ in range(3))
    for k in widths:
        train = np.flatnonzero(ks != k)
        rng = child_rng(seed, f"damage|{data.family}|{data.scheme}|{form}|width{k}")
        fit = fit_damage_law(x[train], y[train], noise.take(train), 0, rng)
        if fit is None:
            return None
        test = ks == k
        predicted[test] = np.exp(x[test] @ fit.theta)
        observed[test] = y[test]
        sd[test] = fit.sd(x[test], noise.unit[test])
    return HeldOut(predicted, observed, sd)


def next_checkpoint(data: SchemeData, all_rows: pl.DataFrame, form: str, cols, fit: DamageFit, level: float):
    """dL predicted for the latest checkpoint's size one more step of its last token growth ahead."""
    latest = data.latest
    size = all_rows.filter(pl.col("family") == data.family, pl.col("n_params") == latest["n_params"])
    earlier = size.filter(pl.col("tokens_seen") < latest["tokens_seen"])["tokens_seen"]
    if earlier.len() == 0:
        return None
    d_next = latest["tokens_seen"] ** 2 / float(earlier.max())
    names = data.rows.sort("quant").group_by("bits", maintain_order=True).first().sort("bits")
    ks = names["bits"].to_numpy().astype(float)
    x = design(np.full(len(ks), d_next), np.full(len(ks), latest["n_params"]), ks, form)[:, cols]
    pred, pred_boot = predict(x, fit)
    predictions = [
        {
            "quant": q,
            "bits": int(k),
            "delta_loss": num(pred[i]),
            "ci": [num(v) for v in interval(pred_boot[:, i], level)],
        }
        for i, (q, k) in enumerate(zip(names["quant"], ks, strict=True))
    ]
    return {"n_params": int(latest["n_params"]), "tokens_seen": num(d_next), "predictions": predictions}


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


def scheme_data(points: pl.DataFrame) -> list[SchemeData]:
    """Each (family, scheme)'s damage points, negative dL included."""
    dp = damage_points(points)
    return [
        SchemeData(family, scheme, g.filter(pl.col("delta").is_finite()))
        for (family, scheme), g in dp.group_by(["family", "scheme"], maintain_order=True)
    ]


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
        if e["status"] == OK and gate_params(json_safe(e), DAMAGE, level=level).status == OK:
            extra = [p for p in e["dropped"] if p not in entry["dropped"]]
            e["nested"] = f"{', '.join(extra)} dropped from the form: in the full form, {verdict.reason}"
            return nested
    return full


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


def heldout_errors(held: list[HeldOut | None]) -> list[float | None]:
    """Each form's RMS held-out error in units of the points' noise SD, pooled over the forms
    (the mean of their noise variances), so that a form whose poorer fit inflated its own noise
    estimate is not flattered by it."""
    fitted = [h for h in held if h is not None]
    if not fitted:
        return [None] * len(held)
    sd = np.sqrt(np.mean([h.sd**2 for h in fitted], axis=0))
    return [
        None if h is None else float(np.sqrt(np.mean(((h.predicted - h.observed) / sd) ** 2))) for h in held
    ]


def standardized_errors(held: list[HeldOut | None]) -> list[np.ndarray | None]:
    """Each form's per-point errors in units of the points' noise SD pooled over the forms (as in
    heldout_errors); None for a form without predictions, or for both when either has none."""
    if any(h is None for h in held):
        return [None] * len(held)
    sd = np.sqrt(np.mean([h.sd**2 for h in held], axis=0))
    return [(h.predicted - h.observed) / sd for h in held]


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
