"""The damage points and the design the damage law is fitted on.

dL = loss(quantized) - loss(16-bit) of the same checkpoint (mean perplexity-kind `loss`) per
checkpoint and spec (damage_points), grouped per family and quantization scheme (a data type, block
size and outlier share with k varying, written e.g. `int<k>-b64`) into SchemeData (scheme_data),
every dL kept, negative ones too. Both forms of the law are log-linear, dL = exp(x @ coef), in
the design columns (1, log D, -log N, -log k) for the power form and (1, log D, -log N, -k) for the
exponential one, whose coefficients are (log C, beta, alpha, gamma or 1/gamma) (design, to_params).
A column whose variable takes one value in the data is not free (free_columns): its exponent is
not identified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from kbitlaw.law.damage.fit import DamageFit, Noise
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


def scheme_data(points: pl.DataFrame) -> list[SchemeData]:
    """Each (family, scheme)'s damage points, negative dL included."""
    dp = damage_points(points)
    return [
        SchemeData(family, scheme, g.filter(pl.col("delta").is_finite()))
        for (family, scheme), g in dp.group_by(["family", "scheme"], maintain_order=True)
    ]
