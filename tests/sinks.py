"""A sink base for tests and benchmarks that only look at some of the daemon's calls."""

from __future__ import annotations

import asyncio
from typing import Any

from monitor.model import AccountSnapshot, Event, MarginReport


class QuietSink:
    """Every `Sink` call (monitor/sinks/base.py) as a no-op; override what you watch."""

    name = "quiet"

    async def start(self, tg: asyncio.TaskGroup) -> None:
        return None

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        return None

    async def on_event(self, event: Event) -> None:
        return None

    async def on_level(self, *args: Any) -> None:
        return None

    async def close(self) -> None:
        return None
