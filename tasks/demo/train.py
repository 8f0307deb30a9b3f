"""The embedded demo family: GPT-NeoX models of several sizes trained here, on the builtin world.

`make demo` needs real checkpoints without network or GPU, so kbitlaw trains its own: a byte-level
BPE tokenizer and six GPT-NeoX sizes on `world.training_corpus`, each saved at 1/8, 1/4, 1/2 and
all of its token budget, exactly as a real training run's checkpoints would arrive in a bucket.
Each saved checkpoint is a finished model of its tokens: the stable run is copied where that
checkpoint's cooldown begins and the copy decays its rate to zero (TrainConfig: warmup-stable-decay);
the last checkpoint is the run's own end.

Every size sees the SAME tokens in the same order (a fixed budget, batches drawn by step number):
with equal wall time instead, big models see fewer tokens and lose to small ones, and the family
would show no scaling at all (reference/machine-probes.md).
Sizes train in parallel worker processes with one thread each (largest first): on a small CPU
machine one thread per core is much faster than several threads fighting over each step.

The sizes and the training config (their hash is the recipe): family.py. Store layout, upload order
and arrive mode: family_store.py.

    report = build_family(Store(".kbitlaw/store"))          # trains what is missing
    report = build_family(store, arrive=True)               # train into staging/, publish one round
    publish_next(store, "demo")                             # ... and the next round, later
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import queue
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from kbitlaw.data import world
from kbitlaw.demo.family import FAMILY, Size, TrainConfig
from kbitlaw.demo.family_store import (
    find_checkpoint,
    load_run_state,
    load_tokenizer,
    load_tokens,
    publish_next,
    run_state_bytes,
    save_tokenizer,
    save_tokens,
    upload_dir,
)
from kbitlaw.store import (
    CHECKPOINTS,
    STAGING,
    Store,
    checkpoint_prefix,
    run_state_key,
    tokenizer_prefix,
)

__all__ = ["FAMILY", "BuildReport", "Progress", "Size", "TrainConfig", "build_family", "publish_next"]

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Progress:
    """What the build is doing, for progress bars: phase is tokenizer | corpus | train | cached |
    save | publish; `step`/`total` count training steps of `size`."""

    phase: str
    size: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None


@dataclass
class BuildReport:
    family: str
    trained: list[str] = field(default_factory=list)  # checkpoint ids written by this build
    cached: list[str] = field(default_factory=list)  # already in the store (or staged): not retrained
    published: list[str] = field(default_factory=list)  # moved from staging/ to checkpoints/
    steps_trained: int = 0  # optimizer steps run by this build (0 when everything was cached)
    seconds: dict[str, float] = field(default_factory=dict)  # training wall time per size
    wall_seconds: float = 0.0  # the whole build


ProgressFn = Callable[[Progress], None] | None


# -- tokenizer and data --------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE (GPT-2 style) trained on `texts`, as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def corpus_tokens(tokenizer, docs: list[str]) -> torch.Tensor:
    """The training corpus as one token stream, documents separated by EOS (as GPT-2 / Pythia)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.append(eos)
        ids.extend(doc)
    return torch.tensor(ids, dtype=torch.long)


def prepare_data(store: Store, family: str, config: TrainConfig, progress: ProgressFn = None):
    """The family's tokenizer and token stream, made once and kept in the store (so a resumed or
    extended build, and every worker process, encodes exactly as the first build did)."""
    tok_prefix, data_key = tokenizer_prefix(family, config.vocab_size), config.data_key(family)
    tokenizer, data = load_tokenizer(store, tok_prefix), load_tokens(store, data_key)
    if tokenizer is not None and data is not None:
        return tokenizer, data
    texts = list(world.training_corpus(config.corpus_docs, seed=config.seed))
    if tokenizer is None:
        if progress:
            progress(Progress("tokenizer"))
        save_tokenizer(store, train_tokenizer(texts[:3000], config.vocab_size), tok_prefix)
        tokenizer = load_tokenizer(store, tok_prefix)
    if progress:
        progress(Progress("corpus"))
    data = corpus_tokens(tokenizer, texts)
    save_tokens(store, data_key, data)
    return tokenizer, data


def get_batch(data: torch.Tensor, step: int, config: TrainConfig) -> torch.Tensor:
    """Batch `step`: random windows drawn from a generator seeded by the step number alone, so every
    size sees the same tokens and a resumed run continues exactly where it stopped."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    starts = torch.randint(0, len(data) - config.seq_len, (config.batch_size,), generator=gen)
    return torch.stack([data[s : s + config.seq_len] for s in starts.tolist()])


def make_model(size: Size, tokenizer, config: TrainConfig):
    """A randomly initialised GPT-NeoX (seeded: the same size always starts from the same weights)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(config.seed)
    model_config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=4 * size.hidden,
        max_position_embeddings=config.seq_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=config.init_scale / math.sqrt(size.hidden),
    )
    return GPTNeoXForCausalLM(model_config)


def make_optimizer(model, size: Size, config: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on biases and norms, as nanoGPT.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=size.lr, betas=(0.9, 0.95))


# -- training -------------------------------------------------------------------------------------


def train_size(
    store: Store,
    family: str,
    size: Size,
    config: TrainConfig,
    existing: dict[int, str],
    area: str,
    progress: ProgressFn = None,
) -> dict:
    """Train one size: the stable run, a cooldown branched off it for every missing checkpoint (the
    last one is the run's own end), from scratch or from the run's latest saved state. Returns
    {"trained": [ids], "steps": n, "seconds": s}; steps counts every optimizer step, branches too."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    began = time.perf_counter()
    tokenizer, data = prepare_data(store, family, config)
    config = config.for_size(size)
    ends = {config.cooldown_start(end): end for end in config.save_steps()}  # branch step -> its end
    resumable = [b for b in ends if store.exists(run_state_key(family, size.name, b))]
    start = max(resumable, default=0)
    model = make_model(size, tokenizer, config)
    opt = make_optimizer(model, size, config)
    if start:
        load_run_state(model, opt, store.read_bytes(run_state_key(family, size.name, start)))
    branches = {
        b: end for b, end in ends.items() if b >= start and end != config.steps and end not in existing
    }
    work = Work(size.name, config.steps - start + sum(end - b for b, end in branches.items()), progress)
    trained: list[str] = []
    model.train()
    for step in range(start, config.steps):
        if step in ends and step > start:  # the run's state where a cooldown branches: resume here
            store.write_bytes(run_state_key(family, size.name, step), run_state_bytes(model, opt))
        if step in branches:
            # One deepcopy keeps the optimizer pointing at the copy's parameters.
            branch, branch_opt = copy.deepcopy((model, opt))
            for s in range(step, branches[step]):
                train_step(branch, branch_opt, data, s, config.lr_at(s, size.lr, branches[step]), config)
                work.advance(None)
            trained.append(
                save_checkpoint(store, family, size, config, branch, tokenizer, branches[step], area)
            )
            del branch, branch_opt
        loss = train_step(model, opt, data, step, config.lr_at(step, size.lr, config.steps), config)
        work.advance(loss)
    if config.steps not in existing:
        trained.append(save_checkpoint(store, family, size, config, model, tokenizer, config.steps, area))
    return {"trained": trained, "steps": work.done, "seconds": time.perf_counter() - began}


def train_step(model, opt, data: torch.Tensor, step: int, lr: float, config: TrainConfig) -> torch.Tensor:
    """One optimizer step on batch `step` at learning rate `lr`; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    batch = get_batch(data, step, config)
    loss = model(input_ids=batch, labels=batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


@dataclass
class Work:
    """Optimizer steps done of a size's total (the run and its branches), sent to `progress` about
    every 1%: the progress bar counts work, not the run's step number."""

    size: str
    total: int
    progress: ProgressFn
    done: int = 0

    def advance(self, loss: torch.Tensor | None) -> None:
        self.done += 1
        every = max(1, self.total // 100)
        if self.progress and (self.done % every == 0 or self.done == self.total):
            value = None if loss is None else loss.item()
            self.progress(Progress("train", self.size, self.done, self.total, value))


def save_checkpoint(
    store: Store, family: str, size: Size, config: TrainConfig, model, tokenizer, step: int, area: str
) -> str:
    """Upload a finished model of `step` steps as a Hugging Face checkpoint with its kbitlaw.json."""
    tokens = step * config.batch_size * config.seq_len
    sidecar = {
        "family": family,
        "size": size.name,
        "step": step,
        "tokens_seen": tokens,
        # a finished model of its tokens (its own cooldown), from a run that goes on to the plan
        "finished": True,
        "tokens_planned": config.planned_tokens,
        "schedule": {
            "kind": "warmup-stable-decay",
            "peak_lr": size.lr,
            "warmup_steps": config.warmup_steps,
            "cooldown_from_step": config.cooldown_start(step),
            "cooldown_shape": "1-sqrt, to zero",
        },
        "n_params": sum(p.numel() for p in model.parameters()),
        "non_embedding_params": size.non_embedding_params,
        "recipe": config.recipe(size),
    }
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "kbitlaw.json").write_text(json.dumps(sidecar, indent=2))
        upload_dir(store, Path(tmp), checkpoint_prefix(area, family, size.name, step))
    return f"{family}/{size.name}/step-{step}"


def _train_job(store_uri: str, events, *args) -> dict:
    """train_size in a worker process: one thread, progress events sent back over a queue."""
    torch.set_num_threads(1)
    return train_size(Store(store_uri), *args, progress=events.put if events is not None else None)


def _run_parallel(store: Store, jobs: list[tuple], workers: int, progress: ProgressFn) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has torch threads running
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        events = manager.Queue() if progress else None
        futures = [pool.submit(_train_job, store.uri, events, *job) for job in jobs]
        pending = set(futures)
        while pending:
            _, pending = wait_futures(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while events is not None:
                try:
                    progress(events.get_nowait())
                except queue.Empty:
                    break
        return [f.result() for f in futures]


def build_family(
    store: Store,
    family: str = "demo",
    budget_tokens: int | None = None,
    *,
    sizes: tuple[Size, ...] = FAMILY,
    config: TrainConfig = TrainConfig(),
    arrive: bool = False,
    workers: int | None = None,
    progress: ProgressFn = None,
) -> BuildReport:
    """Train every missing checkpoint of the family into `store` (cached: existing ones are kept).

    arrive=False: checkpoints go straight to checkpoints/ (staged ones left by arrive mode too).
    arrive=True:  new checkpoints go to staging/ and one round is published per call (every size's
                  next step), so a nightly run after each call picks up only the new checkpoints.
    workers: processes training sizes side by side, one thread each (default: one per CPU core);
             workers=1 trains in this process.
    """
    began = time.perf_counter()
    config = replace(config, budget_tokens=budget_tokens) if budget_tokens else config
    report = BuildReport(family)
    area = STAGING if arrive else CHECKPOINTS
    todo: list[tuple] = []
    for size in sorted(sizes, key=lambda s: -s.non_embedding_params * s.budget_scale):  # longest first
        existing, own = {}, config.for_size(size)
        for step in own.save_steps():
            if prefix := find_checkpoint(store, family, size.name, step, own.recipe(size)):
                existing[step] = prefix
                report.cached.append(f"{family}/{size.name}/step-{step}")
        if own.steps not in existing:
            todo.append((family, size, config, existing, area))
        elif progress:
            progress(Progress("cached", size.name, own.steps, own.steps))
    if todo:
        prepare_data(store, family, config, progress)
        workers = min(len(todo), workers or len(os.sched_getaffinity(0)))
        if workers > 1:
            results = _run_parallel(store, todo, workers, progress)
        else:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                results = [train_size(store, *job, progress=progress) for job in todo]
            finally:
                torch.set_num_threads(before)
        for (_, size, *_), result in zip(todo, results, strict=True):
            report.trained += result["trained"]
            report.steps_trained += result["steps"]
            report.seconds[size.name] = round(result["seconds"], 2)
    while published := publish_next(store, family):
        report.published += published
        if progress:
            progress(Progress("publish", ", ".join(published)))
        if arrive:
            break
    report.wall_seconds = round(time.perf_counter() - began, 2)
    return report
