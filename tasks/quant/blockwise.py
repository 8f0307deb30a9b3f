"""Blockwise rounding of a whole tensor to a codebook, a scale per block.

`fake_quantize_blockwise` rounds with nearest.py's table: a scale per block (default: the absmax
stored as fp16; fake.py passes the spec's), multiply by its inverse, round, multiply back, chunk by
chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from kbitlaw.quant.nearest import NearestTable, build_table, round_unit, round_unit_bucketize


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
