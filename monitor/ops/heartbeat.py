"""Dead-man's switch: an HTTP ping every N seconds while the monitor can see every account.

A monitor that dies quietly looks exactly like a calm market. The MQTT last will covers a
broken connection, but not a host that is gone together with its broker, nor a daemon that
runs but is blind. So the daemon also pings an outside service (healthchecks.io, Uptime
Kuma "push", Better Stack heartbeats, ...) that alerts a person when the pings *stop*.

A ping means "alive and every account has fresh data", never just "the process exists": a
blind monitor skips the ping, or calls `fail_url` when one is configured (healthchecks.io's
`/fail` endpoint, Uptime Kuma's `?status=down`) so the alert comes at once rather than after
the service's grace period. Ping URLs carry the check's token, so they are secrets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog

from monitor.config.monitoring import HeartbeatSettings
from monitor.sink import Sink

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HeartbeatSink"]

log = structlog.get_logger("monitor.heartbeat")


class HeartbeatSink(Sink):
    """A `Sink` whose only work is its task `heartbeat`; reports are not its business.

    Args:
        settings: the `[heartbeat]` section (with a `url`).
        blind: account -> reason for every account without fresh data (the metrics sink's
            `blind`, which tracks freshness whether or not its endpoint listens).
    """

    name = "heartbeat"

    def __init__(self, settings: HeartbeatSettings, blind: Callable[[], Mapping[str, str]]) -> None:
        self.settings = settings
        self.blind = blind
        self.sent = 0
        self.failed = 0

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Start the task `heartbeat`."""
        if self.settings.url is not None:
            tg.create_task(self.run(), name="heartbeat")

    async def run(self) -> None:
        """Ping forever: the first after one interval, so a start-up blip is not a beat."""
        import aiohttp  # noqa: PLC0415 - only when a heartbeat is configured

        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                await asyncio.sleep(self.settings.interval)
                await self.beat(http)

    async def beat(self, http: aiohttp.ClientSession) -> bool:
        """One ping (or a fail ping while blind); True when the service answered 2xx."""
        import aiohttp  # noqa: PLC0415

        blind = dict(self.blind())
        secret = self.settings.fail_url if blind else self.settings.url
        if secret is None:
            log.warning("heartbeat skipped: blind", accounts=sorted(blind))
            return False
        url = secret.get_secret_value()
        where = urlsplit(url).hostname or "?"  # never the path: it holds the check's token
        try:
            async with http.get(url) as resp:
                ok = 200 <= resp.status < 300
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, status = False, None
            log.warning("heartbeat failed", host=where, error=type(exc).__name__)
        if ok:
            self.sent += 1
        else:
            self.failed += 1
            if status is not None:
                log.warning("heartbeat refused", host=where, status=status)
        return ok
