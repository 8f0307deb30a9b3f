"""Block-scaled formats (OCP MX v1.0, NVFP4): element grids in their own units and the scales.

-se8m0 / -se4m3 specs round x / E to an `element_format` in the format's own units (E2M1: 0, .5,
.., 6) with round-half-to-even, then multiply by E: E is a power of two (e8m0: `e8m0_scales`) or an
E4M3 number times one fp32 per-tensor scale (e4m3: `nvfp4_scales`). E2M1/E2M3/E3M2 are the
fp4e2/fp6e2/fp6e3 of codebooks.py; fp8e4 and fp8e5 become OCP's E4M3 (max 448, not 480) and E5M2
(max 57344). In the unit terms of fp16 specs the stored scale is E * elem_max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from kbitlaw.quant.codebooks import fixed_codebook, fp_magnitudes
from kbitlaw.quant.nearest import NearestTable, build_table
from kbitlaw.quant.spec import default_exponent_bits

E4M3_MAX = 448.0  # OCP FP8 E4M3: bias 7, 3 mantissa bits, subnormals down to 2^-9, S.1111.111 = NaN
E4M3_TINY = 2.0**-9
E8M0_MIN, E8M0_MAX = -127, 127  # exponent range of an E8M0 scale (code 255 is NaN)


@dataclass(frozen=True)
class ElementFormat:
    """The elements of a block-scaled spec: `values` (sorted, float32, CPU) in the format's own units,
    their largest magnitude and the exponent E8M0 scales align to (None: 2^ceil(log2 amax), below)."""

    values: torch.Tensor
    elem_max: float
    emax: int | None
    ties: str  # how round-to-nearest breaks ties: "even" (float and integer grids) or "lower"


@lru_cache(maxsize=64)
def element_format(dtype: str, k: int, e: int | None = None) -> ElementFormat:
    """The element grid a block-scaled (-se8m0 / -se4m3) spec rounds to, in its own units.

    fp:  every finite k-bit float with e exponent bits (OCP E2M1 = fp4e2, E2M3 = fp6e2, E3M2 = fp6e3
         exactly; fp8e4 / fp8e5 are OCP's E4M3 (max 448) and E5M2 (max 57344)); emax = the exponent
         of the largest normal value.
    int: MXINT8's two's-complement grid and its analogue for other k: i / 2^(k-2), |i| <= 2^(k-1) - 1
         (int8: max 127/64), emax = 0.
    nf, dynamic: their unit codebook (max 1), emax None: these grids have no exponent to align to, so
         the E8M0 scale is the power of two at or above the block's absmax and nothing saturates.
    """
    if dtype == "fp":
        e = default_exponent_bits(k) if e is None else e
        pos = fp_magnitudes(k, e, ocp=True)
        values = torch.cat([-pos, pos]).unique().float()
        top = float(pos.max())
        return ElementFormat(values, top, math.floor(math.log2(top)), "even")
    if dtype == "int":
        top = 2 ** (k - 1) - 1
        values = torch.arange(-top, top + 1, dtype=torch.float64) / 2 ** (k - 2)
        return ElementFormat(values.float(), top / 2 ** (k - 2), 0, "even")
    if dtype in ("nf", "dynamic"):
        return ElementFormat(fixed_codebook(dtype, k), 1.0, None, "lower")
    if dtype == "quantile":  # the grid comes from the tensor; the scale rule does not
        return ElementFormat(torch.zeros(0), 1.0, None, "lower")
    raise ValueError(f"no element format for data type {dtype!r}")


@lru_cache(maxsize=128)
def element_table(dtype: str, k: int, e: int | None, device: torch.device) -> NearestTable:
    """Cached nearest-value table of a fixed element format (its own units, its tie rule)."""
    fmt = element_format(dtype, k, e)
    table = build_table(fmt.values.to(device), ties=fmt.ties)
    assert table is not None, f"{dtype}{k}: element grid too dense for the lookup table"
    return table


def pow2(exponent: torch.Tensor) -> torch.Tensor:
    """2^exponent as float32, exactly, for integer exponents in [-127, 127] (2^-127 is subnormal)."""
    exponent = exponent.to(torch.int32)
    bits = torch.where(exponent >= -126, (exponent + 127) << 23, torch.full_like(exponent, 1 << 22))
    return bits.view(torch.float32)


def e8m0_scales(absmax: torch.Tensor, emax: int | None) -> torch.Tensor:
    """OCP MX v1.0 (6.3) shared scale X = 2^(floor(log2 amax) - emax), the exponent clamped to E8M0's
    [-127, 127]; emax None: X = 2^ceil(log2 amax). Float32, exact; 0 where amax is 0 (NaN stays NaN
    through the elements)."""
    mantissa, exponent = torch.frexp(absmax.float())  # amax = mantissa * 2^exponent, mantissa in [.5, 1)
    if emax is None:
        e = exponent - (mantissa == 0.5).to(exponent.dtype)  # ceil(log2 amax)
    else:
        e = exponent - 1 - emax  # floor(log2 amax) - emax
    return torch.where(absmax == 0, 0.0, pow2(e.clamp(E8M0_MIN, E8M0_MAX)))


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """x rounded to OCP FP8 E4M3 (round half to even, subnormals, saturating at +-448), as float32."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def nvfp4_scales(
    absmax: torch.Tensor, tensor_absmax: torch.Tensor, elem_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4's two-level scales: per-tensor S = tensor_amax / (elem_max * 448) (fp32), per block
    s = E4M3(amax / elem_max / S), kept in [2^-9, 448] so that a non-zero block never gets a zero
    scale (as torchao does). Returns (E, inverse): elements are x * inverse (= x / (s S)) rounded,
    values elements * E, E = S * s; both 0 for a zero block or an all-zero tensor. Arithmetic in
    torchao's order (nvfp4_quantize), so results match it bit for bit."""
    per_tensor = tensor_absmax.float().reshape(-1)[:1] / (elem_max * E4M3_MAX)
    block = round_e4m3(((absmax.float() / elem_max) / per_tensor).clamp(E4M3_TINY, E4M3_MAX))
    scale = per_tensor * block
    inverse = (1 / per_tensor) / block
    inverse = torch.where(torch.isfinite(inverse), inverse, 1 / scale)  # S below ~1e-38: 1/S overflows
    zero = (absmax == 0) | (per_tensor == 0)
    return torch.where(zero, 0.0, scale), torch.where(zero, 0.0, inverse)
