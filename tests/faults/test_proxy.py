"""Tests for the TCP fault proxy, each mode with real loopback sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.faults.proxy import FaultProxy, Mode

pytestmark = pytest.mark.timeout(20)


class EchoServer:
    """A 127.0.0.1 server that records what it receives and echoes it back."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await r.read(4096):
                self.received += data
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port, latency=0.3) as p:
        yield p


async def _eventually(check: Callable[[], bool], seconds: float = 2.0) -> None:
    """Poll `check` until it holds; fail after `seconds` (bounded)."""
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not reached in time")


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(proxy: FaultProxy, payload: bytes) -> bytes:
    r, w = await _connect(proxy)
    try:
        w.write(payload)
        await w.drain()
        return await asyncio.wait_for(r.readexactly(len(payload)), 2)
    finally:
        w.close()


class TestPass:
    async def test_bytes_flow_both_ways(self, proxy: FaultProxy, echo: EchoServer) -> None:
        """Test that pass mode forwards a payload to the server and its reply to the client."""
        payload = bytes(range(256)) * 1000
        assert await _roundtrip(proxy, payload) == payload
        assert bytes(echo.received) == payload
        assert proxy.stats.bytes_up == len(payload)

    async def test_client_close_reaches_server(self, proxy: FaultProxy, echo: EchoServer) -> None:
        """Test that a client FIN is passed on so the server's connection ends."""
        r, w = await _connect(proxy)
        w.write(b"x")
        await w.drain()
        await asyncio.wait_for(r.readexactly(1), 2)
        w.close()
        await _eventually(lambda: proxy.open_connections == 0)


class TestLatency:
    async def test_reply_is_held_back(self, proxy: FaultProxy) -> None:
        """Test that latency mode delays each direction by the configured time."""
        proxy.set_mode("latency", latency=0.2)
        start = time.monotonic()
        assert await _roundtrip(proxy, b"slow") == b"slow"
        assert time.monotonic() - start >= 0.4 * 0.95  # up and down, each held 0.2 s

    async def test_order_is_kept(self, proxy: FaultProxy) -> None:
        """Test that delayed chunks arrive in the order they were sent."""
        proxy.set_mode("latency", latency=0.05)
        r, w = await _connect(proxy)
        expected = b""
        for i in range(20):
            chunk = f"{i:03d};".encode()
            expected += chunk
            w.write(chunk)
            await w.drain()
        got = await asyncio.wait_for(r.readexactly(len(expected)), 3)
        w.close()
        assert got == expected


class TestBlackhole:
    async def test_new_connection_never_reaches_server(
        self, proxy: FaultProxy, echo: EchoServer
    ) -> None:
        """Test that blackhole accepts the client but nothing reaches the server or comes back."""
        proxy.set_mode("blackhole")
        r, w = await _connect(proxy)
        w.write(b"hello")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), 0.3)
        assert echo.connections == 0
        assert not r.at_eof()
        w.close()

    async def test_open_connection_goes_silent(self, proxy: FaultProxy, echo: EchoServer) -> None:
        """Test that an established connection stops carrying bytes in both directions."""
        r, w = await _connect(proxy)
        w.write(b"a")
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(1), 2) == b"a"
        proxy.set_mode("blackhole")
        w.write(b"b")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), 0.3)
        await asyncio.sleep(0.05)
        assert bytes(echo.received) == b"a"
        w.close()


class TestHalfOpen:
    async def test_writes_go_out_but_nothing_comes_back(
        self, proxy: FaultProxy, echo: EchoServer
    ) -> None:
        """Test that half-open forwards the client's bytes and silently drops every reply."""
        r, w = await _connect(proxy)
        proxy.set_mode("half_open")
        w.write(b"ping")
        await w.drain()
        await _eventually(lambda: bytes(echo.received) == b"ping")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), 0.3)
        assert not r.at_eof()
        assert proxy.stats.dropped_down == 4
        w.close()

    async def test_server_close_is_hidden(self, echo: EchoServer) -> None:
        """Test that a server FIN is not passed down: the client never sees an error or EOF."""
        closed = asyncio.Event()

        async def close_at_once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()
            closed.set()

        server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        async with FaultProxy("127.0.0.1", port) as p:
            p.set_mode("half_open")
            r, w = await _connect(p)
            await asyncio.wait_for(closed.wait(), 2)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.read(1), 0.3)
            assert not r.at_eof()
            w.close()
        server.close()


class TestReset:
    async def test_open_connection_is_reset(self, proxy: FaultProxy) -> None:
        """Test that switching to reset aborts an open connection with ECONNRESET."""
        r, w = await _connect(proxy)
        w.write(b"a")
        await w.drain()
        await asyncio.wait_for(r.readexactly(1), 2)
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(1), 2)
        assert proxy.stats.resets == 1
        w.close()

    async def test_new_connection_is_reset(self, proxy: FaultProxy, echo: EchoServer) -> None:
        """Test that a connection made in reset mode is reset and never reaches the server."""
        proxy.set_mode("reset")
        r, w = await _connect(proxy)
        w.write(b"a")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(1), 2)
        assert echo.connections == 0
        w.close()


class TestSwitching:
    async def test_back_to_pass_serves_new_connections(self, proxy: FaultProxy) -> None:
        """Test that after a fault, pass mode serves a new connection normally."""
        modes: tuple[Mode, ...] = ("reset", "blackhole", "half_open", "latency")
        for mode in modes:
            proxy.set_mode(mode)
        proxy.set_mode("pass")
        assert await _roundtrip(proxy, b"again") == b"again"
        assert [m for _, m in proxy.stats.modes][-1] == "pass"

    async def test_unknown_mode_is_refused(self, proxy: FaultProxy) -> None:
        """Test that an unknown mode is a ValueError naming the valid ones."""
        with pytest.raises(ValueError, match="blackhole"):
            proxy.set_mode("drop")  # type: ignore[arg-type]

    async def test_close_ends_every_connection(self, echo: EchoServer) -> None:
        """Test that close() ends held connections and leaves no proxy task behind."""
        p = await FaultProxy("127.0.0.1", echo.port).start()
        conns = [await _connect(p) for _ in range(3)]
        p.set_mode("blackhole")
        conns.append(await _connect(p))
        await _eventually(lambda: p.open_connections == 4)
        await p.close()
        assert p.open_connections == 0
        for _, w in conns:
            w.close()
