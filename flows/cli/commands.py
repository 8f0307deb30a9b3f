"""The main `kbitlaw` commands: demo, nightly, evaluate, fit, predict, report, checkpoints. Thin
wrappers that call flows and tasks.

`--json` prints one JSON document on stdout and nothing else there; logs go to stderr (`demo`'s,
with all library output, to a log file it names once).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from kbitlaw.flows.cli.common import (
    CalibrationOpt,
    DeviceOpt,
    JsonOpt,
    OldSpecDirOpt,
    SpecDirOpt,
    StoreOpt,
    _fail,
    _log_to_stderr,
    _quiet_libraries,
    app,
    checked_device,
    default_checkpoints,
    error_line,
)


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
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            help="Training seed: 0 trains the family `demo`, any other S its own family `demo-sS` "
            "(the same store holds both)",
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Build the embedded demo (datasets + checkpoint family) and run nightly (two nights when new
    checkpoints arrive: all but the last round, then the last round). The console shows one
    progress display (on a terminal) and the answer; what libraries print goes to a log file under
    the store (.kbitlaw/logs for a remote store), named once on stderr."""
    _quiet_libraries()
    from kbitlaw.flows.api_server import ensure_api
    from kbitlaw.flows.artifacts import interactive
    from kbitlaw.flows.cli.common import output_to_log
    from kbitlaw.flows.demo import DEMO_GRID, demo_log_path, describe, run_demo
    from kbitlaw.store import StoreError

    show_progress = not as_json and interactive()  # asked before stderr goes to the log
    log = demo_log_path(store)
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot write the log file {log}: {exc}")
    typer.echo(f"log: {log}", err=True)
    try:
        with output_to_log(log) as terminal:
            import prefect  # noqa: F401  (first here: what it prints on import goes to the log)

            with contextlib.redirect_stderr(terminal):  # its one line, when it starts an API: ours
                ensure_api()  # without PREFECT_API_URL: the local API kept for this PREFECT_HOME
            summary = run_demo(
                store,
                arrive=arrive,
                grid=grid or DEMO_GRID,
                workers=workers,
                sizes=sizes,
                budget=budget,
                seed=seed,
                show_progress=show_progress,
                progress_stream=terminal,
            )
    except (RuntimeError, StoreError, ValueError) as exc:
        _fail(error_line(exc))
    if as_json:
        sys.stdout.write(json.dumps(summary, allow_nan=False, default=str) + "\n")
    else:
        for line in describe(summary):
            typer.echo(line)
    night = summary["nightly"]
    problems = night.get("problems", night.get("failures", []))
    for problem in problems:
        typer.echo(f"failed: {problem}", err=True)
    raise typer.Exit(1 if problems or "checkpoints" not in night else 0)


@app.command()
def nightly(
    store: StoreOpt = None,
    checkpoints: Annotated[
        str | None, typer.Option(help="Checkpoints URI (default: the checkpoints/ folder of the store)")
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
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Discover checkpoints, evaluate what is new, refit the laws and write the report."""
    if runner not in ("thread", "dask"):
        _fail(f"--runner must be thread or dask, got {runner!r}")
    from kbitlaw.eval.calibration import calibration_ref, parse_calibration
    from kbitlaw.flows.stale_runs import prepare_api, probe_stores
    from kbitlaw.quant.spec import resolve_grid
    from kbitlaw.store import StoreError

    checkpoints = checkpoints or os.environ.get("KBITLAW_CHECKPOINTS") or None
    # The models run on this machine unless an existing Dask cluster runs them: only then is the
    # device itself checked now, not just its name. (Outside the try: typer.Exit is a RuntimeError.)
    device = checked_device(device, here=dask_address is None)
    try:
        quant_specs = resolve_grid(grid)  # an unknown grid or a bad spec: one line, before any run starts
        parse_calibration(calibration)
        if any(q.method == "gptq" for q in quant_specs):  # GPTQ specs need it: check it now
            calibration_ref(calibration, specs or old_specs)
        probe_stores(store, checkpoints)  # an unreachable store: one line, before the flow starts
        _quiet_libraries()
        crashed = prepare_api()  # without PREFECT_API_URL: the local API kept for this PREFECT_HOME
    except (RuntimeError, StoreError, ValueError) as exc:
        _fail(error_line(exc))
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
        device=device,
        return_state=True,
    )
    summary = nightly_module.run_summary(state) | ({"crashed_stale_runs": crashed} if crashed else {})
    if as_json:
        sys.stdout.write(json.dumps(summary, allow_nan=False) + "\n")
    else:
        ev, unreadable = summary.get("evaluations", {}), summary.get("failed_checkpoints")
        failed = f", {unreadable} failed (unreadable)" if unreadable else ""
        typer.echo(
            f"checkpoints: {summary.get('checkpoints')} ({summary.get('new_checkpoints')} new{failed}); "
            f"evaluations: {ev.get('computed')} computed, {ev.get('cached')} cached, "
            f"{ev.get('failed')} failed"
        )
        typer.echo(f"fit: {summary.get('fit')}")
        if summary.get("report"):
            typer.echo(f"report: {summary['report']['url']}")
            typer.echo(summary["report"]["headline"])
    for problem in summary.get("problems", []):  # every problem of the run, one line each
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
    device: DeviceOpt = "auto",
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickle weights (unsafe)")
    ] = False,
    calibration: CalibrationOpt = "text:128",
    as_json: JsonOpt = False,
) -> None:
    """Evaluate one checkpoint on one dataset at one or more quant specs (loaded once)."""
    _log_to_stderr()  # the data's cleaning summary is logged as it is read
    from kbitlaw.checkpoints import CheckpointError
    from kbitlaw.data.specs import read_dataset_file
    from kbitlaw.eval.calibration import calibration_ref
    from kbitlaw.eval.encoding import EvaluationError
    from kbitlaw.quant.spec import resolve_grid

    try:  # bad specs, calibration or data: one line before torch and transformers are imported
        if any(q.method == "gptq" for q in resolve_grid(quant)):
            calibration_ref(calibration)
        df, kind = read_dataset_file(data, kind, limit)
    except (EvaluationError, ValueError) as exc:
        _fail(error_line(exc))
    device = checked_device(device)  # a GPU this machine lacks: one line, before the model loads
    _quiet_libraries()
    from kbitlaw.eval.run import evaluate_specs

    try:
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
        _fail(error_line(exc))
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
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check every ok entry of the fit against its gates: one line per entry that breaks "
            "one, exit 1 if any",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit the k-bit scaling laws to the stored results (or a results file)."""
    from kbitlaw.flows.cli.console import fit_command

    raise typer.Exit(fit_command(store, results, as_json, check=check))


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
    from kbitlaw.flows.cli.console import predict_command

    raise typer.Exit(predict_command(store, results, n_params, tokens, memory_gb, threshold, family, as_json))


@app.command()
def report(store: StoreOpt = None) -> None:
    """Write the HTML report for the newest fit (if missing) and print where it is."""
    _quiet_libraries()
    from kbitlaw.flows.cli.console import report_command

    raise typer.Exit(report_command(store))


@app.command("checkpoints")
def list_checkpoints(
    uri: Annotated[
        str | None, typer.Argument(help="Where to look (default: the checkpoints/ folder of the store)")
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the checkpoints found under a URI, with their fingerprints and any unreadable ones."""
    from kbitlaw.checkpoints import discover
    from kbitlaw.store import StoreError

    try:
        found, errors = discover(uri or default_checkpoints(store))
    except (StoreError, ValueError) as exc:
        _fail(error_line(exc))
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
