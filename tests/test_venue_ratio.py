"""Tests for monitor/core/venue_ratio.py and its use by the daemon: the venue's own ratio has
teeth (issue 11 §4): drift alerts, and the ratio alerts and actions use never understates it."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.alerts.message import AlertMessage
from monitor.alerts.pipeline import AlertPipeline
from monitor.core.alert_config import AlertConfig
from monitor.core.margin import report as margin
from monitor.core.model import AccountUpdate, ModelDrift
from monitor.core.venue_ratio import VenueAnchor, carried, observe, used_ratio, with_venue
from monitor.report_json import report_to_dict
from monitor.sources.exchange import ExchangeSource
from monitor.store import Store
from tests.fakes.account import account_for
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
from tests.reports import ratio_report as _report
from tests.test_account_view import Recorder, daemon
from tests.test_alerting import FlakySink


class TestObserve:
    def test_two_reads_in_a_row_start_an_episode(self) -> None:
        """Test that one drifting read is noise, the second in a row starts model_drift,
        and one agreeing read ends it."""
        anchor, change = observe(None, 0.40, 0.50, 0.01)
        assert (anchor.strikes, anchor.drifting, change) == (1, False, None)
        anchor, change = observe(anchor, 0.40, 0.50, 0.01)
        assert (anchor.drifting, change) == (True, True)
        anchor, change = observe(anchor, 0.41, 0.50, 0.01)
        assert (anchor.drifting, change) == (True, None)
        anchor, change = observe(anchor, 0.500, 0.501, 0.01)
        assert (anchor.drifting, change) == (False, False)

    def test_an_agreeing_read_between_resets_the_count(self) -> None:
        """Test that drifting, agreeing, drifting reads never alert."""
        anchor, _ = observe(None, 0.40, 0.50, 0.01)
        anchor, _ = observe(anchor, 0.50, 0.50, 0.01)
        anchor, change = observe(anchor, 0.40, 0.50, 0.01)
        assert (anchor.strikes, change) == (1, None)

    def test_one_side_liquidated_is_drift(self) -> None:
        """Test that ours finite while the venue says liquidated (inf) counts as drift."""
        anchor, _ = observe(None, 0.9, math.inf, 0.01)
        anchor, change = observe(anchor, 0.9, math.inf, 0.01)
        assert change is True


class TestUsedRatio:
    def test_sources(self) -> None:
        """Test that worst is the larger of ours and the venue's carried forward, model is
        ours, venue is the venue's moved by our model's relative change since the read."""
        anchor = VenueAnchor(venue_ratio=0.6, model_ratio=0.5)
        assert carried(anchor, 0.55) == pytest.approx(0.66)
        assert used_ratio(0.55, anchor, "worst") == pytest.approx(0.66)
        assert used_ratio(0.55, anchor, "model") == 0.55
        assert used_ratio(0.55, anchor, "venue") == pytest.approx(0.66)
        low = VenueAnchor(venue_ratio=0.4, model_ratio=0.5)
        assert used_ratio(0.55, low, "worst") == 0.55
        assert used_ratio(0.55, None, "venue") == 0.55

    @given(st.floats(0.0, 5.0), st.floats(1e-6, 5.0), st.floats(0.0, 5.0))
    def test_worst_never_understates_either(self, venue: float, at_read: float, now: float) -> None:
        """Test that the worst ratio is at least ours and at least the venue's carried."""
        anchor = VenueAnchor(venue, at_read)
        used = used_ratio(now, anchor, "worst")
        assert used >= now
        assert used >= carried(anchor, now)

    def test_report_shows_both_figures(self) -> None:
        """Test that the report's margin_ratio (and level) is the used ratio, with our
        figure and the venue's beside it in the JSON report (MQTT state, report --json)."""
        anchor = VenueAnchor(venue_ratio=0.6, model_ratio=0.5)
        rep = with_venue(_report(0.5), anchor, "worst")
        assert (rep.margin_ratio, rep.model_ratio, rep.venue_ratio) == (
            pytest.approx(0.6),
            0.5,
            pytest.approx(0.6),
        )
        assert rep.margin_level == pytest.approx(1 / 0.6)
        data = report_to_dict(rep)
        assert (data["margin_ratio"], data["model_ratio"], data["venue_ratio"]) == (
            pytest.approx(0.6),
            0.5,
            pytest.approx(0.6),
        )
        plain = report_to_dict(_report(0.5))
        assert (plain["model_ratio"], plain["venue_ratio"]) == (0.5, None)


class TestModelDriftAlert:
    def test_drift_goes_through_the_outbox(self, tmp_path: Path) -> None:
        """Test that model_drift fires a warning into the outbox naming both figures, and
        resolves when the figures agree again."""
        pipeline = AlertPipeline(
            Store(tmp_path / "a.db"), AlertConfig(repeat_every=0), [FlakySink()]
        )
        pipeline.on_model_drift(ModelDrift("acct", True, 0.41, 0.5), now=1.0)
        (row,) = pipeline.store.pending()
        message = AlertMessage.from_json(row.payload)
        assert (message.rule, message.level, message.kind) == ("model_drift", "warning", "firing")
        assert "0.4100" in message.detail
        assert "0.5000" in message.detail
        pipeline.on_model_drift(ModelDrift("acct", False, 0.5, 0.5), now=2.0)
        last = AlertMessage.from_json(pipeline.store.pending()[-1].payload)
        assert (last.rule, last.kind) == ("model_drift", "resolved")


class TestDaemon:
    @pytest.mark.parametrize("source", ["worst", "model"])
    async def test_venue_figure_drives_alerts_and_drift_fires(self, source: str) -> None:
        """Test that against a venue whose own ratio is above ours, the daemon raises
        model_drift after two reads, and by default reports (and alerts on) the venue's
        figure, ours beside it; with ratio_source = "model" it alerts on ours."""
        fake = FakeBinanceUsdm()
        fake.account.wallet = 1_000.0
        fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 1.0, 59_800.0)
        # margin balance 1 200; ours: MM 60 000 x 0.5 % - 50 = 250, ratio 0.208; the
        # venue's totals charge 710 more: 960 / 1 200 = 0.8
        fake.account.unmodelled_mm = 710.0
        recorder = Recorder()
        async with fake:
            src = ExchangeSource(
                account_for(fake, API_KEY, SECRET, poll_interval=0.2, stale_after=60.0),
                debounce=0.02,
            )
            async with daemon(src, recorder, ratio_source=source):
                await recorder.until(
                    lambda: any(isinstance(e, ModelDrift) for e in recorder.events)
                )
                reads = [e for e in recorder.events if isinstance(e, AccountUpdate)]
                await recorder.until(
                    lambda: recorder.reports and recorder.reports[-1].venue_ratio is not None
                )
                await asyncio.sleep(0.05)
        drift = next(e for e in recorder.events if isinstance(e, ModelDrift))
        assert drift.drifting
        assert len(reads) >= 2
        ours = 250 / 1_200
        assert drift.model_ratio == pytest.approx(ours, rel=1e-9)
        assert drift.venue_ratio == pytest.approx(0.8, rel=1e-9)
        last = recorder.reports[-1]
        assert last.model_ratio == pytest.approx(ours, rel=1e-9)
        assert last.venue_ratio == pytest.approx(0.8, rel=1e-9)
        if source == "worst":
            assert last.margin_ratio == pytest.approx(0.8, rel=1e-9)
            assert recorder.levels[-1][1] == "critical"  # 0.8: critical at 0.7
        else:
            assert last.margin_ratio == pytest.approx(ours, rel=1e-9)
            assert recorder.levels == []
        assert margin.report(src.snapshot()).margin_ratio == pytest.approx(ours, rel=1e-9)


class TestActionsUseTheVenueFigure:
    async def test_step_aims_the_venues_ratio_at_the_target(self, tmp_path: Path) -> None:
        """Test that when the venue's own ratio is above ours, the protective step sells
        enough for the venue's figure (carried forward) to reach the target, not ours."""
        from tests.fakes.binance_orders import install_orders
        from tests.test_executor import Trail, _executor, _source

        sold = {}
        for bias in (False, True):
            fake = FakeBinanceUsdm()
            fake.account.wallet = 700.0  # 2 BTC long at 60k: MM 550, ours 0.786
            fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 2.0, 60_000.0)
            book = install_orders(fake)
            async with fake:
                src = await _source(fake)
                try:
                    ex = _executor(src, tmp_path / str(bias), Trail())
                    rep = margin.report(await src.fetch_snapshot())
                    anchor = VenueAnchor(
                        rep.margin_ratio * (1.25 if bias else 1.0), rep.margin_ratio
                    )
                    used = with_venue(rep, anchor, "worst")
                    assert await ex.step(used, 1_000.0) is not None
                    sold[bias] = float(book.received[0]["quantity"])
                    after = margin.report(await src.fetch_snapshot()).margin_ratio
                finally:
                    await src.close()
            # ours after the step, carried by the venue's 25 % bias, is at the 0.4 target
            assert after * (1.25 if bias else 1.0) <= 0.4 + 1e-9
        assert sold[True] > sold[False]
