"""Benchmark: blockwise fake quantization on CPU against bitsandbytes' CPU path and a plain copy.

    .venv/bin/python bench/quantize.py [--quick] [--repeat N]

Fake-quantizes a set of random-normal float32 weight matrices (default 16 x [2048, 2048] = 64M
parameters, seeded) with several specs (the paper's data types with fp16 absmax scales, and the
deployed mxfp4 / nvfp4 / mxint8) and prints a markdown table: parameters per second, the ratio
to bitsandbytes' quantize_4bit + dequantize_4bit (nf4, blocksize 64) on the same tensors, the ratio to
`dst.copy_(src)` of the same bytes (the memory-bandwidth limit), and peak extra memory relative to
one tensor, measured in a fresh subprocess per spec as the growth of peak RSS (VmHWM) while one
[4096, 4096] float32 tensor is quantized (the new output tensor included; tables warmed up first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def best_seconds(fn, repeat: int) -> float:
    """Fastest of `repeat` runs (the machine may be shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 x [1024, 1024] instead of 16 x [2048, 2048]")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        return measure_peak(args.peak)

    count, side = (4, 1024) if args.quick else (16, 2048)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(side, side, generator=gen) for _ in range(count)]
    outputs = [torch.empty_like(w) for w in weights]
    n_params = count * side * side

    def copy_all():
        for w, o in zip(weights, outputs, strict=True):
            o.copy_(w)

    def bnb_all():
        for w in weights:
            bnb_nf4(w)

    def ours_all(spec: QuantSpec, preallocated: bool):
        def run():
            for w, o in zip(weights, outputs, strict=True):
                fake_quantize(w, spec, out=o if preallocated else None)

        return run

    bnb_nf4(weights[0][:64])
    copy_rate = n_params / best_seconds(copy_all, args.repeat)
    bnb_rate = n_params / best_seconds(bnb_all, args.repeat)
    rows = []
    for text in SPECS:
        spec = QuantSpec.parse(text)
        fake_quantize(weights[0][:64], spec)  # warm the lookup table cache
        rate = n_params / best_seconds(ours_all(spec, preallocated=True), args.repeat)
        rows.append((text, rate, peak_extra(text)))
    fresh = n_params / best_seconds(ours_all(QuantSpec.parse("nf4-b64"), preallocated=False), args.repeat)
    rows.append(("nf4-b64, new output tensors", fresh, peak_extra("nf4-b64")))
    rows.append(("bitsandbytes nf4, blocksize 64", bnb_rate, peak_extra("bitsandbytes")))
    rows.append(("copy_ (memory bandwidth)", copy_rate, float("nan")))

    print(
        f"{count} x [{side}, {side}] float32 = {n_params / 1e6:.0f}M params, CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"best of {args.repeat}"
    )
    print()
    print("| method | Mparams/s | vs bitsandbytes | vs copy | peak extra memory / tensor |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, peak in rows:
        peak_text = "-" if peak != peak else f"{peak:.2f}x"
        print(f"| {name} | {rate / 1e6:.1f} | {rate / bnb_rate:.2f} | {rate / copy_rate:.3f} | {peak_text} |")
    print()
    print("Ours: fake_quantize(w, spec, out=preallocated) unless noted (quantize_model writes into the")
    print("weight); bitsandbytes allocates its packed codes and output. Peak extra memory: growth of peak")
    print(f"RSS (VmHWM, reset first) in a fresh process while one {list(PEAK_SHAPE)} float32 tensor is")
    print("quantized into a new output tensor (counted), after a warm-up that builds the lookup tables.")


if __name__ == "__main__":
    main()
