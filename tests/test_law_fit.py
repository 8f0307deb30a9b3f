"""Law fitting numerics: the batched solver, the Chinchilla fit, bootstraps and their coverage."""

from __future__ import annotations

import numpy as np
import pytest

from kbitlaw.law.numerics.nonlinear import (
    PowerLawProblem,
    bootstrap_power_laws,
    fit_power_law,
    power_law_predict,
    refit_power_law_batch,
)
from kbitlaw.law.numerics.solve import (
    bootstrap_linear,
    interval,
    resample_indices,
    robust_loss,
    solve_batched,
)
from kbitlaw.law.numerics.threshold import ThresholdProblem, bootstrap_thresholds, threshold_predict

E, A, ALPHA = 1.8, 400.0, 0.3  # the power-law truth used throughout
S = np.geomspace(1e8, 1e11, 8)  # total bits of 8 model sizes


def noisy_losses(rng: np.random.Generator, sd: float, s: np.ndarray = S) -> np.ndarray:
    return (E + A * s**-ALPHA) * np.exp(sd * rng.standard_normal(len(s)))


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    r = np.array([[0.0005, -0.002]])
    assert robust_loss(r, 1e-3)[0] == pytest.approx(0.5 * 0.0005**2 + 1e-3 * (0.002 - 0.5e-3))
    assert robust_loss(r, None)[0] == pytest.approx(0.5 * (0.0005**2 + 0.002**2))


def test_solver_fits_many_problems_at_once_and_holds_fixed_parameters():
    # y = a + b*x for 3 problems; the third has b fixed at 0.5 by equal bounds
    x = np.linspace(0, 1, 5)
    truth = np.array([[1.0, 2.0], [-1.0, 0.5], [3.0, 0.5]])
    y = truth[:, :1] + truth[:, 1:] * x

    def model(theta, rows):
        r = theta[:, :1] + theta[:, 1:] * x - y[rows]
        return r, np.stack([np.ones_like(r), np.broadcast_to(x, r.shape)], axis=-1)

    lo = np.array([[-10, -10], [-10, -10], [-10, 0.5]])
    hi = np.array([[10, 10], [10, 10], [10, 0.5]])
    theta, f = solve_batched(model, np.zeros((3, 2)), lo, hi)
    np.testing.assert_allclose(theta, truth, atol=1e-8)
    assert (f < 1e-16).all()


def test_power_law_point_fit_recovers_exact_data():
    a, alpha, e = fit_power_law(S, E + A * S**-ALPHA)
    assert np.exp(e) == pytest.approx(E, rel=1e-4)
    assert np.exp(a) == pytest.approx(A, rel=1e-3)
    assert alpha == pytest.approx(ALPHA, rel=1e-4)


def test_lbfgsb_point_estimate_is_a_fixed_point_of_the_batched_refit():
    # The bootstrap refits with the batched solver; started at the L-BFGS-B optimum on the same
    # data it must stay there, or the intervals would be centred on a different estimator.
    loss = noisy_losses(np.random.default_rng(3), 0.01)
    hat = fit_power_law(S, loss)
    again = refit_power_law_batch(S[None], loss[None], np.ones((1, len(S))), hat[None])[0]
    np.testing.assert_allclose(power_law_predict(again, S), power_law_predict(hat, S), rtol=1e-6)


def test_resample_indices_keep_enough_distinct_sizes():
    idx = resample_indices(np.random.default_rng(0), np.arange(4), 500, 3)
    assert idx.shape == (500, 4)
    assert min(len(np.unique(row)) for row in idx) >= 3


def test_power_law_bootstrap_is_deterministic_and_predicts():
    rng = np.random.default_rng(1)
    p = PowerLawProblem("p", S[:-1], noisy_losses(rng, 0.002)[:-1], s_predict=float(S[-1]))
    one = bootstrap_power_laws([p], 40, seed=7)[0]
    two = bootstrap_power_laws([p], 40, seed=7)[0]
    np.testing.assert_array_equal(one.boot, two.boot)
    assert one.predicted == pytest.approx(E + A * S[-1] ** -ALPHA, rel=0.02)
    assert one.predicted_boot.shape == (40,)


def test_power_law_intervals_cover_the_truth_about_90_percent():
    # 50 simulated repetitions, each a full fit plus a 200-resample bootstrap, in one batch.
    reps = 50
    rng = np.random.default_rng(2024)
    problems = [PowerLawProblem(f"rep{i}", S, noisy_losses(rng, 5e-4)) for i in range(reps)]
    fits = bootstrap_power_laws(problems, 200, seed=11)
    covered = {"E": 0, "A": 0, "alpha": 0}
    for f in fits:
        for name, samples, truth in (
            ("E", np.exp(f.boot[:, 2]), E),
            ("A", np.exp(f.boot[:, 0]), A),
            ("alpha", f.boot[:, 1], ALPHA),
        ):
            lo, hi = interval(samples, 0.90)
            covered[name] += lo <= truth <= hi
    for name, n in covered.items():
        assert 0.80 <= n / reps <= 0.97, (name, n / reps)


# The calibration of S* intervals (4, 6 and 8 sizes, chance fixed and fitted): test_threshold_calibration.py


def _threshold_reps(reps: int, n_sizes: int, rng: np.random.Generator, chance: float | None):
    m, w, r_max, c, n_ex = 31.0, 1.0, 0.85, 0.25, 1000
    x = np.linspace(27, 35, n_sizes)
    p = c + (r_max - c) / (1 + np.exp(-(x - m) / w))
    return [
        ThresholdProblem(
            f"rep{i}",
            x,
            (rng.binomial(n_ex, p) / n_ex)[:, None],
            np.full((n_sizes, 1), float(n_ex)),
            np.full((n_sizes, 1), np.nan),
            chance,
        )
        for i in range(reps)
    ], (m, w)


def test_threshold_with_chance_free_and_prediction():
    problems, (m, w) = _threshold_reps(1, 8, np.random.default_rng(9), chance=None)
    p = problems[0]
    held = ThresholdProblem(
        "held", p.x[:-1], p.acc[:-1], p.n_examples[:-1], p.stderr[:-1], None, x_predict=float(p.x[-1])
    )
    full, pred = bootstrap_thresholds([p, held], 100, seed=0)
    assert 0.15 <= full.theta[3] <= 0.35  # the chance level, estimated
    assert full.theta[0] == pytest.approx(m, abs=0.5)
    # at S* the curve is halfway between chance and the ceiling
    assert threshold_predict(full.theta, full.theta[0]) == pytest.approx(full.theta[3] + full.theta[2] / 2)
    lo, hi = interval(pred.predicted_boot, 0.9)
    assert lo <= pred.predicted <= hi


def test_linear_cluster_bootstrap_recovers_coefficients():
    rng = np.random.default_rng(0)
    n = 60
    x = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    y = x @ np.array([1.0, 2.0, -0.5]) + 0.01 * rng.normal(size=n)
    coef, boot = bootstrap_linear(x, y, np.repeat(np.arange(12), 5), 200, rng)
    np.testing.assert_allclose(coef, [1.0, 2.0, -0.5], atol=0.01)
    assert boot.shape == (200, 3) and np.isfinite(boot).all()
    for j, truth in enumerate([1.0, 2.0, -0.5]):
        lo, hi = interval(boot[:, j], 0.99)
        assert lo <= truth <= hi
