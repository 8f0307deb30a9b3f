"""Each part of the report is rendered in isolation: a part that raises is replaced by one line
naming it and the error (`<part>: <ExceptionType>: <message>`), the rest of the page is still
written, and the lines are returned (build_report's `section_errors`) so that the caller can end
its run Failed with them. Nothing is hidden: the line is on the page, in the summary and logged
with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kbitlaw.report.figures import Figure

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_MESSAGE = 300  # characters of the exception's message kept in the line


def error_line(part: str, exc: BaseException) -> str:
    """'<part>: <ExceptionType>: <first line of the message>' (one line, bounded)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return f"{part}: {type(exc).__name__}" + (f": {message}" if message else "")


@dataclass
class Guard:
    """Runs the report's parts, collecting the error line of each that raised."""

    errors: list[str] = field(default_factory=list)

    def call(self, part: str, fallback: Callable[[str], T], fn: Callable[..., T], *args: Any) -> T:
        """fn(*args), or fallback(error line) when it raises (an Exception: an interrupt or a
        SystemExit still stops the run)."""
        try:
            return fn(*args)
        except Exception as exc:
            line = error_line(part, exc)
            self.errors.append(line)
            log.error("report part failed: %s", line, exc_info=True)
            return fallback(line)

    def html(self, part: str, fn: Callable[..., str], *args: Any) -> str:
        """An HTML piece, or the error line in its place."""
        from kbitlaw.report.html import error_html

        return self.call(part, error_html, fn, *args)

    def figure(self, fig_id: str, title: str, fn: Callable[..., Figure], *args: Any) -> Figure:
        """A figure, or a figure without an image whose note is the error line."""
        return self.call(
            f"figure {fig_id}", lambda line: Figure(fig_id, title, "", note=line, error=True), fn, *args
        )
