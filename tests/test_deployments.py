"""prefect.yaml deployed against a real Prefect server; `kbitlaw serve` builds the same deployments."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kbitlaw.flows.deploy import CHECKPOINT_EVENT, DEPLOYMENTS, runner_deployments

pytestmark = pytest.mark.slow  # Prefect deployments

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_and_serve_define_the_same_deployments():
    """prefect.yaml (work pools, from the repository root) and DEPLOYMENTS (`kbitlaw serve`, any
    directory) must not drift apart: same names, entrypoints, parameters, schedules and triggers."""
    on_file = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert len(on_file) == len(DEPLOYMENTS)
    for file_spec, code_spec in zip(on_file, DEPLOYMENTS, strict=True):
        path, _, name = file_spec.pop("entrypoint").partition(":")
        assert "kbitlaw." + path.removesuffix(".py").replace("/", ".") + ":" + name == code_spec["entrypoint"]
        file_spec.pop("work_pool")
        assert file_spec == {k: v for k, v in code_spec.items() if k != "entrypoint"}


def prefect_cli(api: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api}
    prefect = Path(sys.executable).parent / "prefect"
    return subprocess.run(
        [str(prefect), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def deployed(prefect_api):
    created = prefect_cli(prefect_api, "work-pool", "create", "kbitlaw", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    out = prefect_cli(prefect_api, "deploy", "--all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    yield prefect_api
    # the session's server is shared: leave no work-pool deployments for `kbitlaw serve` tests
    for name in ("nightly/nightly", "evaluate-checkpoint/evaluate-checkpoint", "fit/fit"):
        prefect_cli(prefect_api, "deployment", "delete", name)
    prefect_cli(prefect_api, "deployment", "delete", "clean-datasets/clean-datasets")


async def _read(name: str):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        automations = await client.read_automations_by_name(f"{deployment.name}__automation_1")
        return deployment, automations


def test_deploy_creates_schedule_limit_and_trigger(deployed):
    nightly, _ = asyncio.run(_read("nightly/nightly"))
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 2 * * *", "UTC")]
    limit = nightly.global_concurrency_limit
    assert (limit.limit if limit else nightly.concurrency_limit) == 1
    assert nightly.work_pool_name == "kbitlaw"
    evaluate, automations = asyncio.run(_read("evaluate-checkpoint/evaluate-checkpoint"))
    assert len(automations) == 1
    trigger = automations[0].trigger
    assert trigger.expect == {CHECKPOINT_EVENT}
    assert trigger.match.root == {"prefect.resource.id": "kbitlaw.checkpoint.*"}
    action = automations[0].actions[0]
    assert action.deployment_id == evaluate.id
    assert action.parameters == {
        "checkpoint_uri": "{{ event.payload.uri }}",
        "grid": "{{ event.payload.grid }}",
    }
    for name in ("fit/fit", "clean-datasets/clean-datasets"):
        assert asyncio.run(_read(name))[0].work_pool_name == "kbitlaw"


def test_serve_builds_the_same_deployments(deployed):
    served = {d.name: d for d in runner_deployments()}
    assert set(served) == {"nightly", "evaluate-checkpoint", "fit", "clean-datasets"}
    nightly, _ = asyncio.run(_read("nightly/nightly"))
    served_crons = [s.schedule.cron for s in served["nightly"].schedules]
    assert served_crons == [s.schedule.cron for s in nightly.schedules]
    assert [s.schedule.timezone for s in served["nightly"].schedules] == ["UTC"]
    assert served["nightly"].concurrency_limit == 1
    _, automations = asyncio.run(_read("evaluate-checkpoint/evaluate-checkpoint"))
    trigger = served["evaluate-checkpoint"].triggers[0]
    assert trigger.expect == automations[0].trigger.expect
    assert trigger.match.root == automations[0].trigger.match.root
    assert trigger.parameters == automations[0].actions[0].parameters


def test_serve_refuses_to_take_over_work_pool_deployments(deployed, tmp_path):
    """`kbitlaw serve` would update the same-named work-pool deployments (its runs then crash, and
    stopping it pauses them): it refuses with one line instead, and leaves them as they were."""
    env = {**os.environ, "PREFECT_API_URL": deployed}
    out = subprocess.run(
        [sys.executable, "-m", "kbitlaw", "serve", "--reports-port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "kbitlaw: error: deployments nightly/nightly (work pool kbitlaw)"
    )
    assert "prefect worker start --pool kbitlaw" in lines[0]
    nightly, _ = asyncio.run(_read("nightly/nightly"))
    assert nightly.work_pool_name == "kbitlaw" and not nightly.paused


def test_emit_checkpoint(prefect_api, tiny_checkpoint, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    ok = subprocess.run(
        [sys.executable, "-m", "kbitlaw", "emit-checkpoint", str(tiny_checkpoint)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "emitted kbitlaw.checkpoint.created" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kbitlaw", "emit-checkpoint", str(tmp_path / "nope")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "no such checkpoint directory" in bad.stderr
