"""Codebooks: the k-bit value sets weights are rounded to, and blockwise rounding of tensors to them.

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

Block-scaled specs (-se8m0: OCP MX; -se4m3: NVFP4) round to an `element_format` in its own units
(E2M1: 0, .5, .., 6) with round-half-to-even: E2M1/E2M3/E3M2 are fp4e2/fp6e2/fp6e3 above, fp8e4 and
fp8e5 become OCP's E4M3 (max 448, not 480) and E5M2 (max 57344); `e8m0_scales` and `nvfp4_scales`
are their scale rules.

`NearestTable` rounds to any codebook without a binary search: the top bits of a float32 (sign,
exponent, leading mantissa bits) name a bin that contains at most one midpoint between codebook
values, so one table lookup, one comparison and a second lookup give the exact nearest value.
`fake_quantize_blockwise` applies it to a tensor: a scale per block (default: the absmax stored as
fp16; fake.py passes the spec's), multiply by its inverse, round, multiply back, chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

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


# ---------------------------------------------------------------------------------------------
# Exact nearest-value lookup.
#
# A float32's bit pattern shifted right by SHIFT keeps the sign, the exponent and the leading
# 23 - SHIFT mantissa bits: a bin of consecutive floats, relatively 2^-10 wide. The table stores
# per bin the (at most one) midpoint inside it and the codebook values on either side, so
#     key = (bits >> SHIFT) + HALF;  up = x > mid[key];  value = vals[2 * key + up]
# is exactly the nearest codebook value with ties going to the lower one (= torch.bucketize on the
# midpoints), at the cost of two gathers instead of a data-dependent binary search.
# ---------------------------------------------------------------------------------------------

SHIFT = 13
N_BINS = 1 << (32 - SHIFT)
HALF = N_BINS // 2


@dataclass(frozen=True)
class NearestTable:
    """Lookup tables for one codebook (on one device); see `build_table` and `round_unit`."""

    codebook: torch.Tensor  # sorted values
    mids: torch.Tensor  # [N_BINS] the midpoint inside each bin, +inf where there is none
    vals: torch.Tensor  # [2 * N_BINS] codebook value below / above that midpoint


def _bin_edges() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smallest and largest float of every bin, in ascending value order, and each bin's key."""
    keys = torch.arange(N_BINS, dtype=torch.int64)
    lo_bits = ((keys - HALF) << SHIFT).to(torch.int32)
    a = lo_bits.view(torch.float32)
    b = (lo_bits | ((1 << SHIFT) - 1)).view(torch.float32)
    vmin, vmax = torch.minimum(a, b), torch.maximum(a, b)
    # NaN/inf bins (exponent all ones) sort as +-inf; their values are overwritten with NaN later.
    nonfinite = ~torch.isfinite(a)
    sign = torch.where(lo_bits < 0, -1.0, 1.0)
    vmin = torch.where(nonfinite, sign * math.inf, vmin)
    vmax = torch.where(nonfinite, sign * math.inf, vmax)
    # Negative keys run from -0 towards -inf: reversing them and appending the positive keys sorts
    # every bin by value.
    order = torch.cat([torch.arange(HALF - 1, -1, -1), torch.arange(HALF, N_BINS)])
    return vmin[order], vmax[order], order


def _count_below(mids: torch.Tensor, ascending: torch.Tensor) -> torch.Tensor:
    """For each value of a sorted tensor, how many midpoints are strictly below it.

    Searching the C midpoints in the sorted values (not the reverse) keeps this O(N + C log N).
    """
    first_above = torch.searchsorted(ascending, mids, right=True)
    return torch.bincount(first_above, minlength=ascending.numel() + 1)[:-1].cumsum(0)


@lru_cache(maxsize=1)
def _cached_bin_edges() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bin_edges()


def build_table(codebook: torch.Tensor, ties: str = "lower") -> NearestTable | None:
    """Nearest-value tables for a sorted codebook; None if some bin holds two midpoints.

    None only happens for codebooks with values closer than ~2^-10 relative (e.g. a quantile codebook
    of nearly discrete data); callers then fall back to torch.bucketize.
    ties: "lower" (a value exactly on a midpoint takes the lower entry) or "even" (the entry whose
    magnitude has an even index among the codebook's magnitudes: round half to even for a float or
    integer grid in its own units, where midpoints are exact and consecutive codes alternate parity).
    """
    device = codebook.device
    cb = codebook.detach().float().cpu().unique()  # sorted, distinct
    mids = (cb[:-1] + cb[1:]) / 2
    if ties == "even":  # x > nextafter(mid, -inf)  <=>  x >= mid: the tie goes up
        magnitudes = cb[cb >= 0]
        odd = torch.searchsorted(magnitudes, cb.abs()) % 2 == 1
        up = ~odd[1:]
        mids = torch.where(up, torch.nextafter(mids, torch.tensor(-math.inf)), mids)
    elif ties != "lower":
        raise ValueError(f"ties must be 'lower' or 'even', got {ties!r}")
    vmin, vmax, order = _cached_bin_edges()
    lo_sorted, hi_sorted = _count_below(mids, vmin), _count_below(mids, vmax)
    lo, hi = torch.empty_like(lo_sorted), torch.empty_like(hi_sorted)
    lo[order], hi[order] = lo_sorted, hi_sorted
    if bool((hi - lo > 1).any()):
        return None
    split = hi > lo
    mid_ext = torch.cat([mids, torch.tensor([math.inf])])
    mid_per_bin = torch.where(split, mid_ext[lo], torch.tensor(math.inf))
    below = cb[lo]
    above = cb[torch.where(split, lo + 1, lo)]
    vals = torch.stack([below, above], dim=1).reshape(-1)
    lowest = ((torch.arange(N_BINS) - HALF) << SHIFT).to(torch.int32).view(torch.float32)
    vals.view(N_BINS, 2)[~torch.isfinite(lowest)] = math.nan  # inf/nan inputs give NaN
    return NearestTable(codebook=cb.to(device), mids=mid_per_bin.to(device), vals=vals.to(device))


@lru_cache(maxsize=128)
def fixed_table(
    dtype: str, k: int, e: int | None, device: torch.device, *, ocp: bool = False
) -> NearestTable:
    """Cached table of a fixed codebook on a device (fixed codebooks always have a table)."""
    table = build_table(fixed_codebook(dtype, k, e, ocp=ocp).to(device))
    assert table is not None, f"{dtype}{k}: codebook too dense for the lookup table"
    return table


def round_unit(x: torch.Tensor, table: NearestTable, key: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """Replace the float32 values of x (already divided by their scale) by the nearest codebook value.

    key (int32) and mid (float32) are scratch buffers shaped like x, reused across chunks so that a
    chunk allocates nothing. Ties go to the lower codebook value. Non-finite x gives NaN.
    """
    torch.bitwise_right_shift(x.view(torch.int32), SHIFT, out=key)
    key.add_(HALF)
    torch.index_select(table.mids, 0, key.view(-1), out=mid.view(-1))
    # x > mid  <=>  mid - x < 0: its sign bit, arithmetic-shifted, is -1 (above) or 0 (at or below)
    above = mid.sub_(x).view(torch.int32).bitwise_right_shift_(31)
    key.add_(key).sub_(above)  # 2 * key + (x > mid)
    return torch.index_select(table.vals, 0, key.view(-1), out=x.view(-1)).view_as(x)


def round_unit_bucketize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """round_unit for codebooks too dense for a table: a binary search per value (slow, exact)."""
    idx = torch.bucketize(x, (codebook[:-1] + codebook[1:]) / 2)
    return torch.index_select(codebook, 0, idx.view(-1), out=x.view(-1)).view_as(x)


# ---------------------------------------------------------------------------------------------
# Block-scaled formats (OCP MX v1.0, NVFP4): element grids in their own units and the scales.
#
# -se8m0 / -se4m3 specs round x / E to an element grid in the format's own units (E2M1: 0 .. 6) with
# round-half-to-even, then multiply by E: E is a power of two (e8m0) or an E4M3 number times one fp32
# per-tensor scale (e4m3). In the unit terms of fp16 specs the stored scale is E * elem_max.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Blockwise rounding of a whole tensor
# ---------------------------------------------------------------------------------------------


def round_scales(absmax: torch.Tensor, scale_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Absmax values as the kernel stores them (rounded to scale_dtype, overflow clamped), in float32."""
    return absmax.float().clamp(max=torch.finfo(scale_dtype).max).to(scale_dtype).float()


def _chunk_elems(device: torch.device) -> int:
    # CPU: a chunk and its scratch buffers stay in L2/L3 cache; GPU: big enough to hide launches.
    return 1 << 18 if device.type == "cpu" else 1 << 24


def _segments(n: int, width: int | None, chunk: int):
    """(start, stop, row width) of the chunks a flat tensor is processed in; blocks never straddle two."""
    if width is None:  # one scale for the whole tensor: any cut works
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            yield start, stop, stop - start
        return
    full = n - n % width
    step = max(1, chunk // width) * width
    for start in range(0, full, step):
        yield start, min(full, start + step), width
    if full < n:  # the last, partial block: its absmax only sees its own values (no padding)
        yield full, n, n - full


def _row_absmax(rows: torch.Tensor) -> torch.Tensor:
    """max |x| of every row, as [rows, 1] float32, from two reductions instead of a full-size abs()."""
    return torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg()).float()


def block_absmax(flat: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """Float32 absmax of every block of a flat tensor (one value when block_size is None)."""
    chunk = _chunk_elems(flat.device)
    segments = _segments(flat.numel(), block_size, chunk)
    parts = [_row_absmax(flat[a:b].view(-1, w)).view(-1) for a, b, w in segments]
    out = torch.cat(parts) if parts else flat.new_zeros(1, dtype=torch.float32)
    return out.amax(0, keepdim=True) if block_size is None else out


def absmax_scales(
    absmax: torch.Tensor, scale_dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's scales: (absmax rounded to scale_dtype, its inverse; 0 for a zero block)."""
    scale = round_scales(absmax, scale_dtype)
    return scale, torch.where(scale > 0, 1 / scale, 0.0)  # zero blocks: 0 * 0, never 0 / 0


def fake_quantize_blockwise(
    weight: torch.Tensor,
    codebook: torch.Tensor,
    block_size: int | None,
    *,
    scale_dtype: torch.dtype = torch.float16,
    table: NearestTable | None = None,
    out: torch.Tensor | None = None,
    scales: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Round every block of `weight` to `codebook` times the block's scale; same shape and dtype.

    `scales` maps block absmax values ([rows, 1] float32) to (scale, inverse): values are rounded as
    round(x * inverse) * scale, `codebook` in the units the scale implies (default: absmax_scales with
    scale_dtype, and a codebook with max 1). Works in float32 on cache-sized chunks, so besides the
    output (`out`, if given, may be the weight itself) memory holds only a few chunk-sized scratch
    buffers. A zero block stays zero; the largest value of a block maps to +-scale exactly when the
    codebook contains +-1, so rounding is idempotent.
    """
    if scales is None:
        scales = partial(absmax_scales, scale_dtype=scale_dtype)
    if table is None:
        table = build_table(codebook)
    codebook = codebook.to(weight.device)
    src = weight.detach().reshape(-1)
    if out is None:
        out = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    dst = out.view(-1)
    n, chunk = src.numel(), _chunk_elems(weight.device)
    scratch = min(n, chunk + (block_size or 0))
    x = torch.empty(scratch, dtype=torch.float32, device=weight.device)
    mid = torch.empty_like(x)
    key = torch.empty(scratch, dtype=torch.int32, device=weight.device)
    whole = None if block_size else scales(block_absmax(src, None).view(1, 1))
    for start, stop, width in _segments(n, block_size, chunk):
        m, shape = stop - start, (-1, width)
        block = src[start:stop].view(shape)
        scale, inverse = scales(_row_absmax(block)) if whole is None else whole
        unit = torch.mul(block, inverse, out=x[:m].view(shape))
        if table is None:
            unit = round_unit_bucketize(unit, codebook)
        else:
            unit = round_unit(unit, table, key[:m].view(shape), mid[:m].view(shape))
        torch.mul(unit, scale, out=dst[start:stop].view(shape))
    return out
