"""`make bench`: the ratio benchmarks in one table, each ratio from interleaved pairs (bench/pairs.py).

    .venv/bin/python bench/all.py [--quick]

Runs bench/quantize.py (fake quantization against a copy of the same bytes and bitsandbytes),
bench/gptq.py (GPTQ against one evaluation of the same model) and bench/evaluate.py (the scoring
engine against lm-eval and a matmul of the model's shape), and prints one markdown table: the median
of the per-pair ratios, their range, the number of pairs and the target where there is one. --quick
(under 2 minutes on a 2-core machine, e.g. beside the tests) runs the small models only and fewer
pairs. Each bench run alone prints its detailed table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

BENCHES = ("quantize", "gptq", "evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, 5 pairs: under 2 minutes")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    for name in BENCHES:
        module = __import__(name)
        print(f"bench/{name}.py ...", file=sys.stderr, flush=True)
        rows += module.summary(args.quick)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
        f"{', quick' if args.quick else ''}; {time.perf_counter() - started:.0f} s\n"
    )
    print("| measure | median | range | pairs | target |")
    print("|---|---:|---:|---:|---:|")
    for measure, ratio, target in rows:
        n = len(ratio.ratios)
        print(f"| {measure} | {ratio.median:.3g} | {ratio.low:.3g}-{ratio.high:.3g} | {n} | {target} |")


if __name__ == "__main__":
    main()
