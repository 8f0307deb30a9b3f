"""The fit-laws task and the `fit` flow (a deployment): the store fit of kbitlaw.law in Prefect."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


@task(name="fit-laws", task_run_name="fit the laws", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def fit_task(store_uri: str, keys: list[str] | None = None) -> dict[str, Any]:
    """Fit the store's results, or just `keys` (or read the stored fit of exactly these results)."""
    from kbitlaw.law.io import fit_store
    from kbitlaw.store import Store

    started = time.perf_counter()
    store = Store(store_uri)
    stored = fit_store(store, keys=keys)
    seconds = time.perf_counter() - started
    return {"key": store.url(stored.key), "refitted": stored.refitted, "doc": stored.doc, "seconds": seconds}


@flow(name="fit", log_prints=True)
def fit_flow(store: str | None = None) -> dict[str, Any]:
    """Refit the k-bit laws to the store's results (the fit-laws deployment)."""
    from kbitlaw.store import Store

    out = fit_task(Store(store).uri)
    return {"fit": out["key"], "refitted": out["refitted"]}
