"""The joint law over size, training tokens and precision, fitted over every checkpoint of a family:

    L(N, D, spec) = E + A / N^alpha + B / D^beta + dL_scheme(N, D, k)

- the 16-bit part on every checkpoint's fp16 (else bf16) loss, by Chinchilla's approach 3
  (law/joint/chinchilla.py); when every 16-bit point carries its learning-rate schedule's areas
  (lr_area S1, lr_anneal S2: schedule.py), in the schedule form E + A/N^alpha + B/S1^beta - C S2
  instead (law/joint/anneal.py), which holds along a run, not only at its end (which checkpoints
  each form may use: law/joint/usable.py);
- dL per quantization scheme (data type, block size, outliers, method; k varies) in the form that
  predicted held-out data better (law/damage/law.py): Ouyang et al.'s power form C D^beta/(N^alpha k^gamma)
  or Kumar et al.'s exponential C D^beta/N^alpha e^(-k/gamma), judged on bit widths left out
  (choose_forms); when the data cannot tell them apart, the power form.
A prediction adds a replicate of each part, so its interval carries both uncertainties (the two
bootstraps are drawn independently; both draw on the same 16-bit losses, so they are only nearly
independent). The bootstrap resamples checkpoints as independent points; checkpoints of one run
share its schedule, which the forward checks expose when it matters.

The law is checked as it will be used, forwards (law/joint/checks.py), and assembled per family
into the fit document's `joint_law` with the report's rows (law/joint/fit.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kbitlaw.law.common import OK, FitConfig
from kbitlaw.law.damage.design import PARAMS as DAMAGE_PARAMS
from kbitlaw.law.damage.design import free_columns, scheme_column, scheme_data
from kbitlaw.law.damage.law import DamageModel, fit_damage_model
from kbitlaw.law.joint.anneal import FORM as SCHEDULE_FORM
from kbitlaw.law.joint.anneal import AnnealSurface, fit_anneal_surface
from kbitlaw.law.joint.chinchilla import Surface, fit_surface
from kbitlaw.law.numerics.solve import child_rng
from kbitlaw.vocab import BASELINES, LOSS

DEFAULT_FORM = "power"
SIZE_TOLERANCE = 1.02  # sizes within 2% are one model size (published sizes are read off plots)


# -- the data ---------------------------------------------------------------------------------------


def loss_points(points: pl.DataFrame, family: str) -> pl.DataFrame:
    """The family's loss points with positive tokens, each with its `scheme` and size group."""
    df = points.filter(
        pl.col("family") == family,
        pl.col("metric") == LOSS,
        pl.col("tokens_seen").is_finite(),
        pl.col("tokens_seen") > 0,
        pl.col("value").is_finite(),
    )
    if df.height == 0:
        return df.with_columns(scheme=pl.lit(None, dtype=pl.String), size=pl.lit(None, dtype=pl.Int64))
    return df.with_columns(scheme=scheme_column(df["quant"]), size=size_groups(df["n_params"]))


def size_groups(n: pl.Series) -> pl.Series:
    """A model-size index per row: sizes within SIZE_TOLERANCE of the smallest of a group share it
    (measured from the group's start, so a chain of close sizes does not merge into one)."""
    values = np.sort(np.unique(n.to_numpy().astype(float)))
    group, start, index = np.zeros(len(values), dtype=np.int64), values[0] if len(values) else 0.0, 0
    for i, v in enumerate(values):
        if v > start * SIZE_TOLERANCE:
            index, start = index + 1, v
        group[i] = index
    return pl.Series("size", group[np.searchsorted(values, n.to_numpy().astype(float))], dtype=pl.Int64)


def schedule_known(base: pl.DataFrame) -> bool:
    """Every 16-bit point carries both areas of its schedule (S1 > 0): the schedule form applies."""
    if base.height == 0 or not {"lr_area", "lr_anneal"} <= set(base.columns):
        return False
    s1, s2 = base["lr_area"].cast(pl.Float64), base["lr_anneal"].cast(pl.Float64)
    return bool((s1.is_not_null() & s2.is_not_null() & (s1 > 0) & (s2 >= 0)).all())


def schedule_shape(df: pl.DataFrame) -> tuple[float, float]:
    """S1 / D and S2 / D of the family's runs at their ends (median over sizes): where a run's
    planned end is known its planned areas, else its latest checkpoint's (law/joint/anneal.py)."""
    planned = pl.col("lr_area_planned").is_not_null() & pl.col("tokens_planned").is_not_null()
    ends = (
        df.sort("tokens_seen", descending=True)
        .group_by("size", maintain_order=True)
        .first()
        .select(
            r1=pl.when(planned)
            .then(pl.col("lr_area_planned") / pl.col("tokens_planned"))
            .otherwise(pl.col("lr_area") / pl.col("tokens_seen")),
            r2=pl.when(planned)
            .then(pl.col("lr_anneal_planned") / pl.col("tokens_planned"))
            .otherwise(pl.col("lr_anneal") / pl.col("tokens_seen")),
        )
    )
    return float(ends["r1"].median()), float(ends["r2"].median())


def sixteen_bit(df: pl.DataFrame) -> pl.DataFrame:
    """One 16-bit loss per checkpoint: fp16, else bf16."""
    return (
        df.filter(pl.col("quant").is_in(list(BASELINES)))
        .sort(["checkpoint_id", "quant"], descending=[False, True])
        .group_by("checkpoint_id", maintain_order=True)
        .first()
    )


# -- the law ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecInfo:
    scheme: str
    bits: float
    bits_per_param: float


@dataclass(frozen=True)
class JointLaw:
    family: str
    surface: Surface | AnnealSurface  # its `form`: chinchilla | schedule
    damage: dict[str, DamageModel]  # scheme -> the chosen form's fit
    specs: dict[str, SpecInfo]  # quant -> its scheme and bits
    quantized_share: float  # median share of the parameters that are quantized (the rest stay 16-bit)
    checkpoint_ids: list[str] = field(default_factory=list)
    unquantized: tuple[float, float] | None = None  # log(16-bit params) = slope log N + intercept

    @property
    def form(self) -> str:
        return self.surface.form

    def loss(
        self, n: np.ndarray, d: np.ndarray, quant: str, s1=None, s2=None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Predicted loss at (n, d) for a spec: the estimate [m] and replicates [n_boot, m];
        None for a quantized spec whose scheme has no damage law. The schedule form reads the
        areas (s1, s2) where given, else assumes the family's schedule (law/joint/anneal.py); the
        damage's D is the tokens."""
        n, d = np.broadcast_arrays(np.atleast_1d(np.asarray(n, float)), np.atleast_1d(np.asarray(d, float)))
        if s1 is not None and s2 is not None:
            s1, s2 = (np.broadcast_to(np.atleast_1d(np.asarray(v, float)), n.shape) for v in (s1, s2))
        else:
            s1 = s2 = None
        est, boot = self.surface.loss(n, d, s1, s2)
        info = self.specs.get(quant)
        if info is None:
            return (est, boot) if quant in BASELINES else None
        if info.bits >= 16:
            return est, boot
        model = self.damage.get(info.scheme)
        if model is None:
            return None
        d_est, d_boot = model.damage_at(n, d, info.bits)
        m = min(len(boot), len(d_boot))
        return est + d_est, boot[:m] + d_boot[:m]

    def memory_bits(self, n: np.ndarray, quant: str) -> np.ndarray:
        """Weight memory of an n-parameter model at a spec (unquantized parameters stay 16-bit)."""
        bpp = self.specs[quant].bits_per_param if quant in self.specs else 16.0
        n = np.asarray(n, float)
        kept = self.sixteen_bit_params(n)
        return (n - kept) * bpp + kept * 16.0

    def sixteen_bit_params(self, n: np.ndarray) -> np.ndarray:
        """How many of an n-parameter model's parameters a spec leaves at 16 bits."""
        n = np.asarray(n, float)
        if self.unquantized is None:
            return n * (1.0 - self.quantized_share)
        slope, intercept = self.unquantized
        return np.clip(np.exp(intercept) * n**slope, 0.0, n)


def fit_joint(
    df: pl.DataFrame,
    family: str,
    forms: Mapping[str, str | tuple[str, list[str]]],
    config: FitConfig,
    warm: np.ndarray | None = None,
    salt: str = "",
) -> JointLaw | None:
    """The joint law on a family's loss points (loss_points); None when the 16-bit part is not
    identified. The schedule form where every 16-bit point has its areas, else Chinchilla's (the
    caller chooses the points: law/joint/usable.py). `forms`: scheme -> damage form; `warm`: a
    previous fit's coordinates (warm_theta), used when its form is this one; `salt` keys the
    random draws of a refit."""
    base = sixteen_bit(df)
    rng = child_rng(config.seed, f"joint|{family}|{salt}")
    n, loss = base["n_params"].to_numpy(), base["value"].to_numpy()
    if schedule_known(base):
        surface = fit_anneal_surface(
            n,
            base["lr_area"].to_numpy(),
            base["lr_anneal"].to_numpy(),
            loss,
            shape=schedule_shape(df),
            n_boot=config.n_boot,
            rng=rng,
            warm=warm if warm is not None and len(warm) == 6 else None,
        )
    else:
        warm = warm if warm is not None and len(warm) == 5 else None
        surface = fit_surface(
            n, base["tokens_seen"].to_numpy(), loss, n_boot=config.n_boot, rng=rng, warm=warm
        )
    if surface is None:
        return None
    damage = {}
    for data in scheme_data(df.drop("scheme", "size")):
        if data.scheme not in forms:
            continue  # no damage law of this scheme passed its gates: its specs get no prediction
        form, dropped = chosen_form(forms[data.scheme])
        cols = np.array([c for c in free_columns(data.design(form)) if DAMAGE_PARAMS[c] not in dropped])
        model = fit_damage_model(data, form, config.n_boot, config.seed, cols)
        if model is not None:
            damage[data.scheme] = model
    specs = {
        r["quant"]: SpecInfo(r["scheme"], float(r["bits"]), float(r["bits_per_param"] or r["bits"]))
        for r in df.unique("quant", keep="first").iter_rows(named=True)
    }
    quantized, unquantized = sixteen_bit_params(df)
    ids = sorted(df["checkpoint_id"].unique().to_list())
    return JointLaw(family, surface, damage, specs, quantized, ids, unquantized)


def sixteen_bit_params(df: pl.DataFrame) -> tuple[float, tuple[float, float] | None]:
    """(median share of the parameters that are quantized, (slope, intercept) of log(16-bit params)
    against log N over the sizes, or None). The parameters a spec leaves at 16 bits (embeddings,
    LM head) are a falling share as models grow, so a budget far from the measured sizes uses the
    fitted count, not the median share; with one size (or none left at 16 bits) the share."""
    shares = (
        df.select(
            "n_params",
            ((pl.col("total_bits") / pl.col("n_params") - 16.0) / (pl.col("bits_per_param") - 16.0)).alias(
                "s"
            ),
        )
        .filter(pl.col("s").is_finite(), pl.col("s") > 0, pl.col("s") <= 1)
        .group_by("n_params")
        .agg(pl.col("s").median())
        .sort("n_params")
    )
    if shares.height == 0:
        return 1.0, None
    quantized = float(shares["s"].median())
    n = shares["n_params"].to_numpy().astype(float)
    kept = n * (1.0 - shares["s"].to_numpy())
    if len(n) < 2 or not (kept > 0.5).all():
        return quantized, None
    slope, intercept = np.polyfit(np.log(n), np.log(kept), 1)
    return quantized, (float(slope), float(intercept))


# -- choosing the damage form ------------------------------------------------------------------------


def choose_forms(damage_entries: list[dict], family: str) -> dict[str, dict]:
    """scheme -> {form, heldout_error, chosen_by, entry} from the damage law's entries.

    The forms differ only in how damage falls with k, so what tells them apart is predicting a bit
    width left out (damage/checks.py width_holdout); the latest-checkpoint hold-out decides only where
    there are fewer than 3 widths. Errors within TIE of each other do not decide: then the default
    (power) form, and `chosen_by` says so."""
    from kbitlaw.law.common import json_safe
    from kbitlaw.law.gates import gate_entry

    by_scheme: dict[str, dict[str, dict]] = {}
    for e in damage_entries:
        usable = e.get("status") == OK and gate_entry("damage", json_safe(e)).status == OK
        if e.get("family") == family and usable:
            by_scheme.setdefault(e["scheme"], {})[e["form"]] = e
    out = {}
    for scheme, forms in by_scheme.items():
        form, score, chosen_by = pick_form(forms)
        out[scheme] = {"form": form, "heldout_error": score, "chosen_by": chosen_by, "entry": forms[form]}
    return out


def chosen_form(choice: str | tuple[str, list[str]]) -> tuple[str, list[str]]:
    """(form, parameters dropped from it) of a scheme's chosen damage law: `forms` maps a scheme to
    its form's name, or to (name, dropped) when a nested form was chosen (damage/law.py fit_form)."""
    return (choice, []) if isinstance(choice, str) else (choice[0], list(choice[1]))


TIE = 0.05  # relative difference of two held-out errors that decides nothing


def pick_form(forms: dict[str, dict]) -> tuple[str, float | None, str]:
    default = DEFAULT_FORM if DEFAULT_FORM in forms else next(iter(forms))
    for name, score in (("bit width", width_score), ("latest checkpoint", checkpoint_score)):
        scores = {f: score(e) for f, e in forms.items()}
        scores = {f: v for f, v in scores.items() if v is not None}
        if len(scores) < len(forms) or not scores:
            continue
        best = min(scores, key=scores.get)
        if len(scores) == 1:
            return best, scores[best], f"the only form ({name} held out)"
        if max(scores.values()) - scores[best] <= TIE * scores[best]:
            return default, scores[default], f"default: held-out errors ({name}) within {TIE:.0%}"
        return best, scores[best], f"held-out error ({name})"
    return default, None, "default (no held-out data)"


def width_score(entry: dict) -> float | None:
    """RMS standardised error of predicting each bit width from the others."""
    widths = [v for v in entry.get("width_holdout_errors") or [] if v is not None]
    return float(np.sqrt(np.mean(np.square(widths)))) if widths else None


def checkpoint_score(entry: dict) -> float | None:
    return entry.get("heldout_error")


def warm_theta(entry: Mapping | None) -> np.ndarray | None:
    """(a, b, e, alpha, beta) of a previous joint-law entry, and C after them when it was of the
    schedule form; None if it has no numbers."""
    if not entry or entry.get("status") != OK:
        return None
    try:
        theta = [np.log(entry["A"]), np.log(entry["B"]), np.log(entry["E"]), entry["alpha"], entry["beta"]]
        if entry.get("form") == SCHEDULE_FORM:
            theta.append(entry["C"] if entry.get("C") is not None else 0.0)
        theta = np.array(theta, dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    return theta if np.isfinite(theta).all() else None
