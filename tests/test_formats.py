"""Deployed block-scaled formats against their definitions: OCP MX v1.0 (E8M0 block scales; E2M1,
E2M3, E3M2, E4M3, E5M2 and INT8 elements) and NVFP4 (E2M1 in blocks of 16, E4M3 block scales, one
fp32 scale per tensor); the element tables, hand-computed blocks, torchao's reference code where it is
installed, bit accounting, alias names, the GPTQ-facing helpers, and the float exponent default."""

from __future__ import annotations

import bisect
import math

import pytest
import torch

from kbitlaw.quant.codebooks import (
    build_table,
    e8m0_scales,
    element_format,
    fixed_codebook,
    fixed_table,
    fp_codebook,
    round_e4m3,
    round_unit,
)
from kbitlaw.quant.fake import (
    block_scales,
    fake_quantize,
    quantize_model,
    restore,
    round_blocks,
    spec_codebook,
)
from kbitlaw.quant.spec import ALIASES, QuantSpec, default_exponent_bits


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
def test_mx_float_formats_follow_the_definition(spec):
    s = QuantSpec.parse(spec)
    _, table, _, emax = TABLES[(s.bits, s.exp_bits)]
    w = blocks_of_many_magnitudes(96, 32)
    w[5] = 0
    expected = torch.tensor([ref_mx(row, table, emax) for row in w.tolist()], dtype=torch.float32)
    assert torch.equal(fake_quantize(w, spec), expected)


def test_mxint8_follows_the_definition():
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
def test_e8m0_hand_computed_blocks(values, scale, expected):
    block = mx_block(*values)
    spec = QuantSpec.parse("mxfp4")
    assert block_scales(block.view(1, 32), spec).item() == scale
    q = fake_quantize(block, spec)
    assert q.tolist() == list(expected) + [0.0] * (32 - len(expected))
    assert torch.isfinite(q).all()


def test_e8m0_clamps_at_both_ends_of_its_range():
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


def test_e8m0_for_non_ocp_types_never_saturates_nf():
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


# ------------------------------------------------------------------------------------------------
# NVFP4: per-tensor fp32 scale, E4M3 block scales, E2M1 elements
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,expected",
    [
        (448.0, 448.0),
        (464.0, 448.0),  # would round to 480, which E4M3 does not have: saturates
        (1e6, 448.0),
        (17.0, 16.0),  # tie between 16 (even) and 18
        (19.0, 20.0),  # tie between 18 and 20 (even)
        (74.66, 72.0),
        (2.0**-10, 0.0),  # half the smallest subnormal: tie to 0
        (1.5 * 2.0**-9, 2.0**-8),  # tie between 2^-9 (odd) and 2^-8
        (0.75 * 2.0**-9, 2.0**-9),
        (2.0**-6 * 1.0625, 2.0**-6),  # tie at the smallest normal binade: to even mantissa
        (0.0, 0.0),
    ],
)
def test_e4m3_rounding(x, expected):
    assert round_e4m3(torch.tensor([x])).item() == expected


def test_e4m3_rounding_matches_the_table_reference():
    x = (torch.rand(4000, generator=gen(4)) * 2 - 1) * 2.0 ** torch.randint(
        -12, 10, (4000,), generator=gen(5)
    )
    ours = round_e4m3(x).tolist()
    assert ours == [ref_round(v, E4M3) for v in x.tolist()]


def nvfp4_reference(w: torch.Tensor) -> torch.Tensor:
    """NVFP4 from its definition, in float32 arithmetic: S = amax / (6 * 448), s = E4M3(amax_b / 6 / S)
    kept in [2^-9, 448], elements E2M1(x / (s S)) (RNE, saturating), values elements * (S s)."""
    blocks = w.float().view(-1, 16)
    amax_t = blocks.abs().max()
    if amax_t == 0:
        return torch.zeros_like(w)
    per_tensor = amax_t / 2688
    out = []
    for row in blocks:
        amax = row.abs().max()
        if amax == 0:
            out.append([0.0] * 16)
            continue
        s = round_e4m3(((amax / 6) / per_tensor).clamp(2.0**-9, 448).view(1))[0]
        inverse, scale = (1 / per_tensor) / s, per_tensor * s
        out.append([ref_round(v, E2M1) * scale.item() for v in (row * inverse).tolist()])
    return torch.tensor(out, dtype=torch.float32).view_as(w)


def test_nvfp4_hand_computed_tensor():
    w = torch.zeros(5, 16)
    w[0, :6] = torch.tensor([6.0, 5.0, 2.5, -0.2, 0.26, 3.0])  # tensor amax 6: S = 1/448, s = 448, E = 1
    w[1, :3] = torch.tensor([1.0, 0.5, -0.1])  # s = E4M3(1/6 * 448 = 74.67) = 72: 1 / (72/448) = 6.2 -> 6
    w[2, :2] = torch.tensor([6 * 2.0**-20, 2.0**-20])  # s = 448 * 2^-20 < 2^-10 would be 0: kept at 2^-9
    spec = QuantSpec.parse("nvfp4")
    s_t = torch.tensor(6.0) / 2688
    scales = block_scales(w, spec).view(-1)
    assert scales.tolist() == [
        (s_t * 448 * 6).item(),
        (s_t * 72 * 6).item(),
        (s_t * 2.0**-9 * 6).item(),
        0,
        0,
    ]
    q = fake_quantize(w, spec)
    e1 = (s_t * 72).item()
    assert q[0, :6].tolist() == [6.0, 4.0, 2.0, -0.0, 0.5, 3.0]  # 5 and 2.5 are ties: to even
    assert q[1, :3].tolist() == [6 * e1, 3 * e1, -0.5 * e1]  # 0.5 / e1 = 3.1 -> 3; 0.1 / e1 = 0.62 -> 0.5
    assert q[2, :2].tolist() == [(s_t * 2.0**-9 * 1.5).item(), 0.0]  # 1.3125 -> 1.5, 0.219 -> 0
    assert (q[3:] == 0).all()
    assert torch.equal(q, nvfp4_reference(w))


def test_nvfp4_block_scale_ties_and_subnormals():
    # tensor amax 2688: S = 1, so s = E4M3(amax_b / 6) exactly
    w = torch.zeros(4, 16)
    w[0, 0] = 2688.0
    w[1, 0] = 102.0  # 102 / 6 = 17: tie between 16 and 18 -> 16; 102 / 16 = 6.375 saturates to 6
    w[2, 0] = 6 * 1.5 * 2.0**-9  # s = 1.5 * 2^-9: tie between 2^-9 and 2^-8 -> 2^-8; 4.5 -> 4 (tie)
    w[3, 0] = 6 * 2.0**-12  # below half the smallest subnormal: kept at 2^-9 (0.75 -> 1, a tie)
    q = fake_quantize(w, "nvfp4")
    assert q[:, 0].tolist() == [2688.0, 96.0, 4 * 2.0**-8, 2.0**-9]
    assert block_scales(w, QuantSpec.parse("nvfp4")).view(-1).tolist() == [
        2688.0,
        96.0,
        6 * 2.0**-8,
        6 * 2.0**-9,
    ]


def test_nvfp4_random_tensors_follow_the_definition():
    w = torch.randn(32, 64, generator=gen(6)) * torch.rand(32, 1, generator=gen(7)) ** 4
    w[3] = 0
    assert torch.equal(fake_quantize(w, "nvfp4"), nvfp4_reference(w))
    bf = w.bfloat16().float()  # bf16 inputs land on E2M1 midpoints often: ties matter
    assert torch.equal(fake_quantize(bf, "nvfp4"), nvfp4_reference(bf))


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "mxint8", "nf4-b32-se8m0", "int4-b16-se4m3"])
def test_zero_tensors_and_blocks_stay_zero(spec):
    assert torch.equal(fake_quantize(torch.zeros(4, 64), spec), torch.zeros(4, 64))
    w = torch.randn(4, 64, generator=gen(8))
    w[1] = 0
    q = fake_quantize(w, spec)
    assert torch.isfinite(q).all() and (q[1] == 0).all()


# ------------------------------------------------------------------------------------------------
# torchao's reference implementations (when installed)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchao_mx():
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.mx_tensor import MXTensor
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    elements = {
        "mxfp4": torch.float4_e2m1fn_x2,
        "mxfp6": DTYPE_FP6_E2M3,
        "fp6e3-b32-se8m0": DTYPE_FP6_E3M2,
        "mxfp8": torch.float8_e4m3fn,
        "fp8e5-b32-se8m0": torch.float8_e5m2,
    }

    def mx(w: torch.Tensor, spec: str) -> torch.Tensor:
        return MXTensor.to_mx(w, elements[spec], 32).dequantize(torch.float32)

    def nvfp4(w: torch.Tensor) -> torch.Tensor:
        scale = per_tensor_amax_to_scale(w.float().abs().max())
        return NVFP4Tensor.to_nvfp4(w, per_tensor_scale=scale).dequantize(torch.float32)

    return mx, nvfp4


@pytest.mark.parametrize("spec", ["mxfp4", "mxfp6", "fp6e3-b32-se8m0", "mxfp8", "fp8e5-b32-se8m0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx_matches_torchao(torchao_mx, spec, dtype):
    """Bit for bit, on normal-range weights (torchao keeps the float scale >= 2^-126 where OCP's
    E8M0 goes down to 2^-127: blocks with amax below ~2^-120 differ, on purpose)."""
    mx, _ = torchao_mx
    w = (torch.randn(64, 256, generator=gen(9)) * torch.rand(64, 1, generator=gen(10)) * 4).to(dtype)
    w[7] = 0
    assert torch.equal(fake_quantize(w.float(), spec), mx(w, spec))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_matches_torchao(torchao_mx, dtype):
    _, nvfp4 = torchao_mx
    w = (torch.randn(64, 256, generator=gen(11)) * torch.rand(64, 1, generator=gen(12)) ** 3).to(dtype)
    w[5] = 0
    assert torch.equal(fake_quantize(w.float(), "nvfp4"), nvfp4(w))


# ------------------------------------------------------------------------------------------------
# Properties: idempotence, ties, saturation of the lookup tables, the GPTQ-facing helpers
# ------------------------------------------------------------------------------------------------

# Not nf/dynamic with e8m0: a block whose top value rounds to an entry <= 1/2 gets half the scale
# the second time (X = 2^ceil(log2 amax)), and those grids are not scale-invariant.
BLOCK_SCALED = ["mxfp4", "mxfp6", "mxfp8", "mxint8", "nvfp4", "fp6e3-b32-se8m0", "fp8e5-b64-se8m0"]
BLOCK_SCALED += ["int4-b16-se4m3", "fp3e2-b16-se4m3", "nf4-b16-se4m3", "int4-b64-sbf16"]


@pytest.mark.parametrize("spec", BLOCK_SCALED)
def test_quantizing_a_quantized_tensor_changes_nothing(spec):
    w = torch.randn(48, 320, generator=gen(13)) * torch.rand(48, 1, generator=gen(14))
    once = fake_quantize(w, spec)
    assert torch.equal(fake_quantize(once, spec), once)


def test_bf16_block_scales_are_simulated():
    w = torch.randn(64, 64, generator=gen(15))
    rows = w.view(-1, 64)
    scales = block_scales(rows, QuantSpec.parse("int8-b64-sbf16"))
    assert torch.equal(scales, rows.abs().amax(1, keepdim=True).bfloat16().float())
    assert not torch.equal(fake_quantize(w, "int8-b64-sbf16"), fake_quantize(w, "int8-b64"))


def test_lookup_tables_saturate_beyond_the_codebook():
    """x / scale past +-1 (GPTQ's updated weights, e8m0 blocks) rounds to the +-1 entries."""
    x = torch.tensor([1.0001, 1.5, 7.92, 1e30, 3e38, -1.2, -1e30, -3e38])
    for dtype, k, e in [("int", 4, None), ("fp", 4, 2), ("fp", 8, 4), ("nf", 4, None), ("dynamic", 8, None)]:
        table = fixed_table(dtype, k, e, torch.device("cpu"))
        out = round_unit(x.clone(), table, torch.empty(8, dtype=torch.int32), torch.empty(8))
        assert out.tolist() == [1.0] * 5 + [-1.0] * 3, (dtype, k)


def test_ties_even_table_breaks_ties_to_the_even_code():
    table = build_table(element_format("fp", 4, 2).values, ties="even")
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -2.5, -5.0, 2.5001, 2.4999])
    out = round_unit(x.clone(), table, torch.empty(13, dtype=torch.int32), torch.empty(13))
    assert out.tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -1.0, -2.0, -4.0, 3.0, 2.0]
    lower = build_table(element_format("fp", 4, 2).values)  # the fp16-scale specs: ties go down
    out = round_unit(x[:7].clone(), lower, torch.empty(7, dtype=torch.int32), torch.empty(7))
    assert out.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    "spec", ["mxfp4", "mxint8", "mxfp8", "nvfp4", "nf4-b32-se8m0", "int4-b64", "fp4e2-b64"]
)
def test_round_blocks_is_fake_quantize(spec):
    """GPTQ's helpers: round_blocks reproduces fake_quantize exactly from block absmax values, and
    dividing by block_scales then rounding to the unit codebook gives the same codes on float32 data."""
    s = QuantSpec.parse(spec)
    w = torch.randn(128, 256, generator=gen(16))
    for x in (w, w.bfloat16().float()):
        rows = x.view(-1, s.block_size)
        absmax = rows.abs().amax(1, keepdim=True)
        q = round_blocks(rows, absmax, s, tensor_absmax=x.abs().max())
        assert torch.equal(q.view_as(x), fake_quantize(x, s))
    rows = w.view(-1, s.block_size)
    scale = block_scales(rows, s, tensor_absmax=w.abs().max())
    codebook, _ = spec_codebook(w, s)
    unit = rows / scale
    codes = torch.bucketize(unit, (codebook[:-1] + codebook[1:]) / 2)
    ours = torch.bucketize(fake_quantize(w, s).view_as(rows) / scale, (codebook[:-1] + codebook[1:]) / 2)
    assert (codes != ours).sum() <= 4  # only values within an ulp of a midpoint may differ


def test_gptq_scales_use_the_whole_tensors_absmax_for_nvfp4():
    w = torch.randn(8, 64, generator=gen(17))
    spec = QuantSpec.parse("nvfp4")
    part = w[:, :16]
    own = block_scales(part, spec)
    shared = block_scales(part, spec, tensor_absmax=w.abs().max())
    assert torch.equal(shared, block_scales(w.reshape(-1, 16), spec).view(8, 4)[:, :1])
    assert not torch.equal(own, shared)


# ------------------------------------------------------------------------------------------------
# Bits, names, models
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,bpp,bits_4096x4096",
    [
        ("mxfp4", 4.25, 4 * 4096**2 + 8 * 4096**2 // 32),
        ("nvfp4", 4.5, 4 * 4096**2 + 8 * 4096**2 // 16 + 32),
        ("mxfp6", 6.25, 6 * 4096**2 + 8 * 4096**2 // 32),
        ("mxfp8", 8.25, 8 * 4096**2 + 8 * 4096**2 // 32),
        ("mxint8", 8.25, 8 * 4096**2 + 8 * 4096**2 // 32),
        ("int4-b64-sbf16", 4.25, 4 * 4096**2 + 16 * 4096**2 // 64),
    ],
)
def test_bits(spec, bpp, bits_4096x4096):
    s = QuantSpec.parse(spec)
    assert s.bits_per_param == bpp
    assert s.tensor_bits(4096 * 4096) == bits_4096x4096
    assert s.tensor_bits(100) == s.bits * 100 + s.scale_bits * math.ceil(100 / s.block_size) + (
        32 if spec == "nvfp4" else 0
    )


@pytest.mark.parametrize("alias", list(ALIASES))
def test_alias_names_round_trip(alias):
    assert str(QuantSpec.parse(alias)) == alias
    assert str(QuantSpec.parse(ALIASES[alias])) == alias
    assert QuantSpec.parse(alias).long_form() == ALIASES[alias]
    assert str(QuantSpec.parse(alias + "-gptq")) == alias + "-gptq"
    assert str(QuantSpec.parse(ALIASES[alias] + "-gptq")) == alias + "-gptq"


def test_other_block_scaled_specs_print_in_long_form():
    for text in ["fp4e2-b64-se8m0", "fp4e2-b32-se4m3", "int4-b16-se4m3", "nf4-b32-se8m0"]:
        assert str(QuantSpec.parse(text)) == text


@pytest.mark.parametrize("spec,bpp", [("mxfp4", 4.25), ("nvfp4", 4.5)])
def test_quantize_model_and_restore_with_deployed_formats(tiny_checkpoint, spec, bpp):
    from kbitlaw.checkpoints import load_model

    model = load_model(str(tiny_checkpoint))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = quantize_model(model, spec)
    numels = [
        p.numel()
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[0] in report.layer_mse and n.endswith("weight")
    ]
    assert report.n_params_quantized == sum(numels) > 0
    extra = 32 * len(numels) if spec == "nvfp4" else 0  # one fp32 per-tensor scale each
    assert report.bits_per_param == pytest.approx(bpp + extra / sum(numels), rel=1e-12)
    params = dict(model.named_parameters())
    for name in report.layer_mse:
        original = before[name + ".weight"]
        assert torch.equal(params[name + ".weight"].detach(), fake_quantize(original, spec))
        assert not torch.equal(params[name + ".weight"].detach(), original)
    restore(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# ------------------------------------------------------------------------------------------------
# The float exponent default (bench/exponents.py)
# ------------------------------------------------------------------------------------------------


def test_default_exponent_bits_is_the_measured_best():
    assert [default_exponent_bits(k) for k in range(2, 9)] == [1, 2, 2, 2, 2, 2, 2]
    assert str(QuantSpec.parse("fp5-b64")) == "fp5e2-b64" and str(QuantSpec.parse("fp8")) == "fp8e2"


def test_e2_beats_the_papers_exponents_on_heavy_tailed_weights():
    g = gen(18)
    z = torch.randn(1 << 16, generator=g)
    w = z / (torch.randn(4, 1 << 16, generator=g).pow(2).sum(0) / 4).sqrt()  # Student-t, nu = 4

    def rel(spec: str) -> float:
        return float((fake_quantize(w, spec) - w).pow(2).sum() / w.pow(2).sum())

    for k in (5, 7, 8):
        assert rel(f"fp{k}e2-b64") < rel(f"fp{k}e{math.ceil(k / 2)}-b64") / 2, k
