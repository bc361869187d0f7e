"""Issue 13 §4: idle and slow connections cannot starve the command and metrics ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import statistics
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from monitor.ops import http_guard
from monitor.ops.logs import Throttle
from tests.mqtt_broker import Mosquitto, free_port
from tests.security.harness import Daemon

#: Idle sockets the probe of the issue held open.
IDLE = 500
#: /healthz must answer within this under the idle sockets (generous for a shared CI box;
#: the measured figure goes to bench/RESULTS.md).
HEALTHZ_LIMIT = 1.0


async def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connected sockets that never send a byte."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    await asyncio.sleep(0.2)
    return socks


def closed_by_peer(s: socket.socket) -> bool:
    """True when the server closed (or reset) this socket."""
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def healthz_latencies(url: str, n: int = 20) -> list[float]:
    """Seconds per GET /healthz, each on a fresh connection (what a probe does)."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            await resp.read()
            assert resp.status in (200, 503)
        out.append(time.perf_counter() - started)
    return out


@contextlib.asynccontextmanager
async def guarded(header_timeout: float, cap: int):  # type: ignore[no-untyped-def]
    """A guarded app with GET /ok on a free port."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    port = free_port()
    runner = await http_guard.serve(
        app, "127.0.0.1", port, header_timeout=header_timeout, max_connections=cap
    )
    try:
        yield port, runner
    finally:
        await runner.cleanup()


class TestGuard:
    """http_guard.serve: timeouts and the connection cap."""

    async def test_idle_and_slow_headers_time_out(self) -> None:
        """Test that a silent socket and one dribbling a request head are closed after the
        header timeout."""
        async with guarded(header_timeout=0.5, cap=8) as (port, _):
            silent, slow = await open_idle(port, 2)
            slow.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
            await asyncio.sleep(1.5)
            assert closed_by_peer(silent)
            assert closed_by_peer(slow)
            for s in (silent, slow):
                s.close()

    async def test_cap_evicts_idle_for_a_probe(self) -> None:
        """Test that past the cap the oldest idle connection makes room, so a request still
        gets through, and no more than the cap stay open."""
        async with guarded(header_timeout=30, cap=8) as (port, runner):
            socks = await open_idle(port, 40)
            server = runner.server
            assert server is not None
            for _ in range(200):  # evicted ones leave once their close has run
                if len(server.connections) <= 8:
                    break
                await asyncio.sleep(0.05)
            assert len(server.connections) <= 8
            [latency] = await healthz_latencies(f"http://127.0.0.1:{port}/ok", 1)
            assert latency < HEALTHZ_LIMIT
            for s in socks:
                s.close()

    def test_library_errors_are_throttled(self) -> None:
        """Test that a library's repeated error line is kept to a burst per minute, with a
        count of what was dropped, and the daemon's own lines are never dropped."""
        throttle = Throttle(burst=3, window=60.0)

        def record(name: str, at: float) -> logging.LogRecord:
            rec = logging.LogRecord(
                name, logging.ERROR, __file__, 1, "Error handling request", None, None
            )
            rec.created = at
            return rec

        kept = [throttle.filter(record("aiohttp.server", 1000.0 + i / 100)) for i in range(100)]
        assert sum(kept) == 3
        later = record("aiohttp.server", 1061.0)
        assert throttle.filter(later)
        assert "97 similar dropped" in str(later.msg)
        assert all(throttle.filter(record("monitor.daemon", 1000.0)) for _ in range(100))


class TestDaemon:
    """The real process with 256 descriptors and 500 idle sockets on each port."""

    @pytest.mark.timeout(120)
    async def test_healthz_answers_under_idle_sockets(
        self, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """Test that with 500 idle sockets on the metrics port and 500 on the command port,
        /healthz answers each probe in time, and the daemon does not flood its log."""
        daemon = Daemon(mosquitto, tmp_path)
        await daemon.start(max_fds=256)  # the probe ran the daemon with 256
        try:
            socks = await open_idle(daemon.metrics_port, IDLE)
            socks += await open_idle(daemon.command_port, IDLE)
            latencies = await healthz_latencies(f"{daemon.metrics_url}/healthz")
            median = statistics.median(latencies)
            print(
                f"/healthz with {IDLE} idle sockets per port, 256 fds: median "
                f"{median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
            )
            assert max(latencies) < HEALTHZ_LIMIT, latencies
            for s in socks:
                s.close()
        finally:
            output = await daemon.stop()
        lines = output.splitlines()
        assert len(lines) < 300, lines[-20:]
        assert "Too many open files" not in output


class TestUnits:
    """The systemd units give the process a descriptor budget above the ports' caps."""

    @pytest.mark.parametrize("unit", ["margin-monitor.service", "margin-monitor@.service"])
    def test_limit_nofile(self, unit: str) -> None:
        """Test that LimitNOFILE= is set and leaves room above both ports' caps."""
        text = (Path(__file__).parent.parent.parent / "systemd" / unit).read_text()
        [line] = [ln for ln in text.splitlines() if ln.startswith("LimitNOFILE=")]
        assert int(line.split("=", 1)[1]) >= 4 * http_guard.MAX_CONNECTIONS


class TestBodyTimeout:
    """A command body that trickles in is cut off."""

    async def test_slow_body_gets_408(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that a POST /command whose body does not arrive in time is answered 408 and
        the handler never sees it."""
        from monitor.alerts.command_http import serve_commands

        monkeypatch.setattr(http_guard, "BODY_TIMEOUT", 0.3)
        seen: list[bytes] = []
        port = free_port()
        runner = await serve_commands(
            lambda raw, source: seen.append(raw) or {"ok": True}, f"127.0.0.1:{port}"
        )
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b'POST /command HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"a"')
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
        finally:
            await runner.cleanup()
        assert status.split()[1] == b"408"
        assert seen == []
