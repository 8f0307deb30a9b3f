"""The `kbitlaw` command line: thin wrappers that call flows and tasks.

`--json` prints one JSON document on stdout and nothing else there; logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="kbitlaw",
    help="k-bit inference scaling laws for your own checkpoints, every night.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="Clean and validate the evaluation datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store URI (default: $KBITLAW_STORE or .kbitlaw/store)")
]
SpecDirOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset-specs",
        help="Directory of dataset specs (*.yaml); default: $KBITLAW_DATASET_SPECS, ./datasets, builtin",
    ),
]
OldSpecDirOpt = Annotated[str | None, typer.Option("--specs", hidden=True)]  # the name before 0.2
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
CalibrationOpt = Annotated[
    str,
    typer.Option(
        "--calibration",
        help="GPTQ specs' calibration data, NAME[:N]: N sequences (default 128) of min(window, 256) "
        "tokens from the dataset spec NAME (builtin datasets: their training side, never the "
        "evaluation rows)",
    ),
]


def _quiet_libraries() -> None:
    """Library progress bars and notices go nowhere: stdout is for results, stderr for our logs."""
    import logging

    # Our own loggers at INFO; libraries (httpx logs every API request at INFO) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("kbitlaw",):
        logging.getLogger(name).setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"kbitlaw: error: {' '.join(message.split())}", err=True)  # always one line
    raise typer.Exit(code)


def default_checkpoints(store: str | None) -> str:
    if os.environ.get("KBITLAW_CHECKPOINTS"):
        return os.environ["KBITLAW_CHECKPOINTS"]
    from kbitlaw.store import Store

    return Store(store).url("checkpoints")


@app.command()
def demo(
    store: StoreOpt = None,
    arrive: Annotated[
        bool, typer.Option("--arrive", help="Publish only the next round of checkpoints, then run nightly")
    ] = False,
    grid: Annotated[str | None, typer.Option(help="Grid name or comma-separated specs")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes/threads (default: one per core)")] = None,
    sizes: Annotated[str | None, typer.Option(help="Comma-separated size names (default: all six)")] = None,
    budget: Annotated[int | None, typer.Option(help="Training tokens per size (default: the demo's)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the embedded demo (datasets + checkpoint family) and run nightly once."""
    _quiet_libraries()
    from kbitlaw.flows.demo import DEMO_GRID, describe, run_demo
    from kbitlaw.flows.server import ensure_api
    from kbitlaw.store import StoreError

    try:
        ensure_api()  # without PREFECT_API_URL: an ephemeral server that dies with this process
        summary = run_demo(
            store,
            arrive=arrive,
            grid=grid or DEMO_GRID,
            workers=workers,
            sizes=sizes,
            budget=budget,
            show_progress=False if as_json else None,
        )
    except (RuntimeError, StoreError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(summary, allow_nan=False, default=str) + "\n")
    else:
        for line in describe(summary):
            typer.echo(line)
    night = summary["nightly"]
    for problem in night.get("failures", []) + night.get("invalid_datasets", []):
        typer.echo(f"failed: {problem}", err=True)
    raise typer.Exit(1 if night.get("failures") or "checkpoints" not in night else 0)


@app.command()
def nightly(
    store: StoreOpt = None,
    checkpoints: Annotated[
        str | None, typer.Option(help="Checkpoints URI (default: <store>/checkpoints)")
    ] = None,
    grid: Annotated[
        str, typer.Option(help="Grid name (quick|default|paper) or comma-separated specs")
    ] = "default",
    datasets: Annotated[str | None, typer.Option(help="Comma-separated dataset names (default: all)")] = None,
    runner: Annotated[str, typer.Option(help="thread | dask")] = "thread",
    workers: Annotated[
        int, typer.Option(help="Concurrent evaluations (thread workers or Dask processes)")
    ] = 1,
    dask_address: Annotated[
        str | None, typer.Option(help="An existing Dask scheduler (tcp://host:8786)")
    ] = None,
    specs: SpecDirOpt = None,
    old_specs: OldSpecDirOpt = None,
    calibration: CalibrationOpt = "text:128",
    as_json: JsonOpt = False,
) -> None:
    """Discover checkpoints, evaluate what is new, refit the laws and write the report."""
    if runner not in ("thread", "dask"):
        _fail(f"--runner must be thread or dask, got {runner!r}")
    from kbitlaw.eval.calibration import calibration_ref, parse_calibration
    from kbitlaw.flows.server import prepare_api, probe_stores
    from kbitlaw.quant.spec import resolve_grid
    from kbitlaw.store import StoreError

    checkpoints = checkpoints or os.environ.get("KBITLAW_CHECKPOINTS") or None
    try:
        quant_specs = resolve_grid(grid)  # an unknown grid or a bad spec: one line, before any run starts
        parse_calibration(calibration)
        if any(q.method == "gptq" for q in quant_specs):  # GPTQ specs need it: check it now
            calibration_ref(calibration, specs or old_specs)
        probe_stores(store, checkpoints)  # an unreachable store: one line, before the flow starts
        _quiet_libraries()
        crashed = prepare_api()  # without PREFECT_API_URL: a server that dies with this process
    except (RuntimeError, StoreError, ValueError) as exc:
        _fail(str(exc))
    from kbitlaw.flows import nightly as nightly_module
    from kbitlaw.flows.artifacts import interactive

    nightly_module.TERMINAL_PROGRESS = not as_json and interactive()
    flow = nightly_module.nightly.with_options(
        task_runner=nightly_module.task_runner(runner, workers, dask_address)
    )
    state = flow(
        store=store or "",
        checkpoints=checkpoints or "",
        grid=grid,
        datasets=datasets or "",
        workers=workers,
        dataset_specs=specs or old_specs or "",
        calibration=calibration,
        return_state=True,
    )
    summary = nightly_module.run_summary(state) | ({"crashed_stale_runs": crashed} if crashed else {})
    if as_json:
        sys.stdout.write(json.dumps(summary, allow_nan=False) + "\n")
    else:
        ev = summary.get("evaluations", {})
        typer.echo(
            f"checkpoints: {summary.get('checkpoints')} ({summary.get('new_checkpoints')} new); "
            f"evaluations: {ev.get('computed')} computed, {ev.get('cached')} cached, "
            f"{ev.get('failed')} failed"
        )
        typer.echo(f"fit: {summary.get('fit')}")
        if summary.get("report"):
            typer.echo(f"report: {summary['report']['url']}")
            typer.echo(summary["report"]["headline"])
        for problem in summary.get("failures", []) + summary.get("invalid_datasets", []):
            typer.echo(f"failed: {problem}", err=True)
    raise typer.Exit(0 if state.is_completed() else 1)


@app.command()
def evaluate(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint directory, s3:// prefix or hf://org/name@rev")
    ],
    data: Annotated[str, typer.Option("--data", help="A jsonl/parquet/csv file in a canonical schema")],
    quant: Annotated[
        str, typer.Option("--quant", help="Quant spec(s) or a grid name, comma-separated")
    ] = "fp16",
    kind: Annotated[str | None, typer.Option("--kind", help="multiple_choice | cloze | perplexity")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate the first N rows only")] = None,
    delimiter: Annotated[str, typer.Option(help="Between a context and each choice")] = " ",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickle weights (unsafe)")
    ] = False,
    calibration: CalibrationOpt = "text:128",
    as_json: JsonOpt = False,
) -> None:
    """Evaluate one checkpoint on one dataset at one or more quant specs (loaded once)."""
    _quiet_libraries()
    from kbitlaw.checkpoints import CheckpointError
    from kbitlaw.data.specs import read_dataset_file
    from kbitlaw.eval.engine import EvaluationError
    from kbitlaw.eval.run import evaluate_specs

    try:
        df, kind = read_dataset_file(data, kind, limit)
        rows = evaluate_specs(
            checkpoint,
            df,
            kind,
            quant,
            dataset=Path(data).stem,
            delimiter=delimiter,
            batch_size=batch_size,
            device=device,
            allow_pickle=allow_pickle,
            calibration=calibration,
        )
    except (CheckpointError, EvaluationError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps({"results": rows}, allow_nan=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Column, Table

    calibrated = any(r["calibration"] for r in rows)  # GPTQ rows: say what they were calibrated on
    quant = Column("quant", min_width=max(len(r["quant"]) for r in rows), no_wrap=True)
    names = [
        "bits/param",
        "total bits",
        *(["calibration"] if calibrated else []),
        "metric",
        "value",
        "stderr",
    ]
    table = Table(quant, *names)
    for r in rows:
        stderr = "" if r["stderr"] is None else f"{r['stderr']:.4f}"
        table.add_row(
            r["quant"],
            f"{r['bits_per_param']:.3f}",
            f"{r['total_bits']:.4g}",
            *([r["calibration"] or ""] if calibrated else []),
            r["metric"],
            f"{r['value']:.4f}",
            stderr,
        )
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)  # piped: never cut a cell


@app.command()
def fit(
    store: StoreOpt = None,
    results: Annotated[str | None, typer.Option("--results", help="A Parquet or CSV file of results")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the k-bit scaling laws to the stored results (or a results file)."""
    from kbitlaw.flows.console import fit_command

    raise typer.Exit(fit_command(store, results, as_json))


@app.command()
def predict(
    n_params: Annotated[float, typer.Option("--n-params", help="Planned model size (parameters)")],
    tokens: Annotated[float, typer.Option("--tokens", help="Planned training tokens")],
    memory_gb: Annotated[
        float | None,
        typer.Option("--memory-gb", help="Memory budget for the weights (GB): the best size and spec"),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Damage (nats) whose token count to predict per spec")
    ] = 0.1,
    family: Annotated[
        str | None, typer.Option("--family", help="The family to fit (when there are several)")
    ] = None,
    store: StoreOpt = None,
    results: Annotated[str | None, typer.Option("--results", help="A Parquet or CSV file of results")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict the loss of a planned model at 16 bits and every spec, from the joint law L(N, D, k)."""
    from kbitlaw.flows.console import predict_command

    raise typer.Exit(predict_command(store, results, n_params, tokens, memory_gb, threshold, family, as_json))


@app.command()
def report(store: StoreOpt = None) -> None:
    """Write the HTML report for the newest fit (if missing) and print where it is."""
    _quiet_libraries()
    from kbitlaw.flows.console import report_command

    raise typer.Exit(report_command(store))


@datasets_app.command("clean")
def datasets_clean(
    names: Annotated[list[str] | None, typer.Argument(help="Dataset names (default: all)")] = None,
    store: StoreOpt = None,
    specs: SpecDirOpt = None,
    old_specs: OldSpecDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clean the named datasets into canonical Parquet + quarantine (cached by content)."""
    from kbitlaw.data.prepare import clean_datasets, select_dataset_specs
    from kbitlaw.data.specs import DatasetError
    from kbitlaw.store import Store, StoreError

    invalid: list[str] = []
    try:
        s = Store(store)
        done = clean_datasets(s, select_dataset_specs(names, specs or old_specs, invalid=invalid))
    except (DatasetError, StoreError, ValueError) as exc:
        _fail(str(exc))
    for problem in invalid:
        typer.echo(f"failed: {problem}", err=True)
    if as_json:
        doc = [
            c.summary | {"key": s.url(c.key), "quarantine": s.url(c.quarantine_key), "cached": c.cached}
            for c in done
        ]
        sys.stdout.write(json.dumps({"datasets": doc}) + "\n")
        raise typer.Exit(1 if invalid else 0)
    for c in done:
        reasons = ", ".join(f"{k}: {v}" for k, v in c.summary["reasons"].items()) or "none"
        typer.echo(
            f"{c.name}\t{c.summary['rows_in']} in, {c.summary['rows_out']} clean, "
            f"{c.summary['quarantined']} quarantined ({reasons})\t{'cached' if c.cached else 'cleaned'}"
            f"\t{s.url(c.key)}"
        )
    raise typer.Exit(1 if invalid else 0)


@datasets_app.command("validate")
def datasets_validate(
    names: Annotated[list[str] | None, typer.Argument(help="Dataset names (default: all)")] = None,
    store: StoreOpt = None,
    specs: SpecDirOpt = None,
    old_specs: OldSpecDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate the cleaned datasets with Great Expectations; exit 1 if any fails."""
    from kbitlaw.data.prepare import select_dataset_specs, validate_datasets
    from kbitlaw.data.specs import DatasetError
    from kbitlaw.store import Store, StoreError

    invalid: list[str] = []
    try:
        picked = select_dataset_specs(names, specs or old_specs, invalid=invalid)
        results = validate_datasets(Store(store), picked)
    except (DatasetError, StoreError, ValueError) as exc:
        _fail(str(exc))
    for problem in invalid:
        typer.echo(f"failed: {problem}", err=True)
    if as_json:
        doc = [
            {"name": c.name, "sha": c.sha, "success": r.success, "message": r.message(), **urls}
            for c, r, urls in results
        ]
        sys.stdout.write(json.dumps({"datasets": doc}) + "\n")
    else:
        for c, r, urls in results:
            typer.echo(f"{c.name}\t{'ok' if r.success else 'FAILED'}\t{r.message()}\t{urls['html']}")
    raise typer.Exit(0 if all(r.success for _, r, _ in results) and not invalid else 1)


@app.command()
def serve(
    reports_port: Annotated[
        int, typer.Option("--reports-port", help="Port to serve the reports on for the UI's links (0: off)")
    ] = 8765,
    store: StoreOpt = None,
) -> None:
    """Serve the deployments of prefect.yaml with their schedules and trigger (no work pool needed)."""
    from prefect import serve as prefect_serve

    from kbitlaw.flows.serve import runner_deployments, work_pool_collisions
    from kbitlaw.flows.server import ensure_api

    ensure_api()  # without PREFECT_API_URL: an ephemeral server that dies with this process
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
    from kbitlaw.flows.serve import emit_checkpoint as emit

    try:
        event_id = emit(uri, grid)
    except (CheckpointError, RuntimeError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"emitted kbitlaw.checkpoint.created for {uri}, grid {grid} (event {event_id})")


@app.command("checkpoints")
def list_checkpoints(
    uri: Annotated[str | None, typer.Argument(help="Where to look (default: <store>/checkpoints)")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the checkpoints found under a URI, with their fingerprints and any unreadable ones."""
    from kbitlaw.checkpoints import discover
    from kbitlaw.store import StoreError

    try:
        found, errors = discover(uri or default_checkpoints(store))
    except (StoreError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        doc = {
            "checkpoints": [
                {
                    "id": c.id,
                    "uri": c.uri,
                    "family": c.family,
                    "step": c.step,
                    "tokens_seen": c.tokens_seen,
                    "n_params": c.n_params,
                    "fingerprint": c.fingerprint,
                }
                for c in found
            ],
            "errors": [str(e) for e in errors],
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        for c in found:
            typer.echo(f"{c.id}\t{c.n_params:,} params\t{c.fingerprint[:12]}\t{c.uri}")
        for e in errors:
            typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1 if errors and not found else 0)


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


def main() -> None:
    # The ephemeral Prefect server would try to send telemetry and log an ERROR with no network.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app()


if __name__ == "__main__":
    main()
