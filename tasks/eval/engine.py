"""The scoring engine: multiple_choice, cloze and perplexity, defined exactly as lm-evaluation-harness.

- multiple_choice (id, context, choices, gold[, continuation]): one continuation per choice,
  `delimiter + choice`; with a `continuation` (Winogrande's partial scoring) each choice instead
  completes the context and " " + continuation is scored after it;
  `acc` = argmax of summed log-likelihood == gold; `acc_norm` = argmax of log-likelihood divided by
  the choice's length in characters; stderr = sample standard deviation / sqrt(n) (lm-eval's).
- cloze (id, text), LAMBADA style: context = the text without its last space-separated word, target
  = " " + that word; `acc` = greedy decoding reproduces every target token; `perplexity` =
  exp(-mean target log-likelihood).
- perplexity (id, text): rolling disjoint windows of the model's maximum length, every token
  predicted once, the first from the prefix (BOS, else EOS) token; `word_perplexity`,
  `byte_perplexity`, `bits_per_byte` as lm-eval, and `loss` = mean NLL per token in nats.
Perplexity-type metrics report stderr null (lm-eval bootstraps them; kbitlaw does not invent one).

A dataset is tokenized once (`prepare`) and the result scored many times, once per quant spec.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import torch
from torch import nn

from kbitlaw.eval.scoring import Request, Scorer

KINDS = ("multiple_choice", "cloze", "perplexity")
SCHEMAS = {
    "multiple_choice": ("id", "context", "choices", "gold"),
    "cloze": ("id", "text"),
    "perplexity": ("id", "text"),
}
EVALUATOR_VERSION = "1"  # bump when a metric's definition or the request building changes


class EvaluationError(ValueError):
    """Bad input to an evaluation: one line naming the dataset, row or field and the cause."""


@dataclass
class Prepared:
    """A dataset tokenized for one tokenizer: requests plus what the metrics need per example."""

    name: str
    kind: str
    requests: list[Request]
    owners: list[int]  # example index of each request (perplexity has several windows per text)
    n_examples: int
    extra: dict[str, list[Any]] = field(default_factory=dict)  # gold, choice lengths, words, bytes
    truncated: int = 0  # examples whose context was left-truncated to fit the model window


def max_length(model: nn.Module, tokenizer: Any = None, default: int = 2048) -> int:
    """The model's context window, resolved like lm-eval (config first, then tokenizer)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if config is not None and getattr(config, attr, None):
            return int(getattr(config, attr))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 1e29 else default


def prefix_token_id(tokenizer: Any) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise EvaluationError("tokenizer has neither a BOS nor an EOS token to condition the first token on")
    return int(token)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's pair encoding: trailing context spaces move to the continuation; split the whole."""
    if context == "":
        cont = _encode(tokenizer, continuation)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole, ctx = _encode(tokenizer, context + continuation), _encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def _fit_window(ctx: list[int], cont: list[int], window: int) -> tuple[tuple[int, ...], bool]:
    """Left-truncate so that context + continuation (minus the last token) fits the window."""
    total = len(ctx) + len(cont)
    if total <= window + 1:
        return tuple(ctx), False
    keep = window + 1 - len(cont)
    if keep < 1:
        raise EvaluationError(f"continuation of {len(cont)} tokens does not fit a {window}-token window")
    return tuple(ctx[-keep:]), True


def prepare(
    df: pl.DataFrame, kind: str, tokenizer: Any, window: int, *, name: str = "dataset", delimiter: str = " "
) -> Prepared:
    """Tokenize a canonical dataset into scoring requests (done once per tokenizer)."""
    if kind not in KINDS:
        raise EvaluationError(f"{name}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    missing = [c for c in SCHEMAS[kind] if c not in df.columns]
    if missing:
        raise EvaluationError(f"{name}: missing column(s) {', '.join(missing)} for kind {kind}")
    if df.height == 0:
        raise EvaluationError(f"{name}: the dataset has no rows")
    return {"multiple_choice": _prepare_mc, "cloze": _prepare_cloze, "perplexity": _prepare_ppl}[kind](
        df, tokenizer, window, name, delimiter
    )


def _prepare_mc(df, tokenizer, window, name, delimiter) -> Prepared:
    requests, golds, lengths, truncated = [], [], [], 0
    for row in df.iter_rows(named=True):
        choices, gold = list(row["choices"] or []), row["gold"]
        if len(choices) < 2:
            raise EvaluationError(f"{name}: row id={row['id']}: needs at least 2 choices, has {len(choices)}")
        if gold is None or not 0 <= gold < len(choices):
            raise EvaluationError(
                f"{name}: row id={row['id']}: gold {gold} out of range for {len(choices)} choices"
            )
        partial = row.get("continuation")
        if partial:  # partial scoring (Winogrande): each choice completes the context, score the rest
            joined = [f"{row['context']} {c}" if row["context"] else c for c in choices]
            pairs = [_encode_pair(tokenizer, ctx, f" {partial}") for ctx in joined]
        else:
            pairs = [_encode_pair(tokenizer, row["context"], f"{delimiter}{c}") for c in choices]
        fitted = [_fit_window(ctx, cont, window) for ctx, cont in pairs]
        if any(cut for _, cut in fitted):
            truncated += 1
        contexts = {ctx for ctx, _ in fitted}
        if len(contexts) == 1:  # the usual case: one packed request shares the context
            requests.append(Request(contexts.pop(), tuple(tuple(cont) for _, cont in pairs)))
        else:  # choices tokenized or truncated differently: score each on its own, as lm-eval does
            requests.extend(
                Request(ctx, (tuple(cont),)) for (ctx, _), (_, cont) in zip(fitted, pairs, strict=True)
            )
        golds.append(gold)
        lengths.append([float(len(partial))] * len(choices) if partial else [float(len(c)) for c in choices])
    owners = _owners(requests, [len(x) for x in lengths])
    return Prepared(
        name,
        "multiple_choice",
        requests,
        owners,
        df.height,
        {"gold": golds, "choice_chars": lengths},
        truncated,
    )


def _owners(requests: list[Request], n_choices: list[int]) -> list[int]:
    """Map each request back to its example: a packed one covers all choices, a split one covers one."""
    owners, example, seen = [], 0, 0
    for req in requests:
        owners.append(example)
        seen += len(req.continuations)
        if seen == n_choices[example]:
            example, seen = example + 1, 0
    return owners


def _prepare_cloze(df, tokenizer, window, name, delimiter) -> Prepared:
    requests, truncated = [], 0
    for row in df.iter_rows(named=True):
        words = (row["text"] or "").split(" ")
        if len(words) < 2 or not words[-1]:
            raise EvaluationError(f"{name}: row id={row['id']}: text needs a context and a last word")
        ctx, cont = _encode_pair(tokenizer, " ".join(words[:-1]), " " + words[-1])
        ctx_fit, cut = _fit_window(ctx, cont, window)
        truncated += cut
        requests.append(Request(ctx_fit, (tuple(cont),)))
    return Prepared(name, "cloze", requests, list(range(df.height)), df.height, {}, truncated)


def rolling_windows(tokens: list[int], prefix: int, window: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window."""
    if not tokens:
        return []
    first = min(window, len(tokens))
    out = [([prefix] + tokens[: first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, window)
        end = predicted + n
        out.append((tokens[max(end - window - 1, 0) : end - 1], tokens[end - n : end]))
        predicted += n
    return [(a[: len(a) - (len(b) - 1)], b) for a, b in out]


def _prepare_ppl(df, tokenizer, window, name, delimiter) -> Prepared:
    prefix = prefix_token_id(tokenizer)
    requests, owners, words, nbytes, ntokens = [], [], [], [], []
    for i, row in enumerate(df.iter_rows(named=True)):
        text = row["text"] or ""
        tokens = _encode(tokenizer, text)
        if not tokens:
            raise EvaluationError(f"{name}: row id={row['id']}: empty text")
        for ctx, cont in rolling_windows(tokens, prefix, window):
            requests.append(Request(tuple(ctx), (tuple(cont),)))
            owners.append(i)
        words.append(len(re.split(r"\s+", text)))
        nbytes.append(len(text.encode("utf-8")))
        ntokens.append(len(tokens))
    return Prepared(
        name,
        "perplexity",
        requests,
        owners,
        df.height,
        {"words": words, "bytes": nbytes, "tokens": ntokens},
        0,
    )


# -- metrics -----------------------------------------------------------------------------------


def _mean_stderr(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var) / math.sqrt(n)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index wins ties, like np.argmax


def metrics(prepared: Prepared, scores: list[list]) -> list[dict[str, Any]]:
    """Metric rows (metric, value, stderr, n_examples) from per-request scores."""
    per_example: list[list] = [[] for _ in range(prepared.n_examples)]
    for owner, s in zip(prepared.owners, scores, strict=True):
        per_example[owner].extend(s)
    n = prepared.n_examples

    def row(metric: str, value: float, stderr: float | None) -> dict[str, Any]:
        return {"metric": metric, "value": value, "stderr": stderr, "n_examples": n}

    if prepared.kind == "multiple_choice":
        acc, acc_norm = [], []
        for ex, gold, chars in zip(
            per_example, prepared.extra["gold"], prepared.extra["choice_chars"], strict=True
        ):
            lls = [s.loglikelihood for s in ex]
            acc.append(float(_argmax(lls) == gold))
            acc_norm.append(float(_argmax([ll / c for ll, c in zip(lls, chars, strict=True)]) == gold))
        return [row("acc", *_mean_stderr(acc)), row("acc_norm", *_mean_stderr(acc_norm))]
    if prepared.kind == "cloze":
        lls = [ex[0].loglikelihood for ex in per_example]
        acc = [float(ex[0].is_greedy) for ex in per_example]
        return [row("acc", *_mean_stderr(acc)), row("perplexity", math.exp(-sum(lls) / n), None)]
    lls = [sum(s.loglikelihood for s in ex) for ex in per_example]
    total = sum(lls)
    words, nbytes, tokens = (sum(prepared.extra[k]) for k in ("words", "bytes", "tokens"))
    return [
        row("word_perplexity", math.exp(-total / words), None),
        row("byte_perplexity", math.exp(-total / nbytes), None),
        row("bits_per_byte", -total / nbytes / math.log(2), None),
        row("loss", -total / tokens, None),
    ]


def evaluate_prepared(
    model: nn.Module, prepared: Prepared, *, batch_size: int = 32, scorer: Scorer | None = None
) -> list[dict[str, Any]]:
    """Score a tokenized dataset; rows carry kind, dataset, metric, value, stderr, counts, seconds."""
    scorer = scorer or Scorer(model, batch_size=batch_size)
    start = time.perf_counter()
    scores = scorer.score(prepared.requests)
    seconds = time.perf_counter() - start
    rows = metrics(prepared, scores)
    for r in rows:
        r.update(
            dataset=prepared.name,
            kind=prepared.kind,
            n_truncated=prepared.truncated,
            seconds=seconds,
            device=str(scorer.device),
        )
    return rows


def evaluate_model(
    model: nn.Module,
    tokenizer: Any,
    dataset: pl.DataFrame,
    kind: str,
    *,
    name: str = "dataset",
    delimiter: str = " ",
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Tokenize and score one dataset with one model (see `prepare` + `evaluate_prepared` to reuse tokens)."""
    prepared = prepare(dataset, kind, tokenizer, max_length(model, tokenizer), name=name, delimiter=delimiter)
    with torch.inference_mode():
        return evaluate_prepared(model, prepared, batch_size=batch_size)
