"""Where the demo family lives in the store: checkpoints, staged checkpoints and training state.

    checkpoints/<family>/<size>/step-<n>/   config.json, model.safetensors, tokenizer, kbitlaw.json
    staging/<family>/<size>/step-<n>/       the same, trained but not yet published (arrive mode)
    train/<family>/tokenizer-v<V>/          the family's tokenizer (trained once, shared by all sizes)
    train/<family>/corpus-<hash>.st         the training corpus as one token stream (safetensors)
    train/<family>/<size>/step-<n>.optim    AdamW moments at that step (safetensors bytes): resume

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


def staged_rounds(store: Store, family: str = "demo") -> int:
    """How many rounds (distinct steps) of checkpoints wait in staging/ to be published."""
    steps = {
        checkpoint_step(key_parent(key))
        for key in store.list(checkpoint_prefix(STAGING, family))
        if key.endswith("/config.json")
    }
    return len(steps)


def publish_next(store: Store, family: str = "demo") -> list[str]:
    """Publish the next round of staged checkpoints (every size's earliest staged step) from
    staging/ to checkpoints/; returns their ids, [] when nothing is left to publish."""
    staged: dict[int, list[str]] = {}
    for key in store.list(checkpoint_prefix(STAGING, family)):
        if key.endswith("/config.json"):
            prefix = key_parent(key)
            staged.setdefault(checkpoint_step(prefix), []).append(prefix)
    if not staged:
        return []
    published = []
    for prefix in sorted(staged[min(staged)]):
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


def load_weights(store: Store, prefix: str):
    from transformers import GPTNeoXForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("config.json", "model.safetensors"):
            store.get_file(f"{prefix}/{name}", Path(tmp) / name)
        return GPTNeoXForCausalLM.from_pretrained(tmp, dtype=torch.float32, use_safetensors=True)


def optimizer_bytes(opt: torch.optim.Optimizer) -> bytes:
    """The optimizer's moments as safetensors (never pickle: the store is read back without
    executing code)."""
    tensors = {}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{i}.{name}"] = torch.as_tensor(value).detach().clone()
    return save_tensors(tensors)


def load_optimizer(opt: torch.optim.Optimizer, data: bytes) -> None:
    state: dict[int, dict] = {}
    for key, value in load_tensors(data).items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
