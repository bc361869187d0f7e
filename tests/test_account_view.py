"""The account view is always one the venue could have had (issue 11).

Through the real daemon loop (`AccountLoop` via `run_daemon`) and real ccxt parsing against
the loopback fake Binance USDⓈ-M: a reconciliation reaches the loop as one event, and a
mark streamed while a read is in flight is not undone by the read's older mark.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import ccxt
import pytest

from monitor.config.monitoring import MetricsSettings
from monitor.config.settings import load_settings
from monitor.core.margin import report as margin
from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Event,
    MarginReport,
    PriceTick,
    SourceDown,
)
from monitor.daemon.supervisor import run_daemon
from monitor.ops.metrics import MetricsSink
from monitor.sources.exchange import ExchangeSource
from monitor.sources.exchange_read import _venue_time
from monitor.sources.sim import SimVenue
from tests.fakes.account import account_for
from tests.fakes.binance import (
    API_KEY,
    SECRET,
    BinancePosition,
    FakeBinanceUsdm,
    use_production_errors,
)
from tests.fakes.binance_orders import install_orders
from tests.fakes.bybit import API_KEY as BYBIT_KEY
from tests.fakes.bybit import SECRET as BYBIT_SECRET
from tests.fakes.bybit import BybitPosition, FakeBybit
from tests.fakes.bybit_orders import install_orders as install_bybit_orders
from tests.sinks import QuietSink

BTC = "BTC/USDT:USDT"
SOL = "SOL/USDT:USDT"


class Recorder(QuietSink):
    """A sink that keeps every report, level change and event it is told of."""

    name = "recorder"

    def __init__(self) -> None:
        self.reports: list[MarginReport] = []
        self.levels: list[tuple[str, str]] = []
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        self.reports.append(report)
        self.changed.set()

    async def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        self.levels.append((previous, level))

    async def until(self, condition: Any, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def daemon(source: Any, recorder: Recorder, **settings: Any) -> AsyncIterator[None]:
    """`run_daemon` over one source, report per change (report_spacing 0), until the block ends."""
    config = load_settings(None, shock_interval=3600.0, report_spacing=0.0, **settings)
    task = asyncio.create_task(
        run_daemon(config, [], [recorder], sources=[source], handle_signals=False, duration=60)
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.close()


def source_for(fake: FakeBinanceUsdm) -> ExchangeSource:
    account = account_for(fake, API_KEY, SECRET, poll_interval=5.0, stale_after=60.0)
    return ExchangeSource(account, backoff_cap=0.2, reconcile_every=10.0, debounce=0.02)


def within(ratio: float, truths: list[float], rel: float = 1e-9) -> bool:
    return any(abs(ratio - t) <= rel * abs(t) for t in truths)


class TestAtomicReconciliation:
    async def test_losing_fill_never_reports_a_half_applied_ratio(self) -> None:
        """Test that a reduce-only fill of a losing long, picked up by a reconciliation,
        yields only ratios the venue had (0.667 before, 0.542 after), never the 0.364 of new
        positions against the old wallet, and no false resolved."""
        fake = FakeBinanceUsdm()
        fake.account.wallet = 1_000.0
        fake.account.marks["BTCUSDT"] = 50_000.0
        fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 1.0, 50_700.0)
        install_orders(fake)
        recorder = Recorder()
        async with fake:
            before = fake.account.venue_margin_ratio()
            assert before == pytest.approx(200 / 300)  # warning at the default 0.5
            source = source_for(fake)
            async with daemon(source, recorder):
                await recorder.until(lambda: recorder.levels == [("ok", "warning")])
                await source.create_order(BTC, "market", "sell", 0.2, None, {"reduceOnly": True})
                after = fake.account.venue_margin_ratio()
                # wallet 1 000 - 140 realised - 5 fee; 0.8 BTC left, 560 unrealised loss
                assert fake.account.wallet == pytest.approx(855.0)
                assert after == pytest.approx(160 / 295)
                await recorder.until(
                    lambda: any(within(r.margin_ratio, [after]) for r in recorder.reports)
                )
                await asyncio.sleep(0.2)  # anything a half-applied read would still report
        ratios = [r.margin_ratio for r in recorder.reports]
        assert ratios, "no report"
        assert all(within(r, [before, after]) for r in ratios), ratios
        assert recorder.levels == [("ok", "warning")]  # never a resolved
        reads = [e for e in recorder.events if isinstance(e, AccountUpdate)]
        assert reads
        assert all(e.venue_ratio is not None for e in reads)
        assert within(reads[-1].venue_ratio or 0.0, [after])

    async def test_sim_fill_reports_only_ratios_the_sim_had(self) -> None:
        """Test that around a losing sim fill (the demo's 0.088 case) every reported ratio
        is one the sim's own book had at some instant, and the fill's event carries the
        sim's ratio."""
        venue = RecordingSim("demo")
        recorder = Recorder()
        async with daemon(venue, recorder):
            await recorder.until(lambda: len(recorder.reports) >= 1)
            await venue.create_order(SOL, "market", "sell", 200, None, {"reduceOnly": True})
            await recorder.until(lambda: any(isinstance(e, AccountUpdate) for e in recorder.events))
            seen = len(recorder.reports)
            await recorder.until(lambda: len(recorder.reports) > seen + 3)
        read = next(e for e in recorder.events if isinstance(e, AccountUpdate))
        assert [p.contracts for p in read.positions if p.symbol == SOL] == [pytest.approx(200.0)]
        assert within(read.venue_ratio or 0.0, venue.history)
        ratios = [r.margin_ratio for r in recorder.reports]
        assert all(within(r, venue.history) for r in ratios), [
            r for r in ratios if not within(r, venue.history)
        ]


class RecordingSim(SimVenue):
    """The sim, recording its own margin ratio after every change of its book."""

    def __init__(self, account: str) -> None:
        super().__init__(account)
        self.history = [self.ratio()]

    def ratio(self) -> float:
        return margin.report(self.snapshot()).margin_ratio

    def _set_mark(self, symbol: str, price: float) -> None:
        super()._set_mark(symbol, price)
        self.history.append(self.ratio())

    def _fill(self, order: dict[str, Any], now: float) -> None:
        super()._fill(order, now)
        self.history.append(self.ratio())


class TestFreshness:
    def test_venue_time_on_our_clock(self) -> None:
        """Test that a frame's venue timestamp is moved onto our clock by ccxt's measured
        time difference, is capped at its arrival, and falls back to the arrival."""
        assert _venue_time({"timestamp": 1_000_500}, 2_000.0, 0.2) == pytest.approx(1_000.7)
        assert _venue_time({"timestamp": 5_000_000}, 2_000.0) == 2_000.0  # venue ahead
        assert _venue_time({"markPrice": 1.0}, 2_000.0) == 2_000.0

    async def test_mark_streamed_during_a_read_is_kept(self) -> None:
        """Test that a mark streamed while a positionRisk read is in flight is not replaced
        by the read's older mark when the read lands (issue 11: false resolved at +55 ms)."""
        fake = FakeBinanceUsdm()
        fake.account.wallet = 1_500.0
        fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 1.0, 60_000.0)
        recorder = Recorder()
        async with fake:
            source = source_for(fake)
            async with daemon(source, recorder):
                await recorder.until(
                    lambda: any(isinstance(e, AccountUpdate) for e in recorder.events)
                )
                await fake.wait_for_client("/market/ws", topic="btcusdt@markPrice@1s")
                reads = fake.count("/fapi/v3/positionRisk")
                # long enough that the frame below lands first even on a loaded machine
                fake.late("/fapi/v3/positionRisk", 1.5)
                await fake.set_position("BTCUSDT", 1.0, 60_000.0)  # a trigger: re-read
                async with asyncio.timeout(5):
                    while fake.count("/fapi/v3/positionRisk") == reads:  # noqa: ASYNC110
                        await asyncio.sleep(0.005)
                n = len([e for e in recorder.events if isinstance(e, AccountUpdate)])
                # the read has its answer (mark 60 000); the mark now moves on the stream
                await fake.push_mark("BTCUSDT", 59_000.0)
                await recorder.until(
                    lambda: len([e for e in recorder.events if isinstance(e, AccountUpdate)]) > n
                )
                late = [e for e in recorder.events if isinstance(e, AccountUpdate)][n]
                assert dict(late.marks)[BTC] == 60_000.0  # the read carried the older mark
                tick = next(
                    e
                    for e in recorder.events
                    if isinstance(e, PriceTick) and e.mark_price == 59_000.0
                )
                # the frame was taken in while the read was still out
                assert recorder.events.index(tick) < recorder.events.index(late)
                assert tick.ts > late.ts  # venue time of the frame after the read was sent
                await recorder.until(
                    lambda: recorder.reports[-1].positions[0].mark_price == 59_000.0
                )
                await asyncio.sleep(0.1)
        last = recorder.reports[-1]
        assert last.positions[0].mark_price == 59_000.0
        assert last.margin_ratio == pytest.approx(fake.account.venue_margin_ratio(), rel=1e-9)


class TestTornRead:
    async def test_fill_between_the_two_requests_is_read_again(self) -> None:
        """Test that a fill landing between a read's positions and balance answers (a pair
        the venue never had) is detected and read again, so no emitted read mixes them."""
        fake = FakeBinanceUsdm()
        fake.account.wallet = 1_000.0
        fake.account.marks["BTCUSDT"] = 50_000.0
        fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 1.0, 50_700.0)
        books: list[tuple[float, float]] = [(1.0, 1_000.0)]  # (BTC amount, wallet) history
        done = False

        def fill() -> None:  # the first of the two answers is out: the book changes now
            nonlocal done
            if done:
                return
            done = True
            pos = fake.account.positions[("BTCUSDT", "BOTH")]
            fake.account.wallet += 0.2 * (50_000.0 - pos.entry) - 0.0005 * 0.2 * 50_000.0
            pos.amount = 0.8
            books.append((pos.amount, fake.account.wallet))

        async with fake:
            source = source_for(fake)
            try:
                fake.after("/fapi/v3/positionRisk", fill)
                fake.after("/fapi/v3/account", fill)
                snapshot = await source.fetch_snapshot()
            finally:
                await source.close()
        assert done
        assert fake.count("/fapi/v3/positionRisk") == 2  # the torn pair was read again
        (btc,) = snapshot.positions
        assert (btc.contracts, snapshot.collateral[0].amount) == books[-1]


class TestFillsMoveMoney:
    """A fill at a fake venue moves money as the venue does (issue 11 §3), through ccxt."""

    @staticmethod
    async def _venue(kind: str) -> tuple[Any, Any]:
        if kind == "binance":
            fake: Any = FakeBinanceUsdm()
            fake.account.marks["BTCUSDT"] = 50_000.0
            fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 1.0, 50_700.0)
            install_orders(fake)
            await fake.start()
            source = source_for(fake)
            use_production_errors(await source.open())  # -2022 as InvalidOrder (ccxt.md §0.6)
            return fake, source
        fake = FakeBybit()
        fake.account.marks["BTCUSDT"] = 50_000.0
        fake.account.positions[("BTCUSDT", 0)] = BybitPosition("BTCUSDT", "Buy", 1.0, 50_700.0)
        install_bybit_orders(fake)
        await fake.start()
        account = account_for(fake, BYBIT_KEY, BYBIT_SECRET, poll_interval=5.0, stale_after=60.0)
        return fake, ExchangeSource(account, backoff_cap=0.2, reconcile_every=10.0)

    @pytest.mark.parametrize(("kind", "fee_rate"), [("binance", 0.0005), ("bybit", 0.00055)])
    async def test_losing_fill_realises_pnl_and_fee(self, kind: str, fee_rate: float) -> None:
        """Test that a reduce-only fill of a losing long moves realised PnL and the taker
        fee into the wallet, keeps the entry price, and the venue's ratio after it is the
        one our model computes from a fresh read."""
        fake, source = await self._venue(kind)
        fake.account.wallet = 1_000.0
        try:
            await source.fetch_snapshot()
            await source.create_order(BTC, "market", "sell", 0.2, None, {"reduceOnly": True})
            after = await source.fetch_snapshot()
        finally:
            await source.close()
            await fake.stop()
        expected = 1_000.0 + 0.2 * (50_000.0 - 50_700.0) - fee_rate * 0.2 * 50_000.0
        assert fake.account.wallet == pytest.approx(expected, rel=1e-12)
        (btc,) = after.positions
        assert (btc.contracts, btc.entry_price) == (pytest.approx(0.8), 50_700.0)
        assert after.collateral[0].amount == pytest.approx(expected, rel=1e-12)
        venue = (
            fake.account.venue_margin_ratio()
            if kind == "binance"
            else fake.account.totals()["mm_rate"]
        )
        assert margin.report(after).margin_ratio == pytest.approx(venue, rel=1e-9)

    @pytest.mark.parametrize(("kind", "code"), [("binance", "-2022"), ("bybit", "110017")])
    @pytest.mark.parametrize(("side", "amount"), [("sell", 1.5), ("buy", 0.1)])
    async def test_oversize_or_wrong_side_is_rejected(
        self, kind: str, code: str, side: str, amount: float
    ) -> None:
        """Test that a reduce-only order larger than the long, or on the side that would
        grow it, is rejected with the venue's code (Binance -2022, Bybit 110017) and moves
        nothing."""
        fake, source = await self._venue(kind)
        fake.account.wallet = 1_000.0
        try:
            await source.fetch_snapshot()
            with pytest.raises(ccxt.InvalidOrder, match=code):
                await source.create_order(BTC, "market", side, amount, None, {"reduceOnly": True})
            after = await source.fetch_snapshot()
        finally:
            await source.close()
            await fake.stop()
        assert fake.account.wallet == 1_000.0
        assert [p.contracts for p in after.positions] == [pytest.approx(1.0)]


class TestBadKeyAtStartup:
    async def test_rejected_key_is_one_line_in_alert_and_healthz(self) -> None:
        """Test that a key the venue rejects from the start reaches the sinks (alert) and
        /healthz as the one-line "rejected the API key" message, not the raw exception."""
        fake = FakeBinanceUsdm()
        recorder = Recorder()
        metrics = MetricsSink(MetricsSettings(), {"binanceusdm-test": 60.0})
        async with fake:
            account = account_for(fake, "revoked-key", SECRET, poll_interval=5.0, stale_after=60.0)
            source = ExchangeSource(account, backoff_cap=0.2)
            config = load_settings(None, shock_interval=3600.0)
            task = asyncio.create_task(
                run_daemon(
                    config,
                    [],
                    [recorder, metrics],
                    sources=[source],
                    handle_signals=False,
                    duration=60,
                )
            )
            try:
                await recorder.until(
                    lambda: any(isinstance(e, SourceDown) for e in recorder.events)
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await source.close()
        down = next(e for e in recorder.events if isinstance(e, SourceDown))
        assert down.reason.startswith("binanceusdm rejected the API key during the start-up read (")
        assert down.reason.endswith(
            "check accounts.binanceusdm-test.api_key/secret and their permissions"
        )
        assert "\n" not in down.reason
        assert "-2015" in down.reason  # the venue's own code, inside the one line
        assert metrics.blind() == {"binanceusdm-test": f"source down: {down.reason}"}
