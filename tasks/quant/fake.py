"""Fake quantization of tensors and whole models (spec grammar and bit accounting: quant/spec.py).

Fake quantization rounds a weight to what a k-bit kernel would compute from it and stores the
result back in the weight's own dtype: flatten, cut into blocks of B values, divide each block by its
scale (`_scales`: the absmax rounded to fp16 as a kernel would store it, or an OCP MX E8M0 power of
two, or NVFP4's E4M3 scale times a per-tensor fp32 one), round every value to the nearest codebook
entry (quant/codebooks.py), multiply back. Evaluating the model then measures the quantization damage
without k-bit kernels.

    spec = QuantSpec.parse("nf4-b64")
    report = quantize_model(model, spec)   # in place, from a pristine copy kept on the side
    ...evaluate...
    restore(model)                         # bit-identical original weights
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from kbitlaw.model_structure import transformer_linears
from kbitlaw.quant.block_scaled import e8m0_scales, element_format, element_table, nvfp4_scales
from kbitlaw.quant.blockwise import _row_absmax, absmax_scales, block_absmax, fake_quantize_blockwise
from kbitlaw.quant.codebooks import quantile_codebook
from kbitlaw.quant.nearest import NearestTable, build_table, fixed_table, round_unit, round_unit_bucketize
from kbitlaw.quant.spec import QuantSpec, outlier_count

TORCH_BASELINES = {"fp16": torch.float16, "bf16": torch.bfloat16}
QUANTILE_SAMPLES = 1 << 20  # quantile codebooks are estimated from at most this many values


# ---------------------------------------------------------------------------------------------
# Fake quantization of one tensor
# ---------------------------------------------------------------------------------------------


def spec_codebook(
    weight: torch.Tensor, spec: QuantSpec, scale_dtype: torch.dtype = torch.float16, seed: int = 0
) -> tuple[torch.Tensor, NearestTable | None]:
    """The unit codebook (largest entry 1) a spec rounds `weight / block_scales(...)` to, with its
    cached lookup table for fixed data types. Block-scaled specs (-se8m0, -se4m3) use their element
    format divided by its largest value (mxfp8: OCP E4M3 / 448).

    quantile: equal-mass quantiles of the tensor's values divided by their block scales, from at most
    QUANTILE_SAMPLES values: runs of 256 consecutive values at random (seeded) positions, so the
    sample is drawn without random-access gathers.
    """
    if spec.dtype != "quantile":
        ocp = spec.scale_format in ("e8m0", "e4m3")
        table = fixed_table(spec.dtype, spec.bits, spec.exp_bits, weight.device, ocp=ocp)
        return table.codebook, table
    flat = weight.detach().reshape(-1)
    n, width, run = flat.numel(), spec.block_size or flat.numel(), 256
    absmax = block_absmax(flat, spec.block_size)
    scales = _scales(absmax.view(-1, 1), spec, absmax.max(), scale_dtype)[0].view(-1)
    if n <= QUANTILE_SAMPLES:
        values, positions = flat, torch.arange(n, device=flat.device)
    else:
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(n // run, (QUANTILE_SAMPLES // run,), generator=gen).to(flat.device) * run
        positions = (starts[:, None] + torch.arange(run, device=flat.device)).view(-1)
        values = flat[: n - n % run].view(-1, run).index_select(0, starts // run).view(-1)
    s = scales[positions // width]
    normalised = torch.where(s > 0, values.float() / s, 0.0).clamp(-1, 1)
    return quantile_codebook(normalised, spec.bits), None


def _scales(
    absmax: torch.Tensor,
    spec: QuantSpec,
    tensor_absmax: torch.Tensor | None,
    scale_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """THE definition of block scales: (scale, inverse) per block absmax ([rows, 1] float32), in the
    units of the spec's element grid (quant/block_scaled.py, element_format; fp16/bf16 scales: the unit
    codebook). Values quantize as round(x * inverse) * scale; a zero block has scale and inverse 0.

    fp16/bf16: the absmax rounded to that dtype (scale_dtype for fp16, e.g. float32 for references).
    e8m0:      OCP MX: 2^(floor(log2 amax) - emax) clamped to 2^[-127, 127] (2^ceil(log2 amax) for
               nf/dynamic/quantile); the elements saturate at +-elem_max.
    e4m3:      NVFP4: E4M3(amax / elem_max / S) * S with S = tensor_absmax / (elem_max * 448).
    """
    if spec.scale_format in ("fp16", "bf16"):
        return absmax_scales(absmax, scale_dtype if spec.scale_format == "fp16" else torch.bfloat16)
    fmt = element_format(spec.dtype, spec.bits, spec.exp_bits)
    if spec.scale_format == "e8m0":
        scale = e8m0_scales(absmax, fmt.emax)
        return scale, torch.where(scale > 0, 1 / scale, 0.0)  # 1 / 2^e is exact
    if spec.scale_format == "e4m3":
        if tensor_absmax is None:
            tensor_absmax = absmax.max()
        return nvfp4_scales(absmax, torch.as_tensor(tensor_absmax, device=absmax.device), fmt.elem_max)
    raise ValueError(f"unknown scale format {spec.scale_format!r}")


def block_scales(
    blocks: torch.Tensor,
    spec: QuantSpec,
    *,
    tensor_absmax: torch.Tensor | None = None,
    scale_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """The scale each row of `blocks` ([n_blocks, B], or one row per tensor) divides by before its
    values round to the spec's unit codebook (spec_codebook: largest entry 1; values beyond +-1
    saturate to the +-1 entries), as the spec's scale format stores it: float32 [n_blocks, 1].
    `tensor_absmax`: the whole tensor's absmax, for formats with a per-tensor scale (e4m3; default:
    that of `blocks`). Shared by round-to-nearest and GPTQ (which fixes a group's scales when it
    reaches the group's first column): both come from `_scales`; for -se8m0 / -se4m3 this is the
    element scale times the element format's largest value (mxfp4: 2^(floor(log2 amax) - 2) * 6)."""
    scale, _ = _scales(_row_absmax(blocks), spec, tensor_absmax, scale_dtype)
    if spec.scale_format in ("fp16", "bf16"):
        return scale
    return scale * element_format(spec.dtype, spec.bits, spec.exp_bits).elem_max


def _grid(
    spec: QuantSpec, codebook: torch.Tensor, table: NearestTable | None
) -> tuple[torch.Tensor, NearestTable | None]:
    """The values `_scales`' inverse maps a block to, and their table, from spec_codebook's unit
    codebook: block-scaled specs round in their element format's own units (exact midpoints, ties to
    even), not in the unit codebook's."""
    if spec.scale_format in ("e8m0", "e4m3") and spec.dtype != "quantile":
        device = codebook.device
        grid = element_format(spec.dtype, spec.bits, spec.exp_bits).values.to(device)
        return grid, element_table(spec.dtype, spec.bits, spec.exp_bits, device)
    return codebook, table if table is not None else build_table(codebook)


def round_blocks(
    values: torch.Tensor,
    absmax: torch.Tensor,
    spec: QuantSpec,
    *,
    tensor_absmax: torch.Tensor | None = None,
    codebook: torch.Tensor | None = None,
    scale_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """`values` ([rows, n], each row in one block) quantized exactly as fake_quantize quantizes them,
    given the absmax ([rows, 1]) of the block each row belongs to, from which `_scales` derives the
    scales (block_scales(blocks) == the same scales in the unit codebook's terms). `codebook`:
    spec_codebook's, needed for quantile (default: the spec's fixed codebook). Float32 result.

    Dividing by block_scales and rounding to the unit codebook gives the same codes except on exact
    ties and within an ulp of a midpoint (x / (X * elem_max) is not exact when elem_max is not a
    power of two), and for e4m3 the value can differ by an ulp (E2M1/6 * (6 s S) vs E2M1 * (s S)).
    """
    if codebook is None:
        codebook, table = spec_codebook(values, spec, scale_dtype)
    else:
        table = None
    grid, table = _grid(spec, codebook.to(values.device), table)
    scale, inverse = _scales(absmax.float(), spec, tensor_absmax, scale_dtype)
    unit = values.float() * inverse
    if table is None:
        unit = round_unit_bucketize(unit, grid)
    else:
        unit = round_unit(unit, table, torch.empty_like(unit, dtype=torch.int32), torch.empty_like(unit))
    return unit * scale


def outlier_features(weight: torch.Tensor, pct: float, in_dim: int = 1) -> torch.Tensor:
    """Indices (sorted) of the input features whose weights have the largest standard deviation."""
    std = weight.detach().float().std(dim=1 - in_dim)
    return std.topk(outlier_count(weight.shape[in_dim], pct)).indices.sort().values


def fake_quantize(
    weight: torch.Tensor,
    spec: QuantSpec | str,
    *,
    scale_dtype: torch.dtype = torch.float16,
    in_dim: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight as `spec` would store it, back in the weight's dtype and shape.

    fp16/bf16 round-trip through that dtype. `in_dim` is the dimension that indexes input features,
    used by -o<P>: 1 for nn.Linear ([out, in]), 0 for transformers' Conv1D ([in, out]). The kept
    features are rounded to fp16. scale_dtype=torch.float32 stores exact absmax values (as
    bitsandbytes does), for reference comparisons. `out` (same shape and dtype, not overlapping the
    weight) receives the result instead of a new tensor.
    """
    spec = QuantSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.is_baseline:
        rounded = weight.detach().to(TORCH_BASELINES[spec.dtype]).to(weight.dtype)
        return rounded if out is None else out.copy_(rounded)
    if spec.outlier_pct and weight.ndim != 2:
        raise ValueError(f"{spec}: outlier features need a 2-D weight, got shape {tuple(weight.shape)}")
    cols = outlier_features(weight, spec.outlier_pct, in_dim) if spec.outlier_pct else None
    work = weight.detach()
    if cols is not None:  # zeros never raise a block's absmax and round to exactly 0
        work = work.clone().index_fill_(in_dim, cols, 0)
    codebook, table = _grid(spec, *spec_codebook(work, spec, scale_dtype))
    tensor_absmax = block_absmax(work.reshape(-1), None) if spec.scale_format == "e4m3" else None
    scales = partial(_scales, spec=spec, tensor_absmax=tensor_absmax, scale_dtype=scale_dtype)
    out = fake_quantize_blockwise(work, codebook, spec.block_size, table=table, out=out, scales=scales)
    if cols is not None:
        kept = weight.detach().index_select(in_dim, cols).to(torch.float16).to(weight.dtype)
        out.index_copy_(in_dim, cols, kept)
    return out


# ---------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantReport:
    """What quantize_model did: parameter counts, exact bit accounting, per-layer error."""

    spec: QuantSpec
    n_params_quantized: int  # weights rounded to the spec
    n_params_other: int  # every other parameter (biases, norms, embeddings ...), counted at 16 bits
    bits_per_param: float  # of the quantized weights: k + absmax + outlier cost, exactly
    total_bits: float  # n_params_quantized * bits_per_param + n_params_other * 16
    layer_mse: dict[str, float]  # mean squared quantization error of each quantized weight

    @property
    def n_params(self) -> int:
        return self.n_params_quantized + self.n_params_other

    def columns(self) -> dict:
        """The results-schema columns this report fills (DESIGN.md, Results)."""
        s = self.spec
        return {
            "quant": str(s),
            "dtype": s.dtype,
            "bits": s.bits,
            "block_size": s.block_size,
            "outlier_pct": s.outlier_pct,
            "bits_per_param": self.bits_per_param,
            "total_bits": self.total_bits,
            "n_params": self.n_params,
            "n_params_quantized": self.n_params_quantized,
        }


# model -> {id(param): (param, pristine copy)}; weak, so the copies die with the model
_PRISTINE: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[nn.Parameter, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def quant_targets(model: nn.Module, spec: QuantSpec) -> list[tuple[str, nn.Module, nn.Parameter]]:
    """(name, module, weight) a spec quantizes: the block linears, plus embeddings and LM head with -emb.

    A weight shared by several modules (tied embeddings) appears once, under its first name. For -o<P>,
    an nn.Embedding's weight [vocab, hidden] is treated like the LM head's: hidden dims are the features.
    """
    modules = list(transformer_linears(model))
    if spec.embeddings:
        names = {id(m): name for name, m in model.named_modules()}
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            module = getattr(model, getter, lambda: None)()
            if module is not None:
                modules.append((names[id(module)], module))
    seen: set[int] = set()
    targets = []
    for name, module in modules:
        if id(module.weight) not in seen:
            seen.add(id(module.weight))
            targets.append((name, module, module.weight))
    return targets


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference in float64, chunked so that no full-size float32 temporaries exist."""
    a, b, total = a.detach().reshape(-1), b.detach().reshape(-1), 0.0
    for start in range(0, a.numel(), 1 << 22):
        d = a[start : start + (1 << 22)].float() - b[start : start + (1 << 22)].float()
        total += float(torch.dot(d, d).double())
    return total / max(1, a.numel())


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    spec: QuantSpec | str,
    *,
    scale_dtype: torch.dtype = torch.float16,
    pristine_device: torch.device | str | None = None,
    calibration: torch.Tensor | None = None,
    calibration_mode: str = "sequential",
) -> QuantReport:
    """Fake-quantize the model's weights in place, always starting from the original weights.

    The first call keeps a pristine copy of every weight it touches (on `pristine_device`, default the
    weight's device); later calls quantize from those copies, so specs can be applied in turn without
    reloading and without compounding. Weights an earlier spec touched but this one does not (e.g.
    after an -emb spec) are put back first. `restore(model)` undoes everything.
    A -gptq spec runs GPTQ (quant/gptq.py) on `calibration`, token ids [n_seq, seq_len], with
    `calibration_mode` "sequential" or "parallel" (gptq_quantize_model).
    """
    spec = QuantSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.method == "gptq":
        if calibration is None:
            raise ValueError(f"{spec}: GPTQ needs calibration data (token ids [n_seq, seq_len])")
        from kbitlaw.quant.gptq import gptq_quantize_model

        return gptq_quantize_model(
            model,
            spec,
            calibration,
            scale_dtype=scale_dtype,
            pristine_device=pristine_device,
            calibration_mode=calibration_mode,
        )
    pristine = _PRISTINE.setdefault(model, {})
    targets = quant_targets(model, spec)
    wanted = {id(p) for _, _, p in targets}
    for pid, (param, original) in pristine.items():
        if pid not in wanted:
            param.copy_(original)
    bits, mse, n_quantized = 0.0, {}, 0
    for name, module, param in targets:
        if id(param) not in pristine:
            pristine[id(param)] = (param, param.detach().to(pristine_device or param.device, copy=True))
        original = pristine[id(param)][1].to(param.device)
        in_dim = 0 if _is_conv1d(module) else 1
        fake_quantize(original, spec, scale_dtype=scale_dtype, in_dim=in_dim, out=param.data)
        mse[name] = _mse(param, original)
        bits += spec.tensor_bits(original.numel(), original.shape[in_dim])
        n_quantized += original.numel()
    return model_report(model, spec, wanted, bits, n_quantized, mse)


def model_report(
    model: nn.Module, spec: QuantSpec, quantized: set[int], bits: float, n_quantized: int, mse: dict
) -> QuantReport:
    """The report of a model whose parameters `quantized` (ids) hold `bits` bits in all: every
    other parameter counts at 16 bits. Shared by round-to-nearest and GPTQ."""
    n_other = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    return QuantReport(
        spec=spec,
        n_params_quantized=n_quantized,
        n_params_other=n_other,
        bits_per_param=bits / max(1, n_quantized),
        total_bits=bits + 16.0 * n_other,
        layer_mse=mse,
    )


@torch.no_grad()
def restore(model: nn.Module) -> None:
    """Put back the original weights quantize_model saved, and free the saved copies."""
    for param, original in _PRISTINE.pop(model, {}).values():
        param.copy_(original)
