"""Benchmark: GPTQ against round-to-nearest and against one evaluation, in one process.

For random-init GPT-NeoX models of the demo's largest size (h128-l4, window 128) and of ~10M
non-embedding parameters (h384-l6, window 256, the ~10M model of bench/evaluate.py), with the demo's
tokenizer (byte-level BPE on the builtin world): times

- GPTQ of every block linear at int4-b64 on the default calibration data (`text:128`: 128 sequences
  of min(window, 256) tokens), split into the calibration forward passes and the per-layer solves;
- round-to-nearest quantize_model at int4-b64;
- one evaluation of the model on the builtin `text` perplexity dataset (its 200 rows, tokenized once
  beforehand, scored with the evaluation engine);

and prints a markdown table with the seconds and the ratios GPTQ / RTN and GPTQ / evaluation.
Best of `--repeat` runs of each (the machine may be shared).

    .venv/bin/python bench/gptq.py [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import torch  # noqa: E402

import kbitlaw.quant.gptq as gptq  # noqa: E402
from kbitlaw.data import world  # noqa: E402
from kbitlaw.demo.train import train_tokenizer  # noqa: E402
from kbitlaw.eval.calibration import calibration_ref, calibration_tokens  # noqa: E402
from kbitlaw.eval.engine import evaluate_prepared, max_length, prepare  # noqa: E402
from kbitlaw.eval.scoring import Scorer  # noqa: E402
from kbitlaw.quant.fake import quantize_model, restore  # noqa: E402

SPEC = "int4-b64"
SIZES = [("demo h128-l4", 128, 4, 128), ("~10M h384-l6", 384, 6, 256)]


def model(hidden: int, layers: int, vocab: int, window: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(4, hidden // 64),
        intermediate_size=4 * hidden,
        vocab_size=vocab,
        max_position_embeddings=window,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return GPTNeoXForCausalLM(config).eval()


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


class SolveTimer:
    """Adds up the time spent in gptq_quantize_weight (the per-layer solves) during a GPTQ run."""

    def __init__(self) -> None:
        self.seconds, self.real = 0.0, gptq.gptq_quantize_weight

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.real(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the demo size, one repeat")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    tokenizer = train_tokenizer(list(world.training_corpus(2000, seed=0)), 640)
    text = pl.DataFrame(world.suite("text", 200, seed=0, difficulty=4))
    ref = calibration_ref("text:128")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; spec {SPEC}, calibration {ref}\n")
    rows = []
    for label, hidden, layers, window in SIZES[:1] if args.quick else SIZES:
        m = model(hidden, layers, len(tokenizer), window)
        n = sum(p.numel() for name, p in m.named_parameters() if ".layers." in name and p.dim() == 2)
        tok_s, ids = best(lambda w=window: calibration_tokens(ref, tokenizer, w), 1)
        prepared = prepare(text, "perplexity", tokenizer, max_length(m, tokenizer), name="text")
        scorer = Scorer(m, batch_size=32)
        with torch.inference_mode():
            eval_s, _ = best(
                lambda m=m, prepared=prepared, scorer=scorer: evaluate_prepared(m, prepared, scorer=scorer),
                repeat,
            )
        rtn_s, _ = best(lambda m=m: quantize_model(m, SPEC), repeat)
        solves = []

        def run_gptq(m=m, ids=ids, solves=solves):
            timer = SolveTimer()
            gptq.gptq_quantize_weight = timer
            try:
                quantize_model(m, f"{SPEC}-gptq", calibration=ids)
            finally:
                gptq.gptq_quantize_weight = timer.real
            solves.append(timer.seconds)

        gptq_s, _ = best(run_gptq, repeat)
        solve_s = min(solves)
        restore(m)
        tokens = int(ids.numel())
        rows.append(
            f"| {label} | {n / 1e6:.2f}M | {tuple(ids.shape)} | {gptq_s:.2f} | {gptq_s - solve_s:.2f} | "
            f"{solve_s:.2f} | {rtn_s:.3f} | {eval_s:.2f} | {gptq_s / rtn_s:.0f}x | {gptq_s / eval_s:.1f}x | "
            f"{tok_s:.2f} |"
        )
        print(f"{label}: {tokens} calibration tokens, GPTQ {gptq_s:.2f} s", file=sys.stderr)
    print(
        "| model | block linears | calibration [n, len] | GPTQ s | of which calibration passes s | "
        "of which solves s | RTN s | one `text` evaluation s | GPTQ / RTN | GPTQ / evaluation | "
        "calibration tokenizing s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
