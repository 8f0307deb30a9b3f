"""Real data no test here generated: a demo family trained and evaluated on another machine
(../shared/realdata/, beside the repository; CI has it). `untar_realdata` unpacks its store,
`fit_real_store` also fits it with the law stage (about 30 s), and conftest.py's session fixture
`real_fit_store` does that once per test session for every xdist worker.

The archive must be there: a missing archive fails the test loudly rather than skipping it."""

from __future__ import annotations

import tarfile
from pathlib import Path

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
ARCHIVE = "demo-family-results-2026-12-04.tar.gz"


def untar_realdata(dest: Path) -> Path:
    """The real store (datasets/, results/, samples/) unpacked into `dest`; returns `dest`."""
    archive = REALDATA / ARCHIVE
    assert archive.exists(), f"{archive}: the real-data fixture is missing (CI has ../shared/realdata)"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def fit_real_store(dest: Path) -> Path:
    """The real store unpacked into `dest` and fitted (fits/<sha>/fit.json + fit.parquet,
    fits/latest.json)."""
    from kbitlaw.law.io import fit_store
    from kbitlaw.store import Store

    fit_store(Store(str(untar_realdata(dest))))
    return dest
