"""Deployed block-scaled formats against their definitions: OCP MX v1.0 (E8M0 block scales; E2M1,
E2M3, E3M2, E4M3, E5M2 and INT8 elements) and NVFP4 (E2M1 in blocks of 16, E4M3 block scales, one
fp32 scale per tensor). This file: the element tables, MX blocks against the definition, and
hand-computed E8M0 scales; test_formats_nvfp4.py: E4M3 scales, NVFP4 and torchao's reference code;
test_formats_specs.py: properties, bit accounting, names and the float exponent default."""

from __future__ import annotations

import bisect
import math

import pytest
import torch

from kbitlaw.quant.block_scaled import e8m0_scales, element_format
from kbitlaw.quant.codebooks import fixed_codebook, fp_codebook
from kbitlaw.quant.fake import (
    block_scales,
    fake_quantize,
    spec_codebook,
)
from kbitlaw.quant.spec import QuantSpec


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Element tables (positive values), from the OCP MX v1.0 spec's tables
# ------------------------------------------------------------------------------------------------

E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
E2M3 = [i / 8 for i in range(8)] + [1 + i / 8 for i in range(8)] + [2 + i / 4 for i in range(8)]
E2M3 += [4 + i / 2 for i in range(8)]  # ... 7.5
E3M2 = [0, 0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.5, 0.625, 0.75, 0.875]
E3M2 += [1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28]


def torch_fp8_values(dtype: torch.dtype) -> list[float]:
    """Every finite non-negative value of a torch FP8 dtype, decoded from all 128 positive codes."""
    values = torch.arange(128, dtype=torch.uint8).view(dtype).float()
    return sorted(set(values[torch.isfinite(values)].tolist()))


E4M3 = torch_fp8_values(torch.float8_e4m3fn)  # OCP E4M3: only S.1111.111 is NaN
E5M2 = torch_fp8_values(torch.float8_e5m2)  # OCP E5M2: IEEE, top exponent = inf / NaN

TABLES = {  # spec data type -> (OCP name, positive values, max normal, emax)
    (4, 2): ("E2M1", E2M1, 6.0, 2),
    (6, 2): ("E2M3", E2M3, 7.5, 2),
    (6, 3): ("E3M2", E3M2, 28.0, 4),
    (8, 4): ("E4M3", E4M3, 448.0, 8),
    (8, 5): ("E5M2", E5M2, 57344.0, 15),
}


def test_the_reference_tables_are_the_ocp_ones():
    assert len(E2M3) == len(E3M2) == 32 and len(E4M3) == 127 and len(E5M2) == 124
    assert (E4M3[1], E4M3[8], E4M3[-1]) == (2.0**-9, 2.0**-6, 448.0)  # min subnormal, min normal, max
    assert (E5M2[1], E5M2[4], E5M2[-1]) == (2.0**-16, 2.0**-14, 57344.0)
    assert (E3M2[1], E3M2[4]) == (2.0**-4, 2.0**-2) and E2M3[1] == 0.125


@pytest.mark.parametrize("k,e", list(TABLES))
def test_element_formats_are_the_ocp_tables(k, e):
    name, table, top, emax = TABLES[(k, e)]
    fmt = element_format("fp", k, e)
    assert fmt.values.tolist() == [-v for v in reversed(table[1:])] + table, name
    assert (fmt.elem_max, fmt.emax, fmt.ties) == (top, emax, "even")
    # the unit codebook block-scaled specs divide by (spec_codebook): the table / its max
    unit = fixed_codebook("fp", k, e, ocp=True)
    assert torch.equal(unit, (fmt.values.double() / top).float())


@pytest.mark.parametrize("k,e", [(4, 2), (6, 2), (6, 3)])
def test_plain_fp_codebooks_are_the_ocp_fp4_fp6_tables(k, e):
    """OCP FP4/FP6 have no inf/NaN codes: our `fp` codebooks are exactly them, normalised."""
    name, table, top, _ = TABLES[(k, e)]
    assert torch.equal(fp_codebook(k, e), element_format("fp", k, e).values.double().div(top).float()), name


def test_plain_fp8_is_the_papers_all_finite_float_not_ocp():
    """`fp8e4` (-b<B> with fp16 scales) keeps every code finite, as the paper's FP8 ("no NaN") and
    bitsandbytes' create_fp8_map: max 480 = 1.875 * 2^8, one level above OCP E4M3's 448; fp8e5 has
    the whole top binade OCP E5M2 reserves for inf/NaN. Block-scaled specs use the OCP tables."""

    def signed(pos: list[float], top: float) -> torch.Tensor:
        return (torch.tensor([-v for v in reversed(pos[1:])] + pos, dtype=torch.float64) / top).float()

    assert torch.equal(fp_codebook(8, 4), signed(E4M3 + [480.0], 480))
    assert torch.equal(fp_codebook(8, 5), signed(E5M2 + [65536.0, 81920.0, 98304.0, 114688.0], 114688))


def test_mxint8_grid_and_its_analogue_for_other_widths():
    fmt = element_format("int", 8)
    assert fmt.values.tolist() == [i / 64 for i in range(-127, 128)]  # two's complement, 2^-6, no -128
    assert (fmt.elem_max, fmt.emax) == (127 / 64, 0)
    assert element_format("int", 4).values.tolist() == [i / 4 for i in range(-7, 8)]
    assert element_format("int", 2).values.tolist() == [-1.0, 0.0, 1.0]
    assert torch.equal(spec_codebook(torch.ones(4), QuantSpec.parse("mxint8"))[0], fixed_codebook("int", 8))


# ------------------------------------------------------------------------------------------------
# A from-the-definition reference (python floats, exact for these dyadic grids)
# ------------------------------------------------------------------------------------------------


def ref_round(v: float, table: list[float]) -> float:
    """Round to the nearest value of a symmetric grid (positive half `table`, ascending from 0),
    ties to the even code (even index), saturating at the largest value."""
    a = abs(v)
    if a >= table[-1]:
        return math.copysign(table[-1], v)
    i = bisect.bisect_right(table, a) - 1
    lo, hi = table[i], table[i + 1]
    pick = lo if a - lo < hi - a else hi if hi - a < a - lo else (lo if i % 2 == 0 else hi)
    return math.copysign(pick, v)


def ref_mx(block: list[float], table: list[float], emax: int) -> list[float]:
    """OCP MX v1.0 section 6.3: X = 2^(floor(log2 amax) - emax), E8M0 range, elements RNE, saturate."""
    amax = max(abs(v) for v in block)
    if amax == 0:
        return [0.0] * len(block)
    mantissa, exponent = math.frexp(amax)
    x = 2.0 ** min(127, max(-127, exponent - 1 - emax))
    return [ref_round(v / x, table) * x for v in block]


def blocks_of_many_magnitudes(n_blocks: int, width: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    w = torch.randn(n_blocks, width, generator=g)
    magnitude = 2.0 ** torch.randint(-140, 120, (n_blocks, 1), generator=g).double()
    return (w.double() * magnitude).float()  # some blocks subnormal, some near float32's top


@pytest.mark.parametrize("spec", ["mxfp4", "mxfp6", "fp6e3-b32-se8m0", "mxfp8", "fp8e5-b32-se8m0"])
def test_mx_float_formats_follow_the_definition(spec, quant_kernels):
    s = QuantSpec.parse(spec)
    _, table, _, emax = TABLES[(s.bits, s.exp_bits)]
    w = blocks_of_many_magnitudes(96, 32)
    w[5] = 0
    expected = torch.tensor([ref_mx(row, table, emax) for row in w.tolist()], dtype=torch.float32)
    assert torch.equal(fake_quantize(w, spec), expected)


def test_mxint8_follows_the_definition(quant_kernels):
    table = [i / 64 for i in range(128)]
    w = blocks_of_many_magnitudes(96, 32, seed=1)
    w[0] = 0
    w[0, :4] = torch.tensor([1.0, 1 / 128, 3 / 128, -3 / 128])  # amax 1: X = 1; ties on 1/64 steps
    expected = torch.tensor([ref_mx(row, table, 0) for row in w.tolist()], dtype=torch.float32)
    q = fake_quantize(w, "mxint8")
    assert torch.equal(q, expected)
    assert q[0, :4].tolist() == [1.0, 0.0, 2 / 64, -2 / 64]  # ties to the even integer


# ------------------------------------------------------------------------------------------------
# E8M0 scales of hand-computed blocks (mxfp4: E2M1, emax 2, blocks of 32)
# ------------------------------------------------------------------------------------------------


def mx_block(*values: float) -> torch.Tensor:
    return torch.tensor(list(values) + [0.0] * (32 - len(values)))


@pytest.mark.parametrize(
    "values,scale,expected",
    [
        # amax exactly a power of two: X = 2^(2 - 2) = 1, the elements are the values rounded to E2M1
        ((4.0, 3.3, -2.6, 0.7, 0.2, 2.5, -5.0), 6.0, (4.0, 3.0, -3.0, 0.5, 0.0, 2.0, -4.0)),
        # amax 6 * 2^-2: X = 2^-2, nothing saturates
        ((1.5, 0.8, -0.3), 1.5, (1.5, 0.75, -0.25)),
        # amax just below one: X = 2^(-1 - 2) = 1/8, so 0.99 / X = 7.92 saturates to 6 -> 0.75
        ((0.99, 0.8, 0.7, 0.6, -0.99), 0.75, (0.75, 0.75, 0.75, 0.5, -0.75)),
        # amax / X in [6, 8) saturates (OCP behaviour): 7.5 -> 6, and 7 -> 6
        ((7.5, 7.0, 5.0, 4.5), 6.0, (6.0, 6.0, 4.0, 4.0)),
        # ties go to the even code: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 3.5 -> 4, 5 -> 4
        ((4.0, 0.25, 0.75, 1.25, 1.75, 3.5, -0.75, -3.5), 6.0, (4.0, 0.0, 1.0, 1.0, 2.0, 4.0, -1.0, -4.0)),
        # zero block: zeros, scale 0
        ((), 0.0, ()),
        # amax 2^-126 (float32's smallest normal): floor - 2 = -128 is clamped to -127; x / X = 2
        ((2.0**-126,), 2.0**-127 * 6, (2.0**-126,)),
        # a subnormal block: X = 2^-127 (clamped); 1e-40 / X = 0.017 rounds to 0 in E2M1
        ((1e-40, -1e-41), 2.0**-127 * 6, (0.0, 0.0)),
    ],
)
def test_e8m0_hand_computed_blocks(values, scale, expected, quant_kernels):
    block = mx_block(*values)
    spec = QuantSpec.parse("mxfp4")
    assert block_scales(block.view(1, 32), spec).item() == scale
    q = fake_quantize(block, spec)
    assert q.tolist() == list(expected) + [0.0] * (32 - len(expected))
    assert torch.isfinite(q).all()


def test_e8m0_clamps_at_both_ends_of_its_range(quant_kernels):
    tiny, huge = torch.tensor([[1e-45]]), torch.tensor([[3e38]])
    assert e8m0_scales(tiny, 2).item() == 2.0**-127 and e8m0_scales(tiny, None).item() == 2.0**-127
    assert e8m0_scales(huge, 0).item() == 2.0**127  # floor(log2 3e38) = 127: at the top, not past it
    assert e8m0_scales(huge, None).item() == 2.0**127  # ceil would be 2^128: clamped to 2^127
    # nf with e8m0 at the top clamp: 3e38 / 2^127 = 1.76 saturates to nf4's 1
    q = fake_quantize(torch.tensor([3e38] + [0.0] * 31), "nf4-b32-se8m0")
    assert q[0].item() == 2.0**127
    # mxfp8 on a subnormal block: X = 2^-127, 1e-41 * 2^127 = 1.7e-3 rounds to E4M3's 2^-9
    q = fake_quantize(torch.tensor([1e-41] + [0.0] * 31), "mxfp8")
    assert q[0].item() == 2.0**-136


def test_e8m0_for_non_ocp_types_never_saturates_nf(quant_kernels):
    """nf/dynamic/quantile have no element exponent: X = 2^ceil(log2 amax), so x / X is in [-1, 1]."""
    spec = QuantSpec.parse("nf4-b32-se8m0")
    block = mx_block(0.75, -0.3, 0.1)
    assert block_scales(block.view(1, 32), spec).item() == 1.0
    assert block_scales(mx_block(0.5).view(1, 32), spec).item() == 0.5  # exact power of two: itself
    q = fake_quantize(block, spec)
    nf4 = fixed_codebook("nf", 4)
    assert q[0].item() == nf4[(nf4 - 0.75).abs().argmin()].item()
    w = torch.randn(64, 128, generator=gen(3))
    assert (
        fake_quantize(w, spec).abs() <= w.view(-1, 32).abs().amax(1).repeat_interleave(32).view_as(w) * 2
    ).all()
