"""Hessians from calibration data, for GPTQ (gptq.py): H = 2 X Xᵀ / n of each block linear's inputs X.

collect_hessians takes every linear's H from one forward pass of the model as it is (GPTQ's
"parallel" calibration); block_hessians goes transformer block by transformer block, each block's
inputs the outputs of the blocks before it as they are when the caller resumes (the reference's
"sequential" mode, so the blocks after a quantized one are calibrated on the quantized model's
activations). Sums of X Xᵀ are float64.

What does not depend on the spec is computed once per model and calibration tokens and reused by
the next GPTQ spec (`cached`): the hidden states entering the first block with every block's call
arguments (sequential), or every Hessian (parallel). This assumes the model's original weights do
not change between calls, as in quantize_model, which always starts from them.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kbitlaw.model_structure import transformer_blocks, transformer_linears


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def _chunks(calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if calibration.ndim != 2 or calibration.numel() == 0 or calibration.is_floating_point():
        raise ValueError(f"calibration must be token ids [n_seq, seq_len], got {tuple(calibration.shape)}")
    return list(calibration.split(batch_size))


GRAM_PART = 512  # column blocks of a wide input's X Xᵀ: only the upper ones are multiplied


def gram(x: torch.Tensor) -> torch.Tensor:
    """xᵀx of [tokens, d] as float64 (float32 products). The product is symmetric, so for d above
    GRAM_PART only the blocks on and above the diagonal are multiplied and the rest mirrored: 3/4
    of the work at d = 1024, 10/16 at 2048 (torch has no syrk)."""
    x = x.float()
    d = x.shape[1]
    if d <= GRAM_PART:
        return (x.t() @ x).double()
    out = torch.empty(d, d, dtype=torch.float64, device=x.device)
    edges = list(range(0, d, GRAM_PART)) + [d]
    for a0, a1 in zip(edges, edges[1:], strict=False):
        left = x[:, a0:a1].t()
        block = (left @ x[:, a0:]).double()  # row band a0:a1, columns a0:d
        out[a0:a1, a0:] = block
        out[a1:, a0:a1] = block[:, a1 - a0 :].t()
    return out


class _HessianSums:
    """Forward hooks that add X Xᵀ of each module's input (float32 products, float64 sums). Modules
    called on the same input tensor (Llama's q, k and v projections; gate and up) share one product."""

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, its X Xᵀ)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0]  # the very tensor object: modules fed the same one share its product
            if self.last is not None and self.last[0] is x:
                xtx = self.last[1]
            else:
                xtx = gram(x.detach().reshape(-1, x.shape[-1]))
                self.last = (x, xtx)
            self.sums[name] = self.sums[name] + xtx if name in self.sums else xtx.clone()
            self.count[name] = self.count.get(name, 0) + x.numel() // x.shape[-1]

        return hook

    def hessians(self) -> dict[str, torch.Tensor]:
        """H = 2 X Xᵀ / n per module (float64)."""
        for h in self.handles:
            h.remove()
        self.last = None
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
    blocks = transformer_blocks(model)

    def stop(module, args, output):  # the final norm and LM head add nothing to any Hessian
        raise _Stop

    last = blocks[-1].register_forward_hook(stop) if len(blocks) else None
    try:
        for ids in _chunks(calibration, batch_size):
            try:
                model(input_ids=ids.to(model_device(model)), use_cache=False)
            except _Stop:
                pass
    finally:
        hessians = sums.hessians()
        if last is not None:
            last.remove()
    return hessians


# model -> {what: (calibration key, value)}: weak, so the values die with the model
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, Any]]] = weakref.WeakKeyDictionary()


def cached(model: nn.Module, what: str, calibration: torch.Tensor, batch_size: int, build: Callable[[], Any]):
    """build() for this model, calibration tokens and batch size, or the value an earlier call built;
    one value per model and `what` (a new calibration replaces the old one)."""
    ids = calibration.detach().cpu().contiguous()
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()
    key = (digest, tuple(ids.shape), str(ids.dtype), batch_size, str(model_device(model)))
    slot = _CACHE.setdefault(model, {})
    if what not in slot or slot[what][0] != key:
        slot.pop(what, None)  # free the old value before building the new one
        slot[what] = (key, build())
    return slot[what][1]


def _same(a: Any, b: Any) -> bool:
    """Deep equality of block call arguments (tensors by value); anything unsure compares unequal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.device == b.device
            and bool(torch.equal(a, b))
        )
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - an object without a usable ==: not known to be the same
        return False


def _block_calls(model: nn.Module, blocks: nn.ModuleList, chunks: list[torch.Tensor]):
    """Hidden states entering block 0 and every block's other arguments (attention mask, positions,
    rotary tables ...: they come from the token ids and the embeddings, never from block weights,
    so they hold for the quantized model too), per chunk. Returns (hidden per chunk, [(args,
    kwargs)] per chunk per block), args with the hidden states left out.

    The first chunk runs up to the last block, recording every block's call. Where every block got
    block 0's arguments (most models compute them once), the other chunks stop at block 0, saving
    all but one block of a forward pass over the calibration data; models that give blocks their own
    arguments (Gemma's sliding-window and global layers) run every chunk up to the last block."""
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict]]] = []
    shared = False  # every block is called with block 0's arguments: stop each chunk at block 0

    def record(module, args, kwargs):
        if args:
            x, rest, kw = args[0], (None, *args[1:]), dict(kwargs)
        else:
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            x, rest = kwargs["hidden_states"], ()
        if module is blocks[0]:
            hidden.append(x)
        calls[-1].append((rest, kw))
        if module is blocks[-1] or shared:
            raise _Stop

    handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks]
    try:
        for ids in chunks:
            calls.append([])
            try:
                model(input_ids=ids.to(model_device(model)), use_cache=False)
            except _Stop:
                pass
            if shared:
                calls[-1] *= len(blocks)
            elif len(calls) == 1:
                shared = all(_same(call, calls[0][0]) for call in calls[0][1:])
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
    chunks = _chunks(calibration, batch_size)
    capture = lambda: _block_calls(model, blocks, chunks)  # noqa: E731
    hidden, calls = cached(model, "block inputs", calibration, batch_size, capture)
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
