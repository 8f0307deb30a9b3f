"""`kbitlaw demo`'s console: one progress display and the answer; what libraries print goes to a log
file named once. And `--seed S`: its own family (`demo-sS`) in the same store."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from kbitlaw.demo.family import TrainConfig, family_sizes
from kbitlaw.demo.train import Progress
from kbitlaw.flows import demo as demo_module
from kbitlaw.flows.cli.common import output_to_log
from kbitlaw.flows.demo import Display, demo_family, demo_log_path, progress_display, run_demo
from kbitlaw.store import CHECKPOINTS, STAGING, Store, checkpoint_prefix
from tests.conftest import kbitlaw

NOISE = ("Failed to load", "Finished in state", "ephemeral", "triton", "Warning")


def test_a_seed_names_its_own_family_and_the_log_goes_under_the_store(tmp_path, monkeypatch):
    assert demo_family(0) == "demo" and demo_family(3) == "demo-s3"
    with pytest.raises(ValueError, match="--seed"):
        demo_family(-1)
    now = datetime(2026, 12, 5, 23, 47, 51)
    assert demo_log_path(str(tmp_path / "s"), now) == tmp_path / "s" / "logs" / "demo-20261205-234751.log"
    assert demo_log_path(f"file://{tmp_path}/s", now).parent == tmp_path / "s" / "logs"
    monkeypatch.chdir(tmp_path)
    assert demo_log_path("s3://bucket/prefix", now).parent == tmp_path / ".kbitlaw" / "logs"
    monkeypatch.setenv("KBITLAW_STORE", str(tmp_path / "env-store"))
    assert demo_log_path(None, now).parent == tmp_path / "env-store" / "logs"


def test_run_demo_trains_a_seed_into_its_own_family(tmp_path, monkeypatch):
    """--seed's plumbing: TrainConfig(seed=S) trains family demo-sS; staging, publishing, both
    nights and the story all use that family (the nightly itself is faked: test_train.py runs it)."""
    nights, stories = [], []

    def fake_nightly(store, grid, workers, display=None, label="nightly"):
        published = sorted(
            k for k in store.list(checkpoint_prefix(CHECKPOINTS, "demo-s3")) if k.endswith("/config.json")
        )
        nights.append((label, len(published)))
        return {"checkpoints": len(published), "evaluations": {}, "problems": []}

    monkeypatch.setattr(demo_module, "run_nightly", fake_nightly)
    monkeypatch.setattr(demo_module, "story", lambda store, family: stories.append(family) or None)
    store = Store(tmp_path / "store")
    summary = run_demo(store.uri, sizes="h32-l1", budget=4096, seed=3, workers=1, show_progress=False)

    trained = summary["build"]["trained"]  # one checkpoint per round
    assert summary["build"]["family"] == "demo-s3" and trained >= 2
    assert nights == [("night 1", trained - 1), ("night 2", trained)] and stories == ["demo-s3"]
    assert store.list(checkpoint_prefix(CHECKPOINTS, "demo")) == []  # seed 0's family: untouched
    assert store.list(checkpoint_prefix(STAGING, "demo-s3")) == []  # every round published
    [size] = family_sizes("h32-l1")
    sidecars = [
        k for k in store.list(checkpoint_prefix(CHECKPOINTS, "demo-s3")) if k.endswith("kbitlaw.json")
    ]
    recipes = {store.read_json(k)["recipe"] for k in sidecars}
    assert recipes == {TrainConfig(seed=3, budget_tokens=4096).recipe(size)}
    assert recipes != {TrainConfig(seed=0, budget_tokens=4096).recipe(size)}


def test_library_output_goes_to_the_log_and_the_display_to_the_terminal(tmp_path, capfd):
    log = tmp_path / "logs" / "demo.log"
    with output_to_log(log) as terminal:
        print("a library's print")
        os.write(2, b"a C library's write\n")
        logging.getLogger("torchao").warning("Failed to load _C.so")
        logging.getLogger("prefect.task_runs").warning("Finished in state Completed()")
        # pytest records warnings itself; what captureWarnings routes, the py.warnings logger, is logged
        logging.getLogger("py.warnings").warning("a library's Warning")
        subprocess.run(
            [sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"]
        )
        terminal.write("the display\n")
    print("the answer")
    out, err = capfd.readouterr()
    assert out == "the answer\n" and err == "the display\n"
    text = log.read_text()
    for line in ("a library's print", "a C library's write", "child out", "child err", "a library's Warning"):
        assert line in text
    assert "WARNING torchao: Failed to load _C.so" in text
    assert "WARNING prefect.task_runs: Finished in state Completed()" in text


def test_the_display_counts_training_then_each_night():
    stream = io.StringIO()
    with progress_display(True, stream) as display:
        assert isinstance(display, Display)
        display.training(Progress("tokenizer"))
        for step in (10, 40):
            display.training(Progress("train", "h32-l1", step, 40, 2.5))
        display.training(Progress("cached", "h32-l2", 40, 40))
        with display.night("night 1") as evaluated:
            for done in range(7):
                evaluated(done, 6)
        with display.night("night 2") as evaluated:
            evaluated(0, 0)  # nothing new to evaluate
    shown = stream.getvalue()
    for text in ("h32-l1", "40/40", "loss 2.500", "cached", "night 1", "6/6", "night 2", "done"):
        assert text in shown, text


@pytest.mark.slow
def test_kbitlaw_demo_prints_only_the_answer_and_names_its_log(tmp_path, prefect_api):
    """`kbitlaw demo` as a user runs it, output piped: the log file's name and the answer, nothing
    else; the libraries' lines are in the log file. --seed 7 trains family demo-s7."""
    store = tmp_path / "store"
    args = ["--store", str(store), "--sizes", "h32-l1,h32-l2", "--budget", "40960", "--grid", "fp16,int3"]
    out = kbitlaw("demo", *args, "--seed", "7", env={**os.environ, "PREFECT_API_URL": prefect_api})
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-3000:]
    for noise in NOISE:
        assert noise not in console, (noise, console)
    [named] = [line for line in out.stderr.splitlines() if line.startswith("log: ")]
    log = Path(named.removeprefix("log: "))
    assert log.parent == store / "logs" and console.count(str(log)) == 1
    text = log.read_text()
    assert "Finished in state Completed()" in text and "ephemeral docs site" in text
    trained = 2 * len(TrainConfig(budget_tokens=40960).save_steps())
    assert out.stdout.startswith(f"family demo-s7: {trained} checkpoints trained")
    assert "claims hold" in out.stdout
    assert len(out.stderr.splitlines()) == 1  # the log's name: nothing else on stderr
    assert Store(store).list(checkpoint_prefix(CHECKPOINTS, "demo")) == []
    assert Store(store).list(checkpoint_prefix(CHECKPOINTS, "demo-s7"))
