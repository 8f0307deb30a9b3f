"""How a run says what went wrong: retry only what may pass, one line per expected failure, and a
Failed run without an engine traceback.

- `retry_transient` is the `retry_condition_fn` of every task with `retries=`: a store or network
  hiccup (a connection reset, a timeout, S3's SlowDown) may pass on a second try; a TypeError, a
  ValueError or a missing file fails the same way again, so retrying it only doubles the traceback.
- `failed_run(summary)` ends a flow run Failed with one line naming the run's problems, and keeps
  the run's summary readable from the API (`run_summary`).
- Prefect's engine logs every Failed flow run of a deployment as "Engine execution exited with
  unexpected exception" plus a traceback through its own frames. For a run that failed *as
  planned* that traceback says nothing the "Finished in state Failed(...)" line does not, so
  `quiet_planned_failures()` drops exactly those records (the exception carries our summary);
  a real crash keeps its traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.exceptions import FailedRun
from prefect.states import Failed, State

from kbitlaw.store import StoreError

# Exception classes (by name, so no client library has to be imported) that mean the network or a
# server failed, not the request: botocore, aiohttp, httpx, urllib3 and the builtins' own.
TRANSIENT_NAMES = frozenset(
    {
        "ConnectionError",
        "TimeoutError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectionError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "TransportError",
        "ProtocolError",
        "IncompleteReadError",
    }
)
# S3 answers that say "try again" (its documented retryable error codes), as StoreError quotes them.
TRANSIENT_CODES = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttl", "503")
# OSErrors about the path itself, not the connection: they fail the same way on every try.
DETERMINISTIC_OS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
SUMMARY_ATTR = "kbitlaw_summary"  # the summary a planned failure carries (see failed_run)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and its causes (`raise ... from`, or raised while handling), oldest last."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def transient(exc: BaseException | None) -> bool:
    """Whether `exc` may pass on a retry: a network or server failure anywhere in its chain (a
    StoreError wraps the store's own error as its cause). Everything else is deterministic."""
    for e in _chain(exc):
        if isinstance(e, DETERMINISTIC_OS):
            return False
        if isinstance(e, OSError):  # ConnectionError, TimeoutError, socket errors
            return True
        if any(cls.__name__ in TRANSIENT_NAMES for cls in type(e).__mro__):
            return True
        if isinstance(e, StoreError) and any(code in str(e) for code in TRANSIENT_CODES):
            return True
    return False


def retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Prefect's retry_condition_fn(task, task_run, state): retry a failed task run only when the
    exception it raised is transient. A Failed state a task returned itself is final."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return transient(exc)


def one_line(exc: BaseException | str) -> str:
    """An error as one line: a message that spans lines (a traceback, a stderr dump) is joined."""
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    return " ".join(text.split())


def failed_run(summary: dict[str, Any], problems: list[str]) -> State:
    """The Failed state a flow returns when its run had problems: one line (the count and the
    first few), and `summary` kept in its data so `run_summary` reads it back. The data is
    Prefect's own FailedRun (what the engine would raise anyway), so no traceback ever names a
    class of ours; quiet_planned_failures() recognises it by the summary it carries."""
    message = f"{len(problems)} problem(s): " + "; ".join(one_line(p) for p in problems[:5])
    if len(problems) > 5:
        message += f"; and {len(problems) - 5} more"
    exc = FailedRun(message)
    setattr(exc, SUMMARY_ATTR, summary)  # pickled with the exception (BaseException keeps __dict__)
    return Failed(message=message, data=exc)


def run_summary(state: State) -> dict[str, Any]:
    """The summary document of a nightly or evaluate-checkpoint run, whether it ended Completed or
    Failed with problems; {"error", "failures", "problems"} for any other failure."""
    try:
        data = state.result(raise_on_failure=False)
    except Exception as exc:  # a result that cannot be read back (storage gone): still a summary
        data = exc
    if isinstance(data, dict):
        return data
    summary = getattr(data, SUMMARY_ATTR, None)
    if isinstance(summary, dict):
        return summary
    message = one_line(str(state.message or data))
    return {"error": message, "failures": [message], "problems": [message]}


class PlannedFailureFilter(logging.Filter):
    """Drops the engine's traceback record for a flow run that ended Failed as planned."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return getattr(exc, SUMMARY_ATTR, None) is None


_FILTER = PlannedFailureFilter()


def quiet_planned_failures() -> None:
    """Install the filter on the loggers the engine reports through: the flow run's logger (whose
    records reach the UI) and the engine's (the run process's output). Idempotent."""
    for name in ("prefect.flow_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
