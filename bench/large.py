"""Benchmark: one ~1B-parameter model on this machine, at one spec: peak memory and time per example.

A randomly initialised Llama-3.2-1B-shaped model (hidden 2048, 16 layers, MLP 8192, 32 heads with 8
KV heads, a 128,256-token vocabulary, tied embeddings: 1.24B parameters, seeded) in float32, quantized
to int4-b64 (the pristine copy of the block weights stays resident for the next spec), then:
- multiple choice: N rows of bench/evaluate.py's synthetic words (contexts of 20-60 words, 4 choices),
- perplexity: one document cut into 2048-token rolling windows (the vocabulary x context case).
Prints seconds per example and the peak resident memory while scoring beyond the loaded model
(weights + pristine copy), against the issue's bound of 1 GiB, and the bytes of the weights and copy.

    .venv/bin/python bench/large.py [--rows 16] [--ppl-tokens 4096] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import torch  # noqa: E402
from evaluate import datasets, sentence, tokenizer  # noqa: E402  (bench/evaluate.py)

from kbitlaw.eval.engine import evaluate_prepared, prepare  # noqa: E402
from kbitlaw.eval.scoring import Scorer  # noqa: E402
from kbitlaw.quant.fake import _PRISTINE, quantize_model  # noqa: E402

VOCAB, WINDOW = 128256, 2048


def status(field: str) -> int:
    """A /proc/self/status memory figure in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def llama_1b():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=WINDOW,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def timed(model, prepared, scorer) -> dict:
    reset_peak()
    before = status("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        evaluate_prepared(model, prepared, scorer=scorer)
    seconds = time.perf_counter() - start
    return {
        "examples": prepared.n_examples,
        "tokens": sum(r.packed_length + 1 for r in prepared.requests),
        "s_per_example": seconds / prepared.n_examples,
        "peak_beyond_model_MiB": (status("VmHWM") - before) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    tok = tokenizer()
    start = time.perf_counter()
    model = llama_1b()
    built = time.perf_counter() - start
    start = time.perf_counter()
    quantize_model(model, "int4-b64")
    quantize_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    pristine = sum(t.numel() * t.element_size() for _, t in _PRISTINE[model].values())

    mc = prepare(datasets(args.rows)["multiple_choice"], "multiple_choice", tok, WINDOW, name="mc")
    rng = random.Random(3)
    text = " ".join(sentence(rng, 50) for _ in range(args.ppl_tokens // 40))
    ppl = prepare(pl.DataFrame({"id": ["0"], "text": [text]}), "perplexity", tok, WINDOW, name="ppl")
    scorer = Scorer(model)
    out = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "n_params": n_params,
        "weights_MiB": weights / 2**20,
        "pristine_MiB": pristine / 2**20,
        "build_s": built,
        "quantize_int4_b64_s": quantize_s,
        "multiple_choice": timed(model, mc, scorer),
        "perplexity_2048": timed(model, ppl, scorer),
        "bound_MiB": 1024,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['machine']}: Llama-shaped, {n_params / 1e9:.2f}B parameters, float32, int4-b64")
    print(
        f"weights {out['weights_MiB']:.0f} MiB, pristine copy {out['pristine_MiB']:.0f} MiB, "
        f"quantize {quantize_s:.1f} s"
    )
    for name in ("multiple_choice", "perplexity_2048"):
        r = out[name]
        print(
            f"{name:16s} {r['examples']:3d} examples {r['tokens']:6d} tokens  "
            f"{r['s_per_example']:7.2f} s/example  "
            f"peak beyond the model {r['peak_beyond_model_MiB']:6.0f} MiB (bound 1024)"
        )


if __name__ == "__main__":
    main()
