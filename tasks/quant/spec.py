"""Quant spec strings and bit accounting, without torch: the one grammar every stage parses.

    spec = QuantSpec.parse("nf4-b64")       # or QuantSpec("nf", 4, block_size=64)
    str(spec), spec.bits_per_param, spec.scheme    # 'nf4-b64', 4.25, 'nf<k>-b64'
    resolve_grid("default")                 # a named grid (or a comma-separated list) as specs

Exact storage of one weight tensor is `spec.tensor_bits(numel, in_features)`; the nominal
bits_per_param (DESIGN.md) is the same formula for an infinitely large tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from kbitlaw.vocab import BASELINES

DTYPES = ("int", "fp", "nf", "quantile", "dynamic")
MIN_BITS, MAX_BITS = 2, 8
MIN_BLOCK, MAX_BLOCK = 16, 4096
SCALE_BITS = 16  # an fp16 (default) or bf16 block scale
# How a block's scale is stored, and its bits: fp16/bf16 absmax (the paper's), e8m0 (a power of two,
# OCP MX v1.0), e4m3 (FP8, NVFP4; with one fp32 per-tensor scale so block scales stay in range).
SCALE_FORMATS = {"fp16": 16, "bf16": 16, "e8m0": 8, "e4m3": 8}
TENSOR_SCALE_BITS = {"e4m3": 32}
METHODS = ("rtn", "gptq")  # round-to-nearest; GPTQ (Frantar et al. 2022), one-shot with calibration data
# Named deployed formats: the alias and its spec (OCP MX v1.0: blocks of 32 with E8M0 scales; NVFP4:
# E2M1 in blocks of 16 with E4M3 scales and an fp32 per-tensor scale). mxfp6 is the E2M3 variant.
ALIASES = {
    "mxfp4": "fp4e2-b32-se8m0",
    "mxfp6": "fp6e2-b32-se8m0",
    "mxfp8": "fp8e4-b32-se8m0",
    "mxint8": "int8-b32-se8m0",
    "nvfp4": "fp4e2-b16-se4m3",
}


def default_exponent_bits(k: int) -> int:
    """Exponent bits of `fp<k>` when none are given: the measured best, 1 for k=2 and 2 for k=3..8.

    bench/exponents.py (round-to-nearest, B=64, fp16 absmax scales, 2^20 values): on Student-t (nu=4)
    weights E=2 has the smallest relative MSE at every k = 3..8 (fp5e2 2.97e-3 vs the paper's fp5e3
    8.35e-3; fp8e2 4.24e-5 vs fp8e4 5.22e-4); on Gaussian weights E=1 (= int) edges it out for
    k >= 5. Where they disagree we follow Student-t: LLM weights are heavy-tailed. E=2 stays best up
    to B=256; with B=4096 or one scale per tensor E=3 wins for k >= 4 (name e explicitly there).
    The paper's heuristic (App. C.4) was ceil(k/2): 1,2,2,3,3,4,4 for k = 2..8.
    """
    return 1 if k <= 2 else 2


def outlier_count(in_features: int, pct: float) -> int:
    """How many input features -o<pct> keeps in 16-bit: pct% rounded half up, at least one."""
    return min(in_features, max(1, math.floor(pct / 100 * in_features + 0.5))) if pct > 0 else 0


@dataclass(frozen=True)
class QuantSpec:
    """One quantization setting, written `<dtype><k>[e<E>][-b<B>][-s<F>][-o<P>][-emb][-gptq]`, or
    `fp16` / `bf16`, or a named format (`mxfp4`, `mxfp6`, `mxfp8`, `mxint8`, `nvfp4`) with options.

    dtype: int | fp | nf | quantile | dynamic (see quant/codebooks.py); k: 2..8 bits.
    e<E>:  fp only, exponent bits 1..k-1; default_exponent_bits(k), always printed (`fp4` -> `fp4e2`).
    -b<B>: block size, a power of two in 16..4096; absent = one absmax for the whole tensor.
    -o<P>: P percent of each layer's input features (those whose weights have the largest std)
           stay 16-bit; P may be a decimal (`-o0.5`), printed without trailing zeros.
    -s<F>: how block scales are stored: fp16 (default, not printed), bf16, e8m0, e4m3 (needs -b<B>).
    -emb:  also quantize the input embeddings and the LM head (default: they stay 16-bit).
    -gptq: GPTQ instead of round-to-nearest (calibration data; not with -o or -emb).
    fp16 / bf16: the unquantized baselines (weights rounded to that dtype); they accept only -emb.
    A spec equal to a named format prints as its name: `fp4e2-b32-se8m0-gptq` -> `mxfp4-gptq`.
    """

    dtype: str
    bits: int
    exp_bits: int | None = None
    block_size: int | None = None
    outlier_pct: float = 0.0
    embeddings: bool = False
    scale_format: str = "fp16"
    method: str = "rtn"

    def __post_init__(self) -> None:
        if self.dtype in BASELINES:
            if self.bits != 16 or self.exp_bits or self.block_size or self.outlier_pct:
                raise ValueError(f"{self.dtype} is an unquantized baseline: it takes no k, e, -b or -o")
            if self.scale_format != "fp16" or self.method != "rtn":
                raise ValueError(f"{self.dtype} is an unquantized baseline: it takes no -s or -gptq")
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
        if self.scale_format not in SCALE_FORMATS:
            raise ValueError(
                f"unknown scale format {self.scale_format!r} (known: {', '.join(SCALE_FORMATS)})"
            )
        if self.scale_format != "fp16" and b is None:
            raise ValueError(f"-s{self.scale_format} stores block scales: it needs a block size -b<B>")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (known: {', '.join(METHODS)})")
        if self.method == "gptq" and (self.outlier_pct or self.embeddings):
            raise ValueError("-gptq does not combine with -o<P> or -emb")

    @classmethod
    def parse(cls, text: str) -> QuantSpec:
        """Parse a spec string (case-insensitive); ValueError names the part that is wrong."""
        head, *options = text.strip().lower().split("-")
        if head in ALIASES:
            alias_head, *alias_options = ALIASES[head].split("-")
            head, options = alias_head, [*alias_options, *options]
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
            elif opt == "gptq":
                name, value = "method", "gptq"
            elif opt[:1] == "s" and opt[1:] in SCALE_FORMATS:
                name, value = "scale_format", opt[1:]
            elif opt[:1] == "s":
                known = ", ".join(f"-s{f}" for f in SCALE_FORMATS)
                raise ValueError(f"unknown scale format '-{opt}' in {text!r} (known: {known})")
            elif opt[:1] == "b":
                raise ValueError(
                    f"block size must be a power of two in {MIN_BLOCK}..{MAX_BLOCK}, got {opt[1:]!r}"
                )
            elif opt[:1] == "o":
                raise ValueError(f"outlier percent must be a number in (0, 100), got {opt[1:]!r} in {text!r}")
            else:
                raise ValueError(
                    f"unknown option '-{opt}' in {text!r} (expected -b<B>, -s<F>, -o<P>, -emb or -gptq)"
                )
            if name in fields:
                raise ValueError(f"option '-{opt}' given twice (or set by a named format) in {text!r}")
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

    def long_form(self) -> str:
        """The spec string without named formats: `nvfp4` -> `fp4e2-b16-se4m3`."""
        text = self.dtype if self.is_baseline else f"{self.dtype}{self.bits}"
        if self.dtype == "fp":
            text += f"e{self.exp_bits}"
        if self.block_size:
            text += f"-b{self.block_size}"
        if self.scale_format != "fp16":
            text += f"-s{self.scale_format}"
        if self.outlier_pct:
            text += "-o" + f"{self.outlier_pct:.6f}".rstrip("0").rstrip(".")
        return text + ("-emb" if self.embeddings else "") + ("-gptq" if self.method == "gptq" else "")

    def __str__(self) -> str:
        text = self.long_form()
        for alias, base in ALIASES.items():
            if text == base or text.startswith(base + "-") and not text[len(base) + 1 :][:1].isdigit():
                return alias + text[len(base) :]
        return text

    @property
    def quant(self) -> str:
        """The spec string (the results' `quant` column)."""
        return str(self)

    @property
    def is_baseline(self) -> bool:
        return self.dtype in BASELINES

    @property
    def scale_bits(self) -> int:
        """Bits of one stored block scale (16 for fp16/bf16, 8 for e8m0/e4m3)."""
        return SCALE_FORMATS[self.scale_format]

    @property
    def bits_per_param(self) -> float:
        """Nominal k + S/B + P/100·(16-k), S the scale's bits (DESIGN.md); per-tensor scales omitted
        (16 or 32 bits per tensor: tensor_bits counts them)."""
        if self.is_baseline:
            return 16.0
        scale = self.scale_bits / self.block_size if self.block_size else 0.0
        return self.bits + scale + self.outlier_pct / 100 * (16 - self.bits)

    def tensor_bits(self, numel: int, in_features: int | None = None) -> float:
        """Exact storage of one weight of `numel` values: k-bit codes, one scale per block
        (ceil(numel/B), or one fp16 per tensor) in the spec's scale format plus its per-tensor scale
        (e4m3: one fp32) and, with -o<P>, its kept input features at 16 bits (`in_features`: the
        size of the weight's input dimension; without it, exactly P% of the values)."""
        if self.is_baseline:
            return 16.0 * numel
        n_blocks = math.ceil(numel / self.block_size) if self.block_size else 1
        n_kept = self.outlier_pct / 100 * numel
        if self.outlier_pct and in_features:
            n_kept = outlier_count(in_features, self.outlier_pct) * (numel // in_features)
        scales = self.scale_bits * n_blocks + TENSOR_SCALE_BITS.get(self.scale_format, 0)
        return self.bits * numel + scales + (16 - self.bits) * n_kept

    def bits_per_param_for(self, numel: int, in_features: int | None = None) -> float:
        """Exact bits per parameter of one tensor (tensor_bits / numel)."""
        return self.tensor_bits(numel, in_features) / numel

    @property
    def scheme(self) -> str:
        """The spec with its bit width abstracted (`int4-b64` -> `int<k>-b64`, `fp3e2-b64` -> `fp<k>-b64`):
        the family of specs a damage law is fitted over."""
        if self.is_baseline:
            return str(self)
        return self.long_form().replace(
            f"{self.dtype}{self.bits}" + (f"e{self.exp_bits}" if self.exp_bits else ""), f"{self.dtype}<k>", 1
        )

    def without_outliers(self) -> QuantSpec:
        return replace(self, outlier_pct=0.0)


def _k_grid(dtypes: list[str], blocks: list[int | None]) -> list[str]:
    """The paper's sweep; its floats use the paper's ceil(k/2) exponent bits (not today's default)."""
    specs = [
        str(QuantSpec(d, k, math.ceil(k / 2) if d == "fp" else None, block_size=b))
        for k in range(3, 9)
        for d in dtypes
        for b in blocks
    ]
    return ["fp16", *specs]


GRIDS: dict[str, list[str]] = {
    # tiny, for tests and smoke runs
    "quick": ["fp16", "int8-b64", "nf4-b64", "fp4e2-b64", "int3"],
    # nightly: a strong spec at every width 3..8 (int, NormalFloat and float with the measured-best
    # exponent, all B=64), so widths are compared at their best; per-tensor and outlier settings for
    # the paper's block-size and 3-bit claims; the deployed formats (mxfp4, nvfp4 and their
    # fp16-scale twins) and GPTQ at 3 and 4 bits
    "default": [
        "fp16",
        *[f"{d}{k}{'e2' if d == 'fp' else ''}-b64" for k in range(3, 9) for d in ("int", "nf", "fp")],
        "quantile4-b64",
        "int4",
        "int8",
        "int3",
        "quantile3-b64",
        "int3-b64-o2",
        "fp4e2-b32",
        "mxfp4",
        "fp4e2-b16",
        "nvfp4",
        "int3-b64-gptq",
        "int4-b64-gptq",
    ],
    # the embedded demo's (kbitlaw demo): one strong spec at every width 3..8, both 4-bit
    # contenders, NVFP4, 3-bit by GPTQ, and the per-tensor int3 its story checks; about 10 minutes
    "demo": [
        "fp16",
        "int8-b64",
        "fp7e2-b64",
        "fp6e2-b64",
        "fp5e2-b64",
        "nf4-b64",
        "int4-b64",
        "nvfp4",
        "int3-b64",
        "int3-b64-gptq",
        "int3",
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
