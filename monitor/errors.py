"""Errors a person reads: one sentence that names the field and the fix."""

from __future__ import annotations

__all__ = ["UserError", "one_line"]


class UserError(Exception):
    """Bad input from a person (file, config, CLI argument); the CLI prints it on one line."""


def one_line(exc: BaseException) -> str:
    """An exception as one log line: its class and its text with newlines folded, capped."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:300]
