"""The damage laws fitted in linear space: exponents recovered under evaluation noise, dL <= 0 kept,
calibrated intervals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from kbitlaw.law.damage.design import SchemeData, damage_points
from kbitlaw.law.damage.fit import Noise, fit_damage_law
from kbitlaw.law.damage.law import fit_damage
from kbitlaw.law.numerics.solve import child_rng
from kbitlaw.law.sim import Dataset, World, simulate_results
from kbitlaw.law.table import components, drop_unusable, metric_points, normalise

PPL = Dataset("ppl", "perplexity")
SPECS = ["fp16"] + [f"int{k}-b64" for k in range(3, 9)]
SIZES = 1e7 * 4.0 ** np.arange(5)
TOKENS = 2e9 * 2.0 ** np.arange(6)
# The simulator's damage is C * D^beta / (N^alpha * k^gamma) times dtype and block factors, which
# fold into C: int (1.1) at block 64 (1.0).
WORLD = World(damage_beta=0.52, damage_alpha=0.23, damage_gamma=5.5, loss_noise=0.001)
TRUTH = {"C": WORLD.damage_c * 1.1, "beta": 0.52, "alpha": 0.23, "gamma": 5.5}


def points(df: pl.DataFrame) -> pl.DataFrame:
    kept, _ = drop_unusable(normalise(df))
    return metric_points(components(kept))[0]


def without_loss_stderr(df: pl.DataFrame) -> pl.DataFrame:
    """Loss rows as many harnesses write them: no stderr."""
    return df.with_columns(
        stderr=pl.when(pl.col("metric") == "loss").then(float("nan")).otherwise(pl.col("stderr"))
    )


def simulate(seed: int, world: World = WORLD, stderr: bool = True) -> pl.DataFrame:
    df = simulate_results(SIZES, TOKENS, SPECS, [PPL], world=world, seed=seed)
    return df if stderr else without_loss_stderr(df)


def power_entry(entries: list[dict]) -> dict:
    (e,) = [e for e in entries if e["form"] == "power" and e["scheme"] == "int<k>-b64"]
    return e


@pytest.mark.parametrize("stderr", [True, False], ids=["stderr", "no-stderr"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_form_recovers_the_exponents_under_evaluation_noise(seed, stderr):
    # 0.1% loss noise makes most int6..int8 damages (and some int5) noise-dominated: a third of the
    # 180 dL come out <= 0. The log-space fit that dropped them gave beta ~0.33, gamma ~4.
    entries, _, _ = fit_damage(points(simulate(seed, stderr=stderr)), 200, seed, 0.90)
    e = power_entry(entries)
    assert e["status"] == "ok" and e["unidentified"] == [] and e["n_points"] == 180
    assert e["nonpositive"] > 30 and e["dropped_nonpositive"] == 0
    assert e["noise"]["weights"] == ("stderr" if stderr else "relative to the loss")
    for name in ("beta", "alpha", "gamma"):
        assert e[name] == pytest.approx(TRUTH[name], rel=0.10), (name, e[name])
    assert e["C"] == pytest.approx(TRUTH["C"], rel=1.0)  # C extrapolates to D = N = k = 1: loose


def test_points_with_nonpositive_damage_are_fitted_not_dropped():
    dp = damage_points(points(simulate(3)))
    data = SchemeData("sim", "int<k>-b64", dp.filter(pl.col("scheme") == "int<k>-b64"))
    y = data.y
    assert (y <= 0).sum() > 30
    x, noise = data.design("power"), data.noise()

    def beta(values: np.ndarray) -> float:
        return fit_damage_law(x, values, noise, 0, child_rng(0, "t")).theta[1]

    base = beta(y)
    # moving only the negative observations moves the estimate: they are in the fit (they sit
    # where the law predicts little damage, so they pin C and gamma more than beta)
    lower = np.where(y <= 0, y - 0.003, y)
    assert abs(beta(lower) - base) > 1e-4
    # and the long table keeps them as observed points
    _, _, rows = fit_damage(points(simulate(3)), 20, 0, 0.9)
    table = pl.concat(rows)
    assert (table["value"] <= 0).sum() == 2 * (y <= 0).sum()  # both forms


def test_exact_damage_is_recovered_exactly_with_zero_noise():
    world = World(damage_beta=0.52, damage_alpha=0.23, damage_gamma=5.5, loss_noise=0.0)
    entries, checks, _ = fit_damage(points(simulate(0, world)), 20, 0, 0.9)
    e = power_entry(entries)
    for name, value in TRUTH.items():
        assert e[name] == pytest.approx(value, rel=1e-4)
    assert max(abs(c["error"]) for c in checks if c["law"] == "damage_power") < 1e-9


def test_intervals_cover_the_truth_about_as_often_as_they_claim():
    # 90% intervals over 40 data sets; the fit alone (power form), 100 parametric replicates each.
    dp = [damage_points(points(simulate(100 + s, stderr=s % 2 == 0))) for s in range(40)]
    covered = {p: [] for p in ("beta", "alpha", "gamma")}
    spread = {p: [] for p in covered}
    for s, d in enumerate(dp):
        data = SchemeData("sim", "int<k>-b64", d.filter(pl.col("scheme") == "int<k>-b64"))
        fit = fit_damage_law(data.design("power"), data.y, data.noise(), 100, child_rng(s, "cover"))
        for j, p in ((1, "beta"), (2, "alpha"), (3, "gamma")):
            lo, hi = np.percentile(fit.boot[:, j], [5, 95])
            covered[p].append(lo <= TRUTH[p] <= hi)
            spread[p].append((fit.theta[j], hi - lo))
    for p in covered:
        estimates, widths = np.array(spread[p]).T
        assert 0.75 <= np.mean(covered[p]) <= 1.0, (p, np.mean(covered[p]))
        # about as wide as the estimates spread (2 * 1.645 sd), neither inflated nor overconfident
        assert 0.6 <= np.mean(widths) / (3.29 * np.std(estimates)) <= 1.6, p


def test_noise_model_reads_stderrs_when_every_loss_has_one():
    dp = damage_points(points(simulate(0)))
    data = SchemeData("sim", "int<k>-b64", dp.filter(pl.col("scheme") == "int<k>-b64"))
    noise = data.noise()
    assert isinstance(noise, Noise) and noise.known
    # a checkpoint's 16-bit stderr is shared by all its specs
    assert all(len(np.unique(noise.base[noise.cluster == c])) == 1 for c in np.unique(noise.cluster))
    bare = damage_points(points(without_loss_stderr(simulate(0))))
    rel = SchemeData("sim", "int<k>-b64", bare.filter(pl.col("scheme") == "int<k>-b64")).noise()
    assert not rel.known
    np.testing.assert_allclose(rel.own, bare.filter(pl.col("scheme") == "int<k>-b64")["value"] ** 2)
