"""`kbitlaw serve`, `emit-checkpoint` and `serve-reports`: the deployments, their trigger and the
report server beside them."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from kbitlaw.flows.cli.common import StoreOpt, _fail, app, error_line


@app.command()
def serve(
    reports_port: Annotated[
        int, typer.Option("--reports-port", help="Port to serve the reports on for the UI's links (0: off)")
    ] = 8765,
    store: StoreOpt = None,
) -> None:
    """Serve the deployments of prefect.yaml with their schedules and trigger (no work pool needed)."""
    from prefect import serve as prefect_serve

    from kbitlaw.flows.api_server import ensure_api
    from kbitlaw.flows.deploy import runner_deployments, work_pool_collisions

    ensure_api()  # without PREFECT_API_URL: the local API kept for this PREFECT_HOME
    taken = work_pool_collisions()
    if taken:
        _fail(
            f"deployments {', '.join(taken)} already run on a work pool (prefect deploy): start a worker "
            "(`prefect worker start --pool kbitlaw`) instead of `kbitlaw serve`, or delete them first "
            "(`prefect deployment delete NAME`)"
        )
    if store:  # the runs write where the report server reads
        os.environ["KBITLAW_STORE"] = store
    if reports_port:
        _serve_reports_beside(store, reports_port)
    prefect_serve(*runner_deployments())


def _serve_reports_beside(store: str | None, port: int) -> None:
    """Start the report server in a thread of this process and point the flow runs' links at it
    (they run in subprocesses, which inherit the environment). A busy port is a warning, not a
    failure: the deployments matter more than the links."""
    from kbitlaw.report.web import REPORT_URL_ENV, start_report_server

    try:
        _, url = start_report_server(store, port=port)
    except (OSError, ValueError) as exc:
        typer.echo(
            f"kbitlaw: warning: reports not served (port {port}: {exc}); links stay file:// or s3://",
            err=True,
        )
        return
    if os.environ.get(REPORT_URL_ENV):
        typer.echo(
            f"kbitlaw: reports served at {url}; links use {REPORT_URL_ENV}={os.environ[REPORT_URL_ENV]}"
        )
    else:
        os.environ[REPORT_URL_ENV] = url
        typer.echo(f"kbitlaw: reports served at {url} (the runs' links point there)")


@app.command("emit-checkpoint")
def emit_checkpoint(
    uri: Annotated[str, typer.Argument(help="The new checkpoint's URI")],
    grid: Annotated[
        str, typer.Option(help="The specs to evaluate it at: a grid name or comma-separated specs")
    ] = "default",
) -> None:
    """Announce a new checkpoint (a Prefect event that triggers its evaluation and a refit)."""
    from kbitlaw.checkpoints import CheckpointError
    from kbitlaw.flows.deploy import emit_checkpoint as emit

    try:
        event_id = emit(uri, grid)
    except (CheckpointError, RuntimeError, ValueError) as exc:
        _fail(error_line(exc))
    typer.echo(f"emitted kbitlaw.checkpoint.created for {uri}, grid {grid} (event {event_id})")


@app.command("serve-reports")
def serve_reports(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port)")] = 8765,
) -> None:
    """Serve the reports (and dataset validation pages) of a store over HTTP, read-only, so the
    links in the Prefect UI open in a browser."""
    from kbitlaw.report.web import REPORT_URL_ENV, ReportServer, serve_reports_forever

    def ready(server: ReportServer) -> None:
        typer.echo(f"kbitlaw: serving the reports of {server.store.uri} at {server.base_url}")
        typer.echo(f"for workers: export {REPORT_URL_ENV}={server.base_url}")
        sys.stdout.flush()

    try:
        serve_reports_forever(store, host, port, ready=ready)
    except (OSError, ValueError) as exc:
        _fail(f"cannot serve reports on {host}:{port}: {exc}")
