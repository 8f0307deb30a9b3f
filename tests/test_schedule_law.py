"""The joint law with the learning-rate schedule in it (law/joint/anneal.py, Tissue et al. 2024):
reading a checkpoint's schedule (kbitlaw.json's lr_schedule, the Trainer's trainer_state.json), the
two areas S1 and S2 on schedules checked by hand and by a step-by-step loop, simulated cosine
families with known truths (recovery, and the end of each run predicted from its first half), the
Chinchilla form on the finished checkpoints when there is no schedule, and a checkpoint folder with
a trainer_state.json through discovery, evaluation and the fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest

from kbitlaw import schedule
from kbitlaw.checkpoint_files import CheckpointError, check_sidecar
from kbitlaw.checkpoints import discover, fingerprint_of, resolve
from kbitlaw.law.common import FitConfig, json_safe
from kbitlaw.law.damage.law import fit_damage
from kbitlaw.law.gates import gate_entry
from kbitlaw.law.joint.fit import fit_joint_laws
from kbitlaw.law.joint.law import fit_joint, loss_points
from kbitlaw.law.joint.predictions import runs_in_progress
from kbitlaw.law.joint.usable import select
from kbitlaw.law.table import components, drop_unusable, metric_points, normalise, results_sha
from tests.conftest import make_checkpoint

LAMBDA = schedule.DECAY
TPS = 1e6  # tokens per optimizer step in the simulated families


# -- the areas, by brute force -------------------------------------------------------------------------


def loop_areas(steps, lrs, upto: int, decay: float = LAMBDA) -> tuple[float, float]:
    """S1 and S2 in steps, one optimizer step at a time (the module docstring's definition, written
    out as plainly as possible: the check on the vectorised, chunked sums)."""
    eta = np.interp(np.arange(0, upto + 1), steps, np.asarray(lrs, float) / max(lrs))
    peak = steps[int(np.argmax(lrs))]
    s1 = s2 = m = 0.0
    for i in range(1, upto + 1):
        s1 += eta[i]
        m = decay * m + (eta[i - 1] - eta[i] if i > peak else 0.0)
        s2 += m
    return s1, s2


def cosine(total: int, warmup: int = 50, floor: float = 0.1, every: int = 10, peak: float = 3e-4):
    """A warmup-then-cosine schedule logged every `every` steps (as a Trainer logs it): steps, lrs."""
    steps = np.arange(0, total + 1, every)
    decay = floor + (1 - floor) * 0.5 * (
        1 + np.cos(np.pi * np.clip(steps - warmup, 0, None) / (total - warmup))
    )
    return steps, peak * np.where(steps < warmup, steps / warmup, decay)


def test_a_constant_schedule_has_s1_the_tokens_seen_and_no_annealing():
    got = schedule.token_areas(np.array([0, 1000]), np.array([1e-3, 1e-3]), 600, 600 * 4096.0, "kbitlaw.json")
    assert got.lr_area == pytest.approx(600 * 4096.0) and got.lr_anneal == 0.0
    assert got.lr_area_planned == pytest.approx(1000 * 4096.0) and got.lr_anneal_planned == 0.0


def test_a_linear_decay_by_hand():
    # eta 1 at step 0 down to 0 at step 10: eta_i = 1 - i/10, each step drops 0.1
    steps, lrs = np.array([0, 10]), np.array([2.0, 0.0])
    s1, s2 = schedule.step_areas(steps, lrs, [10], decay=0.0)[10]
    assert s1 == pytest.approx(sum(1 - i / 10 for i in range(1, 11)))  # 4.5
    assert s2 == pytest.approx(1.0)  # lambda = 0: S2 is the total drop
    _, s2 = schedule.step_areas(steps, lrs, [10], decay=0.5)[10]
    m = [0.1 * (1 - 0.5**k) / 0.5 for k in range(1, 11)]  # m_k = 0.5 m_{k-1} + 0.1
    assert s2 == pytest.approx(sum(m))


def test_the_warmup_adds_nothing_to_the_annealing_area():
    steps, lrs = np.array([0, 100, 200]), np.array([0.0, 1.0, 1.0])
    s1, s2 = schedule.step_areas(steps, lrs, [200])[200]
    assert s2 == 0.0 and s1 == pytest.approx(sum(i / 100 for i in range(1, 101)) + 100)


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_the_areas_match_a_step_by_step_loop(monkeypatch, chunk):
    monkeypatch.setattr(schedule, "CHUNK", chunk)  # sums carried across chunks give the same
    steps, lrs = cosine(3000)
    wsd = (np.array([0, 100, 2000, 2500, 3000]), np.array([0.0, 1.0, 1.0, 0.5, 0.0]))
    for s, lr in [(steps, lrs), wsd, (np.array([5, 40, 41]), np.array([0.3, 0.9, 0.1]))]:
        want = [10, 1234, 2999]
        got = schedule.step_areas(s, lr, want)
        for step in want:
            assert got[step] == pytest.approx(loop_areas(s, lr, step), rel=1e-9, abs=1e-9), step


# -- reading it ----------------------------------------------------------------------------------------

META = {"family": "tiny", "size": "h32", "step": 500, "tokens_seen": 500 * 4096}


def trainer_state(global_step: int = 500, every: int = 10, total: int = 1000) -> dict:
    """trainer_state.json as transformers' Trainer writes it into a checkpoint: a training log
    every `every` steps with the learning rate, evaluation logs without one."""
    steps, lrs = cosine(total, every=every)
    history = []
    for s, lr in zip(steps[1:], lrs[1:], strict=True):
        if s > global_step:
            break
        history.append(
            {"epoch": s / total, "grad_norm": 1.3, "learning_rate": float(lr), "loss": 3.1, "step": int(s)}
        )
        if s % 250 == 0:
            history.append({"epoch": s / total, "eval_loss": 3.2, "eval_runtime": 1.0, "step": int(s)})
    return {
        "best_metric": None,
        "epoch": global_step / total,
        "eval_steps": 250,
        "global_step": global_step,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": every,
        "max_steps": total,
        "num_train_epochs": 1,
        "save_steps": 500,
        "train_batch_size": 8,
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("sched") / "c", seed=3, sidecar=META)


def with_files(base, where, sidecar: dict | None = None, state=None):
    folder = shutil.copytree(base, where)
    (folder / "kbitlaw.json").write_text(json.dumps(META if sidecar is None else sidecar))
    if state is not None:
        (folder / "trainer_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return folder


def test_trainer_state_json_gives_the_areas(base, tmp_path):
    ckpt = resolve(str(with_files(base, tmp_path / "c", state=trainer_state())))
    steps, lrs = cosine(1000)
    logged = (steps > 0) & (steps <= 500)  # the first log is at step 10: its rate holds before it
    s1, s2 = loop_areas(steps[logged], lrs[logged], 500)
    assert ckpt.schedule_source == "trainer_state.json" and ckpt.schedule_problem is None
    assert ckpt.lr_area == pytest.approx(s1 * 4096, rel=1e-9) and ckpt.lr_anneal == pytest.approx(s2 * 4096)
    assert 0 < ckpt.lr_anneal < ckpt.lr_area < ckpt.tokens_seen
    # a trainer's log knows only the past: no planned end
    assert ckpt.lr_area_planned is None and ckpt.lr_anneal_planned is None
    # not identity: the same weights and sidecar fingerprint alike with or without the log
    assert ckpt.fingerprint == resolve(str(base)).fingerprint
    assert ckpt.finished is None


def test_the_step_comes_from_the_folder_or_the_trainer(base, tmp_path):
    # a Trainer's checkpoint-500 folder without a step in kbitlaw.json
    meta = {"family": "tiny", "tokens_seen": 500 * 4096}
    folder = with_files(base, tmp_path / "run" / "checkpoint-500", sidecar=meta, state=trainer_state())
    (found,), errors = discover(str(tmp_path / "run"))
    assert errors == [] and found.step == 500 and found.lr_area is not None
    named = with_files(base, tmp_path / "other" / "last", sidecar=meta, state=trainer_state())
    assert resolve(str(named)).lr_area == pytest.approx(resolve(str(folder)).lr_area)  # global_step


def test_a_sidecar_schedule_with_its_planned_rest(base, tmp_path):
    steps, lrs = cosine(1000, every=100)
    sidecar = {
        **META,
        "finished": False,
        "lr_schedule": [[int(s), float(lr)] for s, lr in zip(steps, lrs, strict=True)],
    }
    ckpt = resolve(str(with_files(base, tmp_path / "c", sidecar=sidecar, state=trainer_state())))
    assert ckpt.schedule_source == "kbitlaw.json" and ckpt.finished is False  # the sidecar first
    p1, p2 = loop_areas(steps, lrs, 1000)
    assert ckpt.lr_area_planned == pytest.approx(p1 * 4096) and ckpt.lr_anneal_planned == pytest.approx(
        p2 * 4096
    )
    assert ckpt.lr_anneal_planned > 3 * ckpt.lr_anneal  # most of a cosine's annealing is to come


BAD = [
    (
        "kbitlaw.json",
        {"lr_schedule": [[0, 1e-3], [10, "fast"]]},
        "field 'lr_schedule[1]' learning rate must be a number >= 0, got 'fast'",
    ),
    (
        "kbitlaw.json",
        {"lr_schedule": [[0, 1e-3], [10, -1e-4]]},
        "field 'lr_schedule[1]' learning rate must be a number >= 0, got -0.0001",
    ),
    (
        "kbitlaw.json",
        {"lr_schedule": [[0, 1e-3], [10, 1e-3], [10, 1e-4]]},
        "field 'lr_schedule[2]': steps not increasing (10 then 10)",
    ),
    (
        "kbitlaw.json",
        {"lr_schedule": [[0.5, 1e-3]]},
        "field 'lr_schedule[0]' step must be a whole number >= 0, got 0.5",
    ),
    ("kbitlaw.json", {"lr_schedule": {"0": 1e-3}}, "field 'lr_schedule' must be a list of [step, lr] pairs"),
    ("kbitlaw.json", {"lr_schedule": [[0, 0.0]]}, "every learning rate is 0"),
    ("trainer_state.json", "{not json", "not valid JSON"),
    ("trainer_state.json", {"global_step": 500, "log_history": {}}, "field 'log_history' must be a list"),
    (
        "trainer_state.json",
        {"global_step": -3, "log_history": []},
        "field 'global_step' must be a whole number >= 0, got -3",
    ),
    (
        "trainer_state.json",
        {"log_history": [{"step": 10, "learning_rate": None}]},
        "field 'log_history[0]' learning rate",
    ),
    (
        "trainer_state.json",
        {"log_history": [{"step": 20, "learning_rate": 1e-4}, {"step": 10, "learning_rate": 1e-4}]},
        "field 'log_history[1]': steps not increasing (20 then 10)",
    ),
    (
        "trainer_state.json",
        {"log_history": [{"step": 10, "loss": 3.0}]},
        "field 'log_history' has no learning_rate",
    ),
]


@pytest.mark.parametrize(("file", "content", "message"), BAD, ids=[m[:30] for _, _, m in BAD])
def test_a_bad_schedule_is_one_line_and_the_checkpoint_is_still_found(
    base, tmp_path, caplog, file, content, message
):
    tree = tmp_path / "tree"
    with_files(base, tree / "good", state=trainer_state())
    sidecar, state = ({**META, **content}, None) if file == "kbitlaw.json" else (META, content)
    bad = with_files(base, tree / "bad", sidecar=sidecar, state=state)
    found, errors = discover(str(tree))
    assert errors == [] and len(found) == 2  # nothing fails: the bad one is evaluated without a schedule
    (ckpt,) = [c for c in found if c.uri == str(bad)]
    assert ckpt.lr_area is None and ckpt.lr_anneal is None and ckpt.schedule_source is None
    problem = ckpt.schedule_problem
    assert problem.startswith(f"{bad}/{file}: ") and message in problem and "\n" not in problem
    assert problem.endswith("the checkpoint is evaluated without a learning-rate schedule")
    assert problem in caplog.text  # discovery warns (its errors are the checkpoints it cannot use)


def test_a_schedule_without_tokens_seen_says_what_it_needs(base, tmp_path):
    meta = {k: v for k, v in META.items() if k != "tokens_seen"}
    ckpt = resolve(str(with_files(base, tmp_path / "c", sidecar=meta, state=trainer_state())))
    assert ckpt.lr_area is None and "field 'tokens_seen' is needed" in ckpt.schedule_problem


@pytest.mark.parametrize("value", ["yes", 1, 0.0, [True]])
def test_a_finished_flag_that_is_not_a_bool_fails_the_sidecar_like_its_other_fields(value):
    with pytest.raises(CheckpointError, match=r"field 'finished' must be true or false"):
        check_sidecar({**META, "finished": value}, "ckpt/kbitlaw.json")
    check_sidecar({**META, "finished": True}, "ckpt/kbitlaw.json")
    assert fingerprint_of([("a", 1, "x")], {**META, "finished": True}) == fingerprint_of(
        [("a", 1, "x")], META
    )


def test_results_without_the_schedule_columns_keep_their_sha():
    rows = pl.DataFrame(
        {
            "checkpoint_id": ["a"], "family": ["f"], "n_params": [10], "tokens_seen": [100],
            "quant": ["fp16"], "bits": [16], "total_bits": [160.0], "dataset": ["d"], "kind": ["perplexity"],
            "metric": ["loss"], "value": [2.0],
        }
    )  # fmt: skip
    old = results_sha(normalise(rows))
    nulls = rows.with_columns(finished=pl.lit(None, dtype=pl.Boolean), lr_area=pl.lit(None, dtype=pl.Float64))
    assert results_sha(normalise(nulls)) == old
    given = rows.with_columns(finished=pl.lit(True), lr_area=pl.lit(50.0))
    assert results_sha(normalise(given)) != old
    as_text = given.with_columns(pl.col("finished").cast(pl.String), pl.col("lr_area").cast(pl.String))
    assert results_sha(normalise(as_text)) == results_sha(normalise(given))


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
    least 85% of 40 repetitions. Measured (seeds 100-139): 93%, 90.5%, 92.5% of every size's end
    and 92.5%, 92.5%, 95% of the largest size's, 11-14 s per truth on one shared core."""
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


# -- end to end: Trainer checkpoints through discovery, evaluation and the fit --------------------------


@pytest.mark.slow
def test_trainer_checkpoints_give_a_schedule_form_joint_law(tmp_path):
    """Four tiny model sizes, each a Trainer run with checkpoint-<step> folders holding the
    Trainer's trainer_state.json (no lr in kbitlaw.json): discovered and evaluated by the real
    functions, whose result rows carry the areas; the losses of random-init tiny models follow no
    law, so their values are replaced by a known truth in the areas the rows carry, and the fit
    gives a joint law of the schedule form on every checkpoint."""
    from kbitlaw.eval.results import results_frame
    from kbitlaw.eval.run import evaluate_specs, load_checkpoint
    from kbitlaw.law.document import fit_laws

    total, per_step = 2400, 4096
    tree = tmp_path / "runs"
    for hidden in (16, 32, 64, 128):
        base = make_checkpoint(tmp_path / f"base{hidden}", seed=hidden, hidden=hidden)
        for step in (150, 300, 600, 1200, 1800, 2400):
            folder = shutil.copytree(base, tree / f"h{hidden}" / f"checkpoint-{step}")
            meta = {"family": "trainer", "size": f"h{hidden}", "tokens_seen": step * per_step}
            (folder / "kbitlaw.json").write_text(json.dumps(meta))
            (folder / "trainer_state.json").write_text(json.dumps(trainer_state(step, total=total)))
    found, errors = discover(str(tree))
    assert errors == [] and len(found) == 24
    assert all(c.schedule_source == "trainer_state.json" and c.lr_anneal is not None for c in found)
    texts = pl.DataFrame({"id": ["0", "1"], "text": ["the cat sat on the mat", "a dog was big and red"]})
    rows = [
        r
        for c in found
        for r in evaluate_specs(load_checkpoint(c), texts, "perplexity", "fp16", dataset="toy")
    ]
    df = results_frame(rows)
    assert df["lr_area"].is_not_null().all() and df["finished"].is_null().all()
    loss = df.filter(pl.col("metric") == "loss")
    truth = 1.9 + 40.0 / loss["n_params"] ** 0.5 + 60.0 / loss["lr_area"] ** 0.3 - 5e-8 * loss["lr_anneal"]
    noise = np.exp(0.001 * np.random.default_rng(0).standard_normal(loss.height))
    doc = fit_laws(loss.with_columns(value=truth * noise), FitConfig(n_boot=100)).doc
    (e,) = doc["joint_law"]
    assert e["family"] == "trainer" and e["form"] == "schedule" and e["checkpoints"]["used"] == 24
    assert e["fit"]["n_points"] == 24 and e["status"] == "ok", e.get("reason")
    assert e["ci"]["C"][0] <= 5e-8 <= e["ci"]["C"][1] and e["model"]["surface"]["form"] == "schedule"


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
