"""Benchmark: the scoring engine against lm-evaluation-harness, in one process, on the same model and rows.

For a ~1M and a ~10M parameter GPT-NeoX (random init, seeded; vocab 4096, window 256) and N examples
of each kind (200; --quick: 100, ~1M only), runs kbitlaw (tokenize + score), then lm-eval's HFLM
(`loglikelihood` / `loglikelihood_rolling` on the same requests, same batch size), then kbitlaw ...
(bench/pairs.py), and prints the median and range of the per-pair speed-ups seconds(lm-eval) /
seconds(kbitlaw), whether the scores are identical, and the share of the matmul peak kbitlaw's
forward passes reach: a torch matmul shaped like the model's MLP, interleaved with kbitlaw the same
way (never measured once). Full mode then times a sweep of 10 quant specs on one loaded checkpoint:
tokenization happens once, loading once.

    .venv/bin/python bench/evaluate.py [--quick] [--pairs N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its "pretrained is not a str" notes, per run
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402
from pairs import Ratio, ratio  # noqa: E402

from kbitlaw.eval.engine import evaluate_prepared, metrics, prepare  # noqa: E402
from kbitlaw.eval.scoring import Scorer  # noqa: E402
from kbitlaw.quant.fake import quantize_model, restore  # noqa: E402

WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line"
).split()
WINDOW, VOCAB, BATCH = 256, 4096, 32
SIZES = [("~1M", 128, 4), ("~10M", 384, 6)]  # (label, hidden, layers)


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def datasets(n: int, seed: int = 0) -> dict[str, pl.DataFrame]:
    rng = random.Random(seed)
    mc = [
        {
            "id": str(i),
            "context": sentence(rng, rng.randint(20, 60)),
            "choices": [sentence(rng, rng.randint(1, 4)) for _ in range(4)],
            "gold": rng.randrange(4),
        }
        for i in range(n)
    ]
    cloze = [{"id": str(i), "text": sentence(rng, rng.randint(20, 60))} for i in range(n)]
    ppl = [{"id": str(i), "text": sentence(rng, rng.randint(60, 200))} for i in range(n)]
    return {
        "multiple_choice": pl.DataFrame(mc),
        "cloze": pl.DataFrame(cloze),
        "perplexity": pl.DataFrame(ppl),
    }


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([sentence(rng, 30) for _ in range(3000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def model(hidden: int, layers: int, vocab: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(4, hidden // 64),
        intermediate_size=4 * hidden,
        vocab_size=vocab,
        max_position_embeddings=WINDOW,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTNeoXForCausalLM(config).eval()


def matmul_work(hidden: int) -> tuple[float, object]:
    """(FLOP, a function doing them): float32 matmuls shaped like the model's MLP on a batch of tokens,
    ~0.2 s of work, the hardware reference kbitlaw's forward passes are compared with."""
    a, b = torch.randn(BATCH * 64, hidden), torch.randn(hidden, 4 * hidden)
    flop = 2 * a.shape[0] * hidden * 4 * hidden
    start = time.perf_counter()
    a @ b
    reps = max(1, int(0.2 / max(time.perf_counter() - start, 1e-6)))

    def run():
        for _ in range(reps):
            a @ b

    return reps * flop, run


def lm_eval_run(m, tok, kind: str, df: pl.DataFrame):
    """lm-eval's HFLM on the same rows: a function returning per-example scores as lm-eval does."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=m, tokenizer=tok, batch_size=BATCH, device="cpu")
    rows = df.to_dicts()
    if kind == "multiple_choice":
        args = [(r["context"], " " + c) for r in rows for c in r["choices"]]
    elif kind == "cloze":
        args = [(" ".join(r["text"].split(" ")[:-1]), " " + r["text"].split(" ")[-1]) for r in rows]
    else:
        args = [(r["text"],) for r in rows]
    rtype = "loglikelihood_rolling" if kind == "perplexity" else "loglikelihood"
    instances = [Instance(request_type=rtype, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]
    call = lm.loglikelihood_rolling if kind == "perplexity" else lm.loglikelihood

    def run():
        with contextlib.redirect_stderr(io.StringIO()):  # its inner progress bars ignore disable_tqdm
            return call(instances, disable_tqdm=True)

    return run


def same_scores(kind: str, df: pl.DataFrame, ours: list[dict], theirs: list) -> bool:
    if kind == "multiple_choice":
        lls = [ll for ll, _ in theirs]
        acc = []
        for i, r in enumerate(df.to_dicts()):
            x = lls[4 * i : 4 * i + 4]
            acc.append(float(max(range(4), key=lambda j: (x[j], -j)) == r["gold"]))
        return {r["metric"]: r["value"] for r in ours}["acc"] == sum(acc) / len(acc)
    if kind == "cloze":
        return {r["metric"]: r["value"] for r in ours}["acc"] == sum(g for _, g in theirs) / len(theirs)
    words = sum(len(t.split()) for t in df["text"])
    import math

    ref = math.exp(-sum(theirs) / words)
    return abs({r["metric"]: r["value"] for r in ours}["word_perplexity"] / ref - 1) < 1e-4


def measure(quick: bool, pairs: int) -> list[dict]:
    """One row per model and kind: speed-up over lm-eval and share of the matmul peak, as Ratios."""
    n = 100 if quick else 200
    tok = tokenizer()
    data = datasets(n)
    rows = []
    for label, hidden, layers in SIZES[:1] if quick else SIZES:
        m = model(hidden, layers, len(tok))
        linear = sum(p.numel() for name, p in m.named_parameters() if "layers" in name and p.dim() == 2)
        mm_flop, matmul = matmul_work(hidden)
        for kind, df in data.items():
            scorer = Scorer(m, batch_size=BATCH)
            result = {}

            def ours(kind=kind, df=df, scorer=scorer, result=result):
                prepared = prepare(df, kind, tok, WINDOW)
                with torch.inference_mode():
                    result["rows"] = metrics(prepared, scorer.score(prepared.requests))
                result["prepared"] = prepared

            theirs = lm_eval_run(m, tok, kind, df)
            speed_up = ratio(theirs, ours, pairs=pairs)
            peak = ratio(matmul, ours, pairs=pairs)  # seconds(matmul) / seconds(ours), pair by pair
            prepared = result["prepared"]
            tokens = sum(r.packed_length for r in prepared.requests)  # model input positions computed
            kept = sum(len(c) for r in prepared.requests for c in r.continuations)
            flop = 2 * linear * tokens + 2 * hidden * len(tok) * kept
            share = Ratio(
                tuple(r * flop / mm_flop for r in peak.ratios), peak.top_seconds, peak.bottom_seconds
            )
            rows.append(
                {
                    "model": f"{label} ({linear / 1e6:.1f}M linear)",
                    "kind": kind,
                    "n": n,
                    "ours_s": speed_up.bottom_median(),
                    "speed_up": speed_up,
                    "identical": same_scores(kind, df, result["rows"], theirs()),
                    "matmul_share": share,
                }
            )
    return rows


def summary(quick: bool) -> list[tuple[str, Ratio, str]]:
    """(measure, ratio, target) rows for bench/all.py's table."""
    out = []
    for row in measure(quick, 5):
        out.append((f"evaluate {row['model']} {row['kind']}: speed-up over lm-eval", row["speed_up"], ">= 1"))
        out.append((f"evaluate {row['model']} {row['kind']}: share of matmul peak", row["matmul_share"], ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100 examples, the ~1M model only, no sweep")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, window {WINDOW}; "
        f"median (range) of {args.pairs} interleaved pairs\n"
    )
    print("| model | kind | kbitlaw ex/s | speed-up over lm-eval | identical | share of matmul peak |")
    print("|---|---|---:|---:|---|---:|")
    for row in measure(args.quick, args.pairs):
        print(
            f"| {row['model']} | {row['kind']} | {row['n'] / row['ours_s']:,.0f} | {row['speed_up']} | "
            f"{row['identical']} | {row['matmul_share']} |"
        )
    if args.quick:
        return
    n = 200
    tok = tokenizer()
    data = datasets(n)
    sizes = SIZES
    # A sweep of 10 specs on one loaded model: tokenize once, quantize + score per spec.
    specs = [
        "fp16",
        "int8-b64",
        "int4-b64",
        "nf4-b64",
        "fp4e2-b64",
        "quantile4-b64",
        "int3-b64",
        "fp3e2-b64",
        "int4",
        "dynamic8-b256",
    ]
    label, hidden, layers = sizes[-1]
    m, df = model(hidden, layers, len(tok)), data["multiple_choice"]
    start = time.perf_counter()
    prepared = prepare(df, "multiple_choice", tok, WINDOW)
    tokenize_s = time.perf_counter() - start
    scorer, quant_s, score_s = Scorer(m, batch_size=BATCH), 0.0, 0.0
    for spec in specs:
        t0 = time.perf_counter()
        quantize_model(m, spec)
        t1 = time.perf_counter()
        evaluate_prepared(m, prepared, scorer=scorer)
        quant_s, score_s = quant_s + t1 - t0, score_s + time.perf_counter() - t1
    restore(m)
    print(
        f"\nSweep of {len(specs)} specs on the {label} model, {n} multiple-choice examples: tokenize once "
        f"{tokenize_s:.2f}s, quantize {quant_s:.2f}s total, score {score_s:.2f}s total "
        f"({score_s / len(specs):.2f}s per spec), model loaded once."
    )


if __name__ == "__main__":
    main()
