"""Blockwise rounding of a whole tensor to a codebook, a scale per block.

`fake_quantize_blockwise` rounds with nearest.py's table: a scale per block (default: the absmax
stored as fp16; fake.py passes the spec's), multiply by its inverse, round, multiply back, chunk by
chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from kbitlaw.quant import cpu_kernels
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
    """max |x| of every row, as [rows, 1] float32, from two reductions instead of a full-size abs()
    (the last abs() turns an all-zero row's -0.0, from max(0, -0), into 0.0 as cpu_kernels gives)."""
    return torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg()).float().abs()


def block_absmax(flat: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """Float32 absmax of every block of a flat tensor (one value when block_size is None)."""
    fused = flat.device.type == "cpu" and flat.dtype == torch.float32 and cpu_kernels.available()
    row_absmax = cpu_kernels.row_absmax if fused else _row_absmax
    chunk = 1 << 22 if fused else _chunk_elems(flat.device)
    width = block_size or (4096 if fused else None)  # one value: rows of any width will do
    segments = _segments(flat.numel(), width, chunk)
    parts = [row_absmax(flat[a:b].view(-1, w)).view(-1) for a, b, w in segments]
    out = torch.cat(parts) if parts else flat.new_zeros(1, dtype=torch.float32)
    return out.amax(0, keepdim=True) if block_size is None else out


def absmax_scales(
    absmax: torch.Tensor, scale_dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's scales: (absmax rounded to scale_dtype, its inverse; 0 for a zero block)."""
    scale = round_scales(absmax, scale_dtype)
    return scale, torch.where(scale > 0, 1 / scale, 0.0)  # zero blocks: 0 * 0, never 0 / 0


def _quantize_cpu(
    src: torch.Tensor,
    dst: torch.Tensor,
    codebook: torch.Tensor,
    block_size: int | None,
    table: NearestTable | None,
    scales: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """fake_quantize_blockwise on a CPU with the fused kernels (cpu_kernels.py): one pass for the
    blocks' absmax, their scales in torch, one pass to round. Float32 is read and written in place,
    4M values at a time; other dtypes go through a cache-sized float32 copy."""
    direct = src.dtype == torch.float32 and dst.dtype == torch.float32
    chunk = 1 << 22 if direct else _chunk_elems(src.device)
    # one scale for the whole tensor: rows of any width will do; 4096 lets every core take a share
    whole = None if block_size else scales(block_absmax(src, None).view(1, 1))
    for start, stop, width in _segments(src.numel(), block_size or 4096, chunk):
        rows = src[start:stop].view(-1, width)
        rows = rows if direct else rows.float()
        out = dst[start:stop].view(rows.shape) if direct else torch.empty_like(rows)
        if whole is None:
            scale, inverse = scales(cpu_kernels.row_absmax(rows))
        else:
            scale, inverse = (t.expand(rows.shape[0], 1).contiguous() for t in whole)
        cpu_kernels.round_rows(rows, out, scale, inverse, codebook, table)
        if not direct:
            dst[start:stop].copy_(out.view(-1))


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
    if weight.device.type == "cpu" and cpu_kernels.available():
        _quantize_cpu(src, dst, codebook, block_size, table, scales)
        return out
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
