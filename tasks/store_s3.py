"""The store's S3 filesystem: endpoint and region from the environment, and every wait and retry
bounded by one setting, KBITLAW_S3_TIMEOUT (store.py's Store uses it for s3:// URIs)."""

from __future__ import annotations

import os
from typing import Any

import fsspec


def s3_timeout() -> float:
    """KBITLAW_S3_TIMEOUT (default 5): seconds one S3 request may wait to connect and between
    bytes of an answer. A request is tried twice, so a silent or refusing endpoint fails an
    operation within about 2 x timeout + 1 s."""
    text = os.environ.get("KBITLAW_S3_TIMEOUT") or "5"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise ValueError(f"KBITLAW_S3_TIMEOUT must be a positive number of seconds, got {text!r}")
    return value


def s3_filesystem() -> fsspec.AbstractFileSystem:
    import s3fs

    endpoint = os.environ.get("KBITLAW_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        client_kwargs["region_name"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # Bounded failure: an unreachable or silent endpoint gives an error in seconds, not a hang.
    # Every layer that waits or retries is bounded by the one setting: botocore's connect and read
    # timeouts, botocore's attempts (total_max_attempts counts the first; "max_attempts" would
    # count retries only) and s3fs's own retry loop (one pass: botocore already retried).
    timeout = s3_timeout()
    config_kwargs = {
        "connect_timeout": timeout,
        "read_timeout": timeout,  # per read of an answer, not per transfer: big objects stream
        "retries": {"total_max_attempts": 2, "mode": "standard"},
    }
    # Credentials come from the standard AWS variables / profiles through botocore;
    # they are never read, logged or stored here.
    fs = s3fs.S3FileSystem(
        client_kwargs=client_kwargs,
        config_kwargs=config_kwargs,
        use_listings_cache=False,  # a nightly run must see checkpoints that arrived a second ago
        skip_instance_cache=True,
    )
    fs.retries = 1  # s3fs's own retry loop (default 5, with back-off) on top of botocore's: off
    return fs

