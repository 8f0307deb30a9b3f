"""NVFP4 against its definition (E2M1 in blocks of 16, E4M3 block scales with round half to even and
subnormals, one fp32 scale per tensor), zero blocks in every block-scaled format, and MX and NVFP4
bit for bit against torchao's reference implementations."""

from __future__ import annotations

import pytest
import torch

from kbitlaw.quant.block_scaled import round_e4m3
from kbitlaw.quant.fake import (
    block_scales,
    fake_quantize,
)
from kbitlaw.quant.spec import QuantSpec
from tests.test_formats_mx import E2M1, E4M3, gen, ref_round

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


def test_nvfp4_hand_computed_tensor(quant_kernels):
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


def test_nvfp4_block_scale_ties_and_subnormals(quant_kernels):
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


def test_nvfp4_random_tensors_follow_the_definition(quant_kernels):
    w = torch.randn(32, 64, generator=gen(6)) * torch.rand(32, 1, generator=gen(7)) ** 4
    w[3] = 0
    assert torch.equal(fake_quantize(w, "nvfp4"), nvfp4_reference(w))
    bf = w.bfloat16().float()  # bf16 inputs land on E2M1 midpoints often: ties matter
    assert torch.equal(fake_quantize(bf, "nvfp4"), nvfp4_reference(bf))


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "mxint8", "nf4-b32-se8m0", "int4-b16-se4m3"])
def test_zero_tensors_and_blocks_stay_zero(spec, quant_kernels):
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
def test_mx_matches_torchao(torchao_mx, spec, dtype, quant_kernels):
    """Bit for bit, on normal-range weights (torchao keeps the float scale >= 2^-126 where OCP's
    E8M0 goes down to 2^-127: blocks with amax below ~2^-120 differ, on purpose)."""
    mx, _ = torchao_mx
    w = (torch.randn(64, 256, generator=gen(9)) * torch.rand(64, 1, generator=gen(10)) * 4).to(dtype)
    w[7] = 0
    assert torch.equal(fake_quantize(w.float(), spec), mx(w, spec))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_matches_torchao(torchao_mx, dtype, quant_kernels):
    _, nvfp4 = torchao_mx
    w = (torch.randn(64, 256, generator=gen(11)) * torch.rand(64, 1, generator=gen(12)) ** 3).to(dtype)
    w[5] = 0
    assert torch.equal(fake_quantize(w.float(), "nvfp4"), nvfp4(w))
