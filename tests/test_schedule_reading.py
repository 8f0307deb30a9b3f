"""Reading a checkpoint's learning-rate schedule (kbitlaw.json's lr_schedule, the Trainer's
trainer_state.json) and its two areas S1 and S2 (tasks/schedule.py), checked by hand and by a
step-by-step loop; bad schedules are one line and never lose the checkpoint; and Trainer
checkpoints through discovery, evaluation and the fit to a schedule-form joint law."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest

from kbitlaw import schedule
from kbitlaw.checkpoint_files import CheckpointError, check_sidecar
from kbitlaw.checkpoints import discover, fingerprint_of, resolve
from kbitlaw.law.table import normalise, results_sha
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
    from kbitlaw.law.common import FitConfig
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
