"""Tests for monitor/ops/metrics.py: exposition, per-account gauges, /healthz, the endpoint."""

from __future__ import annotations

import asyncio
import math
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from monitor.alerts.sink import build_alerts_sink
from monitor.config.monitoring import MetricsSettings
from monitor.config.settings import AlertsSettings
from monitor.core import stress
from monitor.core.margin import report as margin
from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Collateral,
    Position,
    PriceTick,
    SourceDown,
    SourceStale,
    SourceUp,
)
from monitor.errors import UserError
from monitor.ops.metrics import (
    ACTIONS,
    ALERTS_SENT,
    EVENTS,
    REGISTRY,
    MetricsSink,
    build_metrics_sink,
    outbox_depth_of,
    record_action,
    record_alerts_sent,
)
from monitor.ops.metrics_server import serve
from monitor.sources.exchange import ExchangeSource
from monitor.sources.sim import SimVenue
from monitor.store import OutboxRow
from tests.fakes.account import EventTap, account_for
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm

SNAPSHOT = AccountSnapshot(
    "main",
    "USDT",
    (Collateral("USDT", 1000.0),),
    (Position("BTC/USDT:USDT", "long", 0.5, 60000.0, 61000.0, mmr=0.004, leverage=20),),
)


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels (the client's parser)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
async def sink() -> AsyncIterator[tuple[MetricsSink, FakeClock]]:
    clock = FakeClock()
    sink = MetricsSink(MetricsSettings(), {"main": 30.0, "spare": 30.0}, clock=clock)
    async with asyncio.TaskGroup() as tg:
        await sink.start(tg)
    try:
        yield sink, clock
    finally:
        await sink.close()


class TestMetricsSettings:
    def test_off_and_loopback_by_default(self) -> None:
        """Test that the endpoint is disabled and bound to loopback unless configured."""
        settings = MetricsSettings()
        assert settings.enabled is False
        assert settings.host == "127.0.0.1"

    def test_typo_is_an_error(self) -> None:
        """Test that an unknown key in [metrics] is rejected, not ignored."""
        with pytest.raises(ValidationError, match="prot"):
            MetricsSettings.model_validate({"prot": 9000})


class TestExposition:
    async def test_account_gauges_match_the_report(
        self, sink: tuple[MetricsSink, FakeClock]
    ) -> None:
        """Test that the exported figures are the report's, parsed back by prometheus_client."""
        metrics, _clock = sink
        report = stress.assess(SNAPSHOT)
        await metrics.on_report("main", report, SNAPSHOT, 0.0)
        await metrics.on_level("main", "critical", "ok", report, 0.0)
        got = samples(metrics.exposition().decode())
        cur = (("account", "main"), ("currency", "USDT"))
        assert got[("margin_monitor_margin_ratio", (("account", "main"),))] == pytest.approx(
            report.margin_ratio
        )
        assert got[("margin_monitor_margin_balance", cur)] == pytest.approx(report.margin_balance)
        assert got[("margin_monitor_maintenance_margin", cur)] == pytest.approx(
            report.maintenance_margin
        )
        assert got[("margin_monitor_free_collateral", cur)] == pytest.approx(report.free_collateral)
        assert report.shock_to_liquidation is not None
        assert report.shock_to_liquidation.down is not None
        down = (("account", "main"), ("direction", "down"))
        assert got[("margin_monitor_shock_to_liquidation", down)] == pytest.approx(
            report.shock_to_liquidation.down
        )
        assert got[("margin_monitor_level", (("account", "main"),))] == 2.0
        assert ("margin_monitor_margin_ratio", (("account", "spare"),)) not in got

    async def test_shock_survives_reports_that_skip_the_solve(
        self, sink: tuple[MetricsSink, FakeClock]
    ) -> None:
        """Test that a report without a shock solve keeps the last shock figure exported."""
        metrics, _clock = sink
        await metrics.on_report("main", stress.assess(SNAPSHOT), SNAPSHOT, 0.0)
        await metrics.on_report("main", margin.report(SNAPSHOT), SNAPSHOT, 1.0)
        got = samples(metrics.exposition().decode())
        assert (
            "margin_monitor_shock_to_liquidation",
            (("account", "main"), ("direction", "down")),
        ) in got

    async def test_wiped_out_account_exports_plus_inf(
        self, sink: tuple[MetricsSink, FakeClock]
    ) -> None:
        """Test that an infinite margin ratio is exported as +Inf and parses back."""
        metrics, _clock = sink
        broke = AccountSnapshot(
            "main",
            "USDT",
            (Collateral("USDT", 10.0),),
            (Position("BTC/USDT:USDT", "long", 1.0, 60000.0, 50000.0, mmr=0.004, leverage=20),),
        )
        await metrics.on_report("main", margin.report(broke), broke, 0.0)
        got = samples(metrics.exposition().decode())
        assert math.isinf(got[("margin_monitor_margin_ratio", (("account", "main"),))])

    async def test_data_age_per_kind(self, sink: tuple[MetricsSink, FakeClock]) -> None:
        """Test that each data kind's age is the time since it last arrived."""
        metrics, clock = sink
        await metrics.on_event(AccountUpdate("main", (), (Collateral("USDT", 1.0),), 0.0))
        clock.now += 4.0
        await metrics.on_event(PriceTick("main", "BTC/USDT:USDT", 61000.0, 0.0))
        clock.now += 1.5
        got = samples(metrics.exposition().decode())
        age = "margin_monitor_data_age_seconds"
        assert got[(age, (("account", "main"), ("kind", "balance")))] == pytest.approx(5.5)
        assert got[(age, (("account", "main"), ("kind", "positions")))] == pytest.approx(5.5)
        assert got[(age, (("account", "main"), ("kind", "prices")))] == pytest.approx(1.5)

    async def test_events_counter_and_latency(self, sink: tuple[MetricsSink, FakeClock]) -> None:
        """Test that events are counted per kind and the event-to-report delay is observed."""
        metrics, clock = sink
        key = {"account": "main", "kind": "prices"}
        before = REGISTRY.get_sample_value("margin_monitor_events_total", key) or 0.0
        count0 = REGISTRY.get_sample_value("margin_monitor_recompute_latency_seconds_count") or 0
        sum0 = REGISTRY.get_sample_value("margin_monitor_recompute_latency_seconds_sum") or 0.0
        for price in (61000.0, 61010.0, 61020.0):
            await metrics.on_event(PriceTick("main", "BTC/USDT:USDT", price, 0.0))
            clock.now += 0.01
        await metrics.on_report("main", margin.report(SNAPSHOT), SNAPSHOT, 0.0)
        assert REGISTRY.get_sample_value("margin_monitor_events_total", key) == before + 3
        count = REGISTRY.get_sample_value("margin_monitor_recompute_latency_seconds_count")
        total = REGISTRY.get_sample_value("margin_monitor_recompute_latency_seconds_sum")
        assert count == count0 + 1  # three coalesced events, one report
        assert total is not None
        assert total - sum0 == pytest.approx(0.03)

    async def test_reload_adds_drift_of_new_live_sources(
        self, sink: tuple[MetricsSink, FakeClock]
    ) -> None:
        """Test that an account added by a reload exports its source's venue drift."""
        metrics, _clock = sink

        class Source:
            def venue_drift(self) -> float | None:
                return 0.004

        metrics.set_accounts({"main": 30.0, "added": 30.0}, sources={"added": Source()})
        got = samples(metrics.exposition().decode())
        assert got[("margin_monitor_venue_drift_ratio", (("account", "added"),))] == 0.004

    async def test_removed_account_disappears(self, sink: tuple[MetricsSink, FakeClock]) -> None:
        """Test that an account dropped by a reload is no longer exported."""
        metrics, _clock = sink
        await metrics.on_report("main", margin.report(SNAPSHOT), SNAPSHOT, 0.0)
        metrics.set_accounts({"spare": 30.0})
        text = metrics.exposition().decode()
        assert 'account="main"' not in text  # gauges and the events counter alike
        assert 'margin_monitor_fresh{account="spare"}' in text

    async def test_venue_drift_and_outbox_depth(self) -> None:
        """Test that drift comes from the source's check and depth from the outbox rows."""
        rows = [
            OutboxRow(i, f"m{i}", sink_name, "main", "{}", 0.0, 0, 0.0, "")
            for i, sink_name in enumerate(["mqtt", "mqtt", "phone"])
        ]
        metrics = MetricsSink(
            MetricsSettings(), {"main": 30.0}, outbox_depth=outbox_depth_of(lambda: rows)
        )
        metrics.watch_drift("main", lambda: 0.0125)
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        try:
            got = samples(metrics.exposition().decode())
        finally:
            await metrics.close()
        assert got[("margin_monitor_venue_drift_ratio", (("account", "main"),))] == 0.0125
        assert got[("margin_monitor_outbox_depth", (("sink", "mqtt"),))] == 2
        assert got[("margin_monitor_outbox_depth", (("sink", "phone"),))] == 1

    async def test_builder_wires_outbox_and_venue_drift(self) -> None:
        """Test that the builder wires the alert sink's outbox and each source's venue drift."""

        class Source:
            drift: float | None = None

            def venue_drift(self) -> float | None:
                return self.drift

        class Store:
            def pending(self) -> list[OutboxRow]:
                return [OutboxRow(1, "m1", "mqtt", "main", "{}", 0.0, 0, 0.0, "")]

        class Pipeline:
            store = Store()

        class Alerts:
            opened = 0

            @property
            def pipeline(self) -> type[Pipeline]:  # lazy, like sinks/alerts.py
                self.opened += 1
                return Pipeline

        live, sim, alerts = Source(), SimVenue("demo"), Alerts()
        metrics = build_metrics_sink(
            MetricsSettings(),
            {"main": 30.0, "demo": 30.0},
            {"main": live, "demo": sim},
            outbox=lambda: alerts.pipeline.store.pending(),  # noqa: PLW0108 - store opens late
        )
        assert alerts.opened == 0  # building (e.g. for `check`) never opens the store
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        try:
            before = samples(metrics.exposition().decode())
            live.drift = -0.002
            after = samples(metrics.exposition().decode())
        finally:
            await metrics.close()
        drift = ("margin_monitor_venue_drift_ratio", (("account", "main"),))
        assert drift not in before  # no reconciliation yet: nothing to compare
        assert after[drift] == -0.002
        assert ("margin_monitor_venue_drift_ratio", (("account", "demo"),)) not in after
        assert after[("margin_monitor_outbox_depth", (("sink", "mqtt"),))] == 1

    async def test_live_source_drift_reaches_the_gauge(self) -> None:
        """Test that a live source's venue drift (ours minus the venue's) is the gauge's value."""
        fake = FakeBinanceUsdm()
        fake.account.wallet = 1_000.0
        fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.8, 59_000.0)
        async with fake:
            account = account_for(fake, API_KEY, SECRET, poll_interval=0.2, stale_after=1.0)
            source = ExchangeSource(account, backoff_cap=0.2, reconcile_every=0.5)
            tap = EventTap(source.events())
            metrics = build_metrics_sink(
                MetricsSettings(), {source.account: 30.0}, {source.account: source}
            )
            async with asyncio.TaskGroup() as tg:
                await metrics.start(tg)
            try:
                await tap.wait_for(lambda e: isinstance(e, AccountUpdate))
                got = samples(metrics.exposition().decode())
            finally:
                await metrics.close()
                await tap.stop()
                await source.close()
        check = source.venue_check
        assert check is not None
        assert check.drift is not None
        key = ("margin_monitor_venue_drift_ratio", (("account", source.account),))
        assert got[key] == pytest.approx(check.drift)
        assert abs(got[key]) < 1e-4  # the fake's own figures: our model agrees with the venue

    async def test_closed_sink_is_unregistered(self) -> None:
        """Test that after close the sink's account gauges leave the registry."""
        metrics = MetricsSink(MetricsSettings(), {"gone": 30.0})
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        assert 'account="gone"' in metrics.exposition().decode()
        await metrics.close()
        assert 'account="gone"' not in metrics.exposition().decode()

    def test_counters_other_modules_increment(self) -> None:
        """Test that alerts sent and action outcomes are counted under their labels."""
        sent0 = ALERTS_SENT.labels(sink="phone")._value.get()
        act0 = ACTIONS.labels(account="main", outcome="dry_run")._value.get()
        record_alerts_sent("phone", 3)
        record_alerts_sent("phone", 0)
        record_action("main", "dry_run")
        assert ALERTS_SENT.labels(sink="phone")._value.get() == sent0 + 3
        assert ACTIONS.labels(account="main", outcome="dry_run")._value.get() == act0 + 1
        assert EVENTS  # the counters share one registry with the gauges

    async def test_audited_actions_are_counted_by_outcome(self, tmp_path: Path) -> None:
        """Test that an action decision audited through the alert sink counts by outcome."""
        sink = build_alerts_sink(tmp_path, AlertsSettings().to_config(), None, None)
        key = {"account": "main", "outcome": "would_reduce"}
        before = REGISTRY.get_sample_value("margin_monitor_actions_total", key) or 0.0
        try:
            sink.record_action("main", "would_reduce", {"symbol": "BTC/USDT:USDT"}, 0.0)
        finally:
            await sink.close()
        assert REGISTRY.get_sample_value("margin_monitor_actions_total", key) == before + 1

    @pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
    async def test_promtool_accepts_the_exposition(
        self, sink: tuple[MetricsSink, FakeClock]
    ) -> None:
        """Test that `promtool check metrics` finds no problem in the exposition."""
        metrics, _clock = sink
        await metrics.on_event(PriceTick("main", "BTC/USDT:USDT", 61000.0, 0.0))
        await metrics.on_report("main", stress.assess(SNAPSHOT), SNAPSHOT, 0.0)
        record_alerts_sent("mqtt", 1)
        record_action("main", "filled")
        result = await asyncio.to_thread(
            subprocess.run,
            ["promtool", "check", "metrics"],
            input=metrics.exposition(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


class TestHealth:
    async def test_no_data_yet_is_blind(self, sink: tuple[MetricsSink, FakeClock]) -> None:
        """Test that an account that never delivered data is reported blind."""
        metrics, _clock = sink
        assert metrics.blind() == {"main": "no data yet", "spare": "no data yet"}

    async def test_fresh_then_silent(self, sink: tuple[MetricsSink, FakeClock]) -> None:
        """Test that data makes an account fresh and silence past stale_after blinds it."""
        metrics, clock = sink
        for name in ("main", "spare"):
            await metrics.on_event(PriceTick(name, "BTC/USDT:USDT", 61000.0, 0.0))
        assert metrics.blind() == {}
        clock.now += 31.0
        await metrics.on_event(PriceTick("spare", "BTC/USDT:USDT", 61000.0, 0.0))
        assert list(metrics.blind()) == ["main"]
        assert "no data for 31 s" in metrics.blind()["main"]

    async def test_stale_and_down_until_up(self, sink: tuple[MetricsSink, FakeClock]) -> None:
        """Test that a source's stale and down signals blind the account until data returns."""
        metrics, _clock = sink
        await metrics.on_event(PriceTick("main", "BTC/USDT:USDT", 61000.0, 0.0))
        await metrics.on_event(SourceStale("main", "positions", 45.0))
        assert metrics.blind()["main"] == "stale data (positions 45 s)"
        await metrics.on_event(SourceUp("main", "positions"))
        assert "main" not in metrics.blind()
        await metrics.on_report("main", margin.report(SNAPSHOT), SNAPSHOT, 0.0)
        await metrics.on_event(SourceDown("main", "bad API key"))
        assert metrics.blind()["main"] == "source down: bad API key"
        # the daemon reads a fresh snapshot after a failure: that report clears "down"
        await metrics.on_report("main", margin.report(SNAPSHOT), SNAPSHOT, 0.0)
        assert "main" not in metrics.blind()


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


class TestEndpoint:
    async def test_metrics_and_healthz_over_http(self) -> None:
        """Test that /metrics serves the exposition and /healthz flips from 503 to 200."""
        metrics = MetricsSink(MetricsSettings(enabled=True, port=0), {"main": 30.0})
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        try:
            assert metrics.address is not None
            host, port = metrics.address
            assert host == "127.0.0.1"
            base = f"http://{host}:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as resp:
                    assert resp.status == 503
                    assert (await resp.text()).startswith("blind: main\nmain: no data yet")
                await metrics.on_report("main", margin.report(SNAPSHOT), SNAPSHOT, 0.0)
                async with http.get(f"{base}/healthz") as resp:
                    assert resp.status == 200
                async with http.get(f"{base}/metrics") as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith("text/plain")
                    got = samples(await resp.text())
            assert ("margin_monitor_margin_ratio", (("account", "main"),)) in got
            assert got[("margin_monitor_fresh", (("account", "main"),))] == 1.0
        finally:
            await metrics.close()

    async def test_disabled_listens_nowhere(self) -> None:
        """Test that the default (disabled) sink opens no port."""
        metrics = MetricsSink(MetricsSettings(), {"main": 30.0})
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        await metrics.close()
        assert metrics.address is None

    async def test_port_in_use_is_one_line_error(self) -> None:
        """Test that a taken port is a UserError naming metrics.port, not a traceback."""
        with _busy_port() as busy:
            port = busy.getsockname()[1]
            metrics = MetricsSink(MetricsSettings(enabled=True, port=port), {"main": 30.0})
            with pytest.raises(UserError, match=r"metrics: cannot listen on 127\.0\.0\.1:\d+"):
                await serve(metrics)
            await metrics.close()
