"""Where the nightly flow's evaluations run: threads in this process, or Dask processes (a local
cluster, or an existing scheduler for many machines), and the resources each evaluation claims."""

from __future__ import annotations

import contextlib
import os

import torch
from prefect.context import FlowRunContext


def task_resources() -> dict[str, float]:
    """Dask resources each evaluation claims: KBITLAW_TASK_RESOURCES="GPU=1" (workers of an existing
    cluster then need `--resources GPU=1`); by default one GPU per task where this machine has one."""
    text = os.environ.get("KBITLAW_TASK_RESOURCES")
    if text is None:
        return {"GPU": 1} if torch.cuda.is_available() else {}
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {name.strip(): float(amount) for name, amount in pairs}


def task_runner(runner: str, workers: int, address: str | None = None):
    """The flow's task runner: threads (one process; models shared through the pool) or Dask."""
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        gpus, resources = torch.cuda.device_count(), task_resources()
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": min(workers, gpus) if gpus else workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                **({"resources": resources} if resources else {}),  # one task's worth per worker
            }
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=workers)


def runs_here() -> bool:
    """Whether the current flow's tasks run in this process (threads), where a device can be
    checked before they start; a Dask worker may have GPUs this process lacks."""
    runner = FlowRunContext.get().task_runner if FlowRunContext.get() else None
    return type(runner).__name__ != "DaskTaskRunner"


def claim(resources: dict[str, float]):
    """Annotate Dask submissions with the resources a task needs (nothing for other runners)."""
    runner = FlowRunContext.get().task_runner if FlowRunContext.get() else None
    if not resources or type(runner).__name__ != "DaskTaskRunner":
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources=resources)
