"""Codebooks: the k-bit value sets weights are rounded to, one per data type and k.

A codebook is a float32 tensor, sorted ascending, inside [-1, 1], with max |value| = 1: the values a
weight can take after it is divided by its block's absmax. The five data types of Dettmers &
Zettlemoyer (2022) plus QLoRA's NormalFloat, for k = 2..8:

    dtype     entries    zero  symmetric  construction
    int       2^k - 1    yes   yes        i / (2^(k-1) - 1), i = -(2^(k-1)-1) .. 2^(k-1)-1
    fp        2^k - 1    yes   yes        1 sign, E exponent, k-1-E mantissa bits, IEEE-style bias
                                          2^(E-1)-1, subnormals, no inf/nan; +0 and -0 merged
    nf        2^k        yes   no         bitsandbytes create_normal_map(offset, use_extra_value=True)
                                          generalised to k bits: 2^(k-1) positive, 2^(k-1)-1 negative
    dynamic   2^k        yes   no         bitsandbytes create_dynamic_map(signed=True, 7, total_bits=k),
                                          its most negative entry pinned to -1 as bitsandbytes' CPU kernel
                                          does (quantize_cpu sets code[0] = -1)
    quantile  <= 2^k     yes   no         2^k - 1 equal-mass quantiles of the tensor's own normalised
                                          values at probabilities (i + 1/2) / (2^k - 1), plus 0, / absmax

Every codebook contains 0, so zeroed weights (outlier columns, padding) stay exactly 0.

Rounding to a codebook: nearest.py (one value, exactly, by table lookup) and blockwise.py (a whole
tensor, a scale per block). The element grids and scale rules of block-scaled specs (-se8m0, -se4m3):
block_scaled.py.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from kbitlaw.quant.spec import MAX_BITS, MIN_BITS, default_exponent_bits


def int_codebook(k: int) -> torch.Tensor:
    """Symmetric integer grid with 2^k - 1 levels (one code is given up so that 0 is exact)."""
    top = 2 ** (k - 1) - 1
    return torch.arange(-top, top + 1, dtype=torch.float32) / top


# The two OCP FP8 formats keep codes for NaN (E4M3: S.1111.111 only) or inf/NaN (E5M2: the whole
# top exponent, as IEEE); every other k-bit float here (and OCP's FP4/FP6) has only finite codes.
OCP_FP8 = {(8, 4): "E4M3", (8, 5): "E5M2"}


def fp_magnitudes(k: int, e: int, *, ocp: bool = False) -> torch.Tensor:
    """The non-negative values of a k-bit float with e exponent bits, in the format's own units
    (IEEE bias 2^(e-1)-1, subnormals; float64, ascending, from 0). `ocp`: drop the codes OCP's FP8
    formats reserve (E4M3's max becomes 448 instead of 480, E5M2's 57344 instead of 114688)."""
    m = k - 1 - e
    bias = 2 ** (e - 1) - 1
    mantissas = torch.arange(2**m, dtype=torch.float64) / 2**m
    magnitudes = [mantissas * 2.0 ** (1 - bias)]  # exponent field 0: subnormals (and zero)
    magnitudes += [(1 + mantissas) * 2.0 ** (field - bias) for field in range(1, 2**e)]
    pos = torch.cat(magnitudes)
    if ocp and OCP_FP8.get((k, e)) == "E4M3":
        pos = pos[:-1]
    elif ocp and OCP_FP8.get((k, e)) == "E5M2":
        pos = pos[: -(2**m)]
    return pos


def fp_codebook(k: int, e: int, *, ocp: bool = False) -> torch.Tensor:
    """Every finite value of a k-bit float with e exponent bits, scaled so the largest is 1 (`ocp`: as
    fp_magnitudes). The bias only rescales the codebook; normalisation removes it."""
    pos = fp_magnitudes(k, e, ocp=ocp)
    values = torch.cat([-pos, pos]).unique()  # sorted; +0 and -0 merge
    return (values / values.max()).float()


def nf_codebook(k: int) -> torch.Tensor:
    """NormalFloat: normal quantiles with one extra positive value, as bitsandbytes builds NF4.

    QLoRA's offset 0.9677083 = 1 - (1/(2*15) + 1/(2*16)) / 2 averages the half-bin widths of 15 and
    16 quantiles; for k bits we use 2^k - 1 and 2^k. The arithmetic (float32 linspace, float32
    quantiles, float32 division by the max) mirrors create_normal_map, so nf4 equals bitsandbytes' table.
    """
    offset = 0.9677083 if k == 4 else 1 - (1 / (2 * (2**k - 1)) + 1 / (2 * 2**k)) / 2
    half = 2 ** (k - 1)

    def normal_quantiles(n: int) -> torch.Tensor:
        probs = torch.linspace(offset, 0.5, n + 1, dtype=torch.float32)[:-1]
        return torch.special.ndtri(probs.double()).float()

    values = torch.cat([normal_quantiles(half), torch.zeros(1), -normal_quantiles(half - 1)]).sort().values
    return values / values.max()


def dynamic_codebook(k: int) -> torch.Tensor:
    """Dynamic exponent type: a run of zeros encodes a base-10 exponent, the rest a linear fraction.

    Same float32 arithmetic as bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7,
    total_bits=k), without its zero padding to 256 entries.
    """
    max_exp, data = 7, [0.0, 1.0]
    for i in range(max_exp):
        items = int(2 ** (i + k - 1 - max_exp) + 1)
        edges = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        data += (10 ** (-(max_exp - 1) + i) * means).tolist()
        data += (-(10 ** (-(max_exp - 1) + i)) * means).tolist()
    values = torch.tensor(sorted(data), dtype=torch.float32)
    values[0] = -1.0  # as bitsandbytes' CPU kernel: the range is exactly [-1, 1]
    return values


def _sorted(values: torch.Tensor) -> torch.Tensor:
    # torch's CPU sort is ~15x slower than numpy's on a million floats; on GPUs torch is fine.
    if values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.numpy()))
    return values.sort().values


def quantile_codebook(normalised: torch.Tensor, k: int) -> torch.Tensor:
    """Equal-mass codebook from a sample of a tensor's absmax-normalised values (in [-1, 1]).

    bitsandbytes' create_quantile_map: 2^k - 1 quantiles with offset 1/(2n) (torch.quantile's
    linear interpolation), plus 0, divided by the largest magnitude. Repeated quantiles (discrete
    data) collapse, so there may be fewer than 2^k entries. An all-zero sample gives the int2 grid.
    """
    n = 2**k - 1
    ordered = _sorted(normalised.detach().float().reshape(-1)).double()
    pos = (torch.arange(n, dtype=torch.float64, device=ordered.device) + 0.5) / n * (ordered.numel() - 1)
    below = pos.floor().long()
    above = torch.clamp(below + 1, max=ordered.numel() - 1)
    q = ordered[below] + (pos - below) * (ordered[above] - ordered[below])
    values = torch.cat([q, q.new_zeros(1)]).unique()
    top = values.abs().max()
    if top == 0:
        return int_codebook(2).to(normalised.device)
    return (values / top).float()


@lru_cache(maxsize=64)
def fixed_codebook(dtype: str, k: int, e: int | None = None, *, ocp: bool = False) -> torch.Tensor:
    """The codebook of a data type that does not depend on the data (all but quantile), on CPU.
    `ocp`: fp8e4/fp8e5 as OCP's E4M3/E5M2 (the element formats of block-scaled specs, -se8m0/-se4m3)."""
    if not MIN_BITS <= k <= MAX_BITS:
        raise ValueError(f"k must be {MIN_BITS}..{MAX_BITS}, got {k}")
    if dtype == "int":
        return int_codebook(k)
    if dtype == "fp":
        return fp_codebook(k, default_exponent_bits(k) if e is None else e, ocp=ocp)
    if dtype == "nf":
        return nf_codebook(k)
    if dtype == "dynamic":
        return dynamic_codebook(k)
    raise ValueError(f"no fixed codebook for data type {dtype!r} (quantile is built from the tensor)")
