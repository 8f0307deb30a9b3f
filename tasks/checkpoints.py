"""Checkpoints: discover, describe and fingerprint them (metadata only, no weights).

A checkpoint is a Hugging Face format directory (config.json + weights + tokenizer), found under
a local directory tree, an s3:// prefix, or named explicitly as hf://org/name@revision. An
optional sidecar `kbitlaw.json` says which family, size and training step it is.

Identity: the fingerprint is a sha256 over (name, size, content tag) of config.json, the weights
and the tokenizer files, plus the sidecar's identity fields (family, size, step, tokens_seen) when
it has any. Results are keyed by the fingerprint and carry those fields, so a corrected
tokens_seen means a fresh evaluation whose rows say the right thing, and identical weights at two
steps stay two checkpoints. Other sidecar fields and the checkpoint's location do not change it.
`tokens_planned` (the run's planned length) is read but is not identity: it says nothing about the
weights, and leaving it out keeps every existing fingerprint (and cached result) as it was. The
cost: results cached under a fingerprint keep the tokens_planned they were evaluated with, so a
plan changed later shows in the rows of new checkpoints only. The same holds for `finished` (a
finished model of its tokens, e.g. a cooldown branch) and the learning-rate schedule's areas
(schedule.py: from the sidecar's `lr_schedule`, else the Trainer's trainer_state.json), which the
joint law reads to use intermediate checkpoints of decaying runs; a schedule that cannot be read
leaves the checkpoint usable without one, with `schedule_problem` saying why.

Folder names: a folder that is not a store key (`step 977 ü`) is read through a store rooted at
its real path, so its name never becomes a key (results are keyed by fingerprint; the id, the
real relative path, is a label). A path part that cannot be read safely (`..`, `.`, an empty S3
key part, control characters) or a needed file name that is not a key fails that checkpoint
alone, with one line.

Security: a checkpoint whose weights are only pickle files (`*.bin` ...) is refused unless the
caller opts in, and one whose config.json asks for custom model code is refused. A file that is a
symbolic link out of the scanned folder is refused, not followed. Loading (safetensors only, never
remote code): checkpoint_loading.py; the structure of a loaded model: model_structure.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbitlaw.checkpoint_files import (
    CheckpointError,
    check_file,
    check_folder,
    check_sidecar,
    first_line,
    is_key,
    numel,
    safetensors_header,
    where_of,
)
from kbitlaw.hashing import sha256_bytes
from kbitlaw.schedule import TRAINER_STATE, WITHOUT, Schedule, read_schedule
from kbitlaw.store import Store, StoreError, key_name, key_parent

log = logging.getLogger(__name__)
SIDECAR = "kbitlaw.json"
# Sidecar fields in the fingerprint; tokens_planned is deliberately not one (module docstring).
IDENTITY_FIELDS = ("family", "size", "step", "tokens_seen")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Files whose content defines the model a checkpoint evaluates as; they make up the fingerprint.
# The tokenizer is included on purpose: a changed tokenizer changes every score.
_IDENTITY = re.compile(
    r"^(config\.json|.*\.safetensors|.*\.safetensors\.index\.json|"
    + "|".join(re.escape(n) for n in TOKENIZER_FILES)
    + r")$"
)
_STEP_DIR = re.compile(r"^(?:step|checkpoint|ckpt)[-_]?(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    uri: str  # the checkpoint directory: a local path, s3://bucket/dir or hf://org/name@rev
    id: str  # stable human id: <family>/<size>/step-<n> from the sidecar, else the relative path
    family: str
    step: int | None
    tokens_seen: int | None
    fingerprint: str  # sha256 over config, weights, tokenizer (name, size, tag) + sidecar identity
    n_params: int  # from the safetensors headers (every stored tensor once)
    files: tuple[tuple[str, int, str], ...] = field(repr=False)
    # The training run's planned total tokens, for predicting its end; not in the fingerprint.
    tokens_planned: int | None = None
    sidecar: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Neither in the fingerprint (module docstring): a finished model of its tokens (None: not said)
    finished: bool | None = None
    # the learning-rate schedule's areas in tokens (schedule.py), None when unknown
    lr_area: float | None = None
    lr_anneal: float | None = None
    lr_area_planned: float | None = None
    lr_anneal_planned: float | None = None
    schedule_source: str | None = None  # kbitlaw.json | trainer_state.json
    schedule_problem: str | None = None  # one line: a schedule was there but cannot be used


# -- discovery ---------------------------------------------------------------------------------


def discover(uri: str) -> tuple[list[Checkpoint], list[CheckpointError]]:
    """Every checkpoint under `uri` (a directory tree, s3:// prefix, or comma-separated hf:// list).

    A broken checkpoint does not stop discovery: it is returned among the errors, each one line.
    """
    if uri.startswith("hf://"):
        found, errors = [], []
        for one in uri.split(","):
            try:
                found.append(_describe_hf(one.strip()))
            except CheckpointError as exc:
                errors.append(exc)
        return found, errors
    store = Store(uri)
    by_dir: dict[str, list[str]] = defaultdict(list)
    for key in store.list():
        by_dir[key_parent(key)].append(key_name(key))
    found, errors = [], []
    for directory, names in sorted(by_dir.items()):
        if not _looks_like_checkpoint(names):
            continue
        try:
            found.append(_describe_found(store, directory, names))
        except CheckpointError as exc:
            errors.append(exc)
        except StoreError:
            raise  # the store itself fails, not this checkpoint: the caller may retry
        except Exception as exc:  # anything else about one checkpoint fails it alone
            errors.append(CheckpointError(f"{where_of(store, directory)}: {first_line(exc)}"))
    return found, errors


def _describe_found(store: Store, directory: str, names: list[str]) -> Checkpoint:
    """describe() a discovered directory; one whose name is not a store key is read through a
    store rooted at its real path (see the module docstring)."""
    if not directory or is_key(directory):
        return describe(store, directory, names)
    check_folder(store, directory)
    inner = Store(f"{store.uri}/{directory}")
    return describe(inner, "", names, boundary=store.root, rel=directory)


def _looks_like_checkpoint(names: list[str]) -> bool:
    return "config.json" in names or any(
        n.endswith(".safetensors") or n.endswith(PICKLE_SUFFIXES) for n in names
    )


def describe(
    store: Store,
    directory: str,
    names: list[str] | None = None,
    *,
    allow_pickle: bool = False,
    boundary: str | None = None,
    rel: str | None = None,
) -> Checkpoint:
    """Read one checkpoint directory's metadata (no weights are downloaded).

    With allow_pickle, a checkpoint whose weights are only pickle files is accepted (the caller
    trusts it); its pickle files then count in the fingerprint and n_params is 0 (unknown).
    `boundary`: the local folder that symbolic links may not point out of (default: the store's
    root); `rel`: the checkpoint's path relative to the scanned folder (default: `directory`).
    """
    where = where_of(store, directory)
    if names is None:
        prefix = f"{directory}/" if directory else ""
        names = [k[len(prefix) :] for k in store.list(directory) if "/" not in k[len(prefix) :]]
    key = (lambda n: f"{directory}/{n}") if directory else (lambda n: n)
    if "config.json" not in names:
        raise CheckpointError(f"{where}: no config.json")
    weights = sorted(n for n in names if n.endswith(".safetensors"))
    if not weights:
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        if pickles and not allow_pickle:
            raise CheckpointError(
                f"{where}: only pickle weights ({', '.join(pickles)}); kbitlaw loads "
                "safetensors only (convert it, or pass --allow-pickle if you trust it)"
            )
        if not pickles:
            raise CheckpointError(f"{where}: no *.safetensors weight files")
    files, n_params = [], 0
    trusted = weights or sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    for name in sorted(n for n in names if _IDENTITY.match(n) or n in trusted):
        check_file(store, key(name), f"{where}/{name}", boundary or store.root)
        info = store.info(key(name))
        files.append((name, info["size"], info["etag"]))
        if name.endswith(".safetensors"):
            header = safetensors_header(store, key(name), info["size"])
            n_params += sum(numel(t["shape"]) for k, t in header.items() if k != "__metadata__")
    try:
        config = json.loads(store.read_bytes(key("config.json")))
    except ValueError as exc:
        raise CheckpointError(f"{where}: config.json is not valid JSON ({exc})") from None
    if "auto_map" in config:
        raise CheckpointError(
            f"{where}: config.json asks for custom model code (auto_map); kbitlaw never "
            "runs code from a checkpoint"
        )
    sidecar: dict[str, Any] = {}
    if SIDECAR in names:
        check_file(store, key(SIDECAR), f"{where}/{SIDECAR}", boundary or store.root)
        try:
            sidecar = json.loads(store.read_bytes(key(SIDECAR)))
        except ValueError as exc:
            raise CheckpointError(f"{where}/{SIDECAR}: not valid JSON ({exc})") from None
        check_sidecar(sidecar, f"{where}/{SIDECAR}")
    state = _trainer_state(store, key, names, where, boundary or store.root)
    return _checkpoint(where, directory if rel is None else rel, files, n_params, sidecar, state)


def _trainer_state(store: Store, key, names: list[str], where: str, boundary: str) -> bytes | str | None:
    """trainer_state.json's bytes, None when absent, or the one line saying why it cannot be read
    (a checkpoint is never failed by it: schedule.py)."""
    if TRAINER_STATE not in names:
        return None
    try:
        check_file(store, key(TRAINER_STATE), f"{where}/{TRAINER_STATE}", boundary)
        return store.read_bytes(key(TRAINER_STATE))
    except CheckpointError as exc:
        return str(exc)


def _checkpoint(
    uri: str, rel: str, files: list, n_params: int, sidecar: dict[str, Any], state: bytes | str | None = None
) -> Checkpoint:
    parts = [p for p in rel.split("/") if p]
    step = sidecar.get("step")
    if step is None and parts and (m := _STEP_DIR.match(parts[-1])):
        step = int(m.group(1))
    family = sidecar.get("family") or (parts[0] if len(parts) > 1 else (parts[0] if parts else "default"))
    if sidecar.get("family") and sidecar.get("size") is not None and step is not None:
        ckpt_id = f"{sidecar['family']}/{sidecar['size']}/step-{step}"
    else:
        ckpt_id = rel or Path(uri).name
    tokens_seen = _whole(sidecar.get("tokens_seen"))
    if isinstance(state, str):
        lr = Schedule(problem=f"{state}; {WITHOUT}")
    else:
        lr = read_schedule(sidecar, state, int(step) if step is not None else None, tokens_seen, uri)
    if lr.problem:  # the checkpoint is still used: a warning, not one of discover's errors
        log.warning("%s", lr.problem)
    return Checkpoint(
        uri=uri,
        id=ckpt_id,
        family=str(family),
        step=int(step) if step is not None else None,
        tokens_seen=tokens_seen,
        tokens_planned=_whole(sidecar.get("tokens_planned")),
        fingerprint=fingerprint_of(files, sidecar),
        n_params=n_params,
        files=tuple(files),
        sidecar=sidecar,
        finished=sidecar.get("finished"),
        lr_area=lr.lr_area,
        lr_anneal=lr.lr_anneal,
        lr_area_planned=lr.lr_area_planned,
        lr_anneal_planned=lr.lr_anneal_planned,
        schedule_source=lr.source,
        schedule_problem=lr.problem,
    )


def _whole(value: Any) -> int | None:
    """A sidecar count (check_sidecar made sure it is whole) as an int; None when absent."""
    return int(value) if value is not None else None


def fingerprint_of(files: list, sidecar: dict[str, Any]) -> str:
    """sha256 of the identity files and the sidecar's identity fields (see the module docstring).
    Without identity fields it is the files' hash alone, as before the fields joined it."""
    meta = {k: sidecar[k] for k in IDENTITY_FIELDS if sidecar.get(k) is not None}
    meta = {k: (int(v) if k in ("step", "tokens_seen") else str(v)) for k, v in meta.items()}
    doc = {"files": sorted(files), "metadata": meta} if meta else sorted(files)
    return sha256_bytes(json.dumps(doc, sort_keys=True).encode())


def parse_hf(uri: str) -> tuple[str, str | None]:
    m = re.match(r"^hf://([\w.-]+/[\w.-]+)(?:@([\w./-]+))?$", uri)
    if not m:
        raise CheckpointError(f"{uri}: not a valid hf://org/name[@revision] URI")
    return m.group(1), m.group(2)


def _describe_hf(uri: str) -> Checkpoint:
    """Metadata of a Hub checkpoint from its file listing (sizes + LFS sha256); needs network."""
    repo, revision = parse_hf(uri)
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # offline, unknown repo, gated ...
        raise CheckpointError(
            f"{uri}: cannot read from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    names = [s.rfilename for s in info.siblings]
    if "config.json" not in names:
        raise CheckpointError(f"{uri}: no config.json")
    files = []
    for s in info.siblings:
        if _IDENTITY.match(s.rfilename):
            tag = s.lfs.sha256 if s.lfs else (s.blob_id or "")
            files.append((s.rfilename, int(s.size or 0), str(tag)))
    if not any(n.endswith(".safetensors") for n, _, _ in files):
        raise CheckpointError(f"{uri}: no *.safetensors weight files")
    return _checkpoint(uri, repo, files, 0, {"family": repo.split("/")[-1]})


def resolve(ref: Checkpoint | str, *, allow_pickle: bool = False) -> Checkpoint:
    """A Checkpoint from an object or a URI naming exactly one checkpoint directory."""
    if isinstance(ref, Checkpoint):
        return ref
    if ref.startswith("hf://"):
        return _describe_hf(ref)
    store = Store(ref)
    names = [k for k in store.list() if "/" not in k]
    if not names:
        raise CheckpointError(f"{store.uri}: no such checkpoint directory (or it is empty)")
    return describe(store, "", names, allow_pickle=allow_pickle)
