"""Quant specs, codebooks and blockwise fake quantization (against bitsandbytes and a naive reference);
whole-model quantization is in test_quantize_model.py."""

from __future__ import annotations

import os
import subprocess
import sys

import bitsandbytes.functional as bnbf
import pytest
import torch

from kbitlaw.quant.blockwise import fake_quantize_blockwise, round_scales
from kbitlaw.quant.codebooks import fixed_codebook
from kbitlaw.quant.fake import fake_quantize, outlier_features, spec_codebook
from kbitlaw.quant.spec import GRIDS, QuantSpec, resolve_grid

FIXED = ["int", "fp", "nf", "dynamic"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def student_t(shape, df: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed weights: a few values far larger than the rest."""
    g = gen(seed)
    z = torch.randn(shape, generator=g)
    chi2 = torch.randn((df_int := int(df), *shape), generator=g).pow(2).sum(0)
    return z / (chi2 / df_int).sqrt()


def reference(w: torch.Tensor, codebook: torch.Tensor, block: int | None, scale_dtype=torch.float16):
    """Naive blockwise fake quantization: pad with zeros, absmax per block, bucketize on midpoints."""
    flat = w.detach().float().reshape(-1)
    width = block or flat.numel()
    pad = -flat.numel() % width
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, width)
    scale = round_scales(blocks.abs().amax(1, keepdim=True), scale_dtype)
    unit = blocks * torch.where(scale > 0, 1 / scale, 0.0)
    q = codebook[torch.bucketize(unit, (codebook[:-1] + codebook[1:]) / 2)] * scale
    return q.reshape(-1)[: flat.numel()].view(w.shape).to(w.dtype)


# ------------------------------------------------------------------------------------------------
# Spec strings and grids
# ------------------------------------------------------------------------------------------------

CANONICAL = [
    "fp16",
    "bf16",
    "bf16-emb",
    "int4-b64",
    "nf4-b64",
    "fp4e2-b64",
    "quantile3-b128",
    "dynamic8-b256",
    "int3-b64-o2",
    "int8",
    "fp8e4",
    "nf2-b16",
    "int5-b4096-o0.5",
    "fp3e1-b64-o1.25-emb",
    "quantile4-emb",
    "fp8e7-b32",
    "dynamic2",
]


@pytest.mark.parametrize("text", CANONICAL + GRIDS["default"])
def test_canonical_strings_round_trip(text):
    assert str(QuantSpec.parse(text)) == text


def test_every_grid_spec_round_trips():
    for name, specs in GRIDS.items():
        assert [str(s) for s in resolve_grid(name)] == specs, name


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("fp4-b64", "fp4e2-b64"),
        ("fp2", "fp2e1"),
        ("fp3", "fp3e2"),
        ("fp5", "fp5e2"),
        ("fp8", "fp8e2"),
        (" NF4-B64 ", "nf4-b64"),
        ("int3-o2-b64", "int3-b64-o2"),
        ("int4-o2.50", "int4-o2.5"),
        ("int4-emb-b64", "int4-b64-emb"),
    ],
)
def test_parse_normalises(text, canonical):
    assert str(QuantSpec.parse(text)) == canonical


def test_spec_fields():
    s = QuantSpec.parse("int3-b64-o0.5-emb")
    assert (s.dtype, s.bits, s.block_size, s.outlier_pct, s.embeddings) == ("int", 3, 64, 0.5, True)
    assert QuantSpec.parse("fp6").exp_bits == 2 and QuantSpec.parse("nf4").exp_bits is None
    assert QuantSpec.parse("int4").block_size is None
    assert QuantSpec.parse("fp4-b64") == QuantSpec("fp", 4, 2, 64)
    assert QuantSpec.parse("bf16").is_baseline and not QuantSpec.parse("int8").is_baseline


@pytest.mark.parametrize(
    "text,message",
    [
        ("int9", "k must be 2..8, got 9"),
        ("nf1", "k must be 2..8, got 1"),
        ("int4-b100", "block size must be a power of two in 16..4096, got 100"),
        ("int4-b8192", "block size must be a power of two in 16..4096, got 8192"),
        ("int4-b8", "got 8"),
        ("foo4", "unknown data type 'foo'"),
        ("foo", "unknown data type 'foo'"),
        ("int", "missing bit width k in 'int'"),
        ("int4e2", "exponent bits (e2) only apply to fp, not int"),
        ("fp4e4", "fp4: exponent bits must be 1..3, got 4"),
        ("fp4e0", "fp4: exponent bits must be 1..3, got 0"),
        ("int4-x3", "unknown option '-x3'"),
        ("int4-", "unknown option '-'"),
        ("int4-b64-b128", "option '-b128' given twice"),
        ("int4-o0", "outlier percent must be in (0, 100), got 0"),
        ("int4-o100", "outlier percent must be in (0, 100), got 100"),
        ("int4-o-2", "outlier percent must be a number in (0, 100), got ''"),
        ("int4-bx", "block size must be a power of two in 16..4096, got 'x'"),
        ("fp16-b64", "fp16 is an unquantized baseline"),
        ("4bit", "cannot read '4bit'"),
    ],
)
def test_invalid_specs_name_the_bad_part(text, message):
    with pytest.raises(ValueError) as err:
        QuantSpec.parse(text)
    assert message in str(err.value)


def test_nominal_bits_per_param():
    assert QuantSpec.parse("int4-b64").bits_per_param == 4.25
    assert QuantSpec.parse("int3-b64-o2").bits_per_param == pytest.approx(3 + 0.25 + 0.02 * 13)
    assert QuantSpec.parse("nf4-b4096").bits_per_param == 4 + 16 / 4096
    assert QuantSpec.parse("fp16").bits_per_param == QuantSpec.parse("bf16").bits_per_param == 16
    assert QuantSpec.parse("int4").bits_per_param_for(1000) == 4 + 16 / 1000
    assert QuantSpec.parse("int4-b64").bits_per_param_for(100) == 4 + 2 * 16 / 100  # two blocks, one partial
    assert QuantSpec.parse("int4-b64").bits_per_param_for(6400) == 4.25


def test_grids():
    quick, default, paper = (resolve_grid(g) for g in ("quick", "default", "paper"))
    assert 4 <= len(quick) <= 5 and 12 <= len(default) <= 32
    assert {s.bits for s in default if not s.is_baseline} == set(range(3, 9))
    # a strong spec at every width: int, nf and fp (measured-best exponent) with blocks of 64
    for k in range(3, 9):
        assert {f"int{k}-b64", f"nf{k}-b64", f"fp{k}e2-b64"} <= {str(s) for s in default}
    assert {"mxfp4", "nvfp4", "int3-b64-gptq", "int4-b64-gptq", "fp4e2-b32", "fp4e2-b16"} <= {
        str(s) for s in default
    }
    demo = {str(s) for s in resolve_grid("demo")}
    assert {s.bits for s in resolve_grid("demo")} == {3, 4, 5, 6, 7, 8, 16}
    assert {"nvfp4", "int3-b64-gptq", "fp16", "int3", "int8-b64"} <= demo  # the story's specs too
    assert {"int", "fp", "nf", "quantile"} <= {s.dtype for s in default}
    assert {64, None} <= {s.block_size for s in default} and any(s.outlier_pct for s in default)
    assert len(paper) == 1 + 6 * 5 * 8 and paper[0] == QuantSpec.parse("fp16")
    assert {(s.dtype, s.bits, s.block_size) for s in paper[1:]} == {
        (d, k, b)
        for d in ("int", "fp", "quantile", "dynamic", "nf")
        for k in range(3, 9)
        for b in (64, 128, 256, 512, 1024, 2048, 4096, None)
    }


def test_resolve_grid_lists_and_errors():
    assert [str(s) for s in resolve_grid("int4-b64, nf4-b64,int4-b64")] == ["int4-b64", "nf4-b64"]
    assert [str(s) for s in resolve_grid("fp4")] == ["fp4e2"]
    with pytest.raises(ValueError, match="unknown grid .nightly.*quick, default, demo, paper"):
        resolve_grid("nightly")
    with pytest.raises(ValueError, match="unknown data type 'foo'"):
        resolve_grid("int4,foo4")


# ------------------------------------------------------------------------------------------------
# Codebooks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FIXED)
@pytest.mark.parametrize("k", range(2, 9))
def test_codebook_shape(dtype, k):
    cb = fixed_codebook(dtype, k)
    assert cb.dtype == torch.float32 and bool((cb[1:] > cb[:-1]).all())  # sorted, distinct
    assert cb.abs().max() == 1 and cb.max() == 1 and 0 in cb.tolist()
    if dtype in ("int", "fp"):
        assert len(cb) == 2**k - 1 and torch.equal(cb, -cb.flip(0))
    if dtype == "nf":
        assert len(cb) == 2**k and cb[0] == -1 and int((cb > 0).sum()) == 2 ** (k - 1)
    if dtype == "dynamic":  # bitsandbytes' map (no padding), lowest entry pinned to -1 as its CPU kernel does
        ref = bnbf.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=k).unique()
        ref[0] = -1.0
        assert torch.equal(cb, ref) and len(cb) == 2**k


def test_int_and_fp_values():
    assert torch.equal(fixed_codebook("int", 3), torch.tensor([-3, -2, -1, 0, 1, 2, 3]) / 3)
    e2m1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6]) / 6  # OCP FP4: subnormal 0.5, normals 1..6
    assert torch.equal(fixed_codebook("fp", 4, 2), torch.cat([-e2m1.flip(0)[:-1], e2m1]))
    assert torch.equal(fixed_codebook("fp", 2, 1), torch.tensor([-1.0, 0, 1]))
    fp8 = fixed_codebook("fp", 8, 4)  # e4m3 without inf/nan: max 480, min subnormal 2^-9
    assert fp8[fp8 > 0].min() == 2.0**-9 / 480


def test_nf4_equals_bitsandbytes_table():
    _, state = bnbf.quantize_4bit(torch.randn(256, generator=gen()), blocksize=64, quant_type="nf4")
    assert torch.equal(fixed_codebook("nf", 4), state.code.float())


def test_quantile_codebook_is_quantiles_of_normalised_values():
    """bitsandbytes' create_quantile_map on the fp16-scaled blocks: 15 quantiles at (i + 1/2)/15,
    plus 0, divided by the largest magnitude."""
    w = torch.randn(256, 256, generator=gen())
    cb, _ = spec_codebook(w, QuantSpec.parse("quantile4-b64"))
    scale = round_scales(w.view(-1, 64).abs().amax(1, keepdim=True))
    probs = (torch.arange(15.0).double() + 0.5) / 15
    levels = torch.quantile((w.view(-1, 64) / scale).view(-1).double(), probs)
    expected = torch.cat([levels, levels.new_zeros(1)]).sort().values
    assert len(cb) == 16 and cb.abs().max() == 1
    assert torch.allclose(cb.double(), expected / expected.abs().max(), atol=1e-6)
    assert not torch.equal(cb, spec_codebook(student_t((256, 256)), QuantSpec.parse("quantile4-b64"))[0])


# ------------------------------------------------------------------------------------------------
# Fake quantization of tensors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", ["normal", "student_t"])
@pytest.mark.parametrize("shape", [(128, 192), (37, 45)])  # the second leaves a partial block
def test_nf4_matches_bitsandbytes(dist, shape, quant_kernels):
    w = torch.randn(shape, generator=gen(1)) if dist == "normal" else student_t(shape)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    expected = bnbf.dequantize_4bit(packed, state)
    assert torch.equal(fake_quantize(w, "nf4-b64", scale_dtype=torch.float32), expected)


@pytest.mark.parametrize("k", [8, 4])
@pytest.mark.parametrize("dist", ["normal", "student_t"])
def test_dynamic_matches_bitsandbytes_blockwise(k, dist, quant_kernels):
    """bitsandbytes' CPU quantize_blockwise searches the dynamic map with its lowest entry pinned to -1
    (quantize_cpu: code[0] = -1) but dequantizes with the unpinned map; we use the pinned map on both
    sides (exact range [-1, 1], idempotent). Its binary search (BinSearch Direct2) also returns a
    non-nearest neighbour for a few values; there ours is strictly nearer."""
    w = torch.randn(96, 160, generator=gen(2)) if dist == "normal" else student_t((96, 160), seed=3)
    code = bnbf.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=k)
    packed, state = bnbf.quantize_blockwise(w, code=code, blocksize=256)
    pinned = code.clone()
    pinned[0] = -1.0
    absmax = state.absmax.repeat_interleave(256)[: w.numel()].view(w.shape)
    bnb = pinned[packed.long()] * absmax  # = dequantize_blockwise except for the pinned entry
    unpinned = bnbf.dequantize_blockwise(packed, state)
    assert torch.equal(bnb[packed != 0], unpinned[packed != 0])
    ours = fake_quantize(w, f"dynamic{k}-b256", scale_dtype=torch.float32)
    differ = ours != bnb
    assert int(differ.sum()) <= 0.005 * w.numel()
    assert bool(((w - ours).abs()[differ] < (w - bnb).abs()[differ]).all())


@pytest.mark.parametrize("dtype", FIXED)
@pytest.mark.parametrize("k", [3, 4, 8])
@pytest.mark.parametrize("block", [16, 64, 1024, None])
def test_matches_naive_reference(dtype, k, block, quant_kernels):
    w = student_t((61, 83), seed=k)  # 5063 values: partial last block for every block size
    spec = QuantSpec(dtype, k, block_size=block)
    expected = reference(w, fixed_codebook(dtype, k), block)
    assert torch.equal(fake_quantize(w, spec), expected)


def test_dense_codebook_falls_back_to_search(quant_kernels):
    cb = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 2e-7, 1.0])  # midpoints too close for the table
    w = torch.randn(4, 64, generator=gen()) * torch.logspace(-7, 0, 64)
    assert torch.equal(fake_quantize_blockwise(w, cb, 64), reference(w, cb, 64))


@pytest.mark.parametrize(
    "text",
    [
        "int4-b64",
        "int8",
        "fp4e2-b64",
        "fp8e4-b128",
        "nf4-b64",
        "nf3",
        "dynamic8-b256",
        "dynamic4-b64",
        "int3-b64-o2",
        "nf2-b16",
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_idempotent(text, dtype, quant_kernels):
    w = student_t((64, 96), seed=5).to(dtype)
    once = fake_quantize(w, text)
    assert torch.equal(fake_quantize(once, text), once)
    assert not torch.equal(once, w)


def test_quantile_is_on_its_grid_and_deterministic(quant_kernels):
    """Not idempotent: the codebook is re-estimated from its input (a second pass sees discrete data)
    and its most negative level need not be -1, so a block's absmax can change. What holds: every
    value is a codebook level times its fp16 block scale, and the result is deterministic."""
    w = torch.randn(128, 128, generator=gen(6))
    spec = QuantSpec.parse("quantile4-b64")
    once = fake_quantize(w, spec)
    cb, _ = spec_codebook(w, spec)
    scale = round_scales(w.view(-1, 64).abs().amax(1, keepdim=True))
    nearest = (once.view(-1, 64) / scale - cb[:, None, None]).abs().argmin(0)
    assert torch.equal(once.view(-1, 64), cb[nearest] * scale)
    assert torch.equal(fake_quantize(w, spec), once)


def test_zero_blocks_and_empty_tail_stay_finite(quant_kernels):
    w = torch.randn(10, 100, generator=gen())
    w[2] = 0  # a zero row spans whole blocks of 16
    for text in ["int4-b16", "nf4-b16", "quantile4-b16", "fp4e2", "dynamic8-b64"]:
        q = fake_quantize(w, text)
        assert torch.isfinite(q).all() and (q[2] == 0).all(), text
    assert torch.equal(fake_quantize(torch.zeros(5, 7), "quantile3-b16"), torch.zeros(5, 7))
    assert torch.equal(fake_quantize(torch.zeros(5, 7), "nf4"), torch.zeros(5, 7))


def test_fp16_scale_rounding_is_simulated(quant_kernels):
    w = torch.randn(64, 64, generator=gen(7))
    exact = fake_quantize(w, "int8-b64", scale_dtype=torch.float32)
    rounded = fake_quantize(w, "int8-b64")
    assert not torch.equal(exact, rounded)
    assert torch.allclose(exact, rounded, rtol=0, atol=float(w.abs().max()) / 127)  # one int8 level


def test_baselines_round_trip_through_their_dtype():
    w = torch.randn(32, 32, generator=gen()) * 3
    assert torch.equal(fake_quantize(w, "bf16"), w.bfloat16().float())
    assert torch.equal(fake_quantize(w, "fp16"), w.half().float())
    assert not torch.equal(fake_quantize(w, "bf16"), w)


@pytest.mark.parametrize(
    "text", ["int4-b64", "nf4-b64", "fp5e3-b128", "quantile4-b64", "dynamic8", "int3-b64-o2"]
)
def test_bfloat16_input_gives_same_values_as_float32(text, quant_kernels):
    w32 = torch.randn(96, 128, generator=gen(8)).bfloat16().float()  # exactly representable in bf16
    assert torch.equal(fake_quantize(w32.bfloat16(), text), fake_quantize(w32, text).bfloat16())
    assert fake_quantize(w32.half(), text).dtype == torch.float16


@pytest.mark.parametrize("dtype", ["int", "fp", "nf", "dynamic", "quantile"])
def test_error_falls_with_bits_and_smaller_blocks(dtype):
    w = torch.randn(256, 256, generator=gen(9))

    def mse(spec: QuantSpec) -> float:
        return float((fake_quantize(w, spec) - w).pow(2).mean())

    by_bits = [mse(QuantSpec(dtype, k, block_size=64)) for k in range(2, 9)]
    assert all(a > b for a, b in zip(by_bits, by_bits[1:], strict=False)), by_bits
    by_block = [mse(QuantSpec(dtype, 4, block_size=b)) for b in (16, 64, 256, 1024, 4096, None)]
    assert all(a <= b for a, b in zip(by_block, by_block[1:], strict=False)), by_block


def test_outliers_keep_widest_input_features_in_fp16(quant_kernels):
    w = torch.randn(48, 100, generator=gen(10))
    w[:, [7, 42]] *= 20  # two input features with outsized weights
    assert outlier_features(w, 2).tolist() == [7, 42]
    q = fake_quantize(w, "int3-b64-o2")
    assert torch.equal(q[:, [7, 42]], w[:, [7, 42]].half().float())
    plain = fake_quantize(w, "int3-b64")
    rest = [i for i in range(100) if i not in (7, 42)]
    assert (q[:, rest] - w[:, rest]).pow(2).mean() < 0.2 * (plain[:, rest] - w[:, rest]).pow(2).mean()
    # Conv1D orientation: input features are rows
    qt = fake_quantize(w.t().contiguous(), "int3-b64-o2", in_dim=0)
    assert torch.equal(qt[[7, 42]], w.t()[[7, 42]].half().float())


# ------------------------------------------------------------------------------------------------
# Whole models
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["nf4-b64", "int3", "fp4e2-b64", "quantile4-b64", "dynamic8-b256", "mxfp4", "nvfp4", "nf4-b64-o1"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernels_give_the_torch_ops_bits(text, dtype, monkeypatch):
    """The numba kernels against the torch ops, bit for bit, on what breaks naive loops: -0.0,
    subnormals, zero blocks, a partial last block, values spanning 10^-30..10^4, exact midpoints; and
    NaN / inf (their block turns NaN, and every other value is as without them)."""
    w = student_t((97, 131), seed=3) * torch.logspace(-30, 4, 131)
    w[5, :6] = torch.tensor([-0.0, 1e-40, -1e-41, 0.5, -0.5, 1e-45])
    w[9] = 0.0
    w[11, :4] = torch.tensor([1.0, -1.0, 0.5, 0.25])  # on the int/fp grids' midpoints after scaling
    w_nan = w.clone()
    w_nan[40, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    results = {}
    for kernels in ("torch", "numba"):
        monkeypatch.setenv("KBITLAW_KERNELS", kernels)
        results[kernels] = fake_quantize(w.to(dtype), text), fake_quantize(w_nan.to(dtype), text)
    (ops, ops_nan), (fused, fused_nan) = results["torch"], results["numba"]
    assert torch.equal(fused.view(bits), ops.view(bits))
    assert torch.equal(fused_nan.isnan(), ops_nan.isnan()) and bool(ops_nan.isnan().any())
    assert torch.equal(fused_nan.nan_to_num(0.0).view(bits), ops_nan.nan_to_num(0.0).view(bits))


def test_fused_kernels_leave_torchs_thread_count_alone():
    """numba's OpenMP layer shares torch's libgomp and sets the thread count when it starts: a
    process limited to one thread (an xdist worker, a Dask worker per core) ran its next torch ops on
    two, and trained different bits. Checked in a fresh process, where the layer starts."""
    code = (
        "import torch; from kbitlaw.quant.fake import fake_quantize; "
        "fake_quantize(torch.randn(512, 512), 'nf4-b64'); print(torch.get_num_threads())"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", KBITLAW_KERNELS="numba")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "1"
