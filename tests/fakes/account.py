"""A stand-in for one account's settings, shaped like monitor.config.settings.AccountSettings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from monitor.core.model import Event


@dataclass(frozen=True)
class FakeAccount:
    """The fields ExchangeSource reads (name, exchange, keys, sandbox, timings, ccxt)."""

    name: str
    exchange: str
    api_key: SecretStr | None = None
    secret: SecretStr | None = None
    password: SecretStr | None = None
    sandbox: bool = False
    poll_interval: float = 0.2
    stale_after: float = 1.0
    ccxt: dict[str, Any] = field(default_factory=dict)


def account_for(fake: Any, key: str, secret: str, **overrides: Any) -> FakeAccount:
    """Settings of an account pointed at a running fake venue."""
    config = fake.ccxt_config()
    config.setdefault("timeout", 2000)
    return FakeAccount(
        name=overrides.pop("name", f"{fake.venue}-test"),
        exchange=fake.venue,
        api_key=SecretStr(key),
        secret=SecretStr(secret),
        ccxt=config,
        **overrides,
    )


class EventTap:
    """Collects a source's events in the background so tests can wait for one."""

    def __init__(self, events: AsyncIterator[Event]) -> None:
        self.seen: list[Event] = []
        self._events = events
        self._new = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        async for event in self._events:
            self.seen.append(event)
            self._new.set()

    async def wait_for(
        self, match: Callable[[Event], bool], within: float = 5.0, after: int = 0
    ) -> Event:
        """The first event (from index `after`) that matches, waiting up to `within` s."""
        async with asyncio.timeout(within):
            while True:
                for event in self.seen[after:]:
                    if match(event):
                        return event
                self._new.clear()
                await self._new.wait()

    @property
    def done(self) -> bool:
        return self._task.done()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
