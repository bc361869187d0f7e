"""Tests for monitor/channels/notify.py: what the phone receives, through a local HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from monitor.alerts.command_http import command_app, decode_token
from monitor.alerts.message import AlertMessage, PositionLine
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.signed_commands import verify
from monitor.channels.notify import NotifyChannel, NotifySink, ntfy_priority, render
from monitor.core.alert_config import AlertConfig
from monitor.core.model import MarginReport, PositionRisk, ShockToLiquidation
from monitor.store import Store

SECRET = b"phone-secret"
CONFIG = AlertConfig(repeat_every=0)
MARGIN_ONLY = AlertConfig(
    repeat_every=0, shock_warning=None, shock_critical=None, shock_emergency=None
)


def report(ratio: float, account: str = "main") -> MarginReport:
    """A report with two positions, the bigger MM contributor second."""
    small = PositionRisk(
        "ETH/USDT:USDT", "short", "cross", 2.0, 3000.0, 6000.0, 50.0, 300.0, 30.0, None, 3600.0
    )
    big = PositionRisk(
        "BTC/USDT:USDT",
        "long",
        "cross",
        1.0,
        60000.0,
        60000.0,
        -900.0,
        6000.0,
        ratio * 1000 - 30.0,
        None,
        55123.0,
    )
    return MarginReport(
        account=account,
        currency="USDT",
        wallet_balance=1900.0,
        unrealized_pnl=-850.0,
        margin_balance=1000.0,
        initial_margin=6300.0,
        maintenance_margin=ratio * 1000,
        margin_ratio=ratio,
        margin_level=1 / ratio,
        free_collateral=-5300.0,
        liquidated=False,
        positions=(small, big),
        shock_to_liquidation=ShockToLiquidation(down=-0.041, up=0.25),
    )


@dataclass
class Receiver:
    """A local HTTP server that records what ntfy/json endpoints would receive."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        """Record the request; answer with `status`."""
        self.requests.append((request.path, dict(request.headers), await request.read()))
        self.arrived.set()
        return web.json_response({"id": "x"}, status=self.status)

    async def wait(self, count: int, limit: float = 15.0) -> None:
        """Wait until `count` requests arrived."""
        async with asyncio.timeout(limit):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A Receiver listening on a free 127.0.0.1 port."""
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free 127.0.0.1 port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def delivering(pipeline: AlertPipeline) -> AsyncIterator[AlertPipeline]:
    """The pipeline's delivery tasks."""
    task = asyncio.create_task(pipeline.run())
    try:
        yield pipeline
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], limit: float) -> None:
    """Poll `condition` every 20 ms; fail after `limit` seconds."""
    for _ in range(int(limit / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def channel(url: str, **extra: object) -> NotifyChannel:
    """A channel with no send spacing unless asked."""
    return NotifyChannel.model_validate(
        {"name": "phone", "url": url, "min_interval": 0, "timeout": 5, **extra}
    )


def message(**fields: object) -> AlertMessage:
    """A margin alert message with lock-screen figures."""
    base: dict[str, object] = {
        "id": "e.1",
        "fingerprint": "main/margin_ratio",
        "account": "main",
        "rule": "margin_ratio",
        "kind": "escalated",
        "level": "emergency",
        "previous_level": "critical",
        "episode": "e",
        "started_at": 0.0,
        "at": 600.0,
        "duration": 600.0,
        "value": 0.872,
        "previous_value": 0.71,
        "worst_value": 0.872,
        "worst_level": "emergency",
        "threshold": 0.85,
        "currency": "USDT",
        "margin_ratio": 0.872,
        "margin_balance": 1234.5,
        "free_collateral": -120.0,
        "shock_down": -0.041,
        "shock_up": None,
        "positions": (PositionLine("BTC/USDT:USDT", "long", 60000.0, -1500.0, 240.0, 52000.0),),
        "action": "would reduce BTC/USDT:USDT long by 0.05 (dry run)",
    }
    base.update(fields)
    return AlertMessage(**base)  # type: ignore[arg-type]


class TestRender:
    """The words on the lock screen."""

    def test_escalation_text(self) -> None:
        """Test that the text names account, level, ratio and move, balance, shock, positions."""
        title, body = render([message()])
        assert title == "EMERGENCY main: margin ratio 87.2 %"
        assert "Margin ratio 87.2 %, was 71.0 %, emergency at 85.0 %" in body
        assert "Margin balance 1,234.50 USDT, free -120.00 USDT." in body
        assert "Liquidates on a 4.1 % drop / none rise of all prices." in body
        assert "BTC/USDT:USDT long 60,000.00 USDT, MM 240.00, uPnL -1,500.00, liq 52,000" in body
        assert "Action: would reduce BTC/USDT:USDT long by 0.05 (dry run)" in body

    def test_resolved_text(self) -> None:
        """Test that a resolve says how long it lasted and how bad it got."""
        title, body = render([message(kind="resolved", level="ok", value=0.3, duration=754.0)])
        assert title == "RESOLVED main: margin ratio back to normal"
        assert "Resolved after 12 min 34 s; worst 87.2 % (emergency)." in body
        assert "Action:" not in body

    def test_infinite_ratio(self) -> None:
        """Test that a liquidated account renders without a number error."""
        title, _ = render([message(value=math.inf)])
        assert "liquidated" in title

    def test_merge_worst_first(self) -> None:
        """Test that a merged burst keeps every alert, the worst first."""
        title, body = render(
            [
                message(id="a", level="warning", value=0.55),
                message(id="b"),
                message(id="c", account="alt", level="critical"),
            ]
        )
        assert title == "EMERGENCY main: margin ratio 87.2 % (+2 more)"
        assert body.index("EMERGENCY main") < body.index("CRITICAL alt") < body.index("WARNING")

    def test_news_still_true_leads(self) -> None:
        """Test that open alerts lead and an episode resolved in the same batch follows it."""
        title, body = render(
            [
                message(id="e.1"),
                message(id="e.2", kind="resolved", level="ok", value=0.3, at=610.0),
                message(
                    id="c",
                    account="alt",
                    fingerprint="alt/margin_ratio",
                    level="critical",
                    value=0.75,
                ),
            ]
        )
        assert title == "CRITICAL alt: margin ratio 75.0 % (+2 more)"
        assert (
            body.index("CRITICAL alt") < body.index("EMERGENCY main") < body.index("RESOLVED main")
        )


class TestChannel:
    """Channel settings and routing by level."""

    def test_min_level_and_resolved(self) -> None:
        """Test that a critical channel skips warnings but gets a critical episode's resolve."""
        sink = NotifySink(channel("json://127.0.0.1:9/x", min_level="critical"))
        assert not sink.wants(message(level="warning", worst_level="warning"))
        assert sink.wants(message(level="critical", worst_level="critical"))
        assert sink.wants(message(kind="resolved", level="ok", worst_level="emergency"))
        assert not sink.wants(message(kind="resolved", level="ok", worst_level="warning"))
        quiet = NotifySink(channel("json://127.0.0.1:9/x", send_resolved=False))
        assert not quiet.wants(message(kind="resolved", level="ok"))

    def test_bad_url_and_secret(self) -> None:
        """Test that an unknown Apprise URL is refused and the URL never prints."""
        with pytest.raises(ValidationError, match="Apprise URL"):
            channel("nosuchscheme://x")
        c = channel("ntfy://user:tok3n@127.0.0.1/topic")
        assert "tok3n" not in repr(c)

    def test_priority_by_level(self) -> None:
        """Test the ntfy priority of each level."""
        assert [ntfy_priority(lv) for lv in ("ok", "warning", "critical", "emergency")] == [
            "low",
            "default",
            "high",
            "max",
        ]


class TestDelivery:
    """Through Apprise to a local HTTP receiver."""

    async def test_ntfy_priority_and_buttons(self, tmp_path: Path) -> None:
        """Test that ntfy gets max priority and buttons whose tokens acknowledge and silence."""
        async with receiver() as rec:
            sink = NotifySink(channel(f"ntfy://127.0.0.1:{rec.port}/alerts"))
            pipeline = AlertPipeline(
                Store(tmp_path / "a.db"), MARGIN_ONLY, [sink], command_secret=SECRET
            )
            sink.sign = pipeline.sign
            app = command_app(lambda raw, src: pipeline.handle_command(raw, source=src))
            async with serving(app) as base, delivering(pipeline):
                sink.command_url = f"{base}/command"
                pipeline.on_report(report(0.9))
                await rec.wait(1)
                _, headers, body = rec.requests[0]
                sent = json.loads(body)
                assert sent["topic"] == "alerts"
                assert sent["title"] == "EMERGENCY main: margin ratio 90.0 %"
                assert "• BTC/USDT:USDT long" in sent["message"]
                assert headers["X-Priority"] == "max"
                actions = [a.split(", ") for a in headers["X-Actions"].split("; ")]
                assert [(a[0], a[1], a[2], a[3]) for a in actions] == [
                    ("http", "Acknowledge", f"{base}/command", "method=POST"),
                    ("http", "Silence 1 h", f"{base}/command", "method=POST"),
                ]
                assert "token" not in headers["X-Actions"]  # in the body, never the URL
                token = actions[0][4].removeprefix("body=")
                command = verify(decode_token(token), SECRET, now=pipeline.clock() + 1800)
                assert (command.action, command.account) == ("ack", "main")
                # Press both buttons, as the phone would, then the first one again.
                async with aiohttp.ClientSession() as http:
                    for action in actions:
                        async with http.post(action[2], data=action[4][5:]) as resp:
                            assert resp.status == 200
                            assert (await resp.json())["ok"] is True
                    async with http.post(actions[0][2], data=actions[0][4][5:]) as resp:
                        assert resp.status == 403  # replay refused
        assert pipeline.state.alert("main", "margin_ratio").acknowledged
        (silence,) = pipeline.state.silences
        assert (silence.account, silence.rule, silence.up_to) == (
            "main",
            "margin_ratio",
            "emergency",
        )
        assert len(pipeline.store.audit_trail(kind="command")) == 2

    async def test_button_acknowledges_alert(self, tmp_path: Path) -> None:
        """Test that the Acknowledge token stops repeats of that alert."""
        config = AlertConfig(repeat_every=10)
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), config, [], command_secret=SECRET)
        sink = NotifySink(
            channel("json://127.0.0.1:9/x"),
            command_url="http://h/command",
            sign=pipeline.sign,
            clock=lambda: 100.0,
        )
        pipeline.on_report(report(0.9), now=100.0)
        episode = pipeline.state.alert("main", "margin_ratio").episode
        header = sink._actions(message(episode=episode))
        assert header is not None
        token = header.split("; ")[0].split(", ")[4].removeprefix("body=")
        assert pipeline.handle_command(decode_token(token), now=160.0)["ok"] is True
        assert pipeline.on_report(report(0.9), now=200.0)[0].suppressed == "acknowledged"
        # An hour later the token has expired.
        again = sink._actions(message(id="e.2", episode=episode))
        assert again is not None
        late = again.split("; ")[0].split(", ")[4].removeprefix("body=")
        reply = pipeline.handle_command(decode_token(late), now=100.0 + 3601)
        assert reply == {"ok": False, "request_id": "e.2:ack", "error": "token expired"}

    async def test_json_and_burst_merge(self, tmp_path: Path) -> None:
        """Test that a burst is merged into few sends and no alert is dropped."""
        async with receiver() as rec:
            sink = NotifySink(channel(f"json://127.0.0.1:{rec.port}/hook", min_interval=0.6))
            pipeline = AlertPipeline(Store(tmp_path / "a.db"), MARGIN_ONLY, [sink])
            async with delivering(pipeline):
                ids = []
                for i, ratio in enumerate([0.55, 0.75, 0.9, 0.3, 0.6, 0.72]):
                    ids += [e.id for e in pipeline.on_report(report(ratio), now=1000.0 + i)]
                    await asyncio.sleep(0.05)
                await until(lambda: not pipeline.store.pending(), 15)
        assert len(ids) == 6
        assert 2 <= len(rec.requests) <= 4
        bodies = [json.loads(b) for _, _, b in rec.requests]
        text = "\n".join(b["title"] + "\n" + b["message"] for b in bodies)
        for headline in (
            "WARNING main: margin ratio 55.0 %",
            "CRITICAL main: margin ratio 75.0 %",
            "EMERGENCY main: margin ratio 90.0 %",
            "RESOLVED main",
            "WARNING main: margin ratio 60.0 %",
            "CRITICAL main: margin ratio 72.0 %",
        ):
            assert headline in text

    async def test_failure_is_retried(self, tmp_path: Path) -> None:
        """Test that a 500 from the service keeps the alert queued until it gets through."""
        async with receiver() as rec:
            rec.status = 500
            sink = NotifySink(channel(f"json://127.0.0.1:{rec.port}/hook"))
            pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [sink])
            async with delivering(pipeline):
                pipeline.on_report(report(0.9))
                await rec.wait(1)
                await until(lambda: pipeline.store.pending()[0].attempts > 0, 5)
                rec.status = 200
                pipeline.retry_now(sink.name)
                await until(lambda: not pipeline.store.pending(), 10)
        assert len(rec.requests) >= 2
