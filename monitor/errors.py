"""Errors a person reads: one sentence that names the field and the fix."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input from a person (file, config, CLI argument); the CLI prints it on one line."""
