"""The joint law over size, training tokens and precision, fitted over every checkpoint of a family:

    L(N, D, spec) = E + A / N^alpha + B / D^beta + dL_scheme(N, D, k)

- the 16-bit part on every checkpoint's fp16 (else bf16) loss, by Chinchilla's approach 3
  (law/chinchilla.py);
- dL per quantization scheme (data type, block size, outliers, method; k varies) in the form that
  predicted held-out data better (law/damage.py): Ouyang et al.'s power form C D^beta/(N^alpha k^gamma)
  or Kumar et al.'s exponential C D^beta/N^alpha e^(-k/gamma), judged on bit widths left out
  (choose_forms); when the data cannot tell them apart, the power form.
A prediction adds a replicate of each part, so its interval carries both uncertainties (the two
bootstraps are drawn independently; both draw on the same 16-bit losses, so they are only nearly
independent). The bootstrap resamples checkpoints as independent points; checkpoints of one run
share its schedule, which the forward checks below expose when it matters.

The law is checked as it will be used, forwards: refit without the family's largest size, then
without every size's latest checkpoint, and predict what was left out (`held_out`; each point is
an extrapolation check, and `heldout_error` is their RMS error in nats). After new checkpoints,
the fit without them predicts them: the running check of the law, kept across fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kbitlaw.law.chinchilla import PARAMS as SURFACE_PARAMS
from kbitlaw.law.chinchilla import Surface, fit_surface
from kbitlaw.law.common import NO_DATA, OK, FitConfig, extrapolation_entry, num, table_rows
from kbitlaw.law.damage import PARAMS as DAMAGE_PARAMS
from kbitlaw.law.damage import DamageModel, fit_damage_model, scheme_column, scheme_data
from kbitlaw.law.solve import child_rng, interval

DEFAULT_FORM = "power"
SIZE_TOLERANCE = 1.02  # sizes within 2% are one model size (published sizes are read off plots)
RUNNING_CHECK_KEEP = 1000  # running-check entries kept across fits
HORIZON = 4.0  # the heading figure draws each size out to this many times its latest tokens


# -- the data ---------------------------------------------------------------------------------------


def loss_points(points: pl.DataFrame, family: str) -> pl.DataFrame:
    """The family's loss points with positive tokens, each with its `scheme` and size group."""
    df = points.filter(
        pl.col("family") == family,
        pl.col("metric") == "loss",
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


def sixteen_bit(df: pl.DataFrame) -> pl.DataFrame:
    """One 16-bit loss per checkpoint: fp16, else bf16."""
    return (
        df.filter(pl.col("quant").is_in(["fp16", "bf16"]))
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
    surface: Surface
    damage: dict[str, DamageModel]  # scheme -> the chosen form's fit
    specs: dict[str, SpecInfo]  # quant -> its scheme and bits
    quantized_share: float  # median share of the parameters that are quantized (the rest stay 16-bit)
    checkpoint_ids: list[str] = field(default_factory=list)
    unquantized: tuple[float, float] | None = None  # log(16-bit params) = slope log N + intercept

    def loss(self, n: np.ndarray, d: np.ndarray, quant: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Predicted loss at (n, d) for a spec: the estimate [m] and replicates [n_boot, m];
        None for a quantized spec whose scheme has no damage law."""
        n, d = np.broadcast_arrays(np.atleast_1d(np.asarray(n, float)), np.atleast_1d(np.asarray(d, float)))
        est, boot = self.surface.loss(n, d)
        info = self.specs.get(quant)
        if info is None:
            return (est, boot) if quant in ("fp16", "bf16") else None
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
    forms: Mapping[str, str],
    config: FitConfig,
    warm: np.ndarray | None = None,
    salt: str = "",
) -> JointLaw | None:
    """The joint law on a family's loss points (loss_points); None when the 16-bit part is not
    identified. `forms`: scheme -> damage form; `salt` keys the random draws of a refit."""
    base = sixteen_bit(df)
    rng = child_rng(config.seed, f"joint|{family}|{salt}")
    surface = fit_surface(
        base["n_params"].to_numpy(),
        base["tokens_seen"].to_numpy(),
        base["value"].to_numpy(),
        n_boot=config.n_boot,
        rng=rng,
        warm=warm,
    )
    if surface is None:
        return None
    damage = {}
    for data in scheme_data(df.drop("scheme", "size")):
        model = fit_damage_model(data, forms.get(data.scheme, DEFAULT_FORM), config.n_boot, config.seed)
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
    width left out (damage.py width_holdout); the latest-checkpoint hold-out decides only where
    there are fewer than 3 widths. Errors within TIE of each other do not decide: then the default
    (power) form, and `chosen_by` says so."""
    by_scheme: dict[str, dict[str, dict]] = {}
    for e in damage_entries:
        if e.get("family") == family and e.get("status") == OK:
            by_scheme.setdefault(e["scheme"], {})[e["form"]] = e
    out = {}
    for scheme, forms in by_scheme.items():
        form, score, chosen_by = pick_form(forms)
        out[scheme] = {"form": form, "heldout_error": score, "chosen_by": chosen_by, "entry": forms[form]}
    return out


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


# -- checks of the law, forwards ----------------------------------------------------------------------


def predict_points(law: JointLaw, held: pl.DataFrame, name: str, level: float) -> list[dict]:
    """Extrapolation checks of the law against observed loss points (16-bit and quantized)."""
    checks = []
    for r in held.sort(["n_params", "tokens_seen", "quant"]).iter_rows(named=True):
        pred = law.loss(np.array([r["n_params"]]), np.array([r["tokens_seen"]]), r["quant"])
        if pred is None:
            continue
        est, boot = pred
        known = r["stderr"] is not None and np.isfinite(r["stderr"]) and r["stderr"] > 0
        se = r["stderr"] if known else None  # metric_points gives 0 where no row had one
        entry = extrapolation_entry(
            name,
            law.family,
            r["quant"],
            "loss",
            r["checkpoint_id"],
            float(est[0]),
            boot[:, 0],
            float(r["value"]),
            se if se is not None else float(est[0]) * law.surface.log_scale,
            level,
            # without stderrs, a point's noise is the training fit's residual scale
            noise_dof=None if se is not None else max(law.surface.n_points - 5, 1),
        )
        checks.append({**entry, "n_params": num(r["n_params"]), "tokens_seen": num(r["tokens_seen"])})
    return checks


def holdout(df: pl.DataFrame, train: pl.Expr, name: str, config: FitConfig, warm=None) -> list[dict] | None:
    """Refit on the `train` rows alone, damage forms chosen again from them too, and predict the
    others; None when the rest cannot be fitted."""
    from kbitlaw.law.damage import fit_damage

    rows, family = df.filter(train), df["family"][0]
    entries, _, _ = fit_damage(rows.drop("scheme", "size"), config.n_boot, config.seed, config.level)
    forms = {scheme: f["form"] for scheme, f in choose_forms(entries, family).items()}
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


# -- the doc entry and the forecast -------------------------------------------------------------------


def warm_theta(entry: Mapping | None) -> np.ndarray | None:
    """(a, b, e, alpha, beta) of a previous joint-law entry, None if it has no numbers."""
    if not entry or entry.get("status") != OK:
        return None
    try:
        theta = np.array(
            [np.log(entry["A"]), np.log(entry["B"]), np.log(entry["E"]), entry["alpha"], entry["beta"]]
        )
    except (KeyError, TypeError, ValueError):
        return None
    return theta if np.isfinite(theta).all() else None


def previous_entry(previous: Mapping | None, family: str) -> dict | None:
    """The previous fit document's joint-law entry for a family (one entry or a list)."""
    found = (previous or {}).get("joint_law")
    entries = found if isinstance(found, list) else [found] if isinstance(found, dict) else []
    return next((e for e in entries if isinstance(e, dict) and e.get("family") == family), None)


def damage_entry(forms: dict[str, dict], law: JointLaw) -> dict:
    """The chosen damage form per scheme, with its parameters and intervals (law/damage.py)."""
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


def insufficient_entry(family: str, n_points: int) -> dict:
    return {
        "family": family,
        "status": NO_DATA,
        **{p: None for p in SURFACE_PARAMS},
        "ci": {p: [None, None] for p in SURFACE_PARAMS},
        "unidentified": [],
        "damage": {"form": None, "schemes": [], "status": NO_DATA},
        "heldout_error": None,
        "held_out": None,
        "n_points": n_points,
        "running_check": [],
        "in_progress": [],
        "checkpoint_ids": [],
    }


def bands(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise intervals of replicates [n_boot, m]: (lo [m], hi [m])."""
    pairs = [interval(boot[:, j], level) for j in range(boot.shape[1])]
    return tuple(np.array([p[i] if p[i] is not None else np.nan for p in pairs], dtype=float) for i in (0, 1))


def heading_rows(law: JointLaw, df: pl.DataFrame, level: float, n_grid: int) -> list[pl.DataFrame]:
    """Where the family is heading: each size's predicted loss per spec over tokens, out to its
    planned tokens or HORIZON times its latest (band: the prediction interval), and the observed
    points."""
    rows = [
        table_rows(
            "observed",
            "joint",
            family=law.family,
            metric="loss",
            quant=df["quant"],
            bits=df["bits"],
            n_params=df["n_params"],
            tokens_seen=df["tokens_seen"],
            value=df["value"],
        )
    ]
    planned = (
        df["tokens_planned"]
        if "tokens_planned" in df.columns
        else pl.Series([None] * df.height, dtype=pl.Float64)
    )
    ends = (
        df.with_columns(planned=planned)
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
            lo, hi = bands(boot, level)
            if info.bits < 16:  # the damage on its own, from the same replicates (paired)
                d_lo, d_hi = bands(boot - base_boot[: len(boot)], level)
                rows.append(
                    table_rows(
                        "fit",
                        "joint_damage",
                        family=law.family,
                        metric="delta_loss",
                        quant=quant,
                        bits=int(info.bits),
                        n_params=r["n_params"],
                        tokens_seen=grid,
                        fitted=est - base_est,
                        lo=d_lo,
                        hi=d_hi,
                    )
                )
            rows.append(
                table_rows(
                    "fit",
                    "joint",
                    family=law.family,
                    metric="loss",
                    quant=quant,
                    bits=int(info.bits),
                    n_params=r["n_params"],
                    tokens_seen=grid,
                    fitted=est,
                    lo=np.array(lo, dtype=float),
                    hi=np.array(hi, dtype=float),
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
        before = previous_entry(previous, family)
        warm = warm_theta(before)
        forms = choose_forms(damage_entries, family)
        form_of = {s: f["form"] for s, f in forms.items()}
        law = fit_joint(df, family, form_of, config, warm) if df.height else None
        if law is None:
            entries.append(insufficient_entry(family, sixteen_bit(df).height if df.height else 0))
            continue
        held, held_checks = held_out_checks(df, config)
        running = running_check(df, before, (previous or {}).get("results_sha"), config)
        errors = [c["error"] for c in held_checks if c["status"] == OK]
        entries.append(
            {
                "family": family,
                "status": OK,
                **law.surface.params(),
                "ci": law.surface.ci(config.level),
                "unidentified": list(law.surface.unidentified),
                "damage": damage_entry(forms, law),
                "heldout_error": num(np.sqrt(np.mean(np.square(errors)))) if errors else None,
                "held_out": held,
                "fit": {
                    "method": "Chinchilla approach 3: Huber(1e-3) on log L; grid of starts screened, "
                    "Gauss-Newton, L-BFGS-B polish; case bootstrap",
                    "objective": num(law.surface.objective),
                    "n_points": law.surface.n_points,
                    "n_sizes": int(df["size"].n_unique()),
                    "warm_started": law.surface.warm,
                    "quantized_share": num(law.quantized_share),
                },
                "running_check": running,
                "checkpoint_ids": law.checkpoint_ids,
            }
        )
        rows.extend(heading_rows(law, df, config.level, config.grid_points))
        laws[family] = law
    return entries, rows, laws
