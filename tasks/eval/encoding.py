"""Text to token ids for scoring requests, as lm-evaluation-harness builds them, with a size guard.

Texts are encoded with the tokenizer's default special tokens, as lm-eval 0.4.13 does (a BOS
token for Llama, Mistral and Gemma tokenizers; nothing for GPT-2's). lm-eval encodes a pair as:
the context's trailing spaces move to the continuation; the continuation's tokens are those of
context + continuation after the context's own tokens; a pair longer than the window is
left-truncated (`fit_window`). Here the context is tokenized once per example, not once per
choice, and a context far longer than the window is cut to a character budget
(2 * (window + 1) * the longest token's length) before it is tokenized: whatever a row holds,
the tokenizer never sees more than the window needs. Up to that budget the tokens are exactly
lm-eval's; beyond it only the first (discarded) tokens of the cut text can differ.
"""

from __future__ import annotations

from typing import Any


class EvaluationError(ValueError):
    """Bad input to an evaluation: one line naming the dataset, row or field and the cause."""


def prefix_token_id(tokenizer: Any) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise EvaluationError("tokenizer has neither a BOS nor an EOS token to condition the first token on")
    return int(token)


def encode(tokenizer: Any, text: str, special_tokens: bool | None = None) -> list[int]:
    """lm-eval's `tok_encode`: with the tokenizer's default special tokens (Llama, Mistral and Gemma
    tokenizers prepend BOS, GPT-2's adds nothing) unless `special_tokens` says otherwise, and without
    them when the text already starts with the prefix token's text."""
    if special_tokens is None and _starts_with_prefix(tokenizer, text):
        special_tokens = False
    kwargs = {} if special_tokens is None else {"add_special_tokens": special_tokens}
    return list(tokenizer(text, **kwargs)["input_ids"])


def _starts_with_prefix(tokenizer: Any, text: str) -> bool:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        return False
    prefix = tokenizer.decode([token])
    return bool(prefix) and text.startswith(prefix)


def adds_bos(tokenizer: Any) -> bool:
    """Does the tokenizer's default encoding start every text with its BOS token (recorded in the
    results: lm-eval scores such models with BOS, so kbitlaw does too)?"""
    bos = tokenizer.bos_token_id
    return bos is not None and encode(tokenizer, "a")[:1] == [bos]


def chars_per_token(tokenizer: Any) -> int:
    """An upper bound on the characters one token covers: its longest vocabulary entry (a byte-level
    BPE entry has one character per byte, so it is never shorter than the text it stands for)."""
    try:
        return max(1, max(map(len, tokenizer.get_vocab())))
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        return 1024


def _split_spaces(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval moves a context's trailing spaces to the start of the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def _encode_context(tokenizer: Any, context: str, window: int, per_token: int) -> tuple[str, list[int]]:
    """(the context text that is tokenized, its tokens). A context far longer than the window is cut
    to its last 2 * (window + 1) * per_token characters first, so a huge one is never tokenized
    whole: that text still holds more than twice the window in tokens (each covers <= per_token
    characters), and left-truncation keeps the last ones. Should a tokenizer's normaliser drop
    characters, the cut widens until it holds enough tokens (or is the whole context)."""
    budget = 2 * (window + 1) * per_token
    while True:
        text = context[-budget:] if len(context) > budget else context
        tokens = encode(tokenizer, text)
        if text is context or len(tokens) >= 2 * (window + 1):
            return text, tokens
        budget *= 2


def _encode_pair(
    tokenizer: Any, context: str, ctx: list[int], continuation: str
) -> tuple[list[int], list[int]]:
    """lm-eval's pair encoding, the context (already without trailing spaces) tokenized once as
    `ctx`: the continuation's tokens are those of context + continuation after len(ctx)."""
    if context == "":  # the prefix token stands for the context; the continuation gets no specials
        cont = encode(tokenizer, continuation, special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    whole = encode(tokenizer, context + continuation)
    return ctx, whole[len(ctx) :]


def encode_choices(
    tokenizer: Any, context: str, continuations: list[str], window: int, per_token: int, where: str
) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) per continuation, the context tokenized once."""
    for text in continuations:
        if len(text.strip()) > 2 * (window + 1) * per_token:  # surely more tokens than fit
            raise EvaluationError(
                f"{where}: a continuation of {len(text)} characters cannot fit a {window}-token window"
            )
    moved = [_split_spaces(context, c) for c in continuations]  # the same context for each
    text, ctx = _encode_context(tokenizer, moved[0][0], window, per_token)
    return [_encode_pair(tokenizer, text, ctx, cont) for _, cont in moved]


def fit_window(
    ctx: list[int], cont: list[int], window: int, where: str = "dataset"
) -> tuple[tuple[int, ...], bool]:
    """Left-truncate so that context + continuation (minus the last token) fits the window."""
    total = len(ctx) + len(cont)
    if total <= window + 1:
        return tuple(ctx), False
    keep = window + 1 - len(cont)
    if keep < 1:
        raise EvaluationError(
            f"{where}: a continuation of {len(cont)} tokens does not fit a {window}-token window"
        )
    return tuple(ctx[-keep:]), True


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
