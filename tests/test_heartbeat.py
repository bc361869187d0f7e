"""Tests for monitor/ops/heartbeat.py against a local HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr, ValidationError

from monitor.config.monitoring import HeartbeatSettings
from monitor.ops.heartbeat import HeartbeatSink


class Receiver:
    """A ping service: records paths, answers with `status`."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.status = 200
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        return web.Response(status=self.status, text="OK")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_get("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.base = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


def settings(rec: Receiver, fail: bool = True, interval: float = 60.0) -> HeartbeatSettings:
    return HeartbeatSettings(
        url=SecretStr(f"{rec.base}/ping/0f6b1c8e-token"),
        fail_url=SecretStr(f"{rec.base}/ping/0f6b1c8e-token/fail") if fail else None,
        interval=interval,
    )


class TestHeartbeat:
    async def test_pings_while_fresh(self, receiver: Receiver) -> None:
        """Test that a healthy monitor pings the URL once per interval."""
        sink = HeartbeatSink(settings(receiver, interval=0.02), dict)
        task = asyncio.create_task(sink.run())
        await asyncio.sleep(0.3)
        task.cancel()
        assert sink.sent >= 3
        assert set(receiver.paths) == {"/ping/0f6b1c8e-token"}

    async def test_blind_calls_the_fail_url(self, receiver: Receiver) -> None:
        """Test that while an account is blind the fail URL is called instead."""
        sink = HeartbeatSink(settings(receiver), lambda: {"main": "no data yet"})
        async with aiohttp.ClientSession() as http:
            assert await sink.beat(http)
        assert receiver.paths == ["/ping/0f6b1c8e-token/fail"]

    async def test_blind_without_fail_url_skips(self, receiver: Receiver) -> None:
        """Test that without a fail URL a blind monitor sends nothing, so the service alerts."""
        sink = HeartbeatSink(settings(receiver, fail=False), lambda: {"main": "stale"})
        async with aiohttp.ClientSession() as http:
            assert not await sink.beat(http)
        assert receiver.paths == []

    async def test_refusal_and_unreachable_are_counted_not_raised(self, receiver: Receiver) -> None:
        """Test that a 5xx answer or a dead service is logged and counted, never fatal."""
        sink = HeartbeatSink(settings(receiver), dict)
        receiver.status = 503
        dead = HeartbeatSink(HeartbeatSettings(url=SecretStr("http://127.0.0.1:9/ping")), dict)
        async with aiohttp.ClientSession() as http:
            assert not await sink.beat(http)
            assert not await dead.beat(http)
        assert (sink.failed, dead.failed) == (1, 1)
        assert receiver.paths == ["/ping/0f6b1c8e-token"]

    def test_no_url_is_off_and_typos_fail(self) -> None:
        """Test that the default is off and an unknown key is rejected."""
        assert HeartbeatSettings().url is None
        with pytest.raises(ValidationError, match="intervall"):
            HeartbeatSettings.model_validate({"intervall": 5})
