"""Benchmark: one ~1B-parameter checkpoint through the nightly's unit of work on a GPU, against
lm-evaluation-harness on the same model and rows.

A randomly initialised Llama (TinyLlama-1.1B's shape: hidden 2048, 22 layers, MLP 5632, 32 heads
with 4 KV heads, a 32,000-row vocabulary, untied; seeded), saved with save_pretrained as fp16
safetensors (float32 on a CPU) with a byte-level BPE tokenizer trained here on the builtin corpus
(nothing downloaded; the model's vocabulary is the larger of 32,000 and the tokenizer's). Then:
- kbitlaw: the 7 builtin datasets (N rows each) at every spec of the `default` grid, one
  `evaluate_checkpoint_spec` per spec as the nightly runs them (load once, quantize once per spec,
  score every dataset, write the results to a temporary store);
- lm-eval: its HF backend on the same checkpoint and the same rows (task YAMLs over JSONL copies, as
  tests/test_evaluate.py's parity test), fp16 only: it has no fake quantization.
Prints the time per checkpoint (the whole grid), per spec, lm-eval's time, their ratio, the device
and the peak GPU memory of each. `--tiny`: a ~1M-parameter model, 16 rows, 3 specs (a dry run).

    .venv/bin/python bench/gpu.py [--device auto|cpu|cuda|cuda:N] [--tiny] [--rows N] [--grid G] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# bench/datasets.py would shadow Hugging Face's `datasets` (lm-eval imports it): not this folder
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402

from kbitlaw.checkpoint_loading import resolve_device  # noqa: E402

BATCH = 32  # both harnesses' batch size
TINY_GRID = "fp16,int4-b64,nf4-b64"
# (hidden, layers, intermediate, heads, kv heads, vocab, window)
SHAPES = {"1b": (2048, 22, 5632, 32, 4, 32000, 2048), "tiny": (128, 4, 344, 4, 2, 512, 512)}
# lm-eval task bodies for the three kinds (tests/test_evaluate.py, LM_EVAL_TASKS)
LM_EVAL_KINDS = {
    "multiple_choice": "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\n"
    "doc_to_target: gold\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
    "cloze": "output_type: loglikelihood\ndoc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
    "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\nmetric_list:\n  - metric: acc\n"
    "    aggregation: mean\n    higher_is_better: true\n",
    "perplexity": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: text\n'
    "metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n"
    "    higher_is_better: false\n",
}


def build_checkpoint(path: Path, shape: str, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> int:
    """Save a seeded random Llama and a tokenizer trained on the builtin corpus; its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kbitlaw.data import world
    from kbitlaw.demo.train import train_tokenizer

    hidden, layers, mlp, heads, kv_heads, vocab, window = SHAPES[shape]
    tokenizer = train_tokenizer(list(world.training_corpus(400, seed=seed)), vocab_size=vocab)
    tokenizer.model_max_length = window
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=mlp,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=max(vocab, len(tokenizer)),  # rows past the tokenizer's are never looked up
        max_position_embeddings=window,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.device(device):  # a GPU initialises 1B random weights in a blink, a CPU in ~20 s
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "kbitlaw.json").write_text(json.dumps({"family": "bench", "size": shape, "step": 0}))
    n_params = sum(p.numel() for p in model.parameters())
    del model
    return n_params


def builtin_datasets(rows: int) -> dict[str, tuple[str, pl.DataFrame]]:
    """The builtin dataset specs' first `rows` rows each: name -> (kind, canonical frame)."""
    from kbitlaw.data.specs import BUILTIN_SPECS, canonical, load_dataset_specs, raw_input

    out = {}
    for name, spec in sorted(load_dataset_specs(BUILTIN_SPECS).items()):
        if spec.source.startswith("builtin:"):
            spec = dataclasses.replace(spec, max_examples=rows)
            out[name] = (spec.kind, canonical(raw_input(spec)[0], spec).drop("row"))
    return out


def reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def run_kbitlaw(
    checkpoint: Path, data: dict, grid: str, device: str, workdir: Path
) -> tuple[dict[str, Any], list[dict]]:
    """Every spec of `grid` as the nightly runs it (eval/sweep.py), on a temporary store: timings
    (load, per spec), the peak GPU memory, and the result rows (to read the device they record)."""
    from kbitlaw.checkpoints import resolve
    from kbitlaw.data.specs import frame_sha
    from kbitlaw.eval import sweep
    from kbitlaw.eval.calibration import calibration_ref
    from kbitlaw.quant.spec import resolve_grid
    from kbitlaw.store import Store, clean_keys, result_keys

    store, specs = Store(str(workdir / "store")), [str(s) for s in resolve_grid(grid)]
    refs = []
    for name, (kind, df) in data.items():
        sha = frame_sha(df)
        store.write_parquet(clean_keys(name, sha)["clean"], df)
        refs.append(sweep.DatasetRef(name, kind, clean_keys(name, sha)["clean"], sha))
    calibration = calibration_ref() if any(sweep.is_gptq(s) for s in specs) else None
    ckpt = resolve(str(checkpoint))
    reset_peak(device)
    start = time.perf_counter()
    sweep.POOL.acquire(ckpt, device)  # the load, timed on its own (the pool keeps the model)
    sweep.POOL.release(ckpt)
    load = time.perf_counter() - start
    per_spec = {}
    for spec in specs:
        start = time.perf_counter()
        sweep.evaluate_checkpoint_spec(store, ckpt, spec, refs, device=device, calibration=calibration)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_spec[spec] = time.perf_counter() - start
    peak = peak_gib(device)
    sweep.POOL = sweep.ModelPool(1)  # drop the model (and its pristine copies) before lm-eval runs
    rows = [r for key in result_keys(store) for r in store.read_parquet(key).to_dicts()]
    return {"load_s": load, "per_spec_s": per_spec, "peak_gib": peak}, rows


def run_lm_eval(checkpoint: Path, data: dict, dtype: str, device: str, workdir: Path) -> dict[str, Any]:
    """lm-eval's HF backend on the same checkpoint and rows: its evaluation time (the model loaded
    and lm-eval's task index built before the clock starts, as kbitlaw's per-spec times exclude
    its load), peak GPU memory, results."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = workdir / "lm_eval_tasks"
    tasks.mkdir()
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-datasets")  # nothing left behind
    for name, (kind, df) in data.items():
        df.write_ndjson(tasks / f"{name}.jsonl")
        header = f"task: kb_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        (tasks / f"{name}.yaml").write_text(
            f"{header}    test: {tasks}/{name}.jsonl\ntest_split: test\n{LM_EVAL_KINDS[kind]}"
        )
    reset_peak(device)
    start = time.perf_counter()
    lm = HFLM(pretrained=str(checkpoint), dtype=dtype, device=device, batch_size=BATCH)
    manager = TaskManager(include_path=str(tasks))  # indexes every lm-eval task: seconds, fixed
    setup = time.perf_counter() - start
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[f"kb_{n}" for n in data], task_manager=manager, verbosity="ERROR"
    )
    seconds = time.perf_counter() - start
    return {"setup_s": setup, "seconds": seconds, "peak_gib": peak_gib(device), "results": out["results"]}


def accuracy_gap(rows: list[dict], lm_results: dict) -> float | None:
    """The largest |kbitlaw fp16 acc - lm-eval acc| over the accuracy datasets (a sanity check: a
    random model's near-ties may flip between kernels, so this is shown, not asserted)."""
    ours = {r["dataset"]: r["value"] for r in rows if r["quant"] == "fp16" and r["metric"] == "acc"}
    gaps = [abs(v - lm_results[f"kb_{d}"]["acc,none"]) for d, v in ours.items() if f"kb_{d}" in lm_results]
    return max(gaps) if gaps else None


def measure(device: str, tiny: bool, rows: int, grid: str) -> dict[str, Any]:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32  # fp16 matmuls need a GPU
    with tempfile.TemporaryDirectory(prefix="kbitlaw-gpu-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = workdir / "model"
        start = time.perf_counter()
        n_params = build_checkpoint(checkpoint, "tiny" if tiny else "1b", dtype, device)
        build = time.perf_counter() - start
        data = builtin_datasets(rows)
        ours, result_rows = run_kbitlaw(checkpoint, data, grid, device, workdir)
        theirs = run_lm_eval(checkpoint, data, str(dtype).removeprefix("torch."), device, workdir)
    per_spec = ours["per_spec_s"]
    grid_s = sum(per_spec.values())
    mean_spec = grid_s / len(per_spec)
    fp16 = per_spec.get("fp16")
    slowest = max(per_spec, key=per_spec.__getitem__)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "recorded_devices": sorted({r["device"] for r in result_rows}),
        "model_params": n_params,
        "dtype": str(dtype).removeprefix("torch."),
        "datasets": {name: len(df) for name, (_, df) in data.items()},
        "grid": grid,
        "n_specs": len(per_spec),
        "build_s": build,
        "load_s": ours["load_s"],
        "checkpoint_s": grid_s,
        "per_spec_mean_s": mean_spec,
        "fp16_s": fp16,
        "slowest_spec": [slowest, per_spec[slowest]],
        "lm_eval_setup_s": theirs["setup_s"],
        "lm_eval_s": theirs["seconds"],
        "ratio_spec_mean": mean_spec / theirs["seconds"],
        "ratio_fp16": fp16 / theirs["seconds"] if fp16 is not None else None,
        "peak_gib_kbitlaw": ours["peak_gib"],
        "peak_gib_lm_eval": theirs["peak_gib"],
        "fp16_acc_gap": accuracy_gap(result_rows, theirs["results"]),
        "per_spec_s": per_spec,
    }


def table(r: dict[str, Any]) -> list[tuple[str, str]]:
    def gib(v: float | None) -> str:
        return "n/a (not a GPU)" if v is None else f"{v:.2f} GiB"

    rows_each = sorted(set(r["datasets"].values()))
    return [
        ("device", f"{r['device']} ({r['device_name']}); results record {', '.join(r['recorded_devices'])}"),
        ("model", f"{r['model_params'] / 1e6:.1f}M params, {r['dtype']}, built in {r['build_s']:.1f} s"),
        ("datasets", f"{len(r['datasets'])} x {'/'.join(map(str, rows_each))} rows"),
        ("grid", f"{r['grid']} ({r['n_specs']} specs)"),
        ("load (kbitlaw)", f"{r['load_s']:.2f} s"),
        ("time per checkpoint", f"{r['checkpoint_s']:.2f} s (whole grid, load excluded)"),
        ("time per spec", f"{r['per_spec_mean_s']:.2f} s (mean)"),
        ("fp16 spec", "n/a" if r["fp16_s"] is None else f"{r['fp16_s']:.2f} s"),
        ("slowest spec", f"{r['slowest_spec'][0]} {r['slowest_spec'][1]:.2f} s"),
        (
            "lm-eval (unquantized)",
            f"{r['lm_eval_s']:.2f} s (load + task index {r['lm_eval_setup_s']:.2f} s excluded)",
        ),
        ("ratio spec/lm-eval", f"{r['ratio_spec_mean']:.2f}"),
        ("ratio fp16/lm-eval", "n/a" if r["ratio_fp16"] is None else f"{r['ratio_fp16']:.2f}"),
        ("peak GPU memory", f"kbitlaw {gib(r['peak_gib_kbitlaw'])}, lm-eval {gib(r['peak_gib_lm_eval'])}"),
        (
            "fp16 acc gap",
            "n/a" if r["fp16_acc_gap"] is None else f"{r['fp16_acc_gap']:.4f} (max |kbitlaw - lm-eval|)",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--tiny", action="store_true", help="a ~1M-parameter model, 16 rows, 3 specs")
    parser.add_argument("--rows", type=int, help="rows per dataset (default 128; --tiny 16)")
    parser.add_argument("--grid", help=f"grid name or specs (default: default; --tiny {TINY_GRID})")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device, label="--device")
    except ValueError as exc:
        print(f"gpu.py: error: {exc}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stdout is the table; lm-eval's and HF's bars are noise
    if args.tiny and device == "cpu":
        # A ~1M-parameter model gains nothing from threads, and on a busy machine their barriers
        # made the same dry run 50x slower (descheduled threads): one thread keeps it steady.
        torch.set_num_threads(1)
    rows = args.rows or (16 if args.tiny else 128)
    result = measure(device, args.tiny, rows, args.grid or (TINY_GRID if args.tiny else "default"))
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    pairs = table(result)
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
