"""What kbitlaw reads of a checkpoint folder, and the checks on it (helpers of checkpoints.py).

Safetensors headers are read without loading tensors; a file kbitlaw reads must have a name that
is a store key, and a local symbolic link must not point out of the folder being scanned; the
sidecar's numbers must be whole and non-negative. Every failure is a CheckpointError whose
message is one line naming the file and the cause.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any

from kbitlaw.store import Store, validate_key

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message is one line naming its path and the cause."""


def where_of(store: Store, directory: str) -> str:
    """A folder's location for messages: never raises (no key check), control characters escaped."""
    text = f"{store.uri}/{directory}" if directory else store.uri
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_key(text: str) -> bool:
    try:
        return bool(validate_key(text))
    except ValueError:
        return False


def check_folder(store: Store, directory: str) -> None:
    """A folder under `store` whose name is not a key can still be read by its real path, unless a
    part of it is `.`/`..`, empty (an S3 key's double slash) or has control characters."""
    for part in directory.split("/"):
        if part in (".", ".."):
            why = f"the path part {part!r} could name a folder outside {store.uri}"
        elif not part:
            why = "an empty path part (a double slash) cannot be read safely"
        elif CONTROL.search(part):
            why = f"the path part {part!r} has control characters"
        else:
            continue
        raise CheckpointError(f"{where_of(store, directory)}: {why}; rename the folder")


def check_file(store: Store, key: str, where: str, boundary: str) -> None:
    """A file kbitlaw reads: its name must be a key, and a local symlink must stay inside `boundary`."""
    try:
        validate_key(key)
    except ValueError:
        raise CheckpointError(
            f"{where}: the file name has characters outside [A-Za-z0-9._=@+,-]; rename the file"
        ) from None
    if store.protocol == "file" and os.path.islink(path := store.path(key)):
        target, root = os.path.realpath(path), os.path.realpath(boundary)
        if os.path.commonpath([target, root]) != root:
            raise CheckpointError(
                f"{where}: a symbolic link to {target}, outside {root}; kbitlaw does not follow "
                "links out of the folder it scans (copy the file in)"
            )


def check_sidecar(sidecar: Any, where: str) -> None:
    """kbitlaw.json: a JSON object whose step, tokens_seen and tokens_planned (each optional) are
    whole numbers >= 0 and whose `finished` (optional) is true or false. Its lr_schedule is not
    checked here: a bad schedule leaves the checkpoint usable without one (schedule.py)."""
    if not isinstance(sidecar, dict):
        raise CheckpointError(f"{where}: must be a JSON object, got {type(sidecar).__name__}")
    finished = sidecar.get("finished")
    if finished is not None and not isinstance(finished, bool):
        raise CheckpointError(f"{where}: field 'finished' must be true or false, got {finished!r}")
    for name in ("step", "tokens_seen", "tokens_planned"):
        value = sidecar.get(name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and value >= 0 and float(value).is_integer()):
            raise CheckpointError(f"{where}: field {name!r} must be a whole number >= 0, got {value!r}")


def safetensors_header(store: Store, key: str, size: int) -> dict[str, Any]:
    """The JSON header of a safetensors file; checks the file is as long as the header says."""
    where = store.url(key)
    if size < 8:
        raise CheckpointError(f"{where}: truncated safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", store.fs.cat_file(store.path(key), start=0, end=8))
    if n > 100_000_000 or 8 + n > size:
        raise CheckpointError(
            f"{where}: truncated or corrupt safetensors file (header of {n} bytes, file of {size})"
        )
    try:
        header = json.loads(store.fs.cat_file(store.path(key), start=8, end=8 + n))
    except ValueError as exc:
        raise CheckpointError(f"{where}: corrupt safetensors header ({exc})") from None
    tensors = [t for k, t in header.items() if k != "__metadata__"] if isinstance(header, dict) else [None]
    try:
        end = max((int(t["data_offsets"][1]) for t in tensors), default=0)
        [numel(t["shape"]) for t in tensors]  # every tensor has a shape of whole numbers
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckpointError(f"{where}: corrupt safetensors header (not a table of tensors)") from None
    if size != 8 + n + end:
        raise CheckpointError(
            f"{where}: truncated safetensors file ({size} bytes, header says {8 + n + end})"
        )
    return header


def numel(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out
