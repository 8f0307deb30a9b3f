"""The structure of a loaded model: its transformer blocks, the linear layers inside them (the
weights kbitlaw quantizes) and its parameter counts by kind."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def _is_linear(module: nn.Module) -> bool:
    # GPT-2 style models use transformers' Conv1D (a linear layer with a transposed weight).
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks: the largest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no transformer block list (nn.ModuleList) found")
    return max(lists, key=len)


def transformer_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) for every linear layer inside the transformer blocks.

    These are the weights kbitlaw quantizes; embeddings and the LM head are outside the blocks.
    A module is an nn.Linear or a transformers Conv1D (whose weight is [in_features, out_features]).
    """
    blocks = transformer_blocks(model)
    block_ids = {id(m) for m in blocks.modules()}
    linears = []
    for name, module in model.named_modules():
        if id(module) not in block_ids:
            continue
        if _is_linear(module):
            linears.append((name, module))
        elif not isinstance(module, nn.Embedding):
            _refuse_unknown_matrix(name, module)
    return linears


def _refuse_unknown_matrix(name: str, module: nn.Module) -> None:
    """A block module that holds a matrix but is no linear layer (fused MoE experts, a convolution, a
    layer type transformers added later): quantizing around it would be a half-quantized model whose
    bits are wrong, so it is one loud error line instead."""
    for pname, param in module.named_parameters(recurse=False):
        if param.ndim >= 2:
            raise ValueError(
                f"{name}.{pname}: a {param.ndim}-D weight in {type(module).__name__} cannot be classified "
                "(kbitlaw quantizes nn.Linear and Conv1D layers in the transformer blocks)"
            )


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every distinct parameter once (tied embeddings count once)
    quantizable: int  # weights of the linear layers inside the transformer blocks
    embedding_and_head: int  # input embeddings + LM head (once if tied)
    other: int  # norms, biases, position tables not in an nn.Embedding, ...


def count_params(model: nn.Module) -> ParamCounts:
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    quantizable = {id(m.weight): m.weight.numel() for _, m in transformer_linears(model)}
    edges: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            edges[id(module.weight)] = module.weight.numel()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        edges[id(head.weight)] = head.weight.numel()
    n_q, n_e = sum(quantizable.values()), sum(edges.values())
    return ParamCounts(total=total, quantizable=n_q, embedding_and_head=n_e, other=total - n_q - n_e)
