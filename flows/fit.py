"""The fit-laws task and the `fit` flow (a deployment): the store fit of kbitlaw.law in Prefect."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from kbitlaw.flows.problems import failed_run, one_line, quiet_planned_failures, retry_transient

quiet_planned_failures()  # a deployment run that fails as planned logs one line, not a traceback


@task(
    name="fit-laws",
    task_run_name="fit the laws",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,  # a store hiccup may pass; bad results or a bug do not
)
def fit_task(store_uri: str, keys: list[str] | None = None) -> dict[str, Any]:
    """Fit the store's results, or just `keys` (or read the stored fit of exactly these results)."""
    from kbitlaw.law.io import fit_store
    from kbitlaw.law.table import ResultsError
    from kbitlaw.store import Store, StoreError

    started = time.perf_counter()
    store = Store(store_uri)
    try:
        stored = fit_store(store, keys=keys)
    except (ResultsError, StoreError, FileNotFoundError) as exc:  # bad results or the store: one line
        return Failed(message=one_line(exc), data=exc)  # retried only when transient
    seconds = time.perf_counter() - started
    return {"key": store.url(stored.key), "refitted": stored.refitted, "doc": stored.doc, "seconds": seconds}


@flow(name="fit", log_prints=True)
def fit_flow(store: str = "") -> dict[str, Any] | State:
    """Refit the k-bit laws to the store's results (the fit-laws deployment).

    Args:
        store: Store URI, a directory or s3://bucket/prefix (empty: $KBITLAW_STORE or .kbitlaw/store).
    """
    from kbitlaw.store import Store

    state = fit_task(Store(store or None).uri, return_state=True)
    if not state.is_completed():
        problem = f"fit: {one_line(state.message or 'failed')}"
        return failed_run({"fit": None, "problems": [problem]}, [problem])
    out = state.result()
    return {"fit": out["key"], "refitted": out["refitted"]}
