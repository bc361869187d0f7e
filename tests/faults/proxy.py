"""A small asyncio TCP fault proxy for loopback tests (issue 7, "fault matrix").

It sits between a client (the daemon, ccxt, aiomqtt) and a local server (a fake venue, mosquitto)
and misbehaves on demand, switchable while connections are open:

- ``pass``: bytes flow both ways unchanged.
- ``latency``: every chunk is held ``latency`` seconds before it is written (per chunk, not
  cumulative: a queue per direction keeps the order and the throughput).
- ``blackhole``: a dead route. New connections are accepted but never reach the server; every
  byte in either direction on any connection is discarded; nothing is ever closed.
- ``half_open``: the dead websocket that never errors. Client -> server still flows (the client's
  writes succeed, pings "go out"), server -> client is silently discarded, no FIN, no RST. New
  connections are made normally and behave the same way.
- ``reset``: every open connection is aborted with a TCP RST (SO_LINGER 0) and new ones are reset
  as soon as they are accepted.

Why a proxy rather than mocks: the client under test must see real socket behaviour (a read that
never returns, ECONNRESET, a slow peer) through its own code paths (aiohttp, asyncio, paho).
Everything stays on 127.0.0.1; ``close()`` ends every task and socket, so a test stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MODES", "FaultProxy", "Mode", "ProxyStats"]

Mode = Literal["pass", "latency", "blackhole", "half_open", "reset"]
MODES: tuple[Mode, ...] = ("pass", "latency", "blackhole", "half_open", "reset")
_CHUNK = 65536


@dataclass
class ProxyStats:
    """What the proxy did, for the fault matrix table and for assertions."""

    accepted: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0
    modes: list[tuple[float, Mode]] = field(default_factory=list)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Abort with RST rather than FIN: SO_LINGER on with a zero timeout (man 7 socket)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and (unless blackholed at accept) its server connection."""

    def __init__(
        self, proxy: FaultProxy, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_r = client_r
        self.client_w = client_w
        self.server_r: asyncio.StreamReader | None = None
        self.server_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Reset both sides and stop the pumps."""
        _rst(self.client_w)
        if self.server_w is not None:
            _rst(self.server_w)
        for task in self.tasks:
            task.cancel()

    async def run(self) -> None:
        """Connect upstream (unless blackholed) and pump both directions until either ends."""
        proxy = self.proxy
        if proxy.mode == "blackhole":
            # A dead route: swallow whatever the client sends, never answer, never connect.
            # If the mode changes later the connection stays dead, as a real one would be.
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while await self.client_r.read(_CHUNK):
                    proxy.stats.dropped_up += 1
            self.client_w.close()
            return
        try:
            self.server_r, self.server_w = await asyncio.open_connection(
                proxy.upstream_host, proxy.upstream_port
            )
        except OSError:
            _rst(self.client_w)
            return
        up = asyncio.create_task(self._pump(self.client_r, self.server_w, up=True))
        down = asyncio.create_task(self._pump(self.server_r, self.client_w, up=False))
        self.tasks = [up, down]
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for w in (self.client_w, self.server_w):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        """Copy one direction; the mode is read per chunk so a switch applies at once."""
        proxy = self.proxy
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    # Half-open and blackhole never tell the client: no FIN is passed down.
                    if proxy.mode == "blackhole" or (proxy.mode == "half_open" and not up):
                        await asyncio.Event().wait()
                    await queue.put(None)
                    await sender
                    return
                mode = proxy.mode
                if mode == "blackhole" or (mode == "half_open" and not up):
                    if up:
                        proxy.stats.dropped_up += len(data)
                    else:
                        proxy.stats.dropped_down += len(data)
                    continue
                due = time.monotonic() + (proxy.latency if mode == "latency" else 0.0)
                await queue.put((due, data))
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                return
            if writer is self.server_w:
                self.proxy.stats.bytes_up += len(data)
            else:
                self.proxy.stats.bytes_down += len(data)
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


class FaultProxy:
    """Listen on 127.0.0.1:<free port> and forward to ``upstream_host:upstream_port``.

    Use as ``async with FaultProxy(host, port) as proxy:`` then point the client at
    ``proxy.port`` and call ``proxy.set_mode(...)`` at any time.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, listen_port: int = 0, latency: float = 0.2
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"
        self.port = listen_port
        self.latency = latency
        self.mode: Mode = "pass"
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        """Bind the listening socket (a free port unless one was given)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.stats.modes.append((time.monotonic(), self.mode))
        return self

    def set_mode(self, mode: Mode, *, latency: float | None = None) -> None:
        """Switch behaviour now; ``reset`` also aborts every open connection at once."""
        if mode not in MODES:
            msg = f"unknown proxy mode {mode!r}; use one of {', '.join(MODES)}"
            raise ValueError(msg)
        if latency is not None:
            self.latency = latency
        self.mode = mode
        self.stats.modes.append((time.monotonic(), mode))
        if mode == "reset":
            for link in list(self._links):
                self.stats.resets += 1
                link.abort()

    @property
    def open_connections(self) -> int:
        """Client connections currently held by the proxy."""
        return len(self._links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.mode == "reset":
            self.stats.resets += 1
            _rst(writer)
            return
        link = _Link(self, reader, writer)
        self._links.add(link)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await link.run()
        except asyncio.CancelledError:
            link.abort()
        finally:
            self._links.discard(link)
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and end every connection and task (bounded teardown)."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
