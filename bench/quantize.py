"""Benchmark: blockwise fake quantization on CPU against a plain copy and bitsandbytes' CPU path.

    .venv/bin/python bench/quantize.py [--quick] [--pairs N]

Fake-quantizes 16 random-normal float32 [2048, 2048] weight matrices (67M parameters) with several
specs (the paper's data types with fp16 absmax scales, and the deployed mxfp4 / nvfp4 / mxint8) and
prints a markdown table. Every figure is a ratio of interleaved runs in
this process (bench/pairs.py): `dst.copy_(src)` of the same bytes, then the spec, then the copy ...
for N pairs; the table gives the median of the per-pair ratios and their range:
  - fraction of copy bandwidth: seconds(copy) / seconds(quantize), the memory-bandwidth limit
    measured beside each spec, never once (target >= 0.25 for nf4-b64, int4-b64, fp4e2-b64, mxfp4);
  - nf4-b64 against bitsandbytes' quantize_4bit + dequantize_4bit (nf4, blocksize 64), pair by pair.
Full mode also measures peak extra memory relative to one tensor, in a fresh subprocess per spec, as
the growth of peak RSS (VmHWM) while one [4096, 4096] float32 tensor is quantized (the new output
tensor included; tables warmed up first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairs import Ratio, ratio  # noqa: E402

from kbitlaw.quant.fake import fake_quantize  # noqa: E402
from kbitlaw.quant.spec import QuantSpec  # noqa: E402

SPECS = ["nf4-b64", "int4-b64", "fp4e2-b64", "quantile4-b64", "dynamic8-b256"]
# the deployed block-scaled formats: E8M0 (OCP MX) and E4M3 + fp32 per-tensor (NVFP4) scales
SPECS += ["mxfp4", "nvfp4", "mxint8"]
PEAK_SHAPE = (4096, 4096)


def bnb_nf4(w: torch.Tensor) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    return bnbf.dequantize_4bit(packed, state)


def peak_extra(method: str) -> float:
    """Peak extra memory of one quantization / tensor size, in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--peak", method]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_peak(method: str) -> None:
    """Subprocess body: print (peak RSS during one call - RSS before it) / tensor bytes.

    Writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS, so earlier
    transients (imports, table construction) cannot hide the call's own peak.
    """
    run = bnb_nf4 if method == "bitsandbytes" else (lambda w: fake_quantize(w, QuantSpec.parse(method)))
    run(torch.randn(64, 64))  # build and cache lookup tables, load kernels
    w = torch.randn(PEAK_SHAPE, generator=torch.Generator().manual_seed(0))
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    result = run(w)
    peak = rss_kib("VmHWM")
    del result
    print((peak - before) * 1024 / (w.numel() * w.element_size()))


TARGETS = {"nf4-b64": 0.25, "int4-b64": 0.25, "fp4e2-b64": 0.25, "mxfp4": 0.25}


def measure(count: int, pairs: int, bnb_count: int) -> tuple[list[tuple[str, Ratio]], Ratio]:
    """[(spec, seconds(copy) / seconds(spec) per pair)], and seconds(bitsandbytes) / seconds(nf4-b64)."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(2048, 2048, generator=gen) for _ in range(count)]
    outputs = [torch.empty_like(w) for w in weights]

    def copy_all():
        for w, o in zip(weights, outputs, strict=True):
            o.copy_(w)

    def ours_all(spec: QuantSpec, preallocated: bool = True):
        def run():
            for w, o in zip(weights, outputs, strict=True):
                fake_quantize(w, spec, out=o if preallocated else None)

        return run

    def bnb_some():  # bitsandbytes runs at ~80 Mparams/s: its pairs use the first `bnb_count` tensors
        for w in weights[:bnb_count]:
            bnb_nf4(w)

    def nf4_some():
        for w, o in zip(weights[:bnb_count], outputs, strict=False):
            fake_quantize(w, "nf4-b64", out=o)

    rows = [(text, ratio(copy_all, ours_all(QuantSpec.parse(text)), pairs=pairs)) for text in SPECS]
    fresh = ratio(copy_all, ours_all(QuantSpec.parse("nf4-b64"), preallocated=False), pairs=pairs)
    rows.append(("nf4-b64, new output tensors", fresh))
    return rows, ratio(bnb_some, nf4_some, pairs=pairs)


def summary(quick: bool) -> list[tuple[str, Ratio, str]]:
    """(measure, ratio, target) rows for bench/all.py's table."""
    rows, vs_bnb = measure(16, 5 if quick else 9, 4 if quick else 16)
    out = [
        (f"quantize {name}: fraction of copy bandwidth", r, f">= {TARGETS[name]}")
        for name, r in rows
        if name in TARGETS
    ]
    return out + [("quantize nf4-b64: speed-up over bitsandbytes nf4", vs_bnb, "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="5 pairs, bitsandbytes on 4 tensors, no memory subprocesses"
    )
    parser.add_argument("--pairs", type=int, default=None, help="interleaved pairs (default 9; --quick 5)")
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        return measure_peak(args.peak)
    count = 16
    pairs = args.pairs or (5 if args.quick else 9)
    rows, vs_bnb = measure(count, pairs, 4 if args.quick else count)
    n_params = count * 2048 * 2048
    print(
        f"{count} x [2048, 2048] float32 = {n_params / 1e6:.0f}M params, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; median (range) of {pairs} "
        "interleaved pairs"
    )
    print()
    print("| method | Mparams/s | fraction of copy bandwidth | target | peak extra memory / tensor |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        peak = "-" if args.quick else f"{peak_extra(name.split(',')[0]):.2f}x"
        target = f">= {TARGETS[name]}" if name in TARGETS else ""
        print(f"| {name} | {n_params / r.bottom_median() / 1e6:.0f} | {r} | {target} | {peak} |")
    copy_s = statistics.median(s for _, r in rows for s in r.top_seconds)
    print(f"| copy_ (memory bandwidth) | {n_params / copy_s / 1e6:.0f} | 1 | | - |")
    print()
    print(f"nf4-b64 against bitsandbytes nf4 (blocksize 64), seconds(bitsandbytes) / seconds(ours): {vs_bnb}")
    if not args.quick:
        print(f"bitsandbytes nf4 peak extra memory / tensor: {peak_extra('bitsandbytes'):.2f}x")
    print()
    print("Ours: fake_quantize(w, spec, out=preallocated) unless noted (quantize_model writes into the")
    print("weight); bitsandbytes allocates its packed codes and output. Peak extra memory: growth of peak")
    print(f"RSS (VmHWM, reset first) in a fresh process while one {list(PEAK_SHAPE)} float32 tensor is")
    print("quantized into a new output tensor (counted), after a warm-up that builds the lookup tables.")


if __name__ == "__main__":
    main()
