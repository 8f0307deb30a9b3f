"""`kbitlaw serve` and `kbitlaw emit-checkpoint`: the deployments of prefect.yaml without a work pool.

DEPLOYMENTS below are prefect.yaml's deployments (names, schedules, concurrency limits, event
triggers); a test checks that the two agree, so `prefect deploy --all` (a work pool, from the
repository root) and `kbitlaw serve` (no work pool, from any directory of a normal install) run
the same deployments.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

CHECKPOINT_EVENT = "kbitlaw.checkpoint.created"

DEPLOYMENTS: list[dict[str, Any]] = [
    {
        "name": "nightly",
        "description": "Discover checkpoints, evaluate what is new, refit the laws, write the report.",
        "entrypoint": "kbitlaw.flows.nightly:nightly",
        "parameters": {"grid": "default"},
        "schedules": [{"cron": "0 2 * * *", "timezone": "UTC"}],
        "concurrency_limit": 1,
    },
    {
        "name": "evaluate-checkpoint",
        "description": "Evaluate one new checkpoint (announced by `kbitlaw emit-checkpoint URI`) and refit.",
        "entrypoint": "kbitlaw.flows.nightly:evaluate_checkpoint",
        "triggers": [
            {
                "type": "event",
                "enabled": True,
                "expect": [CHECKPOINT_EVENT],
                "match": {"prefect.resource.id": "kbitlaw.checkpoint.*"},
                "parameters": {
                    "checkpoint_uri": "{{ event.payload.uri }}",
                    "grid": "{{ event.payload.grid }}",
                },
            }
        ],
        # one checkpoint at a time on this machine; more arrivals wait (ENQUEUE) rather than race
        "concurrency_limit": 1,
    },
    {
        "name": "fit",
        "description": "Refit the k-bit laws to the stored results.",
        "entrypoint": "kbitlaw.flows.fit:fit_flow",
    },
    {
        "name": "clean-datasets",
        "description": "Clean and validate every dataset spec.",
        "entrypoint": "kbitlaw.flows.datasets:clean_datasets_flow",
    },
]


def _entrypoint(entry: str):
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def runner_deployments() -> list:
    """RunnerDeployments equivalent to prefect.yaml's deployments."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    out = []
    for spec in DEPLOYMENTS:
        schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC")) for s in spec.get("schedules", [])]
        triggers = [
            DeploymentEventTrigger(
                expect=set(t["expect"]),
                match=t.get("match", {}),
                parameters=t.get("parameters", {}),
                enabled=t.get("enabled", True),
            )
            for t in spec.get("triggers", [])
        ]
        out.append(
            _entrypoint(spec["entrypoint"]).to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                parameters=spec.get("parameters", {}),
                schedules=schedules or None,
                triggers=triggers or None,
                concurrency_limit=spec.get("concurrency_limit"),
            )
        )
    return out


def checkpoint_resource_id(fingerprint: str) -> str:
    return f"kbitlaw.checkpoint.{fingerprint[:16]}"


def emit_checkpoint(uri: str, grid: str = "default") -> str:
    """Announce a new checkpoint: a Prefect event that triggers its evaluation at `grid` and a refit.
    Returns the event id."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    from kbitlaw.checkpoints import resolve
    from kbitlaw.quant.spec import resolve_grid

    ckpt = resolve(uri)  # a URI that is not a usable checkpoint fails here, with its reason
    resolve_grid(grid)  # so does an unknown grid: the triggered run would only fail later
    if not PREFECT_API_URL.value():
        raise RuntimeError(
            "no Prefect server to send the event to: set PREFECT_API_URL "
            "(start one with `prefect server start`, then run `kbitlaw serve`)"
        )
    event = emit_event(
        event=CHECKPOINT_EVENT,
        resource={
            "prefect.resource.id": checkpoint_resource_id(ckpt.fingerprint),
            "prefect.resource.name": re.sub(r"[^\w./@:-]", "_", ckpt.id),
        },
        payload={"uri": ckpt.uri, "id": ckpt.id, "fingerprint": ckpt.fingerprint, "grid": grid},
    )
    if event is None:
        raise RuntimeError("the event could not be emitted (no events client)")
    import logging

    from prefect.events.worker import EventsWorker

    # Send it before returning. The worker's "Still processing items: 1 items remaining..." while it
    # does so is no news to the person who just emitted that one item.
    logging.getLogger(EventsWorker.__name__).setLevel(logging.ERROR)
    EventsWorker.drain_all(timeout=30)
    return str(event.id)


def work_pool_collisions() -> list[str]:
    """Deployments of the same flow and name that `prefect deploy` put on a work pool. `serve` would
    take them over (its runs then crash: "Downloading flow code from storage at None"), and on
    stopping it leaves them paused without their pull step; both would also answer each event."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    with get_client(sync_client=True) as client:
        for spec in DEPLOYMENTS:
            flow_name = _entrypoint(spec["entrypoint"]).name
            try:
                deployment = client.read_deployment_by_name(f"{flow_name}/{spec['name']}")
            except ObjectNotFound:
                continue
            if deployment.work_pool_name:
                found.append(f"{flow_name}/{spec['name']} (work pool {deployment.work_pool_name})")
    return found
