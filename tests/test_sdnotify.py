"""Tests for monitor/ops/sdnotify.py: the datagram protocol and the progress-gated watchdog."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.ops.sdnotify import Notifier, ProgressProbe, watchdog_interval, watchdog_loop


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket at a path, as systemd would listen on."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield str(path), sock
    finally:
        sock.close()


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


class TestNotifier:
    def test_ready_with_status_is_one_datagram(
        self, notify_socket: tuple[str, socket.socket]
    ) -> None:
        """Test that READY=1 and STATUS= arrive together in one datagram."""
        path, sock = notify_socket
        notifier = Notifier(path)
        assert notifier.ready("watching 2 accounts")
        assert sock.recv(4096).decode() == "READY=1\nSTATUS=watching 2 accounts"

    def test_abstract_socket(self) -> None:
        """Test that an `@name` address reaches the abstract-namespace socket."""
        name = f"margin-monitor-test-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(2.0)
            assert Notifier("@" + name).watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"

    def test_reads_notify_socket_from_environment(
        self, notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the default address is $NOTIFY_SOCKET, read when the notifier is built."""
        path, sock = notify_socket
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert Notifier().stopping()
        assert sock.recv(4096) == b"STOPPING=1"

    def test_no_socket_is_a_no_op(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that without $NOTIFY_SOCKET nothing is sent and nothing fails."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        notifier = Notifier()
        assert not notifier.enabled
        assert not notifier.ready()
        assert notifier.sent == 0

    def test_vanished_socket_does_not_raise(self, tmp_path: Path) -> None:
        """Test that a supervisor that went away makes notify return False, not raise."""
        notifier = Notifier(str(tmp_path / "gone"))
        assert notifier.enabled
        assert not notifier.status("still here")

    def test_full_queue_does_not_block(self, notify_socket: tuple[str, socket.socket]) -> None:
        """Test that a supervisor that stopped reading makes sends fail fast, not hang."""
        path, _sock = notify_socket
        notifier = Notifier(path)
        results = [notifier.watchdog() for _ in range(200)]
        assert results[0]
        assert not all(results)

    def test_newlines_in_status_cannot_inject_fields(
        self, notify_socket: tuple[str, socket.socket]
    ) -> None:
        """Test that a status text with a newline cannot smuggle in a READY=1 line."""
        path, sock = notify_socket
        Notifier(path).status("bad\nREADY=1")
        assert sock.recv(4096).decode().splitlines() == ["STATUS=bad READY=1"]


class TestWatchdogInterval:
    def test_half_of_watchdog_usec(self) -> None:
        """Test that the ping interval is half of WatchdogSec."""
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
        assert watchdog_interval(env) == 15.0

    def test_other_pid_gets_no_watchdog(self) -> None:
        """Test that a child that inherited WATCHDOG_PID of its parent does not ping."""
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        assert watchdog_interval(env) is None

    @pytest.mark.parametrize("usec", ["", "0", "abc", "-5"])
    def test_unset_or_bad_usec(self, usec: str) -> None:
        """Test that a missing, zero or malformed WATCHDOG_USEC disables the watchdog."""
        assert watchdog_interval({"WATCHDOG_USEC": usec}) is None


class TestWatchdogLoop:
    async def test_pings_while_probes_pass(self, notify_socket: tuple[str, socket.socket]) -> None:
        """Test that the loop pings repeatedly while every probe reports progress."""
        path, sock = notify_socket
        task = asyncio.create_task(watchdog_loop(Notifier(path), 0.01, [lambda: None]))
        await asyncio.sleep(0.2)
        task.cancel()
        pings = _drain(sock)
        assert len(pings) >= 3
        assert set(pings) == {"WATCHDOG=1"}

    async def test_withholds_while_a_probe_fails_and_resumes(
        self, notify_socket: tuple[str, socket.socket]
    ) -> None:
        """Test that a wedged component stops the pings and recovery restarts them."""
        path, sock = notify_socket
        wedged = {"now": True}

        def recompute_alive() -> str | None:
            return "recompute[demo] idle" if wedged["now"] else None

        task = asyncio.create_task(watchdog_loop(Notifier(path), 0.01, [recompute_alive]))
        await asyncio.sleep(0.15)
        assert _drain(sock) == []
        wedged["now"] = False
        await asyncio.sleep(0.15)
        task.cancel()
        assert "WATCHDOG=1" in _drain(sock)

    async def test_raising_probe_counts_as_wedged(
        self, notify_socket: tuple[str, socket.socket]
    ) -> None:
        """Test that a probe that raises withholds the ping instead of killing the task."""
        path, sock = notify_socket

        def broken() -> str | None:
            raise RuntimeError("boom")

        task = asyncio.create_task(watchdog_loop(Notifier(path), 0.01, [broken]))
        await asyncio.sleep(0.1)
        assert not task.done()
        task.cancel()
        assert _drain(sock) == []

    async def test_blocked_event_loop_withholds_the_ping(
        self, notify_socket: tuple[str, socket.socket]
    ) -> None:
        """Test that a loop whose sleeps overshoot past the lag limit is not reported alive."""
        path, sock = notify_socket
        now = {"t": 0.0}

        def clock() -> float:
            now["t"] += 2.5  # every reading is 2.5 s later: each 0.01 s sleep "took" 2.5 s
            return now["t"]

        task = asyncio.create_task(watchdog_loop(Notifier(path), 0.01, lag_limit=1.0, clock=clock))
        await asyncio.sleep(0.1)
        task.cancel()
        assert now["t"] > 10  # the loop did run several rounds
        assert _drain(sock) == []


class TestProgressProbe:
    def test_idle_is_healthy_busy_without_progress_is_not(self) -> None:
        """Test that only work waiting without progress past the limit counts as wedged."""
        now = {"t": 0.0}
        state = {"busy": False, "done": 0}
        probe = ProgressProbe(
            "recompute[main]",
            busy=lambda: state["busy"],
            done=lambda: state["done"],
            limit=10.0,
            clock=lambda: now["t"],
        )
        now["t"] = 100.0
        assert probe() is None  # idle for 100 s: nothing to do is fine
        state["busy"] = True
        assert probe() is None
        now["t"] = 105.0
        assert probe() is None  # stuck 5 s < 10 s
        now["t"] = 111.0
        assert probe() == "recompute[main] has had work waiting for over 10 s"
        state["done"] = 1  # it recomputed: healthy again, and the clock restarts
        assert probe() is None
        now["t"] = 115.0
        assert probe() is None
