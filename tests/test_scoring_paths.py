"""The scoring path is chosen per model: packed multiple choice only where a custom 4-D mask scores
exactly what plain rows score. ALiBi models (BLOOM) and rows longer than a sliding window (Mistral,
Gemma3) are scored one row per choice, and agree with plain rows per example."""

from __future__ import annotations

import random

import pytest
import torch

from kbitlaw.eval.scoring import Request, Scorer, packing_limit

VOCAB = 64


def tiny(arch: str, window: int = 16):
    """A randomly initialised model of the architecture (nothing downloaded)."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "bloom":
        config = tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=VOCAB)
        return tf.BloomForCausalLM(config).eval()
    windowed = {  # the same small shape for both sliding-window architectures
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": window,
        "max_position_embeddings": 256,
    }
    if arch == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**windowed)).eval()
    if arch == "gemma3":
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(head_dim=8, **windowed)).eval()
    raise ValueError(arch)


def requests(n: int, longest: int, seed: int = 0) -> list[Request]:
    """Multiple-choice requests, contexts of 2..longest tokens, four choices of 1-4 tokens each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        context = tuple(rng.randrange(1, VOCAB) for _ in range(rng.randint(2, longest)))
        choices = tuple(tuple(rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 4))) for _ in range(4))
        out.append(Request(context, choices))
    return out


def plain_scores(model, reqs: list[Request]) -> list[float]:
    scorer = Scorer(model)
    scorer._tree_ok = False  # one row per choice: the model's own masks, windows and positions
    return [s.loglikelihood for r in scorer.score(reqs) for s in r]


@pytest.mark.parametrize("arch", ["bloom", "mistral", "gemma3"])
def test_every_row_scores_as_a_plain_row(arch):
    model = tiny(arch)
    # The first request is short (a probe of it alone passes); many later packed rows are longer
    # than the 16-token window.
    reqs = requests(1, longest=3) + requests(24, longest=40)
    assert reqs[0].packed_length < 16 < max(r.packed_length for r in reqs)
    ours = [s.loglikelihood for r in Scorer(model, batch_size=5).score(reqs) for s in r]
    assert ours == pytest.approx(plain_scores(model, reqs), rel=1e-5, abs=1e-5)


def test_short_rows_inside_a_window_stay_packed():
    model = tiny("mistral", window=64)
    reqs = requests(12, longest=20)
    scorer = Scorer(model)
    ours = [s.loglikelihood for r in scorer.score(reqs) for s in r]
    assert scorer._tree_ok and len(scorer._units(reqs)) == len(reqs)  # one packed row per question
    assert ours == pytest.approx(plain_scores(model, reqs), rel=1e-5, abs=1e-5)


def test_packing_limit_from_the_config():
    import transformers as tf

    assert packing_limit(tf.BloomConfig()) == 0  # ALiBi
    assert packing_limit(tf.FalconConfig(alibi=True)) == 0
    assert packing_limit(tf.FalconConfig(alibi=False)) is None
    assert packing_limit(tf.MistralConfig(sliding_window=128)) == 127
    assert packing_limit(tf.MistralConfig(sliding_window=None)) is None
    assert packing_limit(tf.Qwen2Config(use_sliding_window=False, sliding_window=4096)) is None
    assert packing_limit(tf.LlamaConfig()) is None
    flash = tf.LlamaConfig()
    flash._attn_implementation = "flash_attention_2"
    assert packing_limit(flash) == 0
    assert packing_limit(None) is None


def test_an_error_from_another_library_names_its_type():
    """The one error line: ours as written; one raised inside another library with its type (a
    bare 'too many values to unpack' from transformers says nothing alone)."""
    import json

    from kbitlaw.flows.cli.common import error_line
    from kbitlaw.quant.spec import QuantSpec

    with pytest.raises(ValueError) as ours:
        QuantSpec.parse("int9")
    assert error_line(ours.value) == "k must be 2..8, got 9"
    with pytest.raises(ValueError) as theirs:
        json.loads("{")
    assert error_line(theirs.value).startswith("JSONDecodeError: Expecting property name")
