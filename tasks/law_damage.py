"""Quantization damage across training: how much loss k-bit quantization costs as a checkpoint sees
more tokens.

dL = loss(quantized) - loss(16-bit) of the same checkpoint (mean perplexity-kind `loss`), fitted per
family and quantization scheme (a data type, block size and outlier share with k varying, written
e.g. `int<k>-b64`) in two forms, both linear least squares in log space:
- power (Ouyang et al.):        dL = C * D^beta / (N^alpha * k^gamma)
- exponential (Kumar et al.):   dL = C * D^beta / N^alpha * exp(-k/gamma)
with N = n_params (the results schema has no non-embedding count; Ouyang use non-embedding N, so
alpha here is not numerically comparable), D = tokens_seen, k = bits. dL <= 0 cannot be logged:
those points are dropped and counted. An exponent whose variable takes one value in the data
(one model size, one k) is not identified: it is reported null and its effect folds into C.

Each form is also refit without the family's latest checkpoint and predicts it (the held-out
error tells which form extrapolates better), and predicts dL at the next checkpoint of that size.
"""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl

from tasks.law_common import NO_DATA, extrapolation_entry, num, table_rows
from tasks.law_solve import bootstrap_linear, child_rng, interval

FORMS = ("power", "exponential")
PARAMS = ("C", "beta", "alpha", "gamma")  # coefficient order: log C, beta, alpha, gamma-term
_SCHEME = re.compile(r"^([a-z]+?)\d+(?:e\d+)?(.*)$")


def scheme_of(quant: str) -> str:
    """`int4-b64` -> `int<k>-b64`, `fp3e2-b64` -> `fp<k>-b64`: the spec with its bit width abstracted."""
    m = _SCHEME.match(quant)
    return f"{m[1]}<k>{m[2]}" if m else quant


def damage_points(points: pl.DataFrame) -> pl.DataFrame:
    """dL per (checkpoint, quantized spec) against the checkpoint's fp16 (else bf16) loss."""
    loss = points.filter(pl.col("metric") == "loss")
    base = (
        loss.filter(pl.col("quant").is_in(["fp16", "bf16"]))
        .sort("quant", descending=True)  # fp16 before bf16
        .group_by(["family", "checkpoint_id"], maintain_order=True)
        .first()
        .select("family", "checkpoint_id", pl.col("value").alias("base"))
    )
    return (
        loss.filter(pl.col("bits") < 16, pl.col("tokens_seen").is_finite(), pl.col("tokens_seen") > 0)
        .join(base, on=["family", "checkpoint_id"])
        .with_columns(
            delta=pl.col("value") - pl.col("base"),
            scheme=pl.col("quant").map_elements(scheme_of, return_dtype=pl.String),
        )
        .sort(["family", "scheme", "checkpoint_id", "quant"])
    )


def design(d: np.ndarray, n: np.ndarray, k: np.ndarray, form: str) -> np.ndarray:
    """Columns whose coefficients are (log C, beta, alpha, gamma or 1/gamma)."""
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
    full[..., 0] = np.exp(full[..., 0])
    if form == "exponential":
        with np.errstate(divide="ignore"):
            full[..., 3] = 1.0 / full[..., 3]
    return full


def _fit(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, cols: np.ndarray, n_boot: int, rng) -> tuple:
    coef, boot = bootstrap_linear(x[:, cols], y, clusters, n_boot, rng)
    return coef, boot


def _predict(
    x_new: np.ndarray, cols: np.ndarray, coef: np.ndarray, boot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """dL at new design rows: the point prediction [m] and bootstrap predictions [n_boot, m]."""
    return np.exp(x_new[:, cols] @ coef), np.exp(boot @ x_new[:, cols].T)


def fit_damage(points: pl.DataFrame, n_boot: int, seed: int, level: float) -> tuple[list, list, list]:
    """Both damage forms per (family, scheme): doc entries, extrapolation checks, table rows."""
    dp = damage_points(points)
    entries, checks, rows = [], [], []
    for (family, scheme), g in dp.group_by(["family", "scheme"], maintain_order=True):
        nonpositive = int((g["delta"] <= 0).sum())
        g = g.filter(pl.col("delta") > 0)
        d, n, k = (g[c].to_numpy().astype(float) for c in ("tokens_seen", "n_params", "bits"))
        y = np.log(g["delta"].to_numpy()) if g.height else np.zeros(0)
        ckpt = g["checkpoint_id"].to_numpy()
        latest = (
            g.sort(
                ["tokens_seen", "step", "n_params", "checkpoint_id"], descending=True, nulls_last=True
            ).row(0, named=True)
            if g.height
            else None
        )
        form_entries = []
        for form in FORMS:
            base = {
                "family": family,
                "scheme": scheme,
                "form": form,
                "n_points": g.height,
                "n_checkpoints": len(np.unique(ckpt)),
                "dropped_nonpositive": nonpositive,
            }
            x = design(d, n, k, form)
            cols = free_columns(x) if g.height else np.arange(1)
            ok = g.height > len(cols) and 1 in cols and len(np.unique(ckpt)) >= 2
            coef, boot = (
                _fit(x, y, ckpt, cols, n_boot, child_rng(seed, f"damage|{family}|{scheme}|{form}"))
                if ok
                else (np.full(len(cols), np.nan), None)
            )
            if not ok or not np.isfinite(coef).all():
                form_entries.append(
                    {
                        **base,
                        "C": None,
                        "alpha": None,
                        "beta": None,
                        "gamma": None,
                        "ci": {p: [None, None] for p in PARAMS},
                        "heldout_error": None,
                        "unidentified": [],
                        "status": NO_DATA,
                    }
                )
                continue
            est, samples = to_params(coef, cols, form), to_params(boot, cols, form)
            entry = {
                **base,
                **{p: num(est[i]) for i, p in enumerate(PARAMS)},
                "ci": {p: [num(v) for v in interval(samples[:, i], level)] for i, p in enumerate(PARAMS)},
                "unidentified": [p for i, p in enumerate(PARAMS) if i not in cols],
                "status": "ok",
            }
            rows.append(
                table_rows(
                    "damage",
                    f"damage_{form}",
                    family=family,
                    metric="delta_loss",
                    quant=g["quant"],
                    bits=g["bits"],
                    n_params=g["n_params"],
                    tokens_seen=g["tokens_seen"],
                    value=g["delta"],
                    fitted=np.exp(x[:, cols] @ coef),
                )
            )
            # held out: refit without the latest checkpoint, predict it
            held = ckpt == latest["checkpoint_id"]
            train_cols = free_columns(x[~held])
            entry["held_out"] = latest["checkpoint_id"]
            entry["heldout_error"] = None
            if (
                held.any()
                and np.array_equal(train_cols, cols)
                and (~held).sum() > len(cols)
                and len(np.unique(ckpt[~held])) >= 2
            ):
                c_tr, b_tr = _fit(
                    x[~held],
                    y[~held],
                    ckpt[~held],
                    cols,
                    n_boot,
                    child_rng(seed, f"damage|{family}|{scheme}|{form}|heldout"),
                )
                if np.isfinite(c_tr).all():
                    pred, pred_boot = _predict(x[held], cols, c_tr, b_tr)
                    obs = np.exp(y[held])
                    entry["heldout_error"] = num(np.sqrt(np.mean((np.log(pred) - np.log(obs)) ** 2)))
                    for j, q in enumerate(g["quant"].to_numpy()[held]):
                        checks.append(
                            extrapolation_entry(
                                f"damage_{form}",
                                family,
                                q,
                                "delta_loss",
                                latest["checkpoint_id"],
                                float(pred[j]),
                                pred_boot[:, j],
                                float(obs[j]),
                                math.nan,
                                level,
                            )
                        )
            entry["next_checkpoint"] = _next_checkpoint(dp, latest, cols, coef, boot, form, level)
            form_entries.append(entry)
        errs = [e.get("heldout_error") for e in form_entries]
        for e in form_entries:
            e["heldout_better"] = None if None in errs else bool(e["heldout_error"] == min(errs))
        entries.extend(form_entries)
    return entries, checks, rows


def _next_checkpoint(
    dp: pl.DataFrame, latest: dict, cols, coef, boot, form: str, level: float
) -> dict | None:
    """dL predicted at the latest checkpoint's size after one more step of its last token growth."""
    same = dp.filter(pl.col("family") == latest["family"], pl.col("n_params") == latest["n_params"])
    earlier = same.filter(pl.col("tokens_seen") < latest["tokens_seen"])["tokens_seen"]
    if earlier.len() == 0:
        return None
    d_next = latest["tokens_seen"] ** 2 / float(earlier.max())
    ks = np.unique(
        dp.filter(pl.col("family") == latest["family"], pl.col("scheme") == latest["scheme"])["bits"]
    )
    x = design(np.full(len(ks), d_next), np.full(len(ks), latest["n_params"]), ks.astype(float), form)
    pred, pred_boot = _predict(x, cols, coef, boot)
    scheme = latest["scheme"]
    return {
        "n_params": int(latest["n_params"]),
        "tokens_seen": num(d_next),
        "predictions": [
            {
                "quant": scheme.replace("<k>", str(int(kk))),
                "bits": int(kk),
                "delta_loss": num(pred[i]),
                "ci": [num(v) for v in interval(pred_boot[:, i], level)],
            }
            for i, kk in enumerate(ks)
        ],
    }
