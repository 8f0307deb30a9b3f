"""What the `kbitlaw` commands share: the Typer apps, the option types, the one-line failure and
the library log settings (and output_to_log: a command's library output to a log file)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TextIO

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
        help="GPTQ specs' calibration data, NAME[:N][:MODE]: N sequences (default 128) of "
        "min(window, 256) tokens from the dataset spec NAME (builtin datasets: their training side, "
        "never the evaluation rows); MODE sequential (default) or parallel (every Hessian from the "
        "unquantized model, one pass shared by all GPTQ specs of a checkpoint: faster, a known variant)",
    ),
]

DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where models run: auto (CUDA when available, else CPU; $KBITLAW_DEVICE when set), "
        "cpu, cuda or cuda:N",
    ),
]


def _log_to_stderr() -> None:
    """Our own loggers at INFO on stderr; libraries (httpx logs every API request at INFO) at WARNING."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("kbitlaw").setLevel(logging.INFO)


def _quiet_libraries() -> None:
    """Library progress bars and notices go nowhere: stdout is for results, stderr for our logs."""
    _log_to_stderr()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def output_to_log(path: Path) -> Iterator[TextIO]:
    """While the block runs, all this process and the processes it starts write to stdout and
    stderr is appended to the file `path`: library notices printed or logged at import (torchao,
    torch, triton), Prefect's console lines, Great Expectations' messages, warnings, our own log
    lines. Python log records and warnings get their time, level and logger there. Yields a stream
    on the terminal's stderr, for the one progress display; the command prints its answer after
    the block, when stdout and stderr are the terminal's again (also on an exception, so its
    traceback or one-line error shows).

    Prefect's API handlers are left alone: the flow runs' logs still reach the API and its UI."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(
        os.dup(saved[2]), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8"
    )
    root = logging.getLogger()
    consoles = [  # the handlers that print (basicConfig's, Prefect's console handler): not files
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    ]
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for h in consoles:
        root.removeHandler(h)
    root.addHandler(handler)
    logging.captureWarnings(True)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    # sys.stdout and sys.stderr too, where they are not the file descriptors (an embedding, pytest)
    streams = sys.stdout, sys.stderr
    log_stream = open(  # noqa: SIM115  (closed in the finally below)
        log_fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
    )
    sys.stdout = sys.stderr = log_stream
    try:
        yield terminal
    finally:
        for stream in (log_stream, *streams, terminal):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = streams
        log_stream.close()
        os.dup2(saved[1], 1)
        os.dup2(saved[2], 2)
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for h in consoles:
            root.addHandler(h)
        handler.close()
        terminal.close()
        for fd in (log_fd, *saved.values()):
            os.close(fd)


def error_line(exc: BaseException) -> str:
    """An exception as the one error line: ours as written (they name the file, row or field); one
    raised inside another library (a ValueError from transformers) with its type, which its
    message often needs to be understood."""
    import traceback

    import kbitlaw
    import kbitlaw.flows

    frames = traceback.extract_tb(exc.__traceback__)
    ours = tuple(str(Path(p)) for p in (*kbitlaw.__path__, *kbitlaw.flows.__path__))
    if not frames or str(Path(frames[-1].filename)).startswith(ours):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"kbitlaw: error: {' '.join(message.split())}", err=True)  # always one line
    raise typer.Exit(code)


def checked_device(device: str, *, here: bool = True) -> str:
    """--device resolved on this machine (`here`: the models run in this process), else only its
    name checked; a device that cannot be used is the one error line, exit 2 (a usage error, as
    click's own), before any model loads."""
    from kbitlaw.checkpoint_loading import parse_device, resolve_device

    try:
        return resolve_device(device, label="--device") if here else parse_device(device, label="--device")
    except ValueError as exc:
        _fail(error_line(exc), 2)
    raise AssertionError("unreachable")  # _fail always raises


def default_checkpoints(store: str | None) -> str:
    if os.environ.get("KBITLAW_CHECKPOINTS"):
        return os.environ["KBITLAW_CHECKPOINTS"]
    from kbitlaw.store import Store

    return Store(store).url("checkpoints")
