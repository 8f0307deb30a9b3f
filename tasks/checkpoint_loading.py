"""Loading a checkpoint: a local copy of its files (remote ones cached by fingerprint), then its
model and tokenizer with transformers, on the device models run on.

Security: loading never executes code from a checkpoint. Weights are read from safetensors only
(pickle `*.bin` files are refused unless the caller opts in) and trust_remote_code is always False.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

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


DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def parse_device(name: str | None, *, label: str = "device") -> str:
    """A device name in its normal form ("auto" for None or ""), from its syntax alone: no torch
    import, so a command line can reject `tpu` before anything heavy loads."""
    text = (name or "auto").strip().lower()
    match = _DEVICE.fullmatch(text)
    if match is None:
        raise ValueError(f"{label} {name}: not a device (use {DEVICES})")
    return f"cuda:{int(match.group(1))}" if match.group(1) else text


def _available(device: str, where: str) -> str:
    """`device` (parsed) when this machine has it, else one line naming `where` it came from."""
    if not device.startswith("cuda"):
        return device
    import torch  # here, not at import time: "cpu" and syntax errors need no torch

    if not torch.cuda.is_available():
        raise ValueError(f"{where}: CUDA is not available on this machine")
    index, count = device.partition(":")[2], torch.cuda.device_count()
    if index and int(index) >= count:
        known = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ValueError(f"{where}: no such GPU (this machine has {known})")
    return device


def resolve_device(name: str | None = None, *, label: str = "device") -> str:
    """Where models run, checked on this machine: `cpu`, `cuda` or `cuda:N` as given, or for
    `auto` (also None or ""): $KBITLAW_DEVICE when set, else cuda when available, else cpu.
    What this machine cannot run (no CUDA, no GPU N) or what is no device at all raises one
    ValueError line naming the value and where it came from: `{label} cuda: CUDA is not ...`."""
    device = parse_device(name, label=label)
    if device != "auto":
        return _available(device, f"{label} {name}")
    env = os.environ.get("KBITLAW_DEVICE", "").strip()
    if env:
        chosen = parse_device(env, label="$KBITLAW_DEVICE")
        if chosen != "auto":
            return _available(chosen, f"$KBITLAW_DEVICE={env}")
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_device() -> str:
    """Where models run by default: resolve_device("auto")."""
    return resolve_device(None)


def pristine_device(model: Any) -> str | None:
    """Where quantize_model keeps a model's original weights between specs: on the CPU for a model
    on a GPU (GPU memory bounds the model size, and a second copy there would halve it; restoring
    costs one host-to-device copy per spec), else beside the weights (None)."""
    return "cpu" if next(model.parameters()).device.type == "cuda" else None


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
