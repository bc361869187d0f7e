"""Tests for monitor/channels/console.py: the live view and the summary lines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from pathlib import Path

import structlog
from rich.console import Console
from structlog.testing import capture_logs

from monitor.alerts.sink import AlertsSink, build_alerts_sink
from monitor.channels.console import ConsoleSink
from monitor.config.settings import AlertsSettings, load_settings
from monitor.core import stress
from monitor.core.alert_config import AlertConfig, ratio_level
from monitor.core.margin import report as margin
from monitor.core.model import (
    AccountSnapshot,
    MarginReport,
    PriceTick,
    SourceDown,
    SourceStale,
    SourceUp,
)
from monitor.daemon.supervisor import run_daemon
from monitor.daemon.wiring import build_sinks
from monitor.ops import logs
from monitor.sink import Sink
from monitor.sources.sim import SimVenue
from monitor.sources.sim_book import DEMO_BOOK
from monitor.sources.sim_prices import ReplayStep


def _report_of_sim() -> tuple[MarginReport, AccountSnapshot]:
    venue = SimVenue("demo")
    snapshot = venue.snapshot()
    return stress.assess(snapshot), snapshot


class TestConsoleSink:
    async def test_live_view_shows_the_figures(self) -> None:
        """Test that the dashboard shows level, ratio, shock, and each liquidation price."""
        report, snapshot = _report_of_sim()
        sink = ConsoleSink(live=False)
        await sink.on_report("demo", report, snapshot, 0.0)
        await sink.on_level("demo", "critical", "warning", report, 0.0)
        console = Console(record=True, width=140, file=io.StringIO())
        console.print(sink.render())
        text = console.export_text()
        assert "demo  CRITICAL" in text
        assert f"{report.margin_ratio:.2%}" in text
        assert report.shock_to_liquidation is not None
        assert report.shock_to_liquidation.down is not None
        assert f"{report.shock_to_liquidation.down:+.2%}" in text
        for p in report.positions:
            assert p.symbol in text
            assert p.liquidation_price is not None
            assert f"{p.liquidation_price:,.2f}" in text

    async def test_keeps_last_shock_when_a_report_skips_it(self) -> None:
        """Test that a report without a shock solve keeps showing the previous shock."""
        report, snapshot = _report_of_sim()
        sink = ConsoleSink(live=False)
        await sink.on_report("demo", report, snapshot, 0.0)
        await sink.on_report("demo", margin.report(snapshot), snapshot, 1.0)
        console = Console(record=True, width=140, file=io.StringIO())
        console.print(sink.render())
        assert report.shock_to_liquidation is not None
        assert report.shock_to_liquidation.down is not None
        assert f"{report.shock_to_liquidation.down:+.2%}" in console.export_text()

    async def test_summary_line_counts_events_and_reports(self) -> None:
        """Test that the log-mode summary is one structured line per account."""
        out = io.StringIO()
        logs.configure(fmt="json", stream=out)
        try:
            report, snapshot = _report_of_sim()
            sink = ConsoleSink(live=False, summary_every=0.01)
            for i in range(5):  # the tick path's synchronous count and on_event count alike
                tick = PriceTick("demo", "BTC/USDT:USDT", 64000.0 + i, float(i))
                if i % 2:
                    sink.on_tick(tick)
                else:
                    await sink.on_event(tick)
            await sink.on_report("demo", report, snapshot, 0.0)

            async def run() -> None:
                async with asyncio.TaskGroup() as tg:
                    await sink.start(tg)

            task = asyncio.create_task(run())
            await asyncio.sleep(0.05)
            task.cancel()  # the summary loop runs until cancelled, as in the daemon
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            structlog.reset_defaults()
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
        assert lines
        assert {x["event"] for x in lines} == {"account summary"}
        assert (lines[0]["account"], lines[0]["events"], lines[0]["reports"]) == ("demo", 5, 1)
        assert lines[0]["margin_ratio"] == round(report.margin_ratio, 6)


def _crashed(factor: float) -> tuple[MarginReport, AccountSnapshot]:
    """The demo book after every price moved by `factor` (beta-weighted), shock solved."""
    step = ReplayStep(0.0, tuple((m.symbol, m.price0 * factor**m.beta) for m in DEMO_BOOK.markets))
    snapshot = SimVenue("demo", replay=[step]).snapshot()
    return stress.assess(snapshot), snapshot


def _text(sink: ConsoleSink) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(sink.render())
    return console.export_text()


class TestAlertSurface:
    """The screen agrees with the alerts (issue 14 §7), rendered headless."""

    async def test_headline_is_the_worst_active_alert(self, tmp_path: Path) -> None:
        """Test that a shock emergency heads the screen while the ratio is only at warning."""
        alerts = build_alerts_sink(tmp_path, AlertConfig(repeat_every=0), None, None)
        sink = ConsoleSink(live=False, accounts=["demo"])
        sink.alerts = alerts
        report, snapshot = _crashed(0.86)  # ratio 55 %: warning; a 0.9 % drop liquidates
        assert ratio_level(report.margin_ratio, "ok", AlertsSettings().to_config()) == "warning"
        await alerts.on_report("demo", report, snapshot, 1000.0)
        await sink.on_report("demo", report, snapshot, 1000.0)
        await sink.on_level("demo", "warning", "ok", report, 1000.0)
        text = _text(sink)
        assert text.splitlines()[0].startswith("EMERGENCY  demo: shock to liquidation 0.9%")
        assert "(+1 more active)" in text.splitlines()[0]
        assert "demo  EMERGENCY  source up" in text
        assert re.search(r"WARNING +demo: margin ratio 55\.2%, since ", text)
        with capture_logs() as lines:
            sink.summarise()  # the log-mode summary (no TTY) says the same
        assert [x["alert_level"] for x in lines] == ["emergency"]
        await alerts.close()

    async def test_every_configured_account_has_a_row(self, tmp_path: Path) -> None:
        """Test that an account whose source is down, or stale, still has a row saying so."""
        alerts = build_alerts_sink(tmp_path, AlertConfig(repeat_every=0), None, None)
        sink = ConsoleSink(live=False, accounts=["demo", "main", "spare"])
        sink.alerts = alerts
        report, snapshot = _report_of_sim()
        await sink.on_report("demo", report, snapshot, 1000.0)
        down = SourceDown("main", "AuthenticationError: invalid API key")
        stale = SourceStale("demo", "prices", 34.0)
        for event in (down, stale):
            await alerts.on_event(event)
            await sink.on_event(event)
        text = _text(sink)
        assert "demo  WARNING  source stale: no prices for 34 s" in text
        assert "main  CRITICAL  source down: AuthenticationError: invalid API key" in text
        assert "spare  OK  source waiting: no data yet" in text
        assert text.splitlines()[0].startswith("CRITICAL  main: source down (Authentication")
        up = SourceUp("demo", "prices")
        await alerts.on_event(up)
        await sink.on_event(up)
        text = _text(sink)
        assert "demo  OK  source up" in text
        assert "main  CRITICAL  source down" in text
        await alerts.close()

    async def test_reload_follows_the_accounts(self, tmp_path: Path) -> None:
        """Test that a SIGHUP reload adds a row for a new account and drops a removed one."""
        sink = ConsoleSink(live=False, accounts=["demo", "old"])
        sink.alerts = build_alerts_sink(tmp_path, AlertConfig(repeat_every=0), None, None)
        sink.set_accounts({"demo": 30.0, "new": 30.0}, sources={})
        text = _text(sink)
        assert "new  OK  source waiting: no data yet" in text
        assert "old  " not in text

    async def test_panel_lists_alerts_and_last_actions(self, tmp_path: Path) -> None:
        """Test that the panel shows each active alert and the newest action decisions."""
        alerts = build_alerts_sink(tmp_path, AlertConfig(repeat_every=0), None, None)
        sink = ConsoleSink(live=False, accounts=["demo"])
        sink.alerts = alerts
        assert "no protective action taken or planned" in _text(sink)
        assert _text(sink).splitlines()[0] == "OK  no active alert"
        order = {"side": "sell", "amount": 200.0, "symbol": "SOL/USDT:USDT", "reason": "dry run"}
        alerts.record_action("demo", "would_have", order, at=1000.0)
        text = _text(sink)
        assert "active alerts and last protective actions" in text
        assert "action would_have" in text
        assert "demo: sell 200.0 SOL/USDT:USDT" in text
        await alerts.close()

    async def test_demo_headline_is_the_worst_alert_in_every_frame(self, tmp_path: Path) -> None:
        """Test that in the demo sell-off every frame's headline is the worst alert level."""
        settings = load_settings(
            None,
            state_dir=tmp_path,
            accounts=[{"name": "demo", "exchange": "sim", "sim": {"speed": 20}}],
        )
        sources = {a.name: SimVenue(a.name, a.sim) for a in settings.accounts}
        sinks = build_sinks(settings, tui=False, sources=sources)
        console = next(s for s in sinks if isinstance(s, ConsoleSink))
        alerts = next(s for s in sinks if isinstance(s, AlertsSink))
        frames: list[tuple[str, str]] = []

        class Frames(Sink):
            """Renders a frame after every report, as the live view would show it."""

            name = "frames"

            async def start(self, tg: asyncio.TaskGroup) -> None: ...
            async def on_event(self, event: object) -> None: ...
            async def on_level(self, *a: object) -> None: ...
            async def close(self) -> None: ...

            async def on_report(self, *a: object) -> None:
                worst = max(
                    (alerts.account_level(n) for n in sources),
                    key=("ok", "warning", "critical", "emergency").index,
                )
                frames.append((_text(console).splitlines()[0], worst))

        await asyncio.wait_for(
            run_daemon(
                settings,
                settings.accounts,
                [*sinks, Frames()],
                sources=list(sources.values()),
                duration=4.0,
                handle_signals=False,
            ),
            30,
        )
        assert len(frames) >= 10
        for headline, worst in frames:
            assert headline.split()[0] == worst.upper(), (headline, worst)
        assert {w for _, w in frames} >= {"ok", "emergency"}
