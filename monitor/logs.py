"""structlog, configured once: readable on a terminal, JSON lines everywhere else.

Under systemd or in a container, one JSON object per line on stdout is what journald and
log shippers index (structlog's best-practice doc: log to stdout, let the supervisor
handle it). Tracebacks never include frame locals: `dict_tracebacks` and the rich console
renderer both dump locals by default, which would print API keys held in local variables
(notes/ecosystem.md §5, verified).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

__all__ = ["Format", "configure"]

Format = Literal["auto", "json", "console"]


def configure(
    level: str = "info", fmt: Format = "auto", stream: TextIO | None = None
) -> Literal["json", "console"]:
    """Configure structlog for the process; returns the format chosen.

    `auto` picks the console renderer when `stream` is a terminal, JSON otherwise.
    Safe to call again (tests, a config reload): the last call wins.
    """
    out: TextIO = stream if stream is not None else _CurrentStdout()  # type: ignore[assignment]
    chosen: Literal["json", "console"]
    if fmt == "auto":
        chosen = "console" if out.isatty() else "json"
    else:
        chosen = fmt
    renderer: structlog.typing.Processor
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
        tracebacks: list[structlog.typing.Processor] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
        tracebacks = []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return chosen


class _CurrentStdout:
    """Whatever `sys.stdout` is at write time, so rich's live view can capture log lines."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()
