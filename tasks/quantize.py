"""Quantization: spec strings, blockwise fake quantization of tensors and models, bit accounting.

Fake quantization rounds a weight to what a k-bit kernel would compute from it and stores the
result back in the weight's own dtype: flatten, cut into blocks of B values, divide each block by its
absmax (rounded to fp16, as a kernel would store it), round every value to the nearest codebook
entry (tasks/codebooks.py), multiply back. Evaluating the model then measures the quantization damage
without k-bit kernels.

    spec = QuantSpec.parse("nf4-b64")
    report = quantize_model(model, spec)   # in place, from a pristine copy kept on the side
    ...evaluate...
    restore(model)                         # bit-identical original weights
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from tasks.checkpoints import transformer_linears
from tasks.codebooks import (
    DTYPES,
    MAX_BITS,
    MIN_BITS,
    NearestTable,
    block_absmax,
    default_exponent_bits,
    fake_quantize_blockwise,
    fixed_table,
    quantile_codebook,
    round_scales,
)

BASELINES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MIN_BLOCK, MAX_BLOCK = 16, 4096
QUANTILE_SAMPLES = 1 << 20  # quantile codebooks are estimated from at most this many values
SCALE_BITS = 16  # every absmax is stored as one fp16 number


# ---------------------------------------------------------------------------------------------
# Quant spec strings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantSpec:
    """One quantization setting, written `<dtype><k>[e<E>][-b<B>][-o<P>][-emb]`, or `fp16` / `bf16`.

    dtype: int | fp | nf | quantile | dynamic (see tasks/codebooks.py); k: 2..8 bits.
    e<E>:  fp only, exponent bits 1..k-1; default ceil(k/2), and always printed (`fp4` -> `fp4e2`).
    -b<B>: block size, a power of two in 16..4096; absent = one absmax for the whole tensor.
    -o<P>: P percent of each layer's input features (those whose weights have the largest std)
           stay 16-bit; P may be a decimal (`-o0.5`), printed without trailing zeros.
    -emb:  also quantize the input embeddings and the LM head (default: they stay 16-bit).
    fp16 / bf16: the unquantized baselines (weights rounded to that dtype); they accept only -emb.
    """

    dtype: str
    bits: int
    exp_bits: int | None = None
    block_size: int | None = None
    outlier_pct: float = 0.0
    embeddings: bool = False

    def __post_init__(self) -> None:
        if self.dtype in BASELINES:
            if self.bits != 16 or self.exp_bits or self.block_size or self.outlier_pct:
                raise ValueError(f"{self.dtype} is an unquantized baseline: it takes no k, e, -b or -o")
            return
        if self.dtype not in DTYPES:
            known = ", ".join([*DTYPES, *BASELINES])
            raise ValueError(f"unknown data type {self.dtype!r} (known: {known})")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"k must be {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if self.dtype == "fp":
            if self.exp_bits is None:
                object.__setattr__(self, "exp_bits", default_exponent_bits(self.bits))
            elif not 1 <= self.exp_bits <= self.bits - 1:
                top = self.bits - 1
                raise ValueError(f"fp{self.bits}: exponent bits must be 1..{top}, got {self.exp_bits}")
        elif self.exp_bits is not None:
            raise ValueError(f"exponent bits (e{self.exp_bits}) only apply to fp, not {self.dtype}")
        b = self.block_size
        if b is not None and not (MIN_BLOCK <= b <= MAX_BLOCK and b & (b - 1) == 0):
            raise ValueError(f"block size must be a power of two in {MIN_BLOCK}..{MAX_BLOCK}, got {b}")
        if not 0 <= self.outlier_pct < 100:
            raise ValueError(f"outlier percent must be in (0, 100), got {self.outlier_pct:g}")

    @classmethod
    def parse(cls, text: str) -> QuantSpec:
        """Parse a spec string (case-insensitive); ValueError names the part that is wrong."""
        head, *options = text.strip().lower().split("-")
        fields: dict = {}
        for opt in options:
            if m := re.fullmatch(r"b(\d+)", opt):
                name, value = "block_size", int(m[1])
            elif m := re.fullmatch(r"o(\d+(?:\.\d+)?)", opt):
                name, value = "outlier_pct", round(float(m[1]), 6)
                if value == 0:
                    raise ValueError(f"outlier percent must be in (0, 100), got {m[1]} in {text!r}")
            elif opt == "emb":
                name, value = "embeddings", True
            elif opt[:1] == "b":
                raise ValueError(
                    f"block size must be a power of two in {MIN_BLOCK}..{MAX_BLOCK}, got {opt[1:]!r}"
                )
            elif opt[:1] == "o":
                raise ValueError(f"outlier percent must be a number in (0, 100), got {opt[1:]!r} in {text!r}")
            else:
                raise ValueError(f"unknown option '-{opt}' in {text!r} (expected -b<B>, -o<P> or -emb)")
            if name in fields:
                raise ValueError(f"option '-{opt}' given twice in {text!r}")
            fields[name] = value
        if head in BASELINES:
            return cls(head, 16, **fields)
        m = re.fullmatch(r"([a-z]+)(\d+)?(?:e(\d+))?", head)
        if m is None:
            raise ValueError(f"cannot read {head!r} in {text!r}: expected <dtype><k>[e<E>], e.g. nf4, fp4e2")
        dtype, k, e = m[1], m[2], m[3]
        if dtype not in DTYPES:
            cls(dtype, 0)  # raises "unknown data type"
        if k is None:
            raise ValueError(f"missing bit width k in {head!r} (e.g. {dtype}4)")
        return cls(dtype, int(k), None if e is None else int(e), **fields)

    def __str__(self) -> str:
        text = self.dtype if self.is_baseline else f"{self.dtype}{self.bits}"
        if self.dtype == "fp":
            text += f"e{self.exp_bits}"
        if self.block_size:
            text += f"-b{self.block_size}"
        if self.outlier_pct:
            text += "-o" + f"{self.outlier_pct:.6f}".rstrip("0").rstrip(".")
        return text + ("-emb" if self.embeddings else "")

    @property
    def is_baseline(self) -> bool:
        return self.dtype in BASELINES

    @property
    def bits_per_param(self) -> float:
        """Nominal k + 16/B + P/100·(16-k) (DESIGN.md); per-tensor absmax cost omitted (~16/numel)."""
        if self.is_baseline:
            return 16.0
        scale = SCALE_BITS / self.block_size if self.block_size else 0.0
        return self.bits + scale + self.outlier_pct / 100 * (16 - self.bits)

    def bits_per_param_for(self, numel: int) -> float:
        """Exact bits per parameter for one tensor of `numel` values (ceil(numel/B) absmax values)."""
        if self.is_baseline:
            return 16.0
        n_blocks = math.ceil(numel / self.block_size) if self.block_size else 1
        return self.bits + SCALE_BITS * n_blocks / numel + self.outlier_pct / 100 * (16 - self.bits)


def _k_grid(dtypes: list[str], blocks: list[int | None]) -> list[str]:
    specs = [str(QuantSpec(d, k, block_size=b)) for k in range(3, 9) for d in dtypes for b in blocks]
    return ["fp16", *specs]


GRIDS: dict[str, list[str]] = {
    # tiny, for tests and smoke runs
    "quick": ["fp16", "int8-b64", "nf4-b64", "fp4e2-b64", "int3"],
    # nightly: float at every k (the paper's recommended type, B=64), the 4-bit data types and block
    # sizes, and the fragile 3-bit settings including proxy quantization
    "default": [
        "fp16",
        "int8",
        "fp3e2-b64",
        "fp4e2-b64",
        "fp5e3-b64",
        "fp6e3-b64",
        "fp7e4-b64",
        "fp8e4-b64",
        "int4-b64",
        "nf4-b64",
        "quantile4-b64",
        "int4",
        "fp4e2",
        "int3-b64",
        "quantile3-b64",
        "int3-b64-o2",
    ],
    # the full Dettmers & Zettlemoyer sweep: k 3..8 x 5 data types x 8 block settings, + fp16
    "paper": _k_grid(["int", "fp", "quantile", "dynamic", "nf"], [64, 128, 256, 512, 1024, 2048, 4096, None]),
}


def resolve_grid(name_or_csv: str) -> list[QuantSpec]:
    """A named grid, or a comma-separated list of specs, as parsed specs (duplicates dropped)."""
    text = name_or_csv.strip()
    if text in GRIDS:
        items = GRIDS[text]
    elif "," in text or re.match(r"[a-z]+\d", text.lower()):
        items = [item for item in text.split(",") if item.strip()]
    else:
        raise ValueError(f"unknown grid {text!r} (known: {', '.join(GRIDS)}; or a comma-separated spec list)")
    return list(dict.fromkeys(QuantSpec.parse(item) for item in items))


# ---------------------------------------------------------------------------------------------
# Fake quantization of one tensor
# ---------------------------------------------------------------------------------------------


def spec_codebook(
    weight: torch.Tensor, spec: QuantSpec, scale_dtype: torch.dtype = torch.float16, seed: int = 0
) -> tuple[torch.Tensor, NearestTable | None]:
    """The codebook a spec rounds `weight` to, with its cached lookup table for fixed data types.

    quantile: equal-mass quantiles of the tensor's absmax-normalised values (the block scales it will
    be quantized with), from at most QUANTILE_SAMPLES values: runs of 256 consecutive values at
    random (seeded) positions, so the sample is drawn without random-access gathers.
    """
    if spec.dtype != "quantile":
        table = fixed_table(spec.dtype, spec.bits, spec.exp_bits, weight.device)
        return table.codebook, table
    flat = weight.detach().reshape(-1)
    n, width, run = flat.numel(), spec.block_size or flat.numel(), 256
    scales = round_scales(block_absmax(flat, spec.block_size), scale_dtype)
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


def outlier_count(in_features: int, pct: float) -> int:
    """How many input features -o<pct> keeps in 16-bit: pct% rounded half up, at least one."""
    return min(in_features, max(1, math.floor(pct / 100 * in_features + 0.5))) if pct > 0 else 0


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
        rounded = weight.detach().to(BASELINES[spec.dtype]).to(weight.dtype)
        return rounded if out is None else out.copy_(rounded)
    if spec.outlier_pct and weight.ndim != 2:
        raise ValueError(f"{spec}: outlier features need a 2-D weight, got shape {tuple(weight.shape)}")
    cols = outlier_features(weight, spec.outlier_pct, in_dim) if spec.outlier_pct else None
    work = weight.detach()
    if cols is not None:  # zeros never raise a block's absmax and round to exactly 0
        work = work.clone().index_fill_(in_dim, cols, 0)
    codebook, table = spec_codebook(work, spec, scale_dtype)
    out = fake_quantize_blockwise(
        work, codebook, spec.block_size, scale_dtype=scale_dtype, table=table, out=out
    )
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


def _layer_bits(spec: QuantSpec, weight: torch.Tensor, in_dim: int) -> float:
    """Exact storage of one quantized weight: codes, fp16 absmax per block, 16-bit outlier features."""
    if spec.is_baseline:
        return 16.0 * weight.numel()
    n = weight.numel()
    n_blocks = math.ceil(n / spec.block_size) if spec.block_size else 1
    n_outliers = (
        outlier_count(weight.shape[in_dim], spec.outlier_pct) * (n // weight.shape[in_dim])
        if spec.outlier_pct
        else 0
    )
    return spec.bits * n + SCALE_BITS * n_blocks + (16 - spec.bits) * n_outliers


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
) -> QuantReport:
    """Fake-quantize the model's weights in place, always starting from the original weights.

    The first call keeps a pristine copy of every weight it touches (on `pristine_device`, default the
    weight's device); later calls quantize from those copies, so specs can be applied in turn without
    reloading and without compounding. Weights an earlier spec touched but this one does not (e.g.
    after an -emb spec) are put back first. `restore(model)` undoes everything.
    """
    spec = QuantSpec.parse(spec) if isinstance(spec, str) else spec
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
        bits += _layer_bits(spec, original, in_dim)
        n_quantized += original.numel()
    n_other = sum(p.numel() for p in model.parameters() if id(p) not in wanted)
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
