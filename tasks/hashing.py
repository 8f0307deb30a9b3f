"""Content hashes: sha256 of bytes, and of local files (streamed, memoised per file version)."""

from __future__ import annotations

import hashlib
import os


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_sha_memo: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """sha256 of a local file, streamed; memoised per (path, inode, size, mtime) in this process."""
    st = os.stat(path)
    memo_key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if memo_key in _sha_memo:
        return _sha_memo[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _sha_memo[memo_key] = h.hexdigest()
    return _sha_memo[memo_key]
