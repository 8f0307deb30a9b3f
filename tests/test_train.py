"""The embedded demo family (kbitlaw.demo.train) on a reduced family: two tiny sizes, a few hundred steps."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import polars as pl
import pytest
import torch
from safetensors.torch import load as load_tensors

from kbitlaw.checkpoint_loading import load_model
from kbitlaw.checkpoints import discover
from kbitlaw.data import world
from kbitlaw.demo import train
from kbitlaw.demo.family_store import load_tokenizer
from kbitlaw.eval.run import evaluate_specs
from kbitlaw.store import Store

TINY = (train.Size("t16", 16, 1, lr=0.03, heads=2), train.Size("t32", 32, 2, lr=0.02))
CONFIG = train.TrainConfig(budget_tokens=160_000, seq_len=64, batch_size=8, corpus_docs=3000)
STEPS = CONFIG.save_steps()  # [39, 78, 156, 312]


class RecordingStore(Store):
    """A local store that remembers the order in which keys were uploaded."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.uploads: list[str] = []

    def put_file(self, local_path, key: str) -> None:
        self.uploads.append(key)
        super().put_file(local_path, key)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store = RecordingStore(str(tmp_path_factory.mktemp("train") / "store"))
    events: list[train.Progress] = []
    report = train.build_family(store, "tiny", sizes=TINY, config=CONFIG, workers=1, progress=events.append)
    return store, report, events


def test_tokenizer_round_trip_and_whole_words(tmp_path):
    texts = list(world.training_corpus(500, seed=3))
    tokenizer = train.train_tokenizer(texts, vocab_size=640)
    assert tokenizer.bos_token == tokenizer.eos_token == train.EOS and tokenizer.eos_token_id is not None
    sample = texts[0] + " Unseen bytes: café, ☃, tabs\tand UPPER case."
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == sample  # byte-level: any text survives
    # The world's words are single tokens, so every suite's answer is one prediction.
    for word in ("alice", "tallest", "blicket", "apple"):
        assert len(tokenizer.tokenize(" " + word)) == 1, word
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(sample, add_special_tokens=False)["input_ids"] == ids and again.eos_token == train.EOS


def test_family_is_a_scaling_ladder():
    params = [s.non_embedding_params for s in train.FAMILY]
    assert len(train.FAMILY) >= 6 and params == sorted(params) and params[-1] >= 30 * params[0]
    model = train.make_model(train.FAMILY[1], train.train_tokenizer(["a b c"] * 10, 300), CONFIG)
    outside = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    counted = sum(p.numel() for p in model.parameters()) - outside
    assert counted == train.FAMILY[1].non_embedding_params


def test_no_checkpoint_is_saved_inside_the_warmup():
    """A fraction that lands inside the warmup has no room for a cooldown: not saved (the run's end
    always is). 8 steps, warmup 1: 1/8 of the run is step 1."""
    tiny = train.TrainConfig(budget_tokens=8 * 4 * 128, warmup_frac=0.1)
    assert (tiny.steps, tiny.warmup_steps) == (8, 1) and tiny.save_steps() == [2, 4, 8]
    assert all(tiny.cooldown_start(end) < end for end in tiny.save_steps())
    assert train.TrainConfig(budget_tokens=4 * 128, warmup_frac=0.5).save_steps() == [1]  # one step


def test_every_checkpoint_ends_its_own_cooldown():
    """Warmup-stable-decay: one stable run, and each checkpoint's last fifth decays to zero."""
    peak, end = 0.02, STEPS[1]
    lrs = [CONFIG.lr_at(s, peak, end) for s in range(end)]
    start = CONFIG.cooldown_start(end)
    assert start == end - round(0.2 * end) and CONFIG.warmup_steps < start
    assert lrs[0] < lrs[CONFIG.warmup_steps - 1] == peak  # warmup
    assert all(lr == peak for lr in lrs[CONFIG.warmup_steps : start])  # stable
    cooldown = lrs[start:]
    assert all(b < a for a, b in zip(cooldown, cooldown[1:], strict=False)) and cooldown[-1] < 0.2 * peak
    # the same run up to the branch: a longer run's lr agrees until its own cooldown
    assert [CONFIG.lr_at(s, peak, CONFIG.steps) for s in range(start)] == lrs[:start]


def test_checkpoints_land_in_the_store_and_are_discovered(built):
    store, report, _ = built
    found, errors = discover(store.url("checkpoints/tiny"))
    assert errors == []
    assert sorted((c.sidecar["size"], c.step) for c in found) == sorted(
        (s.name, step) for s in TINY for step in STEPS
    )
    tokens = [c.tokens_seen for c in found if c.sidecar["size"] == "t32"]
    assert sorted(tokens) == [step * 8 * 64 for step in STEPS]  # 1/8, 1/4, 1/2 and all of the budget
    for ckpt in found:
        assert ckpt.family == "tiny" and ckpt.id == f"tiny/{ckpt.sidecar['size']}/step-{ckpt.step}"
        assert {"family", "size", "step", "tokens_seen", "n_params"} <= set(ckpt.sidecar)
        assert ckpt.sidecar["n_params"] == ckpt.n_params  # what the safetensors header says
        assert ckpt.tokens_planned == CONFIG.steps * 8 * 64  # every checkpoint knows the run's end
    assert sorted(report.trained) == sorted(c.id for c in found) and report.cached == []
    assert report.steps_trained == len(TINY) * CONFIG.optimizer_steps


def test_upload_order_puts_config_json_last(built):
    store, _, _ = built
    by_prefix: dict[str, list[str]] = {}
    for key in store.uploads:
        if key.startswith("checkpoints/"):
            prefix, _, name = key.rpartition("/")
            by_prefix.setdefault(prefix, []).append(name)
    assert len(by_prefix) == len(TINY) * len(STEPS)
    for names in by_prefix.values():
        assert names[-1] == "config.json" and names[-2] == "model.safetensors"
        assert {"tokenizer.json", "kbitlaw.json"} <= set(names[:-2])


def test_a_second_build_trains_nothing(built):
    store, first, _ = built
    events: list[train.Progress] = []
    again = train.build_family(store, "tiny", sizes=TINY, config=CONFIG, progress=events.append)
    assert again.steps_trained == 0 and again.trained == []
    assert sorted(again.cached) == sorted(first.trained)
    assert {e.phase for e in events} == {"cached"}  # not even the tokenizer or corpus is rebuilt


def test_another_recipe_under_the_same_name_is_refused(built):
    store, _, _ = built
    with pytest.raises(ValueError, match="another training recipe"):
        train.build_family(store, "tiny", sizes=TINY, config=replace(CONFIG, budget_tokens=80_000))


def test_an_interrupted_size_resumes_from_its_last_checkpoint(built, tmp_path):
    store, _, _ = built
    copy = Store(str(tmp_path / "store"))
    shutil.copytree(store.root, copy.root)
    final = f"checkpoints/tiny/t32/step-{STEPS[-1]}"
    before = load_model(copy.url(final)).state_dict()
    for key in copy.list(final):
        copy.delete(key)
    report = train.build_family(copy, "tiny", sizes=TINY, config=CONFIG)
    assert report.trained == [f"tiny/t32/step-{STEPS[-1]}"]
    # from the run's state where the last cooldown began, not from 0
    assert report.steps_trained == STEPS[-1] - CONFIG.cooldown_start(STEPS[-1])
    after = load_model(copy.url(final)).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # exactly the same weights


@pytest.mark.slow
def test_parallel_workers_train_the_same_weights(built, tmp_path):
    store, _, _ = built
    other = Store(str(tmp_path / "store"))
    events: list[train.Progress] = []
    report = train.build_family(other, "tiny", sizes=TINY, config=CONFIG, workers=2, progress=events.append)
    assert report.steps_trained == len(TINY) * CONFIG.optimizer_steps and set(report.seconds) == {
        s.name for s in TINY
    }
    assert {e.size for e in events if e.phase == "train"} == {s.name for s in TINY}  # sent across processes
    for size in TINY:
        key = f"checkpoints/tiny/{size.name}/step-{STEPS[-1]}/model.safetensors"
        ours, theirs = load_tensors(store.read_bytes(key)), load_tensors(other.read_bytes(key))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_arrive_mode_publishes_one_round_per_call(built, tmp_path):
    store, _, _ = built
    arrive = Store(str(tmp_path / "store"))
    # Staged checkpoints of an earlier run count as trained: seed the staging area from the build.
    for key in store.list("checkpoints/tiny") + store.list("train/tiny"):
        target = key.replace("checkpoints/", "staging/", 1)
        arrive.write_bytes(target, store.read_bytes(key))

    def published() -> list[tuple[str, int]]:
        found, errors = discover(arrive.url("checkpoints/tiny"))
        assert errors == []
        return sorted((c.sidecar["size"], c.step) for c in found)

    first = train.build_family(arrive, "tiny", sizes=TINY, config=CONFIG, arrive=True)
    assert first.steps_trained == 0 and sorted(first.published) == [
        f"tiny/{s.name}/step-{STEPS[0]}" for s in TINY
    ]
    assert published() == [(s.name, STEPS[0]) for s in TINY]
    assert sorted(train.publish_next(arrive, "tiny")) == [f"tiny/{s.name}/step-{STEPS[1]}" for s in TINY]
    assert published() == sorted((s.name, step) for s in TINY for step in STEPS[:2])
    assert len(train.build_family(arrive, "tiny", sizes=TINY, config=CONFIG, arrive=True).published) == 2
    for _ in STEPS[3:]:  # one round per call
        assert len(train.publish_next(arrive, "tiny")) == 2
    assert train.publish_next(arrive, "tiny") == []  # everything has arrived
    assert published() == sorted((s.name, step) for s in TINY for step in STEPS)
    assert arrive.list("staging") == []


def test_arrive_mode_trains_into_staging(tmp_path):
    store = Store(str(tmp_path / "store"))
    one = (train.Size("t8", 8, 1, lr=0.03, heads=2),)
    config = replace(CONFIG, budget_tokens=8 * 64 * 16)
    report = train.build_family(store, "mini", sizes=one, config=config, arrive=True)
    assert report.steps_trained == config.optimizer_steps == 20 and report.published == ["mini/t8/step-2"]
    staged = {k.rsplit("/", 1)[0] for k in store.list("staging/mini")}
    assert staged == {f"staging/mini/t8/step-{s}" for s in (4, 8, 16)}
    assert (
        json.loads(store.read_bytes("checkpoints/mini/t8/step-2/kbitlaw.json"))["tokens_seen"] == 2 * 8 * 64
    )


def test_training_makes_the_reduced_family_better(built, tmp_path):
    """The story in miniature, with assertions that can fail: held-out loss falls at every saved
    step, ends far below the same model at initialisation, and the bigger size ends lower."""
    store, _, events = built
    text = pl.DataFrame(world.suite("text", 40, seed=0, difficulty=2))

    def text_loss(uri: str) -> float:
        rows = evaluate_specs(uri, text, "perplexity", "fp16", dataset="text")
        return next(r["value"] for r in rows if r["metric"] == "loss")

    found, _ = discover(store.url("checkpoints/tiny"))
    loss = {(c.sidecar["size"], c.step): text_loss(c.uri) for c in found}
    tokenizer = load_tokenizer(store, f"train/tiny/tokenizer-v{CONFIG.vocab_size}")
    for size in TINY:
        init = tmp_path / size.name  # the very weights training started from (seeded)
        train.make_model(size, tokenizer, CONFIG).save_pretrained(init)
        tokenizer.save_pretrained(init)
        at_init = text_loss(str(init))
        curve = [loss[(size.name, step)] for step in STEPS]
        assert at_init > math.log(len(tokenizer)) - 0.5  # a random model is about uniform
        assert curve[0] < at_init - 2.0, (size.name, at_init, curve)
        assert all(b < a for a, b in zip(curve, curve[1:], strict=False)), (size.name, curve)
    # the bigger size ends lower (the prose's floor is ~1.0 nats: the gap is a few hundredths)
    assert loss[("t32", STEPS[-1])] < loss[("t16", STEPS[-1])] - 0.03
    # the stable run's losses (a cooldown branch's steps report none)
    train_loss = [e.loss for e in events if e.phase == "train" and e.size == "t32" and e.loss is not None]
    assert sum(train_loss[-10:]) / 10 < sum(train_loss[:10]) / 10 - 1.0


@pytest.mark.slow
def test_kbitlaw_demo_on_a_reduced_family(tmp_path, prefect_api):
    """`kbitlaw demo` as a user runs it (a subprocess, so training workers are really spawned): the
    family is built and arrives one round at a time; nightly evaluates only what is new."""
    store = str(tmp_path / "store")
    args = ["--store", store, "--sizes", "h32-l1,h32-l2", "--budget", "40960", "--grid", "fp16,int3"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}

    def demo(*extra: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "kbitlaw", "demo", *args, *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    steps = train.TrainConfig(budget_tokens=40960).save_steps()  # each of the 2 sizes saves these
    first_step, n = steps[0], 2 * len(steps)
    first = json.loads(demo("--arrive", "--json"))  # trains everything, publishes the first round
    assert first["build"]["trained"] == n and len(first["build"]["published"]) == 2
    assert first["nightly"]["checkpoints"] == 2 and first["nightly"]["evaluations"]["computed"] == 4
    assert first["nightly"]["fit"] and Store(store).exists("fits/latest.json")
    assert first["story"]["fp16"][0]["step"] == first_step  # the story is read back from the stored results
    # publishes all but the last round, a night, then the last round and a night: each night
    # evaluates only the new checkpoints, and the second refit checks the first one's predictions
    second = demo()
    assert f"0 checkpoints trained, {n} cached, {n - 2} published" in second
    night = f"first night (all but the last round): {n - 2} checkpoints; evaluations: {2 * n - 8} computed"
    assert f"{night}, 4 cached" in second  # 2 specs x the new checkpoints; the first round cached
    assert f"{n} checkpoints (2 new)" in second and f"4 computed, {2 * n - 4} cached, 0 failed" in second
    assert "report: " in second or "fit: " in second
    assert "claims hold" in second
