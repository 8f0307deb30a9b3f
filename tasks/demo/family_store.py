"""Where the demo family lives in the store: checkpoints, staged checkpoints and training state.

    checkpoints/<family>/<size>/step-<n>/   config.json, model.safetensors, tokenizer, kbitlaw.json
    staging/<family>/<size>/step-<n>/       the same, trained but not yet published (arrive mode)
    train/<family>/tokenizer-v<V>/          the family's tokenizer (trained once, shared by all sizes)
    train/<family>/corpus-<hash>.st         the training corpus as one token stream (safetensors)
    train/<family>/<size>/main-step-<n>.st  the stable run's weights + AdamW moments where a cooldown
                                            branches off (safetensors): a build resumes from the latest

Upload order: tokenizer files and kbitlaw.json first, the weights, config.json LAST. Every single
upload is atomic (Store), and discovery needs config.json, so a checkpoint whose upload is cut off
is never evaluated: until config.json lands, discovery reports it as one line "no config.json".
config.json is also what "this checkpoint exists" means to the training cache.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from kbitlaw.store import (
    CHECKPOINTS,
    STAGING,
    Store,
    checkpoint_id,
    checkpoint_prefix,
    checkpoint_step,
    key_name,
    key_parent,
    published_prefix,
)


def find_checkpoint(store: Store, family: str, size: str, step: int, recipe: str) -> str | None:
    """The complete checkpoint's prefix (published or staged), None if absent; a checkpoint made by
    another recipe (other budget, sizes, learning rate or corpus) under the same name is an error."""
    for area in (CHECKPOINTS, STAGING):
        prefix = checkpoint_prefix(area, family, size, step)
        if store.exists(f"{prefix}/config.json"):
            stamped = store.read_json(f"{prefix}/kbitlaw.json").get("recipe")
            if stamped != recipe:
                raise ValueError(
                    f"{store.url(prefix)}: made by another training recipe ({stamped} != {recipe}); "
                    f"use another family name or remove {store.url(checkpoint_prefix(area, family))}"
                )
            return prefix
    return None


def _upload_order(name: str) -> tuple[bool, bool, str]:
    base = key_name(name)
    return base == "config.json", base.endswith(".safetensors"), base


def upload_dir(store: Store, local: Path, prefix: str) -> None:
    """Upload a checkpoint directory: small files, then weights, config.json last (see the top)."""
    for name in sorted((p.name for p in local.iterdir() if p.is_file()), key=_upload_order):
        store.put_file(local / name, f"{prefix}/{name}")


def _staged(store: Store, family: str) -> dict[str, list[str]]:
    """Staged checkpoint prefixes per size, earliest step first."""
    by_size: dict[str, list[str]] = {}
    for key in store.list(checkpoint_prefix(STAGING, family)):
        if key.endswith("/config.json"):
            prefix = key_parent(key)
            by_size.setdefault(key_name(key_parent(prefix)), []).append(prefix)
    return {size: sorted(prefixes, key=checkpoint_step) for size, prefixes in by_size.items()}


def staged_rounds(store: Store, family: str = "demo") -> int:
    """How many rounds of checkpoints wait in staging/ to be published (a round: every size's next
    checkpoint; sizes may train to different steps)."""
    return max((len(p) for p in _staged(store, family).values()), default=0)


def publish_next(store: Store, family: str = "demo") -> list[str]:
    """Publish the next round of staged checkpoints (every size's earliest staged one) from
    staging/ to checkpoints/; returns their ids, [] when nothing is left to publish."""
    published = []
    for prefix in sorted(prefixes[0] for prefixes in _staged(store, family).values()):
        target = published_prefix(prefix)
        keys = sorted(store.list(prefix), key=_upload_order)
        for key in keys:
            store.write_bytes(target + key.removeprefix(prefix), store.read_bytes(key))
        for key in reversed(keys):  # config.json first: the staged copy stops counting at once
            store.delete(key)
        published.append(checkpoint_id(target))
    return published


def save_tokenizer(store: Store, tokenizer, prefix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        upload_dir(store, Path(tmp), prefix)


def load_tokenizer(store: Store, prefix: str):
    """A tokenizer saved with save_tokenizer, or None when there is none."""
    from transformers import PreTrainedTokenizerFast

    if not store.exists(f"{prefix}/tokenizer.json"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for key in store.list(prefix):
            store.get_file(key, Path(tmp) / key_name(key))
        return PreTrainedTokenizerFast.from_pretrained(tmp)


def save_tokens(store: Store, key: str, tokens: torch.Tensor) -> None:
    store.write_bytes(key, save_tensors({"tokens": tokens.to(torch.int32).contiguous()}))


def load_tokens(store: Store, key: str) -> torch.Tensor | None:
    if not store.exists(key):
        return None
    return load_tensors(store.read_bytes(key))["tokens"].to(torch.long)


def run_state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> bytes:
    """A training run's state, its weights and AdamW moments, as safetensors (never pickle: the store
    is read back without executing code)."""
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim.{i}.{name}"] = torch.as_tensor(value).detach().clone()
    return save_tensors(tensors)


def load_run_state(model: torch.nn.Module, opt: torch.optim.Optimizer, data: bytes) -> None:
    """Restore what run_state_bytes saved into a fresh model and its optimizer."""
    weights, state = {}, {}
    for key, value in load_tensors(data).items():
        kind, rest = key.split(".", 1)
        if kind == "model":
            weights[rest] = value
        else:
            i, name = rest.split(".", 1)
            state.setdefault(int(i), {})[name] = value
    model.load_state_dict(weights)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
