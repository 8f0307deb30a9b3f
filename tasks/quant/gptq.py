"""GPTQ: one-shot weight quantization with second-order error feedback (Frantar et al. 2022).

Round-to-nearest rounds every weight on its own. GPTQ rounds the columns of a linear layer's weight
[out, in] one input feature at a time and, after each, moves the rounding error onto the columns not
yet rounded, weighted by the inverse Hessian of the layer's squared output error on calibration data,
H = 2 X Xᵀ / n (X: the layer's inputs [in, n tokens]). The codebook and the blocks are the spec's, as
for round-to-nearest: only which codebook value each weight gets changes. With H = I nothing moves
and GPTQ is round-to-nearest, bit for bit.

    Q = gptq_quantize_weight(W, H, QuantSpec.parse("int3-b64"))      # one weight
    report = gptq_quantize_model(model, "int3-b64-gptq", token_ids)   # a model, block by block

The Hessians come from calibration data, one transformer block at a time: hessians.py.

Algorithm 1 of the paper, as the reference implementation (github.com/IST-DASLab/gptq, gptq.py):
dampening by 1% of the mean diagonal, dead inputs (H_ii = 0: the weight is zeroed and H_ii set to 1),
the upper Cholesky factor of H⁻¹, lazy batch updates over `block` columns, optional act-order
(columns by descending H_ii, permuted back at the end).

Block scales. A blockwise spec cuts the weight, flattened in its storage layout, into blocks of B
values, exactly as round-to-nearest does (for nn.Linear [out, in] and B dividing `in`: B consecutive
input features of one output row; for transformers' Conv1D [in, out]: B consecutive output features
of one input feature; any other shape: blocks that run over row ends). A block's scale is fixed when
GPTQ reaches the first of its columns, from the block's current (already error-updated) weights, by
fake._scales, the one definition round-to-nearest uses too (fake.block_scales gives the same scales
in unit-codebook terms); the weight then rounds exactly as fake.round_blocks rounds, ties included.
A per-tensor spec has one block.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from kbitlaw.model_structure import transformer_linears
from kbitlaw.quant import cpu_kernels
from kbitlaw.quant.fake import (
    _PRISTINE,
    QuantReport,
    _grid,
    _is_conv1d,
    _mse,
    _scales,
    model_report,
    quant_targets,
    spec_codebook,
)
from kbitlaw.quant.hessians import block_hessians, cached, collect_hessians, model_device
from kbitlaw.quant.nearest import round_unit, round_unit_bucketize
from kbitlaw.quant.spec import QuantSpec

log = logging.getLogger("kbitlaw")

DAMP_RETRIES = 4  # a Hessian still not positive definite after dampening: try 10x, 100x ... the damping


# ---------------------------------------------------------------------------------------------
# One weight
# ---------------------------------------------------------------------------------------------


def _block_members(shape: tuple[int, int], in_dim: int, block_size: int | None) -> torch.Tensor:
    """[n_blocks, B] positions in the row-major [out, in] working matrix of each block's values.

    Blocks are cut from the weight flattened in its storage layout (`shape`, `in_dim` as
    fake_quantize): storage position f holds working element (r, c) with f = r*in + c for [out, in]
    and f = c*out + r for [in, out]. A last, partial block is padded with position out*in, which
    points at an extra zero (it never raises a block's absmax).
    """
    n_out, n_in = (shape[1], shape[0]) if in_dim == 0 else shape
    numel = n_out * n_in
    width = block_size or numel
    f = torch.arange(-(-numel // width) * width)
    if in_dim == 0:
        r, c = f % n_out, f // n_out
        pos = r * n_in + c
    else:
        pos = f.clone()
    pos[f >= numel] = numel
    return pos.view(-1, width)


def _cholesky_inverse_upper(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)⁻¹; the damping grows tenfold (up to
    DAMP_RETRIES times) while the dampened H is not positive definite."""
    # With J the reversal permutation and J H J = L Lᵀ: H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J), and J L⁻¹ J is upper
    # triangular: one factorisation and one triangular inverse instead of the reference's three
    # factorisation-sized steps (Cholesky, cholesky_inverse, Cholesky again), 1.5x faster at 1536 inputs.
    mean_diag = H.diagonal().mean()
    reversed_h = H.flip(0, 1)
    for attempt in range(DAMP_RETRIES + 1):
        dampened = reversed_h.clone()
        dampened.diagonal().add_(damp * 10**attempt * mean_diag)
        L, info = torch.linalg.cholesky_ex(dampened)
        if int(info) == 0:
            if attempt:
                log.warning("GPTQ: Hessian needed %g x the mean diagonal as damping", damp * 10**attempt)
            eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
            return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
    most = damp * 10**DAMP_RETRIES
    raise ValueError(f"GPTQ: the Hessian is not positive definite even with {most:g} x its mean diagonal")


@torch.no_grad()
def gptq_quantize_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec | str,
    *,
    in_dim: int = 1,
    tensor_absmax: torch.Tensor | None = None,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
    scale_dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> torch.Tensor:
    """The weight as GPTQ rounds it to `spec`'s codebook and blocks; same shape, dtype and device.

    weight: [out, in] (nn.Linear; in_dim=1) or [in, out] (transformers' Conv1D; in_dim=0).
    hessian: [in, in], 2 X Xᵀ / n of the layer's calibration inputs (any positive multiple works).
    tensor_absmax: the whole original weight's absmax, for scale formats with a per-tensor scale
    (default: this weight's). act_order: columns in order of decreasing H_ii. Then every block's
    scale is fixed before the pass, from the blocks of the un-permuted weight ("static groups", as
    AutoGPTQ's static_groups=True): a block stays a block of contiguous weights in storage, which is
    what the bit accounting and the kernels assume, at the price of scales that do not see the
    error feedback. seed: for the quantile codebook's sample (see fake.spec_codebook).
    """
    spec = QuantSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.is_baseline or spec.outlier_pct:
        raise ValueError(f"{spec}: GPTQ needs a quantized spec without -o<P>")
    if weight.ndim != 2 or in_dim not in (0, 1):
        raise ValueError(f"GPTQ needs a 2-D weight and in_dim 0 or 1, got shape {tuple(weight.shape)}")
    original = weight.detach()
    n_out, n_in = (original.shape[1], original.shape[0]) if in_dim == 0 else tuple(original.shape)
    if tuple(hessian.shape) != (n_in, n_in):
        raise ValueError(f"GPTQ: Hessian of shape {tuple(hessian.shape)} for a weight with {n_in} inputs")
    # The working weights [out, in] live in a flat buffer with one extra zero: the padding of a
    # partial block points there.
    flat = torch.zeros(n_out * n_in + 1, device=original.device)
    W = flat[:-1].view(n_out, n_in)
    W.copy_(original.t() if in_dim == 0 else original)
    H = hessian.detach().to(device=W.device, dtype=torch.float64).clone()

    # Dead inputs (always 0 in the calibration data) say nothing about their weights: the reference
    # zeroes those weights and sets H_ii = 1, so the Cholesky factorisation exists.
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    # The values a weight rounds to, in the units of its block's scale, and their lookup table: the
    # same as round-to-nearest's (fake.round_blocks), ties included.
    grid, table = _grid(spec, *spec_codebook(original, spec, scale_dtype, seed))
    if tensor_absmax is None:
        tensor_absmax = torch.maximum(original.amax(), original.amin().neg()).float()

    # Every weight's block scale and its inverse, in flat [out, in] order (+ the padding slot), set
    # when its block's scale is fixed: a weight rounds to round(w * inverse) * scale.
    members = _block_members(tuple(original.shape), in_dim, spec.block_size).to(W.device)
    scale = torch.zeros(2, n_out * n_in + 1, device=W.device)
    S, Sinv = scale[0, :-1].view(n_out, n_in), scale[1, :-1].view(n_out, n_in)

    def fix_scales(blocks: torch.Tensor) -> None:
        values = flat[members[blocks]]  # the blocks' current weights [n, B]
        absmax = torch.maximum(values.amax(dim=1, keepdim=True), values.amin(dim=1, keepdim=True).neg())
        s, inverse = _scales(absmax, spec, tensor_absmax, scale_dtype)  # = block_scales(values, ...)
        scale[0, members[blocks]] = s.expand_as(values)
        scale[1, members[blocks]] = inverse.expand_as(values)

    starting: dict[int, torch.Tensor] = {}  # column -> the blocks whose first column it is
    cuts = set(range(0, n_in, block))  # where lazy batches start
    if act_order:
        fix_scales(torch.arange(members.shape[0], device=W.device))  # static groups: see the docstring
        order = torch.argsort(H.diagonal(), descending=True, stable=True)
        W, H, S, Sinv = W[:, order], H[order][:, order], S[:, order], Sinv[:, order]
    else:
        padding = members == n_out * n_in
        cols = members % n_in
        first = cols.masked_fill(padding, n_in).amin(dim=1)
        last = cols.masked_fill(padding, -1).amax(dim=1)
        starting = dict(zip(*_group_by(first), strict=True))
        # A block over several columns is fixed where a lazy batch starts (W then holds every update
        # so far); a block inside one column, from the batch's own current copy of that column.
        cuts |= set(first[last > first].tolist())
    bounds = [*sorted(cuts), n_in]

    Hinv = _cholesky_inverse_upper(H, damp).to(W.dtype)
    Q = torch.zeros_like(W)
    key = torch.empty(n_out, dtype=torch.int32, device=W.device)  # round_unit's scratch buffers
    mid = torch.empty(n_out, device=W.device)
    fused = W.device.type == "cpu" and cpu_kernels.available()
    for i1, i2 in zip(bounds, bounds[1:], strict=False):
        W1 = W[:, i1:i2].clone()  # this lazy batch of columns, kept current
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if fused and not any(c in starting for c in range(i1 + 1, i2)):
            # every scale of the batch is fixed at its start: the column loop in one compiled pass
            if i1 in starting:
                W[:, i1:i2] = W1
                fix_scales(starting[i1])
            Q[:, i1:i2] = cpu_kernels.gptq_batch(W1, Err1, Hinv1, S[:, i1:i2], Sinv[:, i1:i2], grid, table)
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
            continue
        for i in range(i2 - i1):
            c = i1 + i
            if c in starting:  # blocks whose first column this is: their scales, from current weights
                W[:, c:i2] = W1[:, i:]
                fix_scales(starting[c])
            w = W1[:, i]
            unit = w * Sinv[:, c]  # values beyond the grid's ends saturate to them
            if table is None:
                unit = round_unit_bucketize(unit, grid)
            else:
                unit = round_unit(unit, table, key, mid)
            q = unit * S[:, c]
            Q[:, c] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the lazy update of every later column

    if act_order:
        Q = Q[:, torch.argsort(order)]  # back to the weight's own column order
    return (Q.t() if in_dim == 0 else Q).contiguous().to(weight.dtype)


def _group_by(values: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
    """Distinct values (ascending) and, for each, the indices where it occurs (ascending)."""
    order = torch.argsort(values, stable=True)
    distinct, counts = torch.unique_consecutive(values[order], return_counts=True)
    return distinct.tolist(), list(torch.split(order, counts.tolist()))


# ---------------------------------------------------------------------------------------------
# A whole model
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def gptq_quantize_model(
    model: nn.Module,
    spec: QuantSpec | str,
    calibration: torch.Tensor,
    *,
    seed: int = 0,
    act_order: bool = False,
    damp: float = 0.01,
    block: int = 128,
    batch_size: int = 16,
    scale_dtype: torch.dtype = torch.float16,
    pristine_device: torch.device | str | None = None,
    calibration_mode: str = "sequential",
) -> QuantReport:
    """GPTQ every block linear of the model in place, transformer block by block, on `calibration`
    (token ids [n_seq, seq_len]); the same bookkeeping as fake.quantize_model: the original weights
    are kept aside (restore(model) puts them back), and every call starts from them.

    calibration_mode "sequential" (the reference's default): each block's Hessians from the inputs the
    blocks before it give once quantized. "parallel": every Hessian from the original model in one
    pass, which the next GPTQ spec on the same model and tokens reuses (a known cheaper variant; its
    quality against sequential: README, bench/gptq.py).

    Deterministic for given inputs on one device and thread count (no sampling anywhere; `seed` is
    the quantile codebook's sample). The report's layer_mse is the weights' mean squared change.
    """
    spec = QuantSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.is_baseline or spec.outlier_pct or spec.embeddings:
        raise ValueError(f"{spec}: GPTQ quantizes the block linears of a k-bit spec (no -o<P>, no -emb)")
    pristine = _PRISTINE.setdefault(model, {})
    for param, original in pristine.values():  # calibrate on the original model, not an earlier spec's
        param.copy_(original)
    targets = quant_targets(model, spec)
    for _, _, param in targets:
        if id(param) not in pristine:
            pristine[id(param)] = (param, param.detach().to(pristine_device or param.device, copy=True))
    wanted = {id(module): param for _, module, param in targets}
    bits, mse, n_quantized = 0.0, {}, 0
    was_training = model.training
    model.eval()
    calibration = calibration.to(model_device(model))
    if calibration_mode == "parallel":  # every Hessian from the original model, one pass for every spec
        build = lambda: collect_hessians(model, calibration, batch_size=batch_size)  # noqa: E731
        steps = [(transformer_linears(model), cached(model, "hessians", calibration, batch_size, build))]
    elif calibration_mode == "sequential":
        steps = block_hessians(model, calibration, batch_size=batch_size)
    else:
        raise ValueError(f"GPTQ calibration must be 'sequential' or 'parallel', got {calibration_mode!r}")
    try:
        for linears, hessians in steps:
            for name, module in linears:
                param = wanted.get(id(module))
                if param is None:  # a weight shared with an earlier module, already done
                    continue
                original = pristine[id(param)][1].to(param.device)
                in_dim = 0 if _is_conv1d(module) else 1
                hessian = hessians.get(name)
                if hessian is None:  # never called on the calibration data: round to nearest
                    log.warning("GPTQ: %s saw no calibration input; rounded to nearest", name)
                    hessian = torch.eye(original.shape[in_dim], device=original.device)
                q = gptq_quantize_weight(
                    original,
                    hessian,
                    spec,
                    in_dim=in_dim,
                    damp=damp,
                    block=block,
                    act_order=act_order,
                    scale_dtype=scale_dtype,
                    seed=seed,
                )
                param.copy_(q)
                mse[name] = _mse(param, original)
                bits += spec.tensor_bits(original.numel(), original.shape[in_dim])
                n_quantized += original.numel()
                del wanted[id(module)]
    finally:
        model.train(was_training)
    return model_report(model, spec, {id(p) for _, _, p in targets}, bits, n_quantized, mse)
