"""The daemon's HTTP ports (commands, metrics) against idle and slow clients.

Neither port used to time out (docs/hardening.md): 300 slow sockets stayed open, and with a
256-fd limit the daemon ran out of descriptors, logged ~82 000 error lines in 25 s and
`/metrics` and `/healthz` stopped answering. Every HTTP server of the daemon is started by
`serve` here, which adds:

- a header/idle timeout: aiohttp 3.14 arms its keep-alive timer in `connection_made`, so
  `keepalive_timeout` also closes a connection that has not completed a request's headers
  in time (a slowloris, an idle socket), and one idle between requests;
- a body timeout, for handlers that read a body (`read_body`);
- a connection cap per port, kept far below the process's descriptor limit: at the cap a
  new connection first evicts the oldest idle one (no request in progress), so a probe
  still gets through 500 idle sockets; only when none is idle is the newcomer closed (a
  burst of accepts can pass the cap by at most `BACKLOG` for two loop turns);
- error logging that cannot flood: aiohttp's and asyncio's per-connection errors are
  throttled (logs.py `Throttle`).

A new route goes on the `web.Application` as usual (`app.router.add_get(...)`); the
application is then started with `serve(app, host, port)`, never with a bare
`web.AppRunner`/`web.TCPSite`, so it gets all of the above.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

__all__ = [
    "BACKLOG",
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "MAX_CONNECTIONS",
    "read_body",
    "serve",
]

#: Seconds a connection may take to send a complete request head, or stay idle between
#: requests (Prometheus scrapes every 15 s by default and reconnects when closed).
HEADER_TIMEOUT = 10.0
#: Seconds a request body may take to arrive.
BODY_TIMEOUT = 10.0
#: Open connections per port; two ports stay well under a 1 024-descriptor limit
#: (systemd units: LimitNOFILE=1024) and under a 256 one.
MAX_CONNECTIONS = 48
#: Listen backlog, which is also how many connections asyncio accepts in one go before
#: the closes of evicted ones run: it bounds the descriptors in flight over the cap.
BACKLOG = 16


async def read_body(request: web.Request) -> bytes:
    """The request body, or HTTP 408 when it does not arrive within `BODY_TIMEOUT` s."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="request body too slow\n") from None


class _Refused(asyncio.Protocol):
    """The connection over the cap when nothing idle could make room: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _idle(handler: Any) -> bool:
    """A connection waiting for its next request (aiohttp's RequestHandler `_waiter`)."""
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()


class _CappedFactory:
    """Wraps aiohttp's `web.Server` (the protocol factory) to enforce the cap.

    asyncio accepts a burst of connections (up to the backlog) and calls the factory for
    each before any of them registers with the server, so the count is checked twice: in
    the factory (room, or evict the oldest idle, or refuse) and again once the burst has
    registered (`_enforce`, two loop turns later: after `connection_made`).
    """

    def __init__(self, server: web.Server, cap: int) -> None:
        self._server = server
        self._cap = cap

    def _live(self) -> list[Any]:
        # a force-closed handler stays listed until its task ends; its transport is gone
        return [h for h in self._server.connections if h.transport is not None]

    def _evict(self, count: int) -> int:
        """Close up to `count` idle connections, oldest first; how many were closed."""
        idle = [h for h in self._live() if _idle(h)][:count]
        for handler in idle:
            handler.force_close()
        return len(idle)

    def _enforce(self) -> None:
        excess = len(self._live()) - self._cap
        if excess > 0:
            self._evict(excess)

    def __call__(self) -> asyncio.Protocol:
        if len(self._live()) >= self._cap and not self._evict(1):
            return _Refused()
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._enforce)
        protocol: asyncio.Protocol = self._server()
        return protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> web.AppRunner:
    """Start `app` on host:port with the guards above; `cleanup()` the runner to stop.

    Raises OSError when the address cannot be bound (the caller words it for the user).
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=header_timeout,
        # after an answer to an unread body aiohttp drains it for up to this long (default
        # 10 s): a trickling client would keep its connection that long past the timeout
        lingering_time=1.0,
        max_line_size=8190,
        max_field_size=8190,
    )
    await runner.setup()
    server = runner.server
    assert server is not None
    # aiohttp has no connection limit: the runner's protocol factory is wrapped instead
    runner._server = _CappedFactory(server, max_connections)  # type: ignore[assignment]
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
