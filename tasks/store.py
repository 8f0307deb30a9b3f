"""The object store: content-addressed keys over fsspec, on a local directory or S3.

One small class. Keys are relative, '/'-separated and validated before any I/O, so a key built
from user input (a checkpoint name, a dataset name) can never escape the store's root.
Writes are atomic: a local write goes to a hidden temporary file that is renamed into place; an
S3 PUT (single or multipart) only becomes visible when complete. Listings are never cached.
The S3 filesystem and its bounded timeouts: store_s3.py; content hashes: hashing.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import fsspec
import polars as pl

from kbitlaw.hashing import file_sha256, sha256_bytes
from kbitlaw.store_s3 import s3_filesystem

DEFAULT_STORE = ".kbitlaw/store"
_TMP_PREFIX = ".kbitlaw-tmp-"
_KEY_PART = re.compile(r"^[A-Za-z0-9._=@+,-]+$")


class StoreError(RuntimeError):
    """A store operation failed; the message names the store URI and key."""


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise ValueError naming the problem."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid store key {key!r}: empty")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key) or "://" in key:
        raise ValueError(f"invalid store key {key!r}: absolute paths and URIs are not keys")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"invalid store key {key!r}: backslash or NUL")
    for part in key.split("/"):
        if part == "":
            raise ValueError(f"invalid store key {key!r}: empty path part")
        if part in (".", ".."):
            raise ValueError(f"invalid store key {key!r}: '{part}' is not allowed")
        if not _KEY_PART.match(part):
            raise ValueError(
                f"invalid store key {key!r}: part {part!r} has characters outside [A-Za-z0-9._=@+,-]"
            )
    return key


def probe(uri: str | os.PathLike[str] | None = None) -> None:
    """Raise StoreError (one line, naming the store) unless the store answers: one small listing
    on S3 (a silent or refusing endpoint, a missing bucket, refused credentials); nothing locally.
    A command calls it before work that would otherwise fail late and many times over."""
    store = Store(uri)
    if store.protocol != "s3":
        return
    bucket, _, prefix = store.root.partition("/")
    try:
        store.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except FileNotFoundError:
        raise StoreError(f"{store.uri}: no bucket {bucket!r} at this endpoint") from None
    except Exception as exc:
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise StoreError(f"{store.uri}: {cause}") from None


class Store:
    """An object store rooted at a local directory, `file://` URI or `s3://bucket/prefix`."""

    def __init__(self, uri: str | os.PathLike[str] | None = None) -> None:
        uri = str(uri) if uri is not None else os.environ.get("KBITLAW_STORE") or DEFAULT_STORE
        if uri.startswith("s3://"):
            self.protocol = "s3"
            self.root = uri[len("s3://") :].strip("/")
            if not self.root:
                raise ValueError(f"invalid store URI {uri!r}: no bucket")
            self.fs = s3_filesystem()
            self.uri = f"s3://{self.root}"
        elif "://" in uri and not uri.startswith("file://"):
            raise ValueError(f"invalid store URI {uri!r}: use a local path, file:// or s3://")
        else:
            self.protocol = "file"
            path = Path(uri.removeprefix("file://")).expanduser().resolve()
            self.root = str(path)
            self.fs = fsspec.filesystem("file")
            self.uri = self.root

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The filesystem path of a validated key (for fsspec calls)."""
        return f"{self.root}/{validate_key(key)}"

    def url(self, key: str) -> str:
        """A URI a person or another tool can open: s3://... or a local absolute path."""
        return f"s3://{self.path(key)}" if self.protocol == "s3" else self.path(key)

    def _key_of(self, path: str) -> str:
        return path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path

    def _wrap(self, op: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{self.uri}: {op} {key!r} failed: {type(exc).__name__}: {exc}")

    # -- queries -------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        path = self.path(key)
        try:
            return bool(self.fs.exists(path))
        except Exception as exc:
            raise self._wrap("exists", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        """All keys under `prefix` (recursive, sorted); [] when nothing is there."""
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            if self.protocol == "s3":
                self.fs.invalidate_cache()
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base)
        except Exception as exc:
            raise self._wrap("list", prefix, exc) from exc
        keys = [self._key_of(p) for p in found]
        return sorted(k for k in keys if not any(part.startswith(_TMP_PREFIX) for part in k.split("/")))

    def info(self, key: str) -> dict[str, Any]:
        """Size and a content tag: the S3 ETag, or the local file's sha256 (content, not mtime)."""
        path = self.path(key)
        try:
            raw = self.fs.info(path)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._wrap("info", key, exc) from exc
        if self.protocol == "s3":
            tag = str(raw.get("ETag", "")).strip('"')
        else:
            tag = file_sha256(path)
        return {"size": int(raw["size"]), "etag": tag}

    # -- bytes -------------------------------------------------------------------------------
    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Several objects in one call (S3 requests go out concurrently)."""
        paths = {self.path(k): k for k in keys}
        if not paths:
            return {}
        try:
            data = self.fs.cat(list(paths), on_error="raise")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.uri}: missing object ({exc})") from None
        except Exception as exc:
            raise self._wrap("read", f"{len(keys)} keys", exc) from exc
        if len(paths) == 1 and not isinstance(data, dict):
            data = {next(iter(paths)): data}
        return {paths[p]: b for p, b in data.items()}

    def read_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri}: no object {key!r}") from None
        except Exception as exc:
            raise self._wrap("read", key, exc) from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        try:
            if self.protocol == "s3":
                self.fs.pipe_file(path, data)  # one PUT: visible only when complete
                return
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except Exception as exc:
            raise self._wrap("write", key, exc) from exc

    def put_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Upload a local file to `key` atomically (streamed, for large weight files)."""
        path = self.path(key)
        try:
            if self.protocol == "s3":
                self.fs.put_file(str(local_path), path)  # multipart upload completes atomically
                return
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}")
            try:
                self.fs.get_file(str(local_path), tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except Exception as exc:
            raise self._wrap("put", key, exc) from exc

    def get_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Download `key` to a local file atomically."""
        local_path = str(local_path)
        tmp = f"{local_path}.{uuid.uuid4().hex}.part"
        os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
        try:
            self.fs.get_file(self.path(key), tmp)
            os.replace(tmp, local_path)
        except Exception as exc:
            raise self._wrap("get", key, exc) from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._wrap("delete", key, exc) from exc

    # -- formats -------------------------------------------------------------------------------
    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode())

    def read_parquet(self, key: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_bytes(key)))

    def write_parquet(self, key: str, df: pl.DataFrame) -> None:
        buf = io.BytesIO()
        df.write_parquet(buf)
        self.write_bytes(key, buf.getvalue())

    def content_hash(self, key: str) -> str:
        """sha256 of the object's bytes."""
        return sha256_bytes(self.read_bytes(key))


# -- the store layout (DESIGN.md): every key kbitlaw reads or writes is built and parsed here -------

RESULTS = "results"  # results/<checkpoint_fp>/<quant>/<eval_key>.parquet
SAMPLES = "samples"  # samples/<checkpoint_fp>/<quant>/<eval_key>.parquet
FITS = "fits"  # fits/<results_sha>/fit.json and fit.parquet
REPORTS = "reports"  # reports/<results_sha>/<name>
VALIDATION = "datasets/validation"  # datasets/validation/<name>/<sha>.json and .html
CHECKPOINTS = "checkpoints"  # checkpoints/<family>/<size>/step-<n>/
STAGING = "staging"  # the same, trained but not yet published (the demo's arrive mode)
LATEST_FIT = f"{FITS}/latest.json"
LATEST_REPORT = f"{REPORTS}/latest.json"
FIT_DOCUMENT, FIT_TABLE = "fit.json", "fit.parquet"
_PARQUET = ".parquet"


def key_parent(key: str) -> str:
    """The key without its last part ('' for a one-part key)."""
    return key.rpartition("/")[0]


def key_name(key: str) -> str:
    """The last part of a key (a file name)."""
    return key.rpartition("/")[2]


def checkpoint_prefix(area: str, family: str, size: str | None = None, step: int | None = None) -> str:
    """checkpoints/<family>[/<size>[/step-<n>]] (area STAGING: trained, not yet published)."""
    parts = [area, family, *([size] if size else []), *([f"step-{step}"] if step is not None else [])]
    return "/".join(parts)


def checkpoint_step(prefix: str) -> int:
    """n of a checkpoint prefix <area>/<family>/<size>/step-<n>."""
    return int(prefix.rsplit("step-", 1)[1])


def published_prefix(staged: str) -> str:
    """Where a staged checkpoint (staging/<family>/<size>/step-<n>) is published: checkpoints/..."""
    return CHECKPOINTS + staged.removeprefix(STAGING)


def checkpoint_id(prefix: str) -> str:
    """<family>/<size>/step-<n>: a checkpoint prefix without its area."""
    return prefix.split("/", 1)[1]


def run_state_key(family: str, size: str, step: int) -> str:
    """A size's main training run at `step` (weights and AdamW moments): where a build resumes."""
    return f"train/{family}/{size}/main-step-{step}.st"


def tokenizer_prefix(family: str, vocab_size: int) -> str:
    """The family's tokenizer files (trained once, shared by all sizes)."""
    return f"train/{family}/tokenizer-v{vocab_size}"


def corpus_key(family: str, digest: str) -> str:
    """The family's training corpus as one token stream (safetensors bytes)."""
    return f"train/{family}/corpus-{digest}.st"


def clean_keys(name: str, sha: str) -> dict[str, str]:
    """A clean dataset version: its Parquet, its quarantined rows and its cleaning summary."""
    return {
        "clean": f"datasets/clean/{name}/{sha}.parquet",
        "quarantine": f"datasets/quarantine/{name}/{sha}.parquet",
        "summary": f"datasets/clean/{name}/{sha}.json",
    }


def validation_prefix(name: str) -> str:
    """Every validation of a dataset: datasets/validation/<name>."""
    return f"{VALIDATION}/{name}"


def validation_keys(name: str, sha: str) -> dict[str, str]:
    base = f"{validation_prefix(name)}/{sha}"
    return {"json": f"{base}.json", "html": f"{base}.html"}


def result_key(fingerprint: str, quant: str, eval_key: str) -> str:
    return f"{RESULTS}/{fingerprint}/{quant}/{eval_key}{_PARQUET}"


def samples_key(fingerprint: str, quant: str, eval_key: str) -> str:
    """Per-example scores beside result_key's metrics (written first: a result implies its samples)."""
    return f"{SAMPLES}/{fingerprint}/{quant}/{eval_key}{_PARQUET}"


class ResultKey(NamedTuple):
    fingerprint: str
    quant: str
    eval_key: str


def parse_result_key(key: str) -> ResultKey | None:
    """The parts of a result_key; None for any other key (another layout, a part that is not a
    valid key part)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != RESULTS or not parts[3].endswith(_PARQUET):
        return None
    fingerprint, quant, eval_key = parts[1], parts[2], parts[3].removesuffix(_PARQUET)
    if not all(_KEY_PART.match(p) and p not in (".", "..") for p in (fingerprint, quant, eval_key)):
        return None
    return ResultKey(fingerprint, quant, eval_key)


def result_keys(store: Store) -> list[str]:
    """Every result in the store (each .parquet under results/), sorted."""
    return [k for k in store.list(RESULTS) if k.endswith(_PARQUET)]


def fit_keys(results_sha: str) -> tuple[str, str]:
    return f"{FITS}/{results_sha}/{FIT_DOCUMENT}", f"{FITS}/{results_sha}/{FIT_TABLE}"


def fit_table_key(fit_key: str) -> str:
    """fit.parquet beside a fit document's key (found from the key, not from the document)."""
    head = key_parent(fit_key)
    return f"{head}/{FIT_TABLE}" if head else FIT_TABLE


def parse_fit_key(key: str) -> str | None:
    """The results sha of a fit document's key fits/<results_sha>/fit.json; None for another key."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == FITS and parts[2] == FIT_DOCUMENT and parts[1] not in ("", ".", ".."):
        return parts[1]
    return None


def report_key(results_sha: str, name: str = "index.html") -> str:
    """reports/<results_sha>/<name>: index.html, summary.json and the figures' PNGs."""
    return f"{REPORTS}/{results_sha}/{name}"
