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
  `byte_perplexity`, `bits_per_byte` as lm-eval, and `loss` = mean NLL per token in nats, with the
  delta-method stderr of that ratio estimator (total NLL / total tokens) over documents.
Perplexity-type metrics report stderr null (lm-eval bootstraps them; kbitlaw does not invent one).

Every metric is computed from the per-example scores (`per_example`, one row per dataset row, the
samples the store keeps beside each result): the aggregates are exactly the samples' means.

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

from kbitlaw.eval.encoding import (
    EvaluationError,
    adds_bos,
    chars_per_token,
    encode,
    encode_choices,
    fit_window,
    prefix_token_id,
    rolling_windows,
)
from kbitlaw.eval.results import SAMPLE_SCHEMAS
from kbitlaw.eval.scoring import Request, Scorer
from kbitlaw.vocab import (
    ACC,
    ACC_NORM,
    BITS_PER_BYTE,
    BYTE_PERPLEXITY,
    DATASET_COLUMNS,
    KINDS,
    LOSS,
    PERPLEXITY,
    WORD_PERPLEXITY,
)

EVALUATOR_VERSION = "2"  # bump when a metric's definition or the request building changes
# 2: texts are encoded with the tokenizer's default special tokens (BOS for Llama, Mistral, Gemma), as lm-eval


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
    ids: list[str] = field(default_factory=list)  # the dataset's row ids, in order
    bos: bool = False  # the tokenizer starts every text with its BOS token (lm-eval's rule, recorded)


def max_length(model: nn.Module, tokenizer: Any = None, default: int = 2048) -> int:
    """The model's context window, resolved like lm-eval (config first, then tokenizer)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if config is not None and getattr(config, attr, None):
            return int(getattr(config, attr))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 1e29 else default


def prepare(
    df: pl.DataFrame, kind: str, tokenizer: Any, window: int, *, name: str = "dataset", delimiter: str = " "
) -> Prepared:
    """Tokenize a canonical dataset into scoring requests (done once per tokenizer)."""
    if kind not in KINDS:
        raise EvaluationError(f"{name}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    missing = [c for c in DATASET_COLUMNS[kind] if c not in df.columns]
    if missing:
        raise EvaluationError(f"{name}: missing column(s) {', '.join(missing)} for kind {kind}")
    if df.height == 0:
        raise EvaluationError(f"{name}: the dataset has no rows")
    per_token = chars_per_token(tokenizer)
    prepared = {"multiple_choice": _prepare_mc, "cloze": _prepare_cloze, "perplexity": _prepare_ppl}[kind](
        df, tokenizer, window, name, delimiter, per_token
    )
    prepared.ids = [str(i) for i in df["id"].to_list()]
    prepared.bos = adds_bos(tokenizer)
    return prepared


def _prepare_mc(df, tokenizer, window, name, delimiter, per_token) -> Prepared:
    requests, golds, lengths, truncated = [], [], [], 0
    for row in df.iter_rows(named=True):
        choices, gold = list(row["choices"] or []), row["gold"]
        if len(choices) < 2:
            raise EvaluationError(f"{name}: row id={row['id']}: needs at least 2 choices, has {len(choices)}")
        if gold is None or not 0 <= gold < len(choices):
            raise EvaluationError(
                f"{name}: row id={row['id']}: gold {gold} out of range for {len(choices)} choices"
            )
        partial, where = row.get("continuation"), f"{name}: row id={row['id']}"
        if partial:  # partial scoring (Winogrande): each choice completes the context, score the rest
            joined = [f"{row['context']} {c}" if row["context"] else c for c in choices]
            pairs = [
                encode_choices(tokenizer, ctx, [f" {partial}"], window, per_token, where)[0] for ctx in joined
            ]
        else:
            conts = [f"{delimiter}{c}" for c in choices]
            pairs = encode_choices(tokenizer, row["context"] or "", conts, window, per_token, where)
        fitted = [fit_window(ctx, cont, window, where) for ctx, cont in pairs]
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


def _prepare_cloze(df, tokenizer, window, name, delimiter, per_token) -> Prepared:
    requests, truncated = [], 0
    for row in df.iter_rows(named=True):
        context, space, last = (row["text"] or "").rpartition(" ")
        where = f"{name}: row id={row['id']}"
        if not space or not last:
            raise EvaluationError(f"{where}: text needs a context and a last word")
        [(ctx, cont)] = encode_choices(tokenizer, context, [" " + last], window, per_token, where)
        ctx_fit, cut = fit_window(ctx, cont, window, where)
        truncated += cut
        requests.append(Request(ctx_fit, (tuple(cont),)))
    return Prepared(name, "cloze", requests, list(range(df.height)), df.height, {}, truncated)


def _prepare_ppl(df, tokenizer, window, name, delimiter, per_token) -> Prepared:
    prefix = prefix_token_id(tokenizer)
    requests, owners, words, nbytes, ntokens = [], [], [], [], []
    for i, row in enumerate(df.iter_rows(named=True)):
        text = row["text"] or ""
        tokens = encode(tokenizer, text)
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


def _grouped(prepared: Prepared, scores: list[list]) -> list[list]:
    """Each example's scores, in order (a perplexity text has one per window)."""
    per_example: list[list] = [[] for _ in range(prepared.n_examples)]
    for owner, s in zip(prepared.owners, scores, strict=True):
        per_example[owner].extend(s)
    return per_example


def per_example(prepared: Prepared, scores: list[list]) -> pl.DataFrame:
    """One row per dataset row (SAMPLE_SCHEMAS[kind]): the per-example scores every metric averages."""
    examples = _grouped(prepared, scores)
    columns: dict[str, list] = {"id": prepared.ids or [str(i) for i in range(prepared.n_examples)]}
    if prepared.kind == "multiple_choice":
        lls = [[s.loglikelihood for s in ex] for ex in examples]
        golds, chars = prepared.extra["gold"], prepared.extra["choice_chars"]
        columns.update(
            gold=golds,
            loglikelihood=lls,
            is_greedy=[[s.is_greedy for s in ex] for ex in examples],
            correct=[_argmax(ll) == g for ll, g in zip(lls, golds, strict=True)],
            correct_norm=[
                _argmax([x / c for x, c in zip(ll, cs, strict=True)]) == g
                for ll, cs, g in zip(lls, chars, golds, strict=True)
            ],
        )
    elif prepared.kind == "cloze":
        columns.update(
            loglikelihood=[ex[0].loglikelihood for ex in examples],
            is_greedy=[ex[0].is_greedy for ex in examples],
            correct=[ex[0].is_greedy for ex in examples],
            n_tokens=[len(req.continuations[0]) for req in prepared.requests],
        )
    else:
        columns.update(
            loss=[-sum(s.loglikelihood for s in ex) for ex in examples],
            n_tokens=prepared.extra["tokens"],
            n_bytes=prepared.extra["bytes"],
            n_words=prepared.extra["words"],
        )
    return pl.DataFrame(columns, schema=SAMPLE_SCHEMAS[prepared.kind])


def ratio_stderr(numerators: list[float], denominators: list[float]) -> float | None:
    """Delta-method standard error of sum(numerators) / sum(denominators) over independent units."""
    n = len(numerators)
    if n < 2:
        return None
    ratio = sum(numerators) / sum(denominators)
    mean_den = sum(denominators) / n
    resid = sum((a - ratio * b) ** 2 for a, b in zip(numerators, denominators, strict=True))
    return math.sqrt(resid / (n - 1)) / (math.sqrt(n) * mean_den)


def sample_metrics(kind: str, samples: pl.DataFrame) -> list[dict[str, Any]]:
    """Metric rows (metric, value, stderr, n_examples) from a `per_example` frame."""
    n = samples.height

    def row(metric: str, value: float, stderr: float | None) -> dict[str, Any]:
        return {"metric": metric, "value": value, "stderr": stderr, "n_examples": n}

    def floats(col: str) -> list[float]:
        return [float(v) for v in samples[col].to_list()]

    if kind == "multiple_choice":
        return [
            row(ACC, *_mean_stderr(floats("correct"))),
            row(ACC_NORM, *_mean_stderr(floats("correct_norm"))),
        ]
    if kind == "cloze":
        perplexity = math.exp(-sum(floats("loglikelihood")) / n)
        return [row(ACC, *_mean_stderr(floats("correct"))), row(PERPLEXITY, perplexity, None)]
    losses, tokens = floats("loss"), floats("n_tokens")
    total = sum(losses)
    words, nbytes = sum(samples["n_words"].to_list()), sum(samples["n_bytes"].to_list())
    return [
        row(WORD_PERPLEXITY, math.exp(total / words), None),
        row(BYTE_PERPLEXITY, math.exp(total / nbytes), None),
        row(BITS_PER_BYTE, total / nbytes / math.log(2), None),
        row(LOSS, total / sum(tokens), ratio_stderr(losses, tokens)),
    ]


def metrics(prepared: Prepared, scores: list[list]) -> list[dict[str, Any]]:
    """Metric rows (metric, value, stderr, n_examples) from per-request scores."""
    return sample_metrics(prepared.kind, per_example(prepared, scores))


def evaluate_prepared(
    model: nn.Module,
    prepared: Prepared,
    *,
    batch_size: int = 32,
    scorer: Scorer | None = None,
    samples: bool = False,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], pl.DataFrame]:
    """Score a tokenized dataset; rows carry kind, dataset, metric, value, stderr, counts, seconds.
    With samples=True, returns (rows, the `per_example` frame the rows were computed from)."""
    scorer = scorer or Scorer(model, batch_size=batch_size)
    start = time.perf_counter()
    scores = scorer.score(prepared.requests)
    seconds = time.perf_counter() - start
    frame = per_example(prepared, scores)
    rows = sample_metrics(prepared.kind, frame)
    for r in rows:
        r.update(
            dataset=prepared.name,
            kind=prepared.kind,
            n_truncated=prepared.truncated,
            bos=prepared.bos,
            seconds=seconds,
            device=str(scorer.device),
        )
    return (rows, frame) if samples else rows


def evaluate_model(
    model: nn.Module,
    tokenizer: Any,
    dataset: pl.DataFrame,
    kind: str,
    *,
    name: str = "dataset",
    delimiter: str = " ",
    batch_size: int = 32,
    samples: bool = False,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], pl.DataFrame]:
    """Tokenize and score one dataset with one model (see `prepare` + `evaluate_prepared` to reuse tokens);
    with samples=True, (rows, per-example samples)."""
    prepared = prepare(dataset, kind, tokenizer, max_length(model, tokenizer), name=name, delimiter=delimiter)
    with torch.inference_mode():
        return evaluate_prepared(model, prepared, batch_size=batch_size, samples=samples)
