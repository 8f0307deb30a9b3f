"""Tiny random-init causal LMs of the architectures people evaluate, and the byte-level BPE
tokenizers they are scored with: built from transformers config classes, nothing downloaded.

Every model has hidden size 32, 2 layers and 4 attention heads, float32, in eval mode. Where an
architecture has a feature that changes how scoring must be done (grouped-query attention, a sliding
window, ALiBi, soft-capped logits, fused projections, Conv1D, learned positions with an offset),
the config turns it on at a size the test data reaches: sliding windows of 16 tokens, and some
models with a 64-token context so that perplexity documents roll over several windows.

    tokenizer = bpe_tokenizer()                      # adds no special tokens (GPT-2 style)
    bos = bos_tokenizer(tokenizer)                   # prepends <s> to every text (Llama style)
    model = build("mistral", bos)                    # vocab = len(bos)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tests.conftest import corpus_sentences, make_bpe_tokenizer

HIDDEN, LAYERS, HEADS = 32, 2, 4
SLIDING = 16  # shorter than most test rows: a sentence is 7-17 tokens
SHORT_CONTEXT = 64  # models with this context length score perplexity over several rolling windows
LONG_CONTEXT = 256
BOS = "<s>"


def bpe_tokenizer(vocab_size: int = 300) -> Any:
    """The demo family's byte-level BPE (kbitlaw.demo.train), trained on the test corpus; it adds no
    special tokens, and its one special token <|endoftext|> is BOS, EOS and UNK (GPT-2's setup)."""
    return make_bpe_tokenizer(corpus_sentences(400, seed=0), vocab_size)


def bos_tokenizer(plain: Any) -> Any:
    """`plain` with its own BOS token <s> (a new id) prepended to every text by a TemplateProcessing
    post-processor, as Llama, Mistral and Gemma hub tokenizers do; EOS stays <|endoftext|>."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(plain.backend_tokenizer)
    backend.add_special_tokens([BOS])
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    eos = plain.eos_token
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=eos, unk_token=eos)


@dataclass(frozen=True)
class Arch:
    """One architecture: how to build it, which tokenizer it uses, and the linear layers that every
    transformer block holds (name suffixes after `<blocks>.<i>.`): exactly what quantization touches."""

    name: str
    build: Callable[[int, dict[str, int]], nn.Module]  # (vocab size, special token ids) -> model
    bos: bool  # scored with the BOS-adding tokenizer
    blocks: str  # qualified name of the ModuleList of transformer blocks
    linears: frozenset[str]


LLAMA_LINEARS = frozenset(
    f"{part}.{proj}"
    for part, projs in (("self_attn", "q_proj k_proj v_proj o_proj"), ("mlp", "gate_proj up_proj down_proj"))
    for proj in projs.split()
)
NEOX_STYLE = frozenset(  # BLOOM, Falcon and GPT-NeoX name their fused layers alike
    {"self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}
)


def _common(vocab: int, ids: dict[str, int], context: int) -> dict[str, Any]:
    """Config fields most architectures share (names as LlamaConfig spells them)."""
    return dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=context,
        **ids,
    )


def _llama(tied: bool) -> Callable[[int, dict[str, int]], nn.Module]:
    def build(vocab: int, ids: dict[str, int]) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        context = SHORT_CONTEXT if tied else LONG_CONTEXT
        config = LlamaConfig(**_common(vocab, ids, context), num_key_value_heads=2, tie_word_embeddings=tied)
        return LlamaForCausalLM(config)

    return build


def _qwen2(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # Qwen2 has biases on q/k/v (not o): quantization must leave them alone.
    return Qwen2ForCausalLM(Qwen2Config(**_common(vocab, ids, LONG_CONTEXT), num_key_value_heads=2))


def _qwen3(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # head_dim defaults to 128 whatever the hidden size; q_norm / k_norm are RMSNorms of head_dim.
    config = Qwen3Config(
        **_common(vocab, ids, SHORT_CONTEXT), num_key_value_heads=2, head_dim=HIDDEN // HEADS
    )
    return Qwen3ForCausalLM(config)


def _mistral(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        **_common(vocab, ids, SHORT_CONTEXT), num_key_value_heads=2, sliding_window=SLIDING
    )
    return MistralForCausalLM(config)


def _gemma2(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # head_dim and query_pre_attn_scalar default to 256; layers alternate sliding / full attention;
    # attention and final logits are soft-capped (tanh); transformers runs it with eager attention.
    config = Gemma2Config(
        **_common(vocab, ids, LONG_CONTEXT),
        num_key_value_heads=2,
        head_dim=HIDDEN // HEADS,
        query_pre_attn_scalar=HIDDEN // HEADS,
        sliding_window=SLIDING,
    )
    return Gemma2ForCausalLM(config)


def _gemma3(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        **_common(vocab, ids, SHORT_CONTEXT),
        num_key_value_heads=2,
        head_dim=HIDDEN // HEADS,
        query_pre_attn_scalar=HIDDEN // HEADS,
        sliding_window=SLIDING,
        layer_types=["sliding_attention", "full_attention"],  # by default 5 of every 6 slide
    )
    return Gemma3ForCausalLM(config)


def _phi3(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**_common(vocab, ids, SHORT_CONTEXT)))


def _olmo2(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(Olmo2Config(**_common(vocab, ids, LONG_CONTEXT)))


def _gpt2(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=SHORT_CONTEXT, **ids
    )
    return GPT2LMHeadModel(config)


def _opt(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    # OPT's learned positions start at offset 2; dropout defaults to 0.1 (eval() turns it off).
    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        ffn_dim=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=SHORT_CONTEXT,
        word_embed_proj_dim=HIDDEN,
        **ids,
    )
    return OPTForCausalLM(config)


def _bloom(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import BloomConfig, BloomForCausalLM

    # No position limit in the config: kbitlaw and lm-eval both fall back to 2048 (the tokenizer's
    # model_max_length is unset).
    return BloomForCausalLM(
        BloomConfig(vocab_size=vocab, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, **ids)
    )


def _falcon(new_architecture: bool) -> Callable[[int, dict[str, int]], nn.Module]:
    def build(vocab: int, ids: dict[str, int]) -> nn.Module:
        from transformers import FalconConfig, FalconForCausalLM

        # Old (Falcon-7B): multi-query, parallel attention + MLP, one layer norm.
        # New (Falcon-40B/180B): grouped kv heads, two layer norms.
        extra = dict(new_decoder_architecture=True, num_kv_heads=2) if new_architecture else {}
        config = FalconConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=LONG_CONTEXT,
            **extra,
            **ids,
        )
        return FalconForCausalLM(config)

    return build


def _neox(vocab: int, ids: dict[str, int]) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(**_common(vocab, ids, SHORT_CONTEXT))
    return GPTNeoXForCausalLM(config)


ARCHS = {
    a.name: a
    for a in (
        Arch("llama-tied", _llama(tied=True), True, "model.layers", LLAMA_LINEARS),
        Arch("llama-untied", _llama(tied=False), True, "model.layers", LLAMA_LINEARS),
        Arch("qwen2", _qwen2, False, "model.layers", LLAMA_LINEARS),
        Arch("qwen3", _qwen3, False, "model.layers", LLAMA_LINEARS),
        Arch("mistral", _mistral, True, "model.layers", LLAMA_LINEARS),
        Arch("gemma2", _gemma2, True, "model.layers", LLAMA_LINEARS),
        Arch("gemma3", _gemma3, True, "model.layers", LLAMA_LINEARS),
        Arch(
            "phi3",
            _phi3,
            False,
            "model.layers",
            frozenset({"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}),
        ),
        Arch("olmo2", _olmo2, False, "model.layers", LLAMA_LINEARS),
        Arch(  # Conv1D layers: weight [in, out]
            "gpt2",
            _gpt2,
            False,
            "transformer.h",
            frozenset({"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
        ),
        Arch(
            "opt",
            _opt,
            False,
            "model.decoder.layers",
            frozenset(
                {f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")} | {"fc1", "fc2"}
            ),
        ),
        Arch("bloom", _bloom, False, "transformer.h", NEOX_STYLE),
        Arch("falcon-7b-style", _falcon(new_architecture=False), False, "transformer.h", NEOX_STYLE),
        Arch("falcon-40b-style", _falcon(new_architecture=True), False, "transformer.h", NEOX_STYLE),
        Arch(
            "gpt-neox",
            _neox,
            False,
            "gpt_neox.layers",
            frozenset(
                {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}
            ),
        ),
    )
}


def build(name: str, tokenizer: Any, seed: int = 0) -> nn.Module:
    """The architecture's model for `tokenizer` (vocab = len(tokenizer)), seeded, float32, eval()."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,  # several configs default to ids outside a tiny vocab
    }
    torch.manual_seed(seed)
    model = ARCHS[name].build(len(tokenizer), ids)
    return model.float().eval()
