"""The joint law with the learning-rate schedule in it (law/joint/anneal.py, Tissue et al. 2024):
simulated cosine families with known truths (recovery, and the end of each run predicted from its
first half), the Chinchilla form on the finished checkpoints when there is no schedule, and the
stored law. The reading of schedules, and Trainer checkpoints end to end: test_schedule_reading.py."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from kbitlaw import schedule
from kbitlaw.law.common import FitConfig, json_safe
from kbitlaw.law.damage.law import fit_damage
from kbitlaw.law.gates import gate_entry
from kbitlaw.law.joint.fit import fit_joint_laws
from kbitlaw.law.joint.law import fit_joint, loss_points
from kbitlaw.law.joint.predictions import runs_in_progress
from kbitlaw.law.joint.usable import select
from kbitlaw.law.table import components, drop_unusable, metric_points, normalise
from tests.test_schedule_reading import TPS, cosine

# -- simulated cosine families ------------------------------------------------------------------------


def family_rows(
    truth: dict,
    *,
    sizes=1e8 * 2.0 ** np.arange(5),
    tokens_per_param: float = 20.0,
    checkpoints: int = 16,
    noise: float = 0.002,
    seed: int = 0,
    upto: float = 1.0,
    with_schedule: bool = True,
    family: str = "cos",
) -> pl.DataFrame:
    """16-bit loss rows of a family: per size one cosine run (TPS tokens per step, 20 tokens per
    parameter by default) with `checkpoints` evenly spaced along it, the loss L = E + A/N^alpha +
    B/S1^beta - C S2 times exp(noise z); C is given as the annealing term at the end of a run
    (`anneal`, nats). Only checkpoints up to `upto` of each run; each knows its run's plan."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        total = int(tokens_per_param * n / TPS)
        steps, lrs = cosine(total, warmup=max(total // 50, 10))
        at = np.unique(np.linspace(total / checkpoints, total, checkpoints).astype(int))
        for step in at:
            areas = schedule.token_areas(steps, lrs, int(step), step * TPS, "kbitlaw.json")
            rows.append((n, step, areas, step == at[-1]))
    end_anneal = np.median([a.lr_anneal for _, _, a, last in rows if last])
    c = truth["anneal"] / end_anneal
    out = []
    for n, step, a, last in rows:
        loss = (
            truth["E"]
            + truth["A"] / n ** truth["alpha"]
            + truth["B"] / a.lr_area ** truth["beta"]
            - c * a.lr_anneal
        )
        planned_tokens = a.lr_area_planned is not None
        out.append(
            {
                "checkpoint_id": f"{family}/n{int(n)}/step-{step}",
                "family": family,
                "n_params": int(n),
                "step": int(step),
                "tokens_seen": int(step * TPS),
                "tokens_planned": int(step * TPS) if last else int(int(tokens_per_param * n / TPS) * TPS),
                "quant": "fp16",
                "bits": 16,
                "total_bits": 16.0 * n,
                "dataset": "ppl",
                "kind": "perplexity",
                "metric": "loss",
                "value": loss * float(np.exp(noise * rng.standard_normal())),
                "stderr": None,
                "truth": loss,
                "fraction": step / int(tokens_per_param * n / TPS),
                "lr_area": a.lr_area if with_schedule else None,
                "lr_anneal": a.lr_anneal if with_schedule else None,
                "lr_area_planned": (a.lr_area_planned if planned_tokens else a.lr_area)
                if with_schedule
                else None,
                "lr_anneal_planned": (a.lr_anneal_planned if planned_tokens else a.lr_anneal)
                if with_schedule
                else None,
            }
        )
    df = pl.DataFrame(out)
    return df.filter(pl.col("fraction") <= upto + 1e-9), c


def points_of(df: pl.DataFrame) -> pl.DataFrame:
    return metric_points(components(drop_unusable(normalise(df.drop("truth", "fraction")))[0]))[0]


def joint_entries(df: pl.DataFrame, config: FitConfig) -> list[dict]:
    points = points_of(df)
    damage, _, _ = fit_damage(points, config.n_boot, config.seed, config.level)
    return fit_joint_laws(points, damage, config)[0]


PYTHIA = {"E": 1.9, "A": 420.0, "alpha": 0.32, "B": 410.0, "beta": 0.28, "anneal": 0.15}
STEEP = {"E": 1.7, "A": 300.0, "alpha": 0.36, "B": 1500.0, "beta": 0.34, "anneal": 0.25}
FLAT = {"E": 2.3, "A": 800.0, "alpha": 0.29, "B": 250.0, "beta": 0.26, "anneal": 0.10}


@pytest.mark.parametrize(
    ("truth", "kw"),
    [(PYTHIA, {}), (STEEP, {"checkpoints": 8, "noise": 0.001}), (FLAT, {"checkpoints": 24, "noise": 0.003})],
    ids=["pythia-like", "steep-8-checkpoints", "flat-24-checkpoints"],
)
def test_recovers_the_schedule_law_on_cosine_families(truth, kw):
    df, c = family_rows(truth, seed=1, **kw)
    (e,) = joint_entries(df, FitConfig(n_boot=300, level=0.99))
    assert e["form"] == "schedule" and e["law"] == "L = E + A/N^alpha + B/S1^beta - C*S2"
    assert e["status"] == "ok" and e["fit"]["n_points"] == df.height
    assert e["checkpoints"]["used"] == df.height and e["checkpoints"]["left_out"] == []
    assert "fitted on every one of them, intermediate checkpoints included" in e["checkpoints"]["note"]
    for name, value in {**{k: truth[k] for k in ("E", "A", "alpha", "B", "beta")}, "C": c}.items():
        lo, hi = e["ci"][name]
        assert lo <= value <= hi, (name, e[name], lo, hi)
    # held out and predicted forwards (largest size, latest checkpoints): within the points' noise
    for name in ("largest_size", "latest_checkpoint"):
        assert e["held_out"][name]["status"] == "ok", name
    assert gate_entry("joint_law", json_safe(e)).status == "ok"


def end_coverage(truth: dict, reps: int, seed0: int, **kw) -> tuple[float, float]:
    """Share of (repetition, size) whose run's end falls inside its predicted tolerance, fitted on
    the checkpoints up to half of each run; and the share of repetitions where the largest size's
    does."""
    config = FitConfig(n_boot=200)
    inside, largest = [], []
    for rep in range(reps):
        full, _ = family_rows(truth, seed=seed0 + rep, **kw)
        half = full.filter(pl.col("fraction") <= 0.5)
        df = loss_points(points_of(half), "cos")
        law = fit_joint(select(df).used, "cos", {}, FitConfig(n_boot=200, seed=rep))
        assert law is not None and law.form == "schedule"
        ends = {
            r["n_params"]: r["value"] for r in full.filter(pl.col("fraction") == 1.0).iter_rows(named=True)
        }
        runs = runs_in_progress(law, df, config.level)
        assert len(runs) == len(ends)
        for run in runs:
            (p,) = run["predictions"]
            lo, hi = p["tolerance"]
            inside.append(lo <= ends[int(run["n_params"])] <= hi)
        largest.append(inside[-1])
    return float(np.mean(inside)), float(np.mean(largest))


@pytest.mark.parametrize(
    ("truth", "kw"),
    [
        (PYTHIA, {"noise": 0.002}),
        pytest.param(STEEP, {"checkpoints": 24, "noise": 0.001}, marks=pytest.mark.slow),
        pytest.param(
            FLAT, {"checkpoints": 8, "noise": 0.003, "tokens_per_param": 40}, marks=pytest.mark.slow
        ),
    ],
    ids=["pythia-like", "steep-dense", "flat-sparse-long"],
)
def test_the_end_of_a_cosine_run_is_predicted_from_its_first_half(truth, kw):
    """The issue's test: fitted on each run's checkpoints up to half its schedule, the run's final
    loss falls inside its predicted 90% tolerance (the law's interval and a point's noise) in at
    least 85% of 40 repetitions. Measured (seeds 100-139): 93%, 91%, 93% of every size's end and
    92.5%, 92.5%, 95% of the largest size's, 10-11 s per truth on an idle machine."""
    pooled, largest = end_coverage(truth, 40, 100, **kw)
    assert pooled >= 0.85 and largest >= 0.85, (pooled, largest)


def test_a_run_without_its_planned_schedule_is_not_predicted_and_says_so():
    full, _ = family_rows(PYTHIA, seed=4)
    half = full.filter(pl.col("fraction") <= 0.5).with_columns(
        lr_area_planned=pl.lit(None, dtype=pl.Float64), lr_anneal_planned=pl.lit(None, dtype=pl.Float64)
    )
    (e,) = joint_entries(half, FitConfig(n_boot=100))
    assert e["form"] == "schedule" and len(e["in_progress"]) == 5
    for run in e["in_progress"]:
        assert run["predictions"] == [] and run["note"].startswith(
            "not predictable: the rest of its learning-rate"
        )


# -- without a schedule: the finished checkpoints only ---------------------------------------------------


def test_without_a_schedule_only_the_finished_checkpoints_are_fitted_and_the_entry_says_so():
    # each size: one cosine run with 8 checkpoints and, at its 2nd, 4th and 6th, a cooldown branch
    # (a finished model of those tokens, as a warmup-stable-decay run makes them), no schedule given
    runs, _ = family_rows(PYTHIA, checkpoints=8, with_schedule=False, seed=5)
    branches = runs.filter(pl.col("step").rank("dense").over("n_params").is_in([2, 4, 6])).with_columns(
        pl.col("checkpoint_id") + "-cooldown", finished=pl.lit(True), value=pl.col("value") - 0.08
    )
    df = pl.concat(
        [runs.with_columns(finished=pl.lit(None, dtype=pl.Boolean)), branches], how="vertical_relaxed"
    )
    (e,) = joint_entries(df, FitConfig(n_boot=100))
    assert e["form"] == "chinchilla" and e["law"] == "L = E + A/N^alpha + B/D^beta"
    used = 5 * 3 + 5  # the branches and each run's end (tokens_planned = tokens_seen)
    cp = e["checkpoints"]
    assert cp["used"] == used == e["fit"]["n_points"] and len(cp["left_out"]) == 5 * 7
    assert all(x["reason"].startswith("intermediate checkpoint:") for x in cp["left_out"])
    assert cp["note"] == (
        "No learning-rate schedule: L = E + A/N^alpha + B/D^beta fitted on the 20 finished checkpoints; "
        "35 intermediate checkpoints of decaying runs (tokens_planned beyond tokens_seen, not marked "
        "finished) left out."
    )
    assert set(e["checkpoint_ids"]) == set(
        df.filter(pl.col("finished") | (pl.col("fraction") == 1.0))["checkpoint_id"]
    )
    checked = {c["held_out"] for h in e["held_out"].values() for c in h["checks"]}
    assert not checked & {x["checkpoint_id"] for x in cp["left_out"]}  # never checked against the law


def test_checkpoints_that_say_nothing_are_assumed_finished_and_counted():
    df, _ = family_rows(PYTHIA, checkpoints=4, with_schedule=False, seed=6)
    (e,) = joint_entries(df.with_columns(tokens_planned=pl.lit(None, dtype=pl.Int64)), FitConfig(n_boot=50))
    assert e["form"] == "chinchilla" and e["checkpoints"]["assumed_finished"] == 20
    assert e["checkpoints"]["note"].endswith(
        "20 with neither finished nor tokens_planned in kbitlaw.json assumed finished."
    )
    # a family where only some checkpoints have a schedule is of the Chinchilla form, and says how many
    mixed, _ = family_rows(PYTHIA, checkpoints=4, seed=6)
    mixed = mixed.with_columns(
        finished=pl.lit(True), lr_area=pl.when(pl.col("n_params") > 1e8).then(pl.col("lr_area"))
    )
    sel = select(loss_points(points_of(mixed), "cos"))
    assert sel.form == "chinchilla" and 0 < sel.without_schedule < 20
    assert sel.note().startswith(f"No learning-rate schedule for {sel.without_schedule} of 20 checkpoints")


def test_too_few_finished_checkpoints_is_insufficient_data_and_says_why():
    df, _ = family_rows(PYTHIA, checkpoints=8, with_schedule=False, seed=7)
    (e,) = joint_entries(df, FitConfig(n_boot=50))
    assert e["status"] == "insufficient data" and e["form"] == "chinchilla"
    assert "fitted on the 5 finished checkpoints; 35 intermediate" in e["reason"]


# -- the stored law: predict, old documents, broken ones, the report ------------------------------------


@pytest.fixture(scope="module")
def half_doc() -> dict:
    """The fit document of a cosine family seen up to half of each run (every run in progress)."""
    from kbitlaw.law.document import fit_laws

    full, _ = family_rows(PYTHIA, seed=8)
    half = full.filter(pl.col("fraction") <= 0.5).drop("truth", "fraction")
    return json.loads(json.dumps(json_safe(fit_laws(half, FitConfig(n_boot=100)).doc)))


def test_predict_reads_the_schedule_form_and_says_what_it_assumes(half_doc):
    from kbitlaw.law.joint.predict import predict_from_document

    (e,) = half_doc["joint_law"]
    assert e["status"] == "ok" and e["form"] == "schedule" and e["model"]["version"] == 2
    out = predict_from_document(half_doc, 4e8, 8e9)
    r1, r2 = e["model"]["surface"]["shape"]
    assert (
        out["schedule"]["lr_area"] == pytest.approx(r1 * 8e9)
        and "D / D_run tokens per step" in out["schedule"]["note"]
    )
    assert out["law"]["form"] == "schedule" and out["law"]["C"] == e["C"] and out["predictions"]
    # the document's runs in progress and predict's are one, each with a tolerance around its interval
    assert out["runs_in_progress"] == e["in_progress"] and len(e["in_progress"]) == 5
    for run in e["in_progress"]:
        (p,) = run["predictions"]
        assert p["tolerance"][0] < p["ci"][0] <= p["loss"] <= p["ci"][1] < p["tolerance"][1]
        assert run["note"] is None and run["lr_area_planned"] > run["tokens_seen"] * 0.5


def test_a_version_1_model_still_reads():
    from kbitlaw.law.document import fit_laws
    from kbitlaw.law.joint.predict import predict_from_document

    df, _ = family_rows(PYTHIA, checkpoints=4, with_schedule=False, seed=9)
    doc = json.loads(
        json.dumps(
            json_safe(
                fit_laws(
                    df.drop("truth", "fraction").with_columns(finished=pl.lit(True)), FitConfig(n_boot=50)
                ).doc
            )
        )
    )
    (e,) = doc["joint_law"]
    assert e["form"] == "chinchilla" and e["model"]["surface"]["form"] == "chinchilla"
    old = json.loads(json.dumps(doc))
    model = old["joint_law"][0]["model"]
    model["version"] = 1
    model["surface"] = {k: model["surface"][k] for k in ("theta", "boot")}
    for run in model["runs_in_progress"]:
        run.pop("lr_area_planned"), run.pop("lr_anneal_planned")
    new, was = predict_from_document(doc, 3e8, 6e9), predict_from_document(old, 3e8, 6e9)
    assert was["predictions"] == new["predictions"] and was["schedule"] is None


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("form", "cosine", "model.surface.form: 'cosine' is not chinchilla or schedule"),
        ("s2_ref", -1.0, "model.surface.s2_ref: -1.0 is not in (0, inf]"),
        ("shape", [0.5], "model.surface.shape: not a list of 2 numbers"),
        ("shape", [0.0, 0.1], "model.surface.shape: [0.0, 0.1] is not [S1/D > 0, S2/D >= 0]"),
        ("theta", [1.0] * 5, "model.surface.theta: not a list of 6 numbers"),
        ("dropped", ["E"], "model.surface.dropped: ['E'] is not [] or ['C']"),
        ("n_points", "8", "model.surface.n_points: '8' is not a whole number >= 0"),
        ("log_scale", "x", "model.surface.log_scale: 'x' is not a finite number"),
    ],
)
def test_a_broken_schedule_surface_is_one_line(half_doc, field, value, says):
    from kbitlaw.law.joint.predict import PredictError, predict_from_document

    doc = json.loads(json.dumps(half_doc))
    doc["joint_law"][0]["model"]["surface"][field] = value
    with pytest.raises(PredictError) as err:
        predict_from_document(doc, 4e8, 8e9)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_the_report_shows_the_form_and_the_runs_it_cannot_predict(half_doc):
    from kbitlaw.report.html_joint import in_progress_html, joint_law_html

    (e,) = half_doc["joint_law"]
    html = joint_law_html(e, True, "cos", 0.9)
    assert "B/S1<sup>β</sup> − C·S2" in html and "C = " in html and e["checkpoints"]["note"] in html
    unplanned = [
        {**run, "predictions": [], "note": "not predictable: the rest of it"} for run in e["in_progress"]
    ]
    assert "not predictable: the rest of it" in in_progress_html(unplanned, 0.9)
    from kbitlaw.flows.summary import joint_law_markdown

    assert f"- {e['checkpoints']['note']}" in joint_law_markdown(half_doc, "cos")


def test_the_running_check_and_warm_refit_of_the_schedule_form():
    """A night later the runs are at three quarters: the new checkpoints are checked against the law
    refitted (from the previous fit's parameters, C included) on the ones the previous fit had."""
    from kbitlaw.law.document import fit_laws

    full, _ = family_rows(PYTHIA, checkpoints=8, seed=10)
    config = FitConfig(n_boot=100)
    first = fit_laws(full.filter(pl.col("fraction") <= 0.5).drop("truth", "fraction"), config).doc
    later = full.filter(pl.col("fraction") <= 0.75).drop("truth", "fraction")
    (e,) = fit_laws(later, config, previous=first).doc["joint_law"]
    (cold,) = fit_laws(later, config).doc["joint_law"]
    assert e["form"] == "schedule" and e["fit"]["warm_started"] and not cold["fit"]["warm_started"]
    for p in ("E", "A", "alpha", "B", "beta", "C"):
        assert e[p] == pytest.approx(cold[p], rel=1e-3), p
    running = e["running_check"]
    assert len(running) == 5 * 2 and {r["predicted_by"] for r in running} == {first["results_sha"]}
    for r in running:  # predicted at each new checkpoint's own areas; flagged when outside
        lo, hi = r["tolerance"]
        assert r["predicted"] is not None and r["flagged"] == (not lo <= r["observed"] <= hi)
    # (how often the law misses is measured over repetitions above; one family's checks share one
    # fit, so they miss together: this seed's first-half fit puts C low and flags 8 of the 10)
