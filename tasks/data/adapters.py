"""Adapters: the raw schemas of public benchmarks mapped to kbitlaw's canonical schemas.

Each adapter takes the raw polars frame and returns canonical columns (plus `row`, the raw row
index). Prompts follow lm-evaluation-harness' task configs, so scores are comparable:
- lambada (openai): text -> cloze
- piqa: goal, sol1, sol2, label -> "Question: {goal}\\nAnswer:" with two solutions
- hellaswag: activity_label, ctx_a, ctx_b, endings, label -> lm-eval's preprocess
- winogrande: sentence, option1, option2, answer -> partial scoring: context = the sentence up to
  "_", choices = the options, continuation = the rest of the sentence (scored after each option)
- arc_easy: question, choices {text, label}, answerKey -> "Question: {question}\\nAnswer:"
"""

from __future__ import annotations

import re
from collections.abc import Callable

import polars as pl

REQUIRED: dict[str, tuple[str, ...]] = {
    "lambada": ("text",),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "arc_easy": ("question", "choices", "answerKey"),
}
KIND = {
    "lambada": "cloze",
    "piqa": "multiple_choice",
    "hellaswag": "multiple_choice",
    "winogrande": "multiple_choice",
    "arc_easy": "multiple_choice",
}


def _with_id(df: pl.DataFrame, prefix: str) -> pl.Expr:
    if "id" in df.columns:
        return pl.col("id").cast(pl.String)
    if "ind" in df.columns:
        return pl.col("ind").cast(pl.String)
    return pl.format(prefix + "-{}", pl.col("row"))


def lambada(df: pl.DataFrame) -> pl.DataFrame:
    return df.select("row", _with_id(df, "lambada").alias("id"), pl.col("text"))


def piqa(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(
        "row",
        _with_id(df, "piqa").alias("id"),
        pl.format("Question: {}\nAnswer:", pl.col("goal")).alias("context"),
        pl.concat_list(pl.col("sol1"), pl.col("sol2")).alias("choices"),
        pl.col("label").cast(pl.Int64, strict=False).alias("gold"),
    )


def _hellaswag_preprocess(text: str | None) -> str | None:
    """lm-eval's tasks/hellaswag/utils.py preprocess()."""
    if text is None:
        return None
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(df: pl.DataFrame) -> pl.DataFrame:
    ctx = (
        pl.col("ctx_a")
        + " "
        + pl.col("ctx_b").str.slice(0, 1).str.to_uppercase()
        + pl.col("ctx_b").str.slice(1)
    )
    query = (pl.col("activity_label") + ": " + ctx).map_elements(
        _hellaswag_preprocess, return_dtype=pl.String
    )
    endings = pl.col("endings").list.eval(
        pl.element().map_elements(_hellaswag_preprocess, return_dtype=pl.String)
    )
    return df.select(
        "row",
        _with_id(df, "hellaswag").alias("id"),
        query.alias("context"),
        endings.alias("choices"),
        pl.col("label").cast(pl.Int64, strict=False).alias("gold"),
    )


def winogrande(df: pl.DataFrame) -> pl.DataFrame:
    # A sentence without "_" cannot be split; it gets a null context and is quarantined by cleaning.
    blank = pl.col("sentence").str.find("_", literal=True)
    return df.select(
        "row",
        _with_id(df, "winogrande").alias("id"),
        pl.when(blank.is_not_null()).then(pl.col("sentence").str.slice(0, blank)).alias("context"),
        pl.concat_list(pl.col("option1"), pl.col("option2")).alias("choices"),
        (pl.col("answer").cast(pl.Int64, strict=False) - 1).alias("gold"),
        pl.col("sentence").str.slice(blank + 1).str.strip_chars().alias("continuation"),
    )


def arc_easy(df: pl.DataFrame) -> pl.DataFrame:
    labels = pl.col("choices").struct.field("label")
    gold = pl.struct(labels.alias("labels"), pl.col("answerKey")).map_elements(
        lambda r: r["labels"].index(r["answerKey"]) if r["answerKey"] in (r["labels"] or []) else None,
        return_dtype=pl.Int64,
    )
    return df.select(
        "row",
        _with_id(df, "arc").alias("id"),
        pl.format("Question: {}\nAnswer:", pl.col("question")).alias("context"),
        pl.col("choices").struct.field("text").alias("choices"),
        gold.alias("gold"),
    )


ADAPTERS: dict[str, Callable[[pl.DataFrame], pl.DataFrame]] = {
    "lambada": lambada,
    "piqa": piqa,
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "arc_easy": arc_easy,
}


def adapt(df: pl.DataFrame, adapter: str, source: str) -> pl.DataFrame:
    """Apply a named adapter; a missing raw column is one error naming the source and column."""
    if adapter not in ADAPTERS:
        raise ValueError(f"{source}: unknown adapter {adapter!r} (known: {', '.join(ADAPTERS)})")
    missing = [c for c in REQUIRED[adapter] if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column {', '.join(map(repr, missing))} for adapter {adapter}")
    return ADAPTERS[adapter](df)
