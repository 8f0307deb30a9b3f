"""`kbitlaw api status|start|stop`: the local Prefect API kept for this PREFECT_HOME (api_server.py)."""

from __future__ import annotations

import json
import sys

import typer

from kbitlaw.flows.cli.common import JsonOpt, _fail, app, error_line

api_app = typer.Typer(
    help="The local Prefect API that commands share when PREFECT_API_URL is not set.", no_args_is_help=True
)
app.add_typer(api_app, name="api")


@api_app.command("status")
def api_status(as_json: JsonOpt = False) -> None:
    """Whether this PREFECT_HOME's local API runs, where, and how many commands use it; exit 1 if not."""
    from kbitlaw.flows.api_server import live_leases, running, state_dir

    folder = state_dir()
    info = running(folder)
    users = live_leases(folder) if folder.is_dir() else []
    if as_json:
        doc = {"running": info is not None, "folder": str(folder), "clients": len(users)}
        sys.stdout.write(json.dumps(doc | (info.__dict__ if info else {})) + "\n")
    elif info:
        version, n = info.prefect_version, len(users)
        typer.echo(f"running: {info.url} (pid {info.pid}, Prefect {version}, {n} commands using it)")
    else:
        typer.echo(f"not running (state: {folder})")
    raise typer.Exit(0 if info else 1)


@api_app.command("start")
def api_start() -> None:
    """Start the local API now (commands start it when they need it)."""
    import os

    from kbitlaw.flows.api_server import ensure_api

    if os.environ.get("PREFECT_API_URL"):
        _fail(f"PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): commands use that server")
    try:
        typer.echo(ensure_api())
    except RuntimeError as exc:
        _fail(error_line(exc))


@api_app.command("stop")
def api_stop() -> None:
    """Stop the local API (flow runs in progress lose their API: stop it between runs)."""
    from kbitlaw.flows.api_server import stop_api

    info = stop_api()
    typer.echo(f"stopped {info.url} (pid {info.pid})" if info else "not running")
