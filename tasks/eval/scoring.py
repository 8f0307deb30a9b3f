"""The batched log-likelihood engine: score continuations of contexts with a causal LM.

A `Request` is one context with one or more continuations (token ids). Scoring returns, for each
continuation, the summed log-probability of its tokens and whether greedy decoding reproduces it
(lm-evaluation-harness' `(loglikelihood, is_greedy)`).

Why it is fast:
- A multiple-choice question is one packed row, `context + choice_1 + ... + choice_n`, with a
  tree-shaped attention mask (each choice sees the context and itself) and position ids that
  restart after the context: the context is computed once, not once per choice. Packing is
  chosen per model from its config (`packing_limit`): never with ALiBi (BLOOM, MPT, Falcon with
  alibi: their positions come from the 2-D mask) or flash attention (it ignores custom masks), and
  with a sliding window only for rows shorter than the window (a custom mask bypasses the window).
  The first time a model is seen, the packed path is checked against plain rows on the first and
  the longest packed request; if it differs or the model rejects the mask, the engine falls back
  to one row per choice.
- Rows are sorted by length and batched, so padding is small; a batch holds at most `max_tokens`
  tokens (rows x longest row), so a 2048-token row does not come 32 at a time.
- Memory does not grow with vocabulary x context: the model's trunk gives the hidden states, and
  the LM head and log-softmax run only on the positions that score a token, a few at a time
  (`CHUNK_BYTES` of logits). The first time a model is seen this is checked against the model's own
  logits on a short row; a model whose head is not a plain projection (or a soft-capped one)
  gets its logits from the model (`logits_to_keep`), also normalised a chunk at a time.
- A batch that runs out of memory is split in half and retried.
Scores do not depend on the batch size (up to float rounding).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Request:
    context: tuple[int, ...]  # never empty: an empty context is the prefix (BOS/EOS) token
    continuations: tuple[tuple[int, ...], ...]

    @property
    def packed_length(self) -> int:
        return len(self.context) + sum(len(c) for c in self.continuations) - 1


@dataclass(frozen=True)
class Score:
    loglikelihood: float
    is_greedy: bool


def _rows(req: Request) -> tuple[list[int], list[int], list[list[int]], list[list[int]]]:
    """Packed ids, position ids, and for each continuation the row positions that predict its tokens."""
    ctx = list(req.context)
    # The last continuation token is never an input (nothing after it is scored).
    ids, pos = ctx[:], list(range(len(ctx)))
    predictors, targets = [], []
    for cont in req.continuations:
        start = len(ids)
        body = list(cont[:-1])
        ids += body
        pos += range(len(ctx), len(ctx) + len(body))
        predictors.append([len(ctx) - 1] + list(range(start, start + len(body))))
        targets.append(list(cont))
    return ids, pos, predictors, targets


def _tree_mask(req: Request, length: int) -> torch.Tensor:
    """[length, length] bool: causal within the context; each continuation sees context + itself."""
    n_ctx = len(req.context)
    mask = torch.zeros(length, length, dtype=torch.bool)
    mask[:n_ctx, :n_ctx] = torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril()
    start = n_ctx
    for cont in req.continuations:
        n = len(cont) - 1
        mask[start : start + n, :n_ctx] = True
        mask[start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
        start += n
    # Padding rows attend to themselves so that no softmax row is empty (no NaN).
    idx = torch.arange(start, length)
    mask[idx, idx] = True
    return mask


CHUNK_BYTES = 64 << 20  # float32 logits normalised at once: 128 positions of a 128k vocabulary
CPU_MAX_TOKENS = 4096  # tokens per batch on CPU (a CUDA device sizes it from its free memory)

ALIBI_MODEL_TYPES = ("bloom", "mpt")
MASK_BLIND_ATTENTION = ("flash_attention_2", "flash_attention_3")


def packing_limit(config) -> int | None:
    """The longest packed row (tokens) this model scores exactly with a custom 4-D mask: None for
    any length, 0 for none (ALiBi, flash attention), the sliding window otherwise."""
    if getattr(config, "model_type", None) in ALIBI_MODEL_TYPES or getattr(config, "alibi", False):
        return 0
    if getattr(config, "_attn_implementation", None) in MASK_BLIND_ATTENTION:
        return 0
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window) - 1  # strictly inside the window: no position ever falls out of it


def max_batch_tokens(model: nn.Module, device: torch.device) -> int:
    """Tokens per batch: CPU_MAX_TOKENS on CPU; on CUDA, half the free memory over a per-token bound
    on one layer's activations (the layers run one after the other, without a cache)."""
    if device.type != "cuda":
        return CPU_MAX_TOKENS
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or 4096)
    inner = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    per_token = (8 * hidden + 4 * inner) * 4
    free, _ = torch.cuda.mem_get_info(device)
    return max(256, int(free * 0.5) // per_token)


def _softcap(config) -> float | None:
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


class Scorer:
    """Scores requests with one model; reusable across quantized versions of the same model."""

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        max_tokens: int | None = None,
    ):
        self.model = model
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.max_tokens = max_tokens or max_batch_tokens(model, self.device)
        config = getattr(model, "config", None)
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._limit = packing_limit(config)
        self._softcap = _softcap(config)
        self._tree_ok: bool | None = None
        self._trunk_ok: bool | None = None

    def score(self, requests: list[Request]) -> list[list[Score]]:
        """Scores for every continuation of every request, in input order."""
        if self._trunk_ok is None and requests:
            self._trunk_ok = self._check_trunk(requests[0])
        if self._tree_ok is None:  # decided on the first requests that could be packed
            self._tree_ok = self._check_tree(requests)
        units = self._units(requests)
        order = sorted(range(len(units)), key=lambda i: -units[i][1].packed_length)
        lengths = [units[i][1].packed_length for i in order]
        results: list[list[Score] | None] = [None] * len(units)
        with torch.inference_mode():
            for batch in _batches(order, lengths, self.batch_size, self.max_tokens):
                for i, scores in zip(batch, self._score_batch([units[i][1] for i in batch]), strict=True):
                    results[i] = scores
        out: list[list[Score]] = [[] for _ in requests]
        for (owner, _), scores in zip(units, results, strict=True):
            out[owner].extend(scores)
        return out

    def _packable(self, request: Request) -> bool:
        fits = self._limit is None or request.packed_length <= self._limit
        return len(request.continuations) > 1 and fits

    def _units(self, requests: list[Request]) -> list[tuple[int, Request]]:
        units: list[tuple[int, Request]] = []
        for i, r in enumerate(requests):
            if self._tree_ok and self._packable(r):
                units.append((i, r))
            else:
                units += [(i, Request(r.context, (c,))) for c in r.continuations]
        return units

    def _check_tree(self, requests: list[Request]) -> bool | None:
        """Does this model score a packed row as it scores plain rows? Compared on the first and the
        longest packable request; a model that rejects the 4-D mask (raises) does not. None (ask
        again next time) when none of these requests could be packed."""
        packable = [r for r in requests if self._packable(r)]
        if not packable:
            return None
        probes = {packable[0], max(packable, key=lambda r: r.packed_length)}
        try:
            with torch.inference_mode():
                for probe in probes:
                    packed = self._forward([probe])[0]
                    plain = [self._forward([Request(probe.context, (c,))])[0][0] for c in probe.continuations]
                    if not all(
                        abs(a.loglikelihood - b.loglikelihood) <= 1e-4 * max(1.0, abs(b.loglikelihood))
                        for a, b in zip(packed, plain, strict=True)
                    ):
                        return False
        except Exception:  # a model that cannot take the packed row at all scores plain rows
            return False
        return True

    def _check_trunk(self, request: Request) -> bool:
        """Do the trunk's hidden states through the LM head give the model's own log-likelihoods?
        Checked on a short row cut from the first request (a short row keeps the full logits
        small); a model without a separate trunk, or whose head does more, uses its logits."""
        trunk = getattr(self.model, "base_model", None)
        if trunk is None or trunk is self.model or self.model.get_output_embeddings() is None:
            return False
        probe = Request(request.context[-16:], (request.continuations[0][:8],))
        try:
            with torch.inference_mode():
                via_trunk = self._forward([probe], trunk=True)[0][0]
                via_logits = self._forward([probe], trunk=False)[0][0]
        except Exception:  # the trunk's signature or output differs: use the model's logits
            return False
        tolerance = 1e-4 * max(1.0, abs(via_logits.loglikelihood))
        return abs(via_trunk.loglikelihood - via_logits.loglikelihood) <= tolerance

    def _score_batch(self, batch: list[Request]) -> list[list[Score]]:
        try:
            return self._forward(batch)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(batch) // 2
            return self._score_batch(batch[:half]) + self._score_batch(batch[half:])

    def _forward(self, batch: list[Request], trunk: bool | None = None) -> list[list[Score]]:
        """Scores of a batch, through the trunk and the head (trunk=True) or the model's logits;
        by default as `_check_trunk` decided."""
        rows = [_rows(r) for r in batch]
        length = max(len(ids) for ids, _, _, _ in rows)
        ids = torch.zeros(len(batch), length, dtype=torch.long)
        pos = torch.zeros(len(batch), length, dtype=torch.long)
        for b, (row_ids, row_pos, _, _) in enumerate(rows):
            ids[b, : len(row_ids)] = torch.tensor(row_ids)
            pos[b, : len(row_pos)] = torch.tensor(row_pos)
        packed = any(len(r.continuations) > 1 for r in batch)
        if packed:
            mask = torch.stack([_tree_mask(r, length) for r in batch])[:, None]
        else:
            mask = torch.zeros(len(batch), length, dtype=torch.long)
            for b, (row_ids, _, _, _) in enumerate(rows):
                mask[b, : len(row_ids)] = 1
        # Only positions that predict a scored token are scored: the union over the batch.
        needed = sorted({p for _, _, preds, _ in rows for pr in preds for p in pr})
        kwargs = {"attention_mask": mask.to(self.device), "position_ids": pos.to(self.device)}
        ids = ids.to(self.device)
        if self._trunk_ok if trunk is None else trunk:
            states = self.model.base_model(input_ids=ids, use_cache=False, **kwargs).last_hidden_state
            column = {p: p for p in needed}
            head, vocab = self._head, self.model.get_output_embeddings().weight.shape[0]
        else:
            if self._keep:
                kwargs["logits_to_keep"] = torch.tensor(needed, device=self.device)
            states = self.model(input_ids=ids, use_cache=False, **kwargs).logits
            column = {p: j for j, p in enumerate(needed)} if self._keep else {p: p for p in needed}
            head, vocab = None, states.shape[-1]
        batch_index = [b for b, (_, _, preds, _) in enumerate(rows) for pr in preds for _ in pr]
        positions = [column[p] for _, _, preds, _ in rows for pr in preds for p in pr]
        targets = torch.tensor([t for _, _, _, tg in rows for cont in tg for t in cont], device=states.device)
        token_ll, greedy = _token_scores(states[batch_index, positions], targets, vocab, head)
        out, at = [], 0
        for _, _, _, row_targets in rows:
            scores = []
            for tg in row_targets:
                n = len(tg)
                scores.append(Score(float(token_ll[at : at + n].sum()), bool(greedy[at : at + n].all())))
                at += n
            out.append(scores)
        return out

    def _head(self, states: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(states).float()
        if self._softcap:  # Gemma 2 and 3: logits = cap * tanh(logits / cap)
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits


def _token_scores(
    states: torch.Tensor, targets: torch.Tensor, vocab: int, head: Callable | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-likelihood, is the greedy token) of each target, from the hidden states (through `head`)
    or logits that predict it; a chunk of positions at a time, so no [positions, vocab] float32
    tensor larger than CHUNK_BYTES exists."""
    step = max(1, CHUNK_BYTES // (4 * vocab))
    token_ll, greedy = [], []
    for start in range(0, len(targets), step):
        chunk = states[start : start + step]
        logits = head(chunk) if head is not None else chunk.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        tgt = targets[start : start + step]
        token_ll.append(logprobs.gather(1, tgt[:, None])[:, 0])
        greedy.append(logprobs.argmax(dim=-1) == tgt)
    return torch.cat(token_ll), torch.cat(greedy)


def _batches(order: list[int], lengths: list[int], size: int, max_tokens: int) -> Iterator[list[int]]:
    """Consecutive groups of `order` (longest first) of at most `size` rows and `max_tokens` tokens
    (rows x the group's longest row); a row longer than max_tokens goes alone."""
    start = 0
    while start < len(order):
        rows = max(1, min(size, max_tokens // max(1, lengths[start])))
        yield order[start : start + rows]
        start += rows
