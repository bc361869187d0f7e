"""A loopback fake exchange: an aiohttp server with a route table and scenario controls.

Each venue module subclasses `FakeVenue`, declares its REST routes (`rest_routes`) and its
websocket paths (`ws_paths`), and keeps the account state from which every payload is
computed, so figures the fake reports about itself (Binance `totalMaintMargin`, Bybit
`accountMMRate`) follow the venue's documented formula over its own state.

Scenario controls, shared by every venue (engineers D/E/F add order routes with
`add_route`):
- `fail(path, status, body, times)`: the next `times` requests to `path` get that response
  (429, 5xx, an auth error body, garbage or a truncated JSON document);
- `stall(path, seconds, times)`: hold the next requests long enough for a client timeout;
- `late(path, seconds, times)`: answer as of arrival, delivered late (a read in flight);
- `after(path, action)`: change the venue right after the next answer on `path`;
- `push(frame, path=...)`: send a websocket frame to every client on a path;
- `drop_websockets()`: close every websocket (the client sees a dropped connection);
- `silent = True`: stop pushing websocket frames without closing anything (a dead stream).
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """A canned response that replaces the next `times` answers on one path."""

    status: int
    body: str
    times: int
    delay: float = 0.0
    content_type: str = "application/json"
    late: bool = False  # answer computed on arrival, delivered `delay` seconds later


@dataclass
class Client:
    """One connected websocket and what it subscribed to."""

    path: str
    socket: web.WebSocketResponse
    query: dict[str, str]
    topics: set[str] = field(default_factory=set)


class FakeVenue:
    """Base of every fake venue: start/stop, routing, fault injection, websocket fan-out."""

    #: ccxt id of the venue this fake speaks for.
    venue = ""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.faults: dict[str, list[Fault]] = {}
        self.clients: list[Client] = []
        self.silent = False
        self.ws_messages: list[tuple[str, Any]] = []
        self._routes: dict[tuple[str, str], Handler] = {}
        self._after: dict[str, list[Callable[[], None]]] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        for (method, path), handler in self.rest_routes().items():
            self.add_route(method, path, handler)

    # --- what a venue module provides ------------------------------------------------------

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        """(METHOD, path) -> handler for the venue's REST endpoints."""
        return {}

    def ws_paths(self) -> list[str]:
        """Websocket paths (aiohttp patterns) the venue serves."""
        return []

    async def on_ws_message(self, client: Client, message: Any) -> None:
        """A frame the client sent (subscribe, login, ping); venues answer it here."""

    def ccxt_config(self) -> dict[str, Any]:
        """The `ccxt` table of an account pointed at this fake (urls, options)."""
        return {}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Register (or replace) a REST route; later engineers add order endpoints here."""
        self._routes[(method.upper(), path)] = handler

    async def start(self) -> FakeVenue:
        app = web.Application()
        for path in self.ws_paths():
            app.router.add_get(path, self._websocket)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for client in list(self.clients):
            await client.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeVenue:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- scenario controls -------------------------------------------------------------------

    def fail(
        self,
        path: str,
        status: int = 500,
        body: str | dict[str, Any] = "",
        times: int = 1,
        content_type: str = "application/json",
    ) -> None:
        """Answer the next `times` requests to `path` with this status and body."""
        text = body if isinstance(body, str) else json.dumps(body)
        self.faults.setdefault(path, []).append(Fault(status, text, times, 0.0, content_type))

    def stall(self, path: str, seconds: float, times: int = 1) -> None:
        """Hold the next `times` requests to `path` for `seconds` (a client timeout)."""
        self.faults.setdefault(path, []).append(Fault(200, "{}", times, seconds))

    def late(self, path: str, seconds: float, times: int = 1) -> None:
        """Answer the next `times` requests to `path` as the venue was when they arrived,
        but `seconds` later (a slow network): the answer is older than what streams
        meanwhile."""
        self.faults.setdefault(path, []).append(Fault(200, "", times, seconds, late=True))

    def after(self, path: str, action: Callable[[], None]) -> None:
        """Run `action` once, right after the next answer on `path` is computed and before
        any other request is served (a change landing between two requests of one read)."""
        self._after.setdefault(path, []).append(action)

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(self, path: str) -> int:
        """How many requests reached `path` so far."""
        return sum(1 for _, p, _ in self.requests if p == path)

    async def push(self, frame: Any, path: str | None = None, topic: str | None = None) -> int:
        """Send a frame to every websocket client (on `path`, subscribed to `topic`)."""
        if self.silent:
            return 0
        text = frame if isinstance(frame, str) else json.dumps(frame)
        sent = 0
        for client in list(self.clients):
            if path is not None and not client.path.startswith(path):
                continue
            if topic is not None and topic not in client.topics:
                continue
            if client.socket.closed:
                continue
            await client.socket.send_str(text)
            sent += 1
        return sent

    async def drop_websockets(self) -> None:
        """Close every websocket from the server side."""
        for client in list(self.clients):
            await client.socket.close(code=1011, message=b"fake venue drop")

    async def wait_for_client(
        self, path: str, topic: str | None = None, within: float = 5.0
    ) -> Client:
        """Wait until a client on `path` (subscribed to `topic`) is connected."""
        async with asyncio.timeout(within):
            while True:
                for client in self.clients:
                    if (
                        client.path.startswith(path)
                        and not client.socket.closed
                        and (topic is None or topic in client.topics)
                    ):
                        return client
                await asyncio.sleep(0.01)

    # --- plumbing ----------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append((request.method, path, dict(request.query)))
        queue = self.faults.get(path)
        if queue:
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            if fault.late:
                handler = self._routes.get((request.method, path))
                if handler is not None:
                    answer = await handler(request)
                    await asyncio.sleep(fault.delay)
                    return answer
            elif fault.delay:
                await asyncio.sleep(fault.delay)
            else:
                return web.Response(
                    status=fault.status, text=fault.body, content_type=fault.content_type
                )
        handler = self._routes.get((request.method, path))
        if handler is None:
            return web.json_response({"error": f"fake {self.venue}: no route {path}"}, status=404)
        answer = await handler(request)
        for action in self._after.pop(path, []):
            action()
        return answer

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        client = Client(request.path, socket, dict(request.query))
        self.clients.append(client)
        try:
            async for msg in socket:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    message = msg.data
                self.ws_messages.append((request.path, message))
                await self.on_ws_message(client, message)
        finally:
            self.clients.remove(client)
        return socket


def rewrite_urls(urls: Any, http: str, ws: str) -> Any:
    """Point every URL of a ccxt `urls['api']` tree at the fake, keeping the paths."""
    if isinstance(urls, dict):
        return {key: rewrite_urls(value, http, ws) for key, value in urls.items()}
    if isinstance(urls, str) and "://" in urls:
        scheme, rest = urls.split("://", 1)
        path = rest.split("/", 1)[1] if "/" in rest else ""
        base = ws if scheme in {"ws", "wss"} else http
        return f"{base}/{path}" if path else base
    return urls


def banded(amount: float, tiers: list[tuple[float | None, float]]) -> float:
    """Σ over tiers of (part of a positive `amount` in the tier) × rate, tiers in units of
    `amount` with None for no cap: the venues' marginal collateral tiers (Bybit collateral
    value ratios, OKX discount rates), computed here on the fake's side of the wire."""
    value, floor = 0.0, 0.0
    for cap, rate in tiers:
        top = amount if cap is None else min(amount, cap)
        if top > floor:
            value += (top - floor) * rate
        if cap is None or amount <= cap:
            break
        floor = cap
    return value


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON body exactly as the venue would send it."""
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")
