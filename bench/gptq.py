"""Benchmark: GPTQ against one evaluation of the same model, interleaved in one process.

For random-init GPT-NeoX models of the demo's largest size (h128-l4, window 128) and of ~10M
non-embedding parameters (h384-l6, window 256, the ~10M model of bench/evaluate.py), with the demo's
tokenizer (byte-level BPE on the builtin world): runs one evaluation of the model on the builtin
`text` perplexity dataset (its 200 rows, tokenized once beforehand), then GPTQ of every block linear
at int4-b64 on the default calibration data (`text:128`: 128 sequences of min(window, 256) tokens),
then the evaluation again ... (bench/pairs.py), and prints the median and range of the per-pair
ratios seconds(GPTQ) / seconds(evaluation) (target <= 2 on the ~10M model), for:

- sequential calibration (the default), the first GPTQ spec on a model: every pass from scratch;
- sequential, a further GPTQ spec on the same model and tokens: the first block's inputs are reused;
- parallel calibration (`text:128:parallel`), first spec: one pass for every Hessian;
- parallel, a further spec: the Hessians are reused, only the solves run;
- round-to-nearest int4-b64, for scale.

    .venv/bin/python bench/gptq.py [--quick] [--pairs N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402
from pairs import Ratio, ratio  # noqa: E402

import kbitlaw.quant.hessians as hessians  # noqa: E402
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


VARIANTS = [  # (label, calibration mode, a further spec on the same model and tokens)
    ("GPTQ sequential, first spec", "sequential", False),
    ("GPTQ sequential, further spec", "sequential", True),
    ("GPTQ parallel, first spec", "parallel", False),
    ("GPTQ parallel, further spec", "parallel", True),
]


def gptq_run(m, ids: torch.Tensor, mode: str, further: bool):
    def run():
        if not further:
            hessians._CACHE.pop(m, None)  # nothing reused: what the first GPTQ spec of a checkpoint pays
        quantize_model(m, f"{SPEC}-gptq", calibration=ids, calibration_mode=mode)

    return run


def measure(quick: bool, pairs: int) -> list[tuple[str, Ratio]]:
    """[(label, seconds(x) / seconds(one `text` evaluation) per pair)] per model and variant."""
    tokenizer = train_tokenizer(list(world.training_corpus(2000, seed=0)), 640)
    text = pl.DataFrame(world.suite("text", 200, seed=0, difficulty=4))
    ref = calibration_ref("text:128")
    rows = []
    for label, hidden, layers, window in SIZES[:1] if quick else SIZES:
        m = model(hidden, layers, len(tokenizer), window)
        n = sum(p.numel() for name, p in m.named_parameters() if ".layers." in name and p.dim() == 2)
        ids = calibration_tokens(ref, tokenizer, window)
        prepared = prepare(text, "perplexity", tokenizer, max_length(m, tokenizer), name="text")
        scorer = Scorer(m, batch_size=32)

        def evaluate(m=m, prepared=prepared, scorer=scorer):
            with torch.inference_mode():
                evaluate_prepared(m, prepared, scorer=scorer)

        name = f"{label} ({n / 1e6:.2f}M, calibration {tuple(ids.shape)})"
        for variant, mode, further in VARIANTS:
            rows.append((f"{name}: {variant}", ratio(gptq_run(m, ids, mode, further), evaluate, pairs=pairs)))
        rows.append(
            (f"{name}: round-to-nearest", ratio(lambda m=m: quantize_model(m, SPEC), evaluate, pairs=pairs))
        )
        restore(m)
    return rows


def summary(quick: bool) -> list[tuple[str, Ratio, str]]:
    """(measure, ratio, target) rows for bench/all.py's table."""
    rows = measure(quick, 5)
    return [
        (f"{label} / one evaluation", r, "<= 2" if "~10M" in label else "")
        for label, r in rows
        if "GPTQ" in label
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the demo size")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; spec {SPEC}, calibration text:128; "
        f"median (range) of {args.pairs} interleaved pairs with one `text` evaluation\n"
    )
    print("| model: method | seconds | one `text` evaluation s | seconds / evaluation |")
    print("|---|---:|---:|---:|")
    for label, r in measure(args.quick, args.pairs):
        print(f"| {label} | {r.top_median():.2f} | {r.bottom_median():.2f} | {r} |")


if __name__ == "__main__":
    main()
