"""Block-scaled specs as specs: idempotence, ties and saturation of the lookup tables, the helpers GPTQ
uses, exact bit accounting, alias names, whole models, and the measured float exponent default."""

from __future__ import annotations

import math

import pytest
import torch

from kbitlaw.quant.block_scaled import element_format
from kbitlaw.quant.fake import (
    block_scales,
    fake_quantize,
    quantize_model,
    restore,
    round_blocks,
    spec_codebook,
)
from kbitlaw.quant.nearest import build_table, fixed_table, round_unit
from kbitlaw.quant.spec import ALIASES, QuantSpec, default_exponent_bits
from tests.test_formats_mx import gen

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
    from kbitlaw.checkpoint_loading import load_model

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
