"""The scoring engine: parity with lm-evaluation-harness, batch-size invariance, bad input."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from kbitlaw.checkpoint_loading import load_model, load_tokenizer
from kbitlaw.eval.engine import EvaluationError, evaluate_model, max_length, prepare, rolling_windows
from kbitlaw.eval.scoring import Scorer
from tests.conftest import corpus_sentences

WINDOW = 64  # the trained toy model's context window


def mc_rows(n: int, seed: int, long_context: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i, sentence in enumerate(corpus_sentences(n, seed)):
        words = sentence[:-1].split(" ")
        context, right = " ".join(words[:-1]), words[-1]
        if long_context and i % 10 == 0:  # longer than the window: left-truncated like lm-eval
            context = " ".join(corpus_sentences(12, seed + i)) + " " + context
        pool = [w for w in ["house", "tree", "cat", "mat", "box", "river"] if w != right]
        choices = [right] + rng.sample(pool, 3)
        rng.shuffle(choices)
        rows.append({"id": str(i), "context": context, "choices": choices, "gold": choices.index(right)})
    return rows


def cloze_rows(n: int, seed: int) -> list[dict]:
    return [{"id": str(i), "text": s[:-1]} for i, s in enumerate(corpus_sentences(n, seed))]


def ppl_rows(seed: int) -> list[dict]:
    rng = random.Random(seed)
    texts = [" ".join(corpus_sentences(rng.randint(1, 25), seed + i)) for i in range(12)]
    texts.append("the  cat\tsat.\n\nOn the mat é.")  # irregular whitespace and a non-ASCII byte
    return [{"id": str(i), "text": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def toy(trained_checkpoint):
    return load_model(str(trained_checkpoint)), load_tokenizer(str(trained_checkpoint))


LM_EVAL_TASKS = {
    "kb_mc": """output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm""",
    "kb_cloze": """output_type: loglikelihood
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true""",
    "kb_ppl": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte""",
}


@pytest.fixture(scope="module")
def parity_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval")
    data = {"kb_mc": mc_rows(60, 7, long_context=True), "kb_cloze": cloze_rows(60, 9), "kb_ppl": ppl_rows(3)}
    for task, rows in data.items():
        (d / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        header = (
            f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d}/{task}.jsonl\n"
        )
        (d / f"{task}.yaml").write_text(header + "test_split: test\n" + LM_EVAL_TASKS[task] + "\n")
    return d, data


def test_parity_with_lm_eval(trained_checkpoint, toy, parity_data, monkeypatch):
    """Same model, same rows: identical accuracies, perplexities within 1e-4 relative."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(parity_data[0] / "hf-cache"))
    directory, data = parity_data
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={trained_checkpoint},dtype=float32",
        tasks=list(data),
        task_manager=TaskManager(include_path=str(directory)),
        device="cpu",
        batch_size=16,
        log_samples=True,
    )
    ref = out["results"]
    model, tokenizer = toy
    kinds = {"kb_mc": "multiple_choice", "kb_cloze": "cloze", "kb_ppl": "perplexity"}
    ours = {
        task: {r["metric"]: r for r in evaluate_model(model, tokenizer, pl.DataFrame(rows), kinds[task])}
        for task, rows in data.items()
    }
    assert ours["kb_mc"]["acc"]["value"] == ref["kb_mc"]["acc,none"]
    assert ours["kb_mc"]["acc_norm"]["value"] == ref["kb_mc"]["acc_norm,none"]
    assert ours["kb_mc"]["acc"]["stderr"] == pytest.approx(ref["kb_mc"]["acc_stderr,none"], rel=1e-9)
    assert ours["kb_mc"]["acc"]["n_truncated"] == 6  # the long contexts were cut, and counted
    assert 0.3 < ours["kb_mc"]["acc"]["value"] < 1.0  # a trained model: the comparison means something
    assert ours["kb_cloze"]["acc"]["value"] == ref["kb_cloze"]["acc,none"]
    assert ours["kb_cloze"]["perplexity"]["value"] == pytest.approx(
        ref["kb_cloze"]["perplexity,none"], rel=1e-4
    )
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours["kb_ppl"][metric]["value"] == pytest.approx(ref["kb_ppl"][f"{metric},none"], rel=1e-4)
    # Per-choice log-likelihoods agree too, not just the argmax.
    prepared = prepare(pl.DataFrame(data["kb_mc"]), "multiple_choice", tokenizer, WINDOW)
    scores = Scorer(model).score(prepared.requests)
    per_doc: dict[int, list[float]] = {}
    for owner, s in zip(prepared.owners, scores, strict=True):
        per_doc.setdefault(owner, []).extend(x.loglikelihood for x in s)
    for sample in out["samples"]["kb_mc"]:
        theirs = [ll for ll, _ in sample["filtered_resps"]]
        assert per_doc[sample["doc_id"]] == pytest.approx(theirs, rel=1e-5, abs=1e-5)


def test_scores_do_not_depend_on_batch_size(toy):
    model, tokenizer = toy
    datasets = [
        prepare(pl.DataFrame(mc_rows(40, 1, long_context=True)), "multiple_choice", tokenizer, WINDOW),
        prepare(pl.DataFrame(ppl_rows(5)), "perplexity", tokenizer, WINDOW),
    ]
    for prepared in datasets:
        runs = [Scorer(model, batch_size=bs).score(prepared.requests) for bs in (1, 7, 32)]
        flat = [[s.loglikelihood for req in run for s in req] for run in runs]
        for other in flat[1:]:
            # 1e-5 relative; a near-zero log-likelihood (-0.009) is held to 1e-6 nats instead, since
            # float32 rounding of logits of size ~10 already moves it by ~1e-7 with the padding.
            assert other == pytest.approx(flat[0], rel=1e-5, abs=1e-6)


def test_packed_choices_equal_one_row_per_choice(toy):
    model, tokenizer = toy
    prepared = prepare(pl.DataFrame(mc_rows(30, 2)), "multiple_choice", tokenizer, WINDOW)
    packed = Scorer(model).score(prepared.requests)
    plain_scorer = Scorer(model)
    plain_scorer._tree_ok = False  # the fallback path for models that ignore custom masks
    plain = plain_scorer.score(prepared.requests)
    assert [s.loglikelihood for r in packed for s in r] == pytest.approx(
        [s.loglikelihood for r in plain for s in r], rel=1e-5
    )
    assert [s.is_greedy for r in packed for s in r] == [s.is_greedy for r in plain for s in r]


def test_rolling_windows_match_lm_eval():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for n in (1, 5, 63, 64, 65, 128, 129, 300):
        tokens = list(range(100, 100 + n))
        ref = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 7, 64, 1)]
        assert rolling_windows(tokens, 7, 64) == [(list(a), list(b)) for a, b in ref]
        predicted = [t for _, cont in rolling_windows(tokens, 7, 64) for t in cont]
        assert predicted == tokens  # every token exactly once


def test_max_length_from_config(toy):
    assert max_length(toy[0], toy[1]) == WINDOW


def test_bad_input_is_a_clear_error(toy):
    model, tokenizer = toy
    with pytest.raises(EvaluationError, match="has no rows"):
        evaluate_model(
            model,
            tokenizer,
            pl.DataFrame(schema={"id": pl.String, "text": pl.String}),
            "cloze",
            name="empty.jsonl",
        )
    rows = mc_rows(3, 0)
    rows[1]["gold"] = 4
    with pytest.raises(EvaluationError, match=r"bad\.jsonl: row id=1: gold 4 out of range for 4 choices"):
        evaluate_model(model, tokenizer, pl.DataFrame(rows), "multiple_choice", name="bad.jsonl")
    with pytest.raises(EvaluationError, match="missing column"):
        evaluate_model(model, tokenizer, pl.DataFrame({"id": ["1"]}), "cloze", name="x")
    with pytest.raises(EvaluationError, match="unknown kind"):
        evaluate_model(model, tokenizer, pl.DataFrame({"id": ["1"]}), "qa", name="x")


def with_bos(tokenizer):
    """The same tokenizer, prepending its BOS token to every text (as Llama, Mistral, Gemma hub ones)."""
    import copy

    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    bos = tokenizer.bos_token
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=bos, unk_token=bos)


def test_a_bos_tokenizer_is_scored_with_bos_as_lm_eval_scores_it(toy):
    """lm-eval 0.4.13 encodes with the tokenizer's default special tokens: BOS starts every context
    and perplexity document, never an empty context's continuation nor a text that starts with it."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, plain = toy
    tokenizer = with_bos(plain)
    bos = tokenizer.bos_token_id
    assert tokenizer("the cat")["input_ids"][0] == bos  # the premise: this tokenizer adds BOS
    mc = mc_rows(12, 3)
    mc[0]["context"] = ""  # the prefix token conditions the choice, which gets no BOS of its own
    mc[1]["context"] = tokenizer.bos_token + mc[1]["context"]  # already starts with BOS: none added
    ppl = ppl_rows(4)[:4]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu")
    for kind, rows in (("multiple_choice", mc), ("perplexity", ppl)):
        out, samples = evaluate_model(model, tokenizer, pl.DataFrame(rows), kind, samples=True)
        assert all(r["bos"] for r in out)  # recorded in the results
        if kind == "multiple_choice":
            args = [(r["context"], " " + c) for r in rows for c in r["choices"]]
            theirs = [
                ll
                for ll, _ in lm.loglikelihood(
                    [Instance("loglikelihood", {}, a, i) for i, a in enumerate(args)]
                )
            ]
            ours = [ll for lls in samples["loglikelihood"].to_list() for ll in lls]
        else:
            args = [(r["text"],) for r in rows]
            instances = [Instance("loglikelihood_rolling", {}, a, i) for i, a in enumerate(args)]
            theirs = [-ll for ll in lm.loglikelihood_rolling(instances)]
            ours = samples["loss"].to_list()
        assert ours == pytest.approx(theirs, abs=1e-4)
    prepared = prepare(pl.DataFrame(mc), "multiple_choice", tokenizer, WINDOW)
    assert prepared.requests[0].context == (bos,) and prepared.requests[0].continuations[0][0] != bos
    assert prepared.requests[1].context.count(bos) == 1 and prepared.requests[2].context[0] == bos
    plain_rows = evaluate_model(model, plain, pl.DataFrame(mc), "multiple_choice")
    assert not any(r["bos"] for r in plain_rows)
