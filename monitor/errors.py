"""Errors a person reads: one sentence that names the field and the fix.

And the one way to turn a foreign error into a line: `one_line` (an exception, for logs, alerts
and error lines), `fold` (any text), `os_reason` (why a file or socket failed).
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["UserError", "fold", "one_line", "os_reason"]


class UserError(Exception):
    """Bad input from a person (file, config, CLI argument); the CLI prints it on one line."""


def fold(text: str) -> str:
    """`text` on one line: every run of whitespace, newlines included, as one space."""
    return " ".join(text.split())


def one_line(
    exc: BaseException, limit: int = 300, scrub: Callable[[str], str] | None = None
) -> str:
    """An exception as one log line: its class and its text, folded and capped at `limit`.

    `scrub` cleans the text first where it quotes foreign words (a venue's answer may repeat
    a secret or a signed query string: sources/exchange.py)."""
    text = fold(scrub(str(exc)) if scrub is not None else str(exc))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def os_reason(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file or socket failed, lowercase: `permission denied`, `not UTF-8`.

    From the errno, not the text: asyncio's bind error reads "error while attempting to bind
    on address ..." where the person needs `address already in use`."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return (exc.strerror or type(exc).__name__).lower()
