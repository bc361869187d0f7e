"""Tests for monitor/sinks/console.py: the live view and the summary lines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import structlog
from rich.console import Console

from monitor import logs, margin, stress
from monitor.model import AccountSnapshot, MarginReport, PriceTick
from monitor.sinks.console import ConsoleSink
from monitor.sources.sim import SimVenue


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
            for i in range(5):
                await sink.on_event(PriceTick("demo", "BTC/USDT:USDT", 64000.0 + i, float(i)))
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
