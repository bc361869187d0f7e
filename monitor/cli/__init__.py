"""The `margin-monitor` commands (`app.main` is the entry point)."""

from monitor.cli.app import main

__all__ = ["main"]
