"""quantize_model/restore on whole models: bit accounting, only block linears touched, pristine
restore between specs, outliers, tied weights, tiny GPT-NeoX and GPT-2."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from kbitlaw.model_structure import transformer_linears
from kbitlaw.quant.fake import (
    outlier_features,
    quantize_model,
    restore,
)
from tests.test_quantize import gen

FIXED = ["int", "fp", "nf", "dynamic"]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(100)
        self.q, self.k = nn.Linear(100, 64), nn.Linear(100, 64)  # 6400 weights = 100 blocks of 64


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 100)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(100, 10, bias=False)


@pytest.mark.parametrize(
    "text,bpp",
    [
        ("int4-b64", 4.25),
        ("int3-b64-o2", 3 + 0.25 + 0.02 * 13),  # 2 of 100 input features x 64 outputs kept at 16 bits
        ("nf4", 4 + 16 / 6400),  # one absmax per tensor
        ("fp4e2-b128", 4 + 16 / 128),
        ("fp16", 16),
    ],
)
def test_bit_accounting_on_known_shapes(text, bpp):
    torch.manual_seed(0)
    model = Tiny()
    report = quantize_model(model, text)
    n_all = sum(p.numel() for p in model.parameters())
    assert report.n_params_quantized == 4 * 6400 and report.n_params_other == n_all - 4 * 6400
    assert report.bits_per_param == pytest.approx(bpp, rel=1e-12)
    assert report.total_bits == pytest.approx(4 * 6400 * bpp + 16 * (n_all - 4 * 6400), rel=1e-12)
    assert sorted(report.layer_mse) == ["layers.0.k", "layers.0.q", "layers.1.k", "layers.1.q"]
    assert report.columns()["quant"] == text and report.columns()["n_params"] == n_all


def tiny_neox() -> nn.Module:
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=128,
        max_position_embeddings=64,
    )
    return GPTNeoXForCausalLM(config).eval()


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("make", [tiny_neox, tiny_gpt2])
def test_quantize_model_touches_only_block_linears_and_restores(make):
    model = make()
    before = snapshot(model)
    linear_weights = {f"{name}.weight" for name, _ in transformer_linears(model)}
    report = quantize_model(model, "int4-b64")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == linear_weights
    assert report.n_params_quantized == sum(model.state_dict()[k].numel() for k in linear_weights)
    assert report.n_params_quantized + report.n_params_other == sum(p.numel() for p in model.parameters())
    restore(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("make", [tiny_neox, tiny_gpt2])
def test_specs_do_not_compound(make):
    model, fresh = make(), make()
    quantize_model(model, "int3-b64-emb")
    quantize_model(model, "nf4-b64")
    quantize_model(fresh, "nf4-b64")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    restore(model)
    restore(model)  # a second restore is harmless


def test_embedding_option_and_tied_weights_count_once():
    model = tiny_gpt2()
    wte = model.transformer.wte.weight
    assert model.lm_head.weight is wte
    before = wte.detach().clone()
    plain = quantize_model(model, "int4-b64")
    report = quantize_model(model, "int4-b64-emb")
    assert not torch.equal(wte, before) and "transformer.wte" in report.layer_mse
    assert report.n_params_quantized == plain.n_params_quantized + wte.numel()  # tied head counted once
    assert report.n_params_quantized + report.n_params_other == sum(p.numel() for p in model.parameters())
    quantize_model(model, "int4-b64")  # dropping -emb puts the embedding back
    assert torch.equal(wte, before)
    restore(model)


def test_outliers_in_gpt2_conv1d_orientation():
    model = tiny_gpt2()
    conv = model.transformer.h[0].mlp.c_proj  # Conv1D weight [in=256, out=64]
    original = conv.weight.detach().clone()
    quantize_model(model, "int3-b64-o2")
    rows = outlier_features(original, 2, in_dim=0)
    assert len(rows) == 5  # round(2% of 256)
    assert torch.equal(conv.weight[rows], original[rows].half().float())
    restore(model)


def test_logits_change_more_at_3_bits_than_at_8():
    model = tiny_neox()
    ids = torch.randint(0, 128, (2, 32), generator=gen())
    with torch.no_grad():
        base = model(ids).logits
        quantize_model(model, "int8-b64")
        d8 = (model(ids).logits - base).abs().mean()
        quantize_model(model, "int3-b64")
        d3 = (model(ids).logits - base).abs().mean()
    restore(model)
    assert 0 < d8 < d3 / 10


def test_bfloat16_model_matches_float32_model():
    m32 = tiny_neox()
    for p in m32.parameters():
        p.data = p.data.bfloat16().float()
    m16 = copy.deepcopy(m32).to(torch.bfloat16)
    r32, r16 = quantize_model(m32, "nf4-b64"), quantize_model(m16, "nf4-b64")
    for (_, a), (_, b) in zip(transformer_linears(m32), transformer_linears(m16), strict=True):
        assert torch.equal(a.weight.bfloat16(), b.weight)
    assert r32.total_bits == r16.total_bits
    assert all(math.isclose(r32.layer_mse[k], r16.layer_mse[k], rel_tol=1e-2) for k in r32.layer_mse)
