"""Loading a checkpoint: a local copy of its files (remote ones cached by fingerprint), then its
model and tokenizer with transformers, on the device models run on.

Security: loading never executes code from a checkpoint. Weights are read from safetensors only
(pickle `*.bin` files are refused unless the caller opts in) and trust_remote_code is always False.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from kbitlaw.checkpoint_files import CheckpointError
from kbitlaw.checkpoints import SIDECAR, TOKENIZER_FILES, Checkpoint, parse_hf, resolve
from kbitlaw.store import Store


def cache_dir() -> Path:
    return Path(os.environ.get("KBITLAW_CACHE", Path.home() / ".cache" / "kbitlaw")) / "checkpoints"


def local_dir(ckpt: Checkpoint) -> Path:
    """A local directory holding the checkpoint: itself if local, else a cached copy by fingerprint."""
    if "://" not in ckpt.uri:
        return Path(ckpt.uri)
    target = cache_dir() / ckpt.fingerprint
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
    tmp.mkdir(parents=True)
    try:
        if ckpt.uri.startswith("hf://"):
            repo, revision = parse_hf(ckpt.uri)
            from huggingface_hub import snapshot_download

            snapshot_download(
                repo,
                revision=revision,
                local_dir=tmp,
                allow_patterns=[n for n, _, _ in ckpt.files] + [SIDECAR],
            )
        else:
            store = Store(ckpt.uri)
            for name, _, _ in ckpt.files:
                store.get_file(name, tmp / name)
        (tmp / ".complete").write_text(ckpt.fingerprint)
        if target.exists():  # another worker finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def default_device() -> str:
    """Where models run: $KBITLAW_DEVICE (cpu, cuda, cuda:1 ...), else cuda when present, else cpu."""
    return os.environ.get("KBITLAW_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(ref: Checkpoint | str, *, device: str = "cpu", dtype: Any = None, allow_pickle: bool = False):
    """Load a causal LM with transformers: safetensors only, never remote code."""
    from transformers import AutoModelForCausalLM

    path = local_dir(resolve(ref, allow_pickle=allow_pickle))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, use_safetensors=None if allow_pickle else True, dtype=dtype
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load model ({first})") from exc
    return model.to(device).eval()


def load_tokenizer(ref: Checkpoint | str):
    """Load the checkpoint's tokenizer (never remote code); a clear error when there is none."""
    from transformers import AutoTokenizer

    path = Path(ref) if isinstance(ref, str) and "://" not in ref else local_dir(resolve(ref))
    if not any((path / n).exists() for n in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load tokenizer ({first})") from exc
