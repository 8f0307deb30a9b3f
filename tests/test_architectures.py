"""Architecture parity: every causal LM people evaluate is scored by kbitlaw exactly as
lm-evaluation-harness 0.4.13's HF backend (HFLM) scores it, and quantized in exactly the linear
layers of its transformer blocks.

kbitlaw's scorer is its own (packed multiple-choice rows with a tree mask, logits only where a token
is scored, rolling perplexity windows), so each architecture's quirks can break it silently: a
sliding window shorter than the row, ALiBi positions, soft-capped logits, learned positions with an
offset, a tokenizer that prepends BOS. Scores that drift from lm-eval make kbitlaw's numbers
incomparable to everyone else's; a layer missed by quantization makes a k-bit result wrong. So
for tiny random-init models of 15 architectures (tests/tiny_models.py) this checks:

- every choice's log-likelihood, every cloze log-likelihood and is_greedy, and every perplexity
  document's total NLL against HFLM's request-level results, within 1e-4 nats;
- the parameters `quantize_model` changes are exactly the block linears named per architecture,
  and `restore` puts every parameter back bit for bit;
- a matrix-holding block module that is no linear layer is a loud ValueError, not a silent skip.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
import torch
from torch import nn

from kbitlaw.eval.engine import evaluate_model, max_length, prepare
from kbitlaw.model_structure import transformer_blocks, transformer_linears
from kbitlaw.quant import hessians
from kbitlaw.quant.fake import quantize_model, restore
from kbitlaw.quant.hessians import block_hessians, collect_hessians
from tests.conftest import OBJECTS, SUBJECTS, VERBS, corpus_sentences
from tests.tiny_models import ARCHS, LAYERS, SLIDING, bos_tokenizer, bpe_tokenizer, build

TOLERANCE = 1e-4  # nats, absolute (or 1e-5 relative for a large total)

# -- data: rows whose lengths straddle the sliding window (16 tokens) and the 64-token context -------


def mc_rows() -> list[dict[str, Any]]:
    """15 multiple-choice rows: 0-6 whole sentences, then a sentence's subject and verb; the choices
    are four objects. Sentences run 7-17 tokens, so contexts run 0-87 tokens: most pass the sliding
    window, and the longest are left-truncated to fit the 64-token models."""
    rng = random.Random(1)
    rows = []
    for i in range(15):
        n = [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 2, 1][i]
        sentences = corpus_sentences(n, seed=100 + i)
        context = " ".join([*sentences, f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)}"])
        choices = [f"{obj}." for obj in rng.sample(OBJECTS, 4)]
        rows.append({"id": f"mc{i}", "context": context, "choices": choices, "gold": rng.randrange(4)})
    rows[0]["context"] = ""  # the prefix token (BOS, else EOS) conditions the choice, with no BOS of its own
    rows[13]["context"] += " "  # a trailing space moves to the continuation (lm-eval's _encode_pair)
    return rows


def mc_rows_for(tokenizer: Any) -> list[dict[str, Any]]:
    """`mc_rows`, one of them starting with the tokenizer's BOS text: lm-eval then adds no special
    tokens (the text already holds its BOS)."""
    rows = mc_rows()
    rows[14]["context"] = tokenizer.bos_token + rows[14]["context"]
    return rows


def cloze_rows() -> list[dict[str, Any]]:
    """15 LAMBADA-style texts of 1-5 sentences (7-68 tokens); the target is the last word (" mat.")."""
    return [{"id": f"cz{i}", "text": " ".join(corpus_sentences(1 + i % 5, seed=200 + i))} for i in range(15)]


def ppl_rows() -> list[dict[str, Any]]:
    """4 documents of 1 to 24 sentences (about 13 to 290 tokens): all but the first pass the sliding
    window, the longest two roll over several windows of the 64-token models, the longest over two
    of the 256-token ones."""
    lengths = (1, 4, 10, 24)
    return [
        {"id": f"doc{i}", "text": " ".join(corpus_sentences(n, seed=300 + i))} for i, n in enumerate(lengths)
    ]


# -- models, built once per module ------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The models are tiny: with two threads on a busy 2-core machine, OpenMP's synchronisation
    costs up to 100x the arithmetic (measured: 5 s against 0.04 s for one multiple-choice set)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def tokenizers() -> tuple[Any, Any]:
    """(plain byte-level BPE, the same with a BOS-prepending post-processor)."""
    plain = bpe_tokenizer()
    return plain, bos_tokenizer(plain)


def tokenizer_for(name: str) -> Any:
    plain, bos = tokenizers()
    return bos if ARCHS[name].bos else plain


@functools.cache
def model(name: str) -> nn.Module:
    """The architecture's tiny model, shared by the parity tests (they only read it)."""
    return build(name, tokenizer_for(name))


@functools.cache
def harness(name: str) -> Any:
    """lm-eval's HF backend wrapped around the same model object and tokenizer."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=model(name), tokenizer=tokenizer_for(name), backend="causal", batch_size=8, device="cpu"
    )


def lm_eval_loglikelihood(name: str, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [(float(ll), bool(greedy)) for ll, greedy in harness(name).loglikelihood(requests)]


def lm_eval_rolling(name: str, texts: list[str]) -> list[float]:
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
    return [float(ll) for ll in harness(name).loglikelihood_rolling(requests)]


def kbitlaw_samples(name: str, rows: list[dict[str, Any]], kind: str) -> pl.DataFrame:
    _, samples = evaluate_model(model(name), tokenizer_for(name), pl.DataFrame(rows), kind, samples=True)
    return samples


def assert_close(ours: list[float], theirs: list[float], what: str) -> None:
    """Every score within TOLERANCE; the failure names the worst examples and the largest gap."""
    assert len(ours) == len(theirs), what
    gaps = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    bad = [
        f"#{i}: kbitlaw {a:.6f} lm-eval {b:.6f}"
        for i, (a, b, gap) in enumerate(zip(ours, theirs, gaps, strict=True))
        if gap > max(TOLERANCE, 1e-5 * abs(b))
    ]
    assert not bad, (
        f"{what}: max |difference| {max(gaps):.3g} nats; {len(bad)} of {len(gaps)} off: " + "; ".join(bad[:5])
    )


def greedy_cloze_rows(name: str, n: int = 2) -> list[dict[str, Any]]:
    """Up to `n` texts whose last word is the model's own greedy next token, so that is_greedy is
    true somewhere (a random model's greedy token is rarely a sentence's next word). Found from one
    forward pass over a few sentences: the causal logits at a word's last token are those of its
    prefix; a word counts if " word" is one token and encodes after the prefix as scored."""
    tokenizer, lm = tokenizer_for(name), model(name)
    rows: list[dict[str, Any]] = []
    for seed in (400, 401, 402):
        text = " ".join(corpus_sentences(4, seed=seed))
        with torch.no_grad():
            best = lm(torch.tensor([tokenizer(text)["input_ids"]])).logits[0].argmax(-1).tolist()
        words = text.split(" ")
        for k in range(1, len(words)):
            context = " ".join(words[:k])
            ids = tokenizer(context)["input_ids"]
            word = tokenizer.decode([best[len(ids) - 1]])
            whole = tokenizer(context + word)["input_ids"]
            if (
                word[:1] == " "
                and word.strip()
                and " " not in word[1:]
                and whole == [*ids, best[len(ids) - 1]]
            ):
                rows.append({"id": f"greedy{len(rows)}", "text": context + word})
                if len(rows) == n:
                    return rows
    return rows


NAMES = list(ARCHS)


# -- the premises: the data reaches each model's sliding window and context, tokenizers as intended --


def test_the_data_straddles_the_windows() -> None:
    plain, bos = tokenizers()
    assert plain("the cat")["input_ids"][0] != plain.bos_token_id  # GPT-2 style: no special tokens
    assert bos("the cat")["input_ids"][0] == bos.bos_token_id  # Llama style: BOS first
    assert bos.bos_token_id != bos.eos_token_id and len(bos) == len(plain) + 1
    mc_lengths = [len(plain(r["context"] + " " + r["choices"][0])["input_ids"]) for r in mc_rows()]
    assert min(mc_lengths) < SLIDING < max(mc_lengths) and sum(n > SLIDING for n in mc_lengths) >= 5
    assert prepare(pl.DataFrame(mc_rows()), "multiple_choice", plain, 64).truncated >= 2  # left-truncated
    cloze_lengths = [len(plain(r["text"])["input_ids"]) for r in cloze_rows()]
    assert min(cloze_lengths) < SLIDING < max(cloze_lengths)
    doc_lengths = [len(plain(r["text"])["input_ids"]) for r in ppl_rows()]
    windows = {max_length(model(name), tokenizer_for(name)) for name in NAMES}
    assert windows == {64, 256, 2048}  # 2048: BLOOM has no position limit in its config
    assert min(doc_lengths) < SLIDING and sorted(doc_lengths)[-2] > 64 and max(doc_lengths) > 256


# -- scoring parity with lm-eval --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_multiple_choice_matches_lm_eval(name: str) -> None:
    rows = mc_rows_for(tokenizer_for(name))
    samples = kbitlaw_samples(name, rows, "multiple_choice")
    theirs = lm_eval_loglikelihood(name, [(r["context"], " " + c) for r in rows for c in r["choices"]])
    ours = [ll for lls in samples["loglikelihood"].to_list() for ll in lls]
    assert_close(ours, [ll for ll, _ in theirs], f"{name} multiple_choice log-likelihoods")
    assert [g for gs in samples["is_greedy"].to_list() for g in gs] == [greedy for _, greedy in theirs]
    # Accuracy follows from the scores; checked so that a tie-break or gold mix-up shows too.
    lm_eval_correct = [
        max(range(4), key=lambda j, i=i: theirs[4 * i + j][0]) == r["gold"] for i, r in enumerate(rows)
    ]
    assert samples["correct"].to_list() == lm_eval_correct


@pytest.mark.parametrize("name", NAMES)
def test_cloze_matches_lm_eval(name: str) -> None:
    rows = cloze_rows() + greedy_cloze_rows(name)
    samples = kbitlaw_samples(name, rows, "cloze")
    pairs = [tuple(r["text"].rsplit(" ", 1)) for r in rows]
    theirs = lm_eval_loglikelihood(name, [(context, " " + last) for context, last in pairs])
    assert_close(
        samples["loglikelihood"].to_list(), [ll for ll, _ in theirs], f"{name} cloze log-likelihoods"
    )
    assert any(greedy for _, greedy in theirs)  # the premise: is_greedy is compared on a true case too
    assert samples["is_greedy"].to_list() == [greedy for _, greedy in theirs]


@pytest.mark.parametrize("name", NAMES)
def test_perplexity_matches_lm_eval(name: str) -> None:
    rows = ppl_rows()
    samples = kbitlaw_samples(name, rows, "perplexity")
    theirs = lm_eval_rolling(name, [r["text"] for r in rows])
    assert_close(samples["loss"].to_list(), [-ll for ll in theirs], f"{name} perplexity document NLLs")


# -- quantization touches exactly the block linears ------------------------------------------------


def expected_quantized(name: str) -> set[str]:
    arch = ARCHS[name]
    return {f"{arch.blocks}.{i}.{linear}.weight" for i in range(LAYERS) for linear in arch.linears}


@pytest.mark.parametrize("name", NAMES)
def test_quantization_changes_exactly_the_block_linears(name: str) -> None:
    # A fresh model, not the shared one: a failure here must not leave quantized weights behind.
    fresh = build(name, tokenizer_for(name))
    # remove_duplicate=False: a tied LM head is listed under its own name too (and must not change).
    params = dict(fresh.named_parameters(remove_duplicate=False))
    before = {n: p.detach().clone() for n, p in params.items()}
    assert expected_quantized(name) <= params.keys()  # the names written in tiny_models.py exist
    quantize_model(fresh, "int4-b16")
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert changed == expected_quantized(name), (
        f"{name}: quantized but not expected {sorted(changed - expected_quantized(name))}; "
        f"expected but untouched {sorted(expected_quantized(name) - changed)}"
    )
    restore(fresh)
    assert [n for n, p in params.items() if not torch.equal(p, before[n])] == []


@pytest.mark.parametrize("name", NAMES)
def test_gptq_calibration_replays_every_block_as_the_model_calls_it(name: str, monkeypatch) -> None:
    """block_hessians replays each block on recorded inputs and arguments; where every block got the
    same arguments on the first chunk it records only block 0's for the others. Rows of 40 tokens pass
    the 16-token sliding window (Gemma's layers then get different masks: the full recording). Either
    way the Hessians are those of a plain forward pass. Modules fed one tensor share its X Xᵀ."""
    tiny = model(name)
    ids = torch.randint(3, tiny.config.vocab_size, (6, 40), generator=torch.Generator().manual_seed(2))
    plain = collect_hessians(tiny, ids, batch_size=2)
    replayed = {n: h for _, hs in block_hessians(tiny, ids, batch_size=2) for n, h in hs.items()}
    assert set(replayed) == set(plain) == {n for n, _ in transformer_linears(tiny)}
    for n, h in plain.items():
        torch.testing.assert_close(replayed[n], h, rtol=1e-4, atol=1e-5, msg=f"{name}: {n}")
    if name == "llama-untied":  # q, k, v share one input tensor, gate and up another: 4 products a layer
        products = []

        def counted(x: torch.Tensor) -> torch.Tensor:
            products.append(x.shape)
            return real_gram(x)

        real_gram = hessians.gram
        monkeypatch.setattr(hessians, "gram", counted)
        collect_hessians(tiny, ids[:2])
        assert len(products) == 4 * len(transformer_blocks(tiny))
    _, calls = hessians._block_calls(tiny, transformer_blocks(tiny), list(ids.split(2)))
    shared = calls[-1][0] is calls[-1][-1]  # both paths are covered: Gemma's layers differ
    assert shared == (name not in ("gemma2", "gemma3")), name


# -- a block module that holds a matrix but is no linear layer: refuse loudly ------------------------


class OpaqueMatmul(nn.Module):
    """A projection transformers might add one day: a weight matrix used as `x @ weight.T`, in a
    module that is neither nn.Linear nor Conv1D. Quantizing around it would half-quantize the model."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_an_unknown_matrix_module_cannot_be_classified() -> None:
    fresh = build("llama-untied", tokenizer_for("llama-untied"))
    old = fresh.model.layers[1].mlp.down_proj
    fresh.model.layers[1].mlp.down_proj = OpaqueMatmul(old.in_features, old.out_features)
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj.*cannot be classified") as err:
        quantize_model(fresh, "int4-b16")
    assert "\n" not in str(err.value)  # one line
    # Refused before anything was touched: no weight is left half-quantized.
    assert all(torch.equal(p, before[n]) for n, p in fresh.named_parameters())
