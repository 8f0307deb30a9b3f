"""`kbitlaw serve` and `kbitlaw emit-checkpoint`: the deployments of prefect.yaml without a work pool.

The schedules, concurrency limits and event triggers are read from prefect.yaml, so `prefect
deploy --all` (work pool) and `kbitlaw serve` (no work pool) run the same deployments.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
CHECKPOINT_EVENT = "kbitlaw.checkpoint.created"


def deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["deployments"]


def _entrypoint(entry: str):
    file, _, name = entry.partition(":")
    return getattr(importlib.import_module(file.removesuffix(".py").replace("/", ".")), name)


def runner_deployments(path: Path = PREFECT_YAML) -> list:
    """RunnerDeployments equivalent to prefect.yaml's deployments."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    out = []
    for spec in deployment_specs(path):
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


def emit_checkpoint(uri: str) -> str:
    """Announce a new checkpoint: a Prefect event that triggers its evaluation. Returns the event id."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    from tasks.checkpoints import resolve

    ckpt = resolve(uri)  # a URI that is not a usable checkpoint fails here, with its reason
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
        payload={"uri": ckpt.uri, "id": ckpt.id, "fingerprint": ckpt.fingerprint},
    )
    if event is None:
        raise RuntimeError("the event could not be emitted (no events client)")
    return str(event.id)
