"""Datasets: specs, adapters, builtin generators, cleaning + quarantine, content addressing."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import polars as pl
import pytest

from kbitlaw.data import world
from kbitlaw.data.adapters import adapt
from kbitlaw.data.cleaning import clean_frame
from kbitlaw.data.specs import (
    BUILTIN_SPECS,
    DatasetError,
    DatasetSpec,
    clean_dataset,
    dataset_spec_dir,
    load_dataset_specs,
    parse_dataset_spec,
    raw_input,
)
from kbitlaw.store import Store


def mc(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={"id": pl.String, "context": pl.String, "choices": pl.List(pl.String), "gold": pl.Int64}
    ).with_row_index("row")


CAFE = unicodedata.normalize("NFD", "café")  # decomposed: NFC makes it equal to "café"


def test_every_cleaning_rule_quarantines_with_its_reason():
    rows = [
        {"id": "ok1", "context": "  the  cat\tsat ", "choices": ["mat", "hat"], "gold": 0},
        {"id": "ok2", "context": "Question: why?\n\n Answer:", "choices": [CAFE, "tea"], "gold": 1},
        {"id": "null", "context": None, "choices": ["a", "b"], "gold": 0},
        {"id": "empty", "context": "x", "choices": ["a", "  "], "gold": 0},
        {"id": "one", "context": "x", "choices": ["a"], "gold": 0},
        {"id": "gold", "context": "x", "choices": ["a", "b"], "gold": 2},
        {"id": "neg", "context": "x", "choices": ["a", "b"], "gold": -1},
        {"id": "dupchoice", "context": "x", "choices": ["yes", " yes"], "gold": 0},
        {"id": "long", "context": "y" * 101, "choices": ["a", "b"], "gold": 0},
        {"id": "ok1", "context": "other", "choices": ["a", "b"], "gold": 0},  # duplicate id
        {
            "id": "copy",
            "context": "the cat sat",
            "choices": ["mat", "hat"],
            "gold": 0,
        },  # same as ok1, normalised
        {
            "id": "copy2",
            "context": "Question: why?\nAnswer:",
            "choices": ["café", "tea"],
            "gold": 1,
        },  # NFC twin
    ]
    raw = mc(rows)
    clean, quarantine = clean_frame(raw, "multiple_choice", max_chars=100)
    assert clean["id"].to_list() == ["ok1", "ok2"]
    assert clean["context"].to_list() == ["the cat sat", "Question: why?\nAnswer:"]
    assert clean["choices"][1].to_list() == ["café", "tea"]
    reasons = {
        (r, reason)
        for r, reason in zip(quarantine["row"].to_list(), quarantine["reason"].to_list(), strict=True)
    }
    assert reasons == {
        (2, "null field"),
        (3, "empty field"),
        (4, "fewer than 2 choices"),
        (5, "gold out of range"),
        (6, "gold out of range"),
        (7, "duplicate choices"),
        (8, "too long"),
        (9, "duplicate id"),
        (10, "duplicate row"),
        (11, "duplicate row"),
    }
    assert raw.height == clean.height + quarantine.height  # nothing lost
    # Quarantine keeps the row as it arrived.
    assert quarantine.filter(pl.col("row") == 10)["context"].item() == "the cat sat"
    assert quarantine.filter(pl.col("row") == 11)["choices"].item().to_list() == ["café", "tea"]


def test_cloze_and_perplexity_rules():
    cloze = pl.DataFrame(
        {"id": ["a", "b", "c", "d"], "text": ["the cat sat", "single", "", None]}
    ).with_row_index("row")
    clean, quarantine = clean_frame(cloze, "cloze")
    assert clean["id"].to_list() == ["a"]
    assert dict(zip(quarantine["id"], quarantine["reason"], strict=True)) == {
        "b": "too short",
        "c": "empty field",
        "d": "null field",
    }
    ppl = pl.DataFrame({"id": ["a", "b", "c"], "text": ["some  text", "some text", "x" * 50]}).with_row_index(
        "row"
    )
    clean, quarantine = clean_frame(ppl, "perplexity", max_chars=20)
    assert clean["text"].to_list() == ["some text"]
    assert quarantine["reason"].to_list() == ["duplicate row", "too long"]


# -- adapters, each against lm-eval's own preprocessing of the same raw rows ---------------------------


def test_piqa_and_arc_adapters():
    piqa = pl.DataFrame({"goal": ["Open a jar"], "sol1": ["twist the lid"], "sol2": ["hit it"], "label": [0]})
    out = adapt(piqa.with_row_index("row"), "piqa", "piqa.jsonl")
    assert out.to_dicts()[0] == {
        "row": 0,
        "id": "piqa-0",
        "context": "Question: Open a jar\nAnswer:",
        "choices": ["twist the lid", "hit it"],
        "gold": 0,
    }
    arc = pl.DataFrame(
        [
            {
                "id": "Q1",
                "question": "What is H2O?",
                "answerKey": "B",
                "choices": {"text": ["salt", "water", "air"], "label": ["A", "B", "C"]},
            }
        ]
    )
    out = adapt(arc.with_row_index("row"), "arc_easy", "arc.jsonl").to_dicts()[0]
    assert out["context"] == "Question: What is H2O?\nAnswer:" and out["gold"] == 1 and out["id"] == "Q1"


def test_hellaswag_adapter_matches_lm_eval():
    from lm_eval.tasks.hellaswag.utils import process_docs

    raw = [
        {
            "ind": 4,
            "activity_label": "Removing ice from car",
            "ctx_a": "Then, the man writes over the snow.",
            "ctx_b": "then",
            "endings": [", the man [title] cleans.", " stops.", " goes  home.", " waits."],
            "label": "3",
        }
    ]
    out = adapt(pl.DataFrame(raw).with_row_index("row"), "hellaswag", "h.jsonl").to_dicts()[0]

    class Docs(list):
        def map(self, fn):
            return [fn(d) for d in self]

    ref = process_docs(Docs(raw))[0]
    assert out["context"] == ref["query"] and out["choices"] == ref["choices"] and out["gold"] == ref["gold"]


def test_winogrande_partial_scoring_matches_lm_eval():
    from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice, doc_to_target, doc_to_text

    doc = {
        "sentence": "The trophy does not fit in the suitcase because _ is too big.",
        "option1": "the trophy",
        "option2": "the suitcase",
        "answer": "1",
    }
    raw = pl.DataFrame([doc, {**doc, "sentence": "No blank here."}]).with_row_index("row")
    canonical = adapt(raw, "winogrande", "w.jsonl")
    clean, quarantine = clean_frame(canonical, "multiple_choice")
    row = clean.to_dicts()[0]
    assert [f"{row['context']} {c}" for c in row["choices"]] == doc_to_choice(doc)
    assert row["continuation"] == doc_to_target(doc) and row["gold"] == doc_to_text(doc)
    assert quarantine["reason"].to_list() == ["null field"]  # the sentence without "_"


def test_winogrande_rows_are_scored_partially(trained_checkpoint):
    from kbitlaw.checkpoint_loading import load_model, load_tokenizer
    from kbitlaw.eval.engine import evaluate_model, prepare

    model, tok = load_model(str(trained_checkpoint)), load_tokenizer(str(trained_checkpoint))
    df = pl.DataFrame(
        [
            {
                "id": "1",
                "context": "the cat sat on",
                "choices": ["the mat", "a tree"],
                "gold": 0,
                "continuation": "and the dog ran.",
            }
        ]
    )
    prepared = prepare(df, "multiple_choice", tok, 64)
    assert len(prepared.requests) == 2  # different contexts, one shared continuation
    assert [r.continuations for r in prepared.requests][0] == [r.continuations for r in prepared.requests][1]
    acc = {r["metric"]: r["value"] for r in evaluate_model(model, tok, df, "multiple_choice")}
    assert acc["acc"] == acc["acc_norm"]


def test_adapter_missing_column_is_one_clear_error():
    with pytest.raises(ValueError, match=r"piqa\.jsonl: missing column 'sol2' for adapter piqa"):
        adapt(
            pl.DataFrame({"goal": ["g"], "sol1": ["a"], "label": [0]}).with_row_index("row"),
            "piqa",
            "piqa.jsonl",
        )


# -- specs and raw files ------------------------------------------------------------------------------


def test_shipped_specs_load_and_record_chance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./datasets here: the builtin specs shipped with the package
    monkeypatch.delenv("KBITLAW_DATASET_SPECS", raising=False)
    assert dataset_spec_dir() == BUILTIN_SPECS
    specs = load_dataset_specs()
    assert {"logic", "causal", "induction", "arithmetic", "cloze", "text"} <= set(specs)
    for spec in specs.values():
        if spec.kind == "multiple_choice":
            n_choices = len(world.suite(spec.source.removeprefix("builtin:"), 1)[0]["choices"])
            assert spec.chance == pytest.approx(1 / n_choices)
    assert set(load_dataset_specs(BUILTIN_SPECS / "public")) == {
        "piqa",
        "hellaswag",
        "winogrande",
        "arc_easy",
        "lambada",
    }


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"kind": "cloze", "source": "x.jsonl"}, "missing field 'name'"),
        ({"name": "a", "kind": "qa", "source": "x.jsonl"}, "field 'kind'"),
        ({"name": "a", "kind": "cloze", "source": "x", "colour": 1}, "unknown field(s) colour"),
        ({"name": "../up", "kind": "cloze", "source": "x"}, "field 'name'"),
        ({"name": "a", "kind": "cloze", "source": "x", "adapter": "piqa"}, "gives multiple_choice data"),
    ],
)
def test_bad_specs(obj, message):
    with pytest.raises(DatasetError, match="spec.yaml: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_dataset_spec(obj, "spec.yaml")


def test_bad_files_give_one_line_naming_file_and_cause(tmp_path):
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes('{"id": "1", "text": "caf\xe9 au lait"}\n'.encode("latin-1"))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"id": "1", "body": "x"}\n')
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    cases = [
        (bad_utf8, "not UTF-8 text (invalid byte on line 1, offset 24)"),
        (wrong, "missing column 'text'"),
        (broken, "cannot read"),
        (tmp_path / "absent.jsonl", "no such file"),
    ]
    for path, message in cases:
        spec = DatasetSpec(name="x", kind="cloze", source=str(path))
        with pytest.raises(DatasetError) as err:
            clean_dataset(Store(str(tmp_path / "store")), spec)
        assert (
            str(err.value).startswith(str(path)) and message in str(err.value) and "\n" not in str(err.value)
        )


def test_clean_is_content_addressed_and_cached(tmp_path):
    raw = tmp_path / "mc.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in world.suite("logic", 50, seed=3)))
    store = Store(str(tmp_path / "store"))
    spec = DatasetSpec(name="mine", kind="multiple_choice", source=str(raw), min_rows=10)
    first = clean_dataset(store, spec)
    assert not first.cached and first.summary["rows_out"] == 50
    stamp = (tmp_path / "store" / first.key).stat().st_mtime_ns
    again = clean_dataset(store, spec)
    assert again.cached and again.sha == first.sha
    assert (tmp_path / "store" / first.key).stat().st_mtime_ns == stamp  # read, not rewritten
    assert store.read_parquet(first.key).height == 50 and store.read_parquet(first.quarantine_key).height == 0
    raw.write_text(
        raw.read_text() + json.dumps({"id": "x", "context": "c", "choices": ["a"], "gold": 0}) + "\n"
    )
    changed = clean_dataset(store, spec)
    assert changed.sha != first.sha and changed.summary["reasons"] == {"fewer than 2 choices": 1}
    builtin = DatasetSpec(
        name="logic", kind="multiple_choice", source="builtin:logic", params={"n": 20, "seed": 1}
    )
    assert raw_input(builtin)[1] == raw_input(builtin)[1]
    other = DatasetSpec(
        name="logic", kind="multiple_choice", source="builtin:logic", params={"n": 20, "seed": 2}
    )
    assert raw_input(other)[1] != raw_input(builtin)[1]


def test_clean_on_s3(s3_env, tmp_path):
    store = Store(f"s3://{s3_env}/kb")
    spec = DatasetSpec(name="causal", kind="multiple_choice", source="builtin:causal", params={"n": 30})
    first = clean_dataset(store, spec)
    assert store.read_parquet(first.key).height == 30
    assert clean_dataset(store, spec).cached


# -- the builtin world -------------------------------------------------------------------------------


def test_no_evaluation_item_appears_in_the_training_corpus():
    """Verbatim search through an 8-gram index of the corpus: candidates by first 8-gram, then compared."""
    n = 8
    corpus = " ".join(world.training_corpus(4000, seed=0)).split()
    index: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(corpus) - n + 1):
        index.setdefault(tuple(corpus[i : i + n]), []).append(i)

    def verbatim(text: str) -> bool:
        words = text.split()
        assert len(words) >= n
        return any(corpus[i : i + len(words)] == words for i in index.get(tuple(words[:n]), []))

    assert verbatim(" ".join(corpus[1000:1030]))  # the check can fail: corpus text is found
    checked = 0
    for family in sorted(set(world.FAMILIES) - world.KNOWLEDGE):
        # `text` at 2 and 4 (its spec's): three sentences of the most frequent habits (Zipf) can
        # recur by chance inside a longer training passage (1 of 150 at difficulty 1)
        for difficulty in (2, 4) if family == "text" else (1, 2):
            for row in world.suite(family, 150, seed=0, difficulty=difficulty):
                text = row.get("text") or f"{row['context']} {row['choices'][row['gold']]}"
                assert not verbatim(text), (family, text)
                checked += 1
    assert checked == (len(world.FAMILIES) - len(world.KNOWLEDGE)) * 2 * 150


def test_the_facts_suite_asks_what_the_corpus_states():
    """Knowledge rows are recall of the corpus' prose: each one's answer is the habit the corpus
    states for its context most often, and a distractor never is."""
    corpus = " ".join(world.training_corpus(4000, seed=0))
    rows = world.suite("facts", 200, seed=0)
    assert len({r["context"] for r in rows}) == 200
    stated = 0
    for row in rows:
        counts = {c: corpus.count(f"{row['context']} {c} .") for c in row["choices"]}
        assert len(set(row["choices"])) == 4
        if sum(counts.values()) >= 5:
            stated += 1
            assert max(counts, key=counts.get) == row["choices"][row["gold"]], (row, counts)
    assert stated >= 100  # most facts are stated often enough to check


def test_generators_are_deterministic_and_graded():
    assert world.suite("causal", 20, seed=1) == world.suite("causal", 20, seed=1)
    assert world.suite("causal", 20, seed=1) != world.suite("causal", 20, seed=2)
    easy = world.suite("logic", 50, seed=0, difficulty=1)
    hard = world.suite("logic", 50, seed=0, difficulty=3)
    assert sum(len(r["context"].split()) for r in hard) > sum(len(r["context"].split()) for r in easy)
    for family in ("logic", "causal", "induction", "arithmetic"):
        for row in world.suite(family, 30, seed=0, difficulty=1):
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
    with pytest.raises(ValueError, match="unknown builtin generator 'poetry'"):
        world.suite("poetry", 3)


def test_dataset_spec_dir_order(tmp_path, monkeypatch):
    """--dataset-specs, then $KBITLAW_DATASET_SPECS, then ./datasets with spec files, then builtin."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KBITLAW_DATASET_SPECS", raising=False)
    (tmp_path / "datasets").mkdir()
    assert dataset_spec_dir() == BUILTIN_SPECS  # an empty ./datasets is not a spec directory
    (tmp_path / "datasets" / "x.yaml").write_text("name: x")
    assert dataset_spec_dir() == Path("datasets")
    monkeypatch.setenv("KBITLAW_DATASET_SPECS", str(tmp_path / "env"))
    assert dataset_spec_dir() == tmp_path / "env"
    assert dataset_spec_dir(str(tmp_path / "flag")) == tmp_path / "flag"
