"""Hessians from calibration data, for GPTQ (gptq.py): H = 2 X Xᵀ / n of each block linear's inputs X.

collect_hessians takes every linear's H from one forward pass of the model as it is; block_hessians
goes transformer block by transformer block, each block's inputs the outputs of the blocks before
it as they are when the caller resumes (the reference's "sequential" mode, so the blocks after a
quantized one are calibrated on the quantized model's activations). Sums of X Xᵀ are float64.
"""

from __future__ import annotations

import torch
from torch import nn

from kbitlaw.model_structure import transformer_blocks, transformer_linears


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def _chunks(calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if calibration.ndim != 2 or calibration.numel() == 0 or calibration.is_floating_point():
        raise ValueError(f"calibration must be token ids [n_seq, seq_len], got {tuple(calibration.shape)}")
    return list(calibration.split(batch_size))


class _HessianSums:
    """Forward hooks that add X Xᵀ of each module's input (float32 products, float64 sums)."""

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            xtx = (x.t() @ x).double()
            self.sums[name] = self.sums[name] + xtx if name in self.sums else xtx
            self.count[name] = self.count.get(name, 0) + x.shape[0]

        return hook

    def hessians(self) -> dict[str, torch.Tensor]:
        """H = 2 X Xᵀ / n per module (float64)."""
        for h in self.handles:
            h.remove()
        return {name: 2 * s / self.count[name] for name, s in self.sums.items()}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def collect_hessians(
    model: nn.Module, calibration: torch.Tensor, *, batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """H = 2 X Xᵀ / n of every block linear's input, from one forward pass of the model as it is
    (no propagation through quantized layers: see block_hessians for that)."""
    sums = _HessianSums(transformer_linears(model))
    try:
        for ids in _chunks(calibration, batch_size):
            model(input_ids=ids.to(model_device(model)), use_cache=False)
    finally:
        hessians = sums.hessians()
    return hessians


def _block_calls(model: nn.Module, blocks: nn.ModuleList, chunks: list[torch.Tensor]):
    """One forward pass of every chunk up to the last block, recording each block's call: the
    hidden states entering block 0, and every block's other arguments (attention mask, positions,
    rotary tables ...: they come from the token ids and the embeddings, never from block weights,
    so they hold for the quantized model too). Returns (hidden per chunk, [(args, kwargs)] per chunk
    per block), args with the hidden states left out."""
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict]]] = []

    def record(module, args, kwargs):
        if args:
            x, rest, kw = args[0], (None, *args[1:]), dict(kwargs)
        else:
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            x, rest = kwargs["hidden_states"], ()
        if module is blocks[0]:
            hidden.append(x)
        calls[-1].append((rest, kw))
        if module is blocks[-1]:
            raise _Stop

    handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks]
    try:
        for ids in chunks:
            calls.append([])
            try:
                model(input_ids=ids.to(model_device(model)), use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return hidden, calls


def _run_block(block: nn.Module, x: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = call
    out = block(x, *args[1:], **kwargs) if args else block(hidden_states=x, **kwargs)
    return out[0] if isinstance(out, tuple | list) else out


@torch.no_grad()
def block_hessians(model: nn.Module, calibration: torch.Tensor, *, batch_size: int = 16):
    """Yields (block linears [(name, module)], {name: H}) for each transformer block in order.

    The reference's "sequential" mode: the inputs of a block are the outputs of the blocks before it
    as they are when the generator resumes, so a caller that quantizes a block's linears between two
    steps calibrates every later block on the quantized model's activations. Each block runs twice
    per step: once with hooks (its Hessians, from its own unquantized weights), once after the caller
    is done (its outputs, the next block's inputs).
    """
    blocks = transformer_blocks(model)
    linears = transformer_linears(model)
    hidden, calls = _block_calls(model, blocks, _chunks(calibration, batch_size))
    for index, block in enumerate(blocks):
        inside = {id(m) for m in block.modules()}
        mine = [(name, m) for name, m in linears if id(m) in inside]
        sums = _HessianSums(mine)
        try:
            for x, call in zip(hidden, calls, strict=True):
                _run_block(block, x, call[index])
        finally:
            hessians = sums.hessians()
        yield mine, hessians
        if index + 1 < len(blocks):
            hidden = [_run_block(block, x, call[index]) for x, call in zip(hidden, calls, strict=True)]
