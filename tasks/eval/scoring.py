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
- Rows are sorted by length and batched, so padding is small; only the logits that score a token
  are computed (`logits_to_keep`) and normalised.
- A batch that runs out of memory is split in half and retried.
Scores do not depend on the batch size (up to float rounding).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
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


class Scorer:
    """Scores requests with one model; reusable across quantized versions of the same model."""

    def __init__(self, model: nn.Module, *, batch_size: int = 32, device: str | torch.device | None = None):
        self.model = model
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(model.parameters()).device
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._limit = packing_limit(getattr(model, "config", None))
        self._tree_ok: bool | None = None

    def score(self, requests: list[Request]) -> list[list[Score]]:
        """Scores for every continuation of every request, in input order."""
        if self._tree_ok is None:  # decided on the first requests that could be packed
            self._tree_ok = self._check_tree(requests)
        units = self._units(requests)
        order = sorted(range(len(units)), key=lambda i: -units[i][1].packed_length)
        results: list[list[Score] | None] = [None] * len(units)
        with torch.inference_mode():
            for batch in _chunks(order, self.batch_size):
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

    def _forward(self, batch: list[Request]) -> list[list[Score]]:
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
        # Only positions that predict a scored token need logits: the union over the batch.
        needed = sorted({p for _, _, preds, _ in rows for pr in preds for p in pr})
        kwargs = {"attention_mask": mask.to(self.device), "position_ids": pos.to(self.device)}
        if self._keep:
            kwargs["logits_to_keep"] = torch.tensor(needed, device=self.device)
        logits = self.model(input_ids=ids.to(self.device), use_cache=False, **kwargs).logits
        column = {p: j for j, p in enumerate(needed)} if self._keep else {p: p for p in needed}
        out = []
        for b, (_, _, preds, targets) in enumerate(rows):
            flat_pos = [column[p] for pr in preds for p in pr]
            flat_tgt = torch.tensor([t for tg in targets for t in tg], device=logits.device)
            logprobs = torch.log_softmax(logits[b, flat_pos].float(), dim=-1)
            token_ll = logprobs.gather(1, flat_tgt[:, None])[:, 0]
            greedy = logprobs.argmax(dim=-1) == flat_tgt
            scores, at = [], 0
            for tg in targets:
                n = len(tg)
                scores.append(Score(float(token_ll[at : at + n].sum()), bool(greedy[at : at + n].all())))
                at += n
            out.append(scores)
        return out


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
