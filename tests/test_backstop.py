"""Tests for the exchange-resident stop-loss backstop (monitor/protect/backstop.py).

Through the real ccxt path: Binance USDⓈ-M stops go to `POST /fapi/v1/algoOrder` (ccxt 4.5.90,
docs/venues.md), served by tests/fakes/binance_orders.py on engineer C's fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.config.actions import ActionsSettings, StopLossSettings
from monitor.config.settings import SimSettings
from monitor.core.margin.report import report
from monitor.core.model import MarginReport
from monitor.protect.backstop import StopBackstop
from monitor.protect.executor import Executor
from monitor.sources.exchange import ExchangeSource
from monitor.sources.sim import SimVenue
from monitor.venues.orders import stop_client_id
from tests.fakes.account import account_for
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
from tests.fakes.binance_orders import BinanceOrders, install_orders

BTC = "BTC/USDT:USDT"
ALGO = "/fapi/v1/algoOrder"


@pytest.fixture
async def venue() -> AsyncIterator[tuple[FakeBinanceUsdm, BinanceOrders, ExchangeSource]]:
    fake = FakeBinanceUsdm()
    fake.account.wallet = 3_000.0
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 1.0, 60_000.0)
    book = install_orders(fake)
    async with fake:
        src = ExchangeSource(account_for(fake, API_KEY, SECRET))
        await src.fetch_snapshot()
        try:
            yield fake, book, src
        finally:
            await src.close()


def _backstop(src: object, tmp_path: Path, *, live: bool = True, **kw: float) -> StopBackstop:
    settings = ActionsSettings(stop_loss=StopLossSettings(enabled=True, **kw))
    ex = Executor(
        "acct",
        src,
        src.fetch_snapshot,
        settings=settings,  # type: ignore[arg-type, attr-defined]
        action_ratio=0.7,
        state_dir=tmp_path,
        live=live,
        venue="binanceusdm",
    )
    return StopBackstop(ex, settings.stop_loss)


async def _report(src: ExchangeSource) -> MarginReport:
    return report(await src.fetch_snapshot())


class TestBinanceStops:
    async def test_places_one_reduce_only_stop_before_liquidation(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that a long gets one reduce-only STOP_MARKET above its liquidation price."""
        _, book, src = venue
        rep = await _report(src)
        liq = rep.positions[0].liquidation_price
        assert liq is not None
        bs = _backstop(src, tmp_path, distance=0.02)
        assert await bs.maintain(rep, 1.0) == 1
        (sent,) = book.algo_received
        assert sent["algoType"] == "CONDITIONAL"
        assert sent["type"] == "STOP_MARKET"
        assert sent["side"] == "SELL"
        assert sent["reduceOnly"] == "true"
        assert sent["workingType"] == "MARK_PRICE"
        assert sent["clientAlgoId"] == stop_client_id("acct", BTC, "long", 1)
        trigger = float(sent["triggerPrice"])
        assert liq < trigger < rep.positions[0].mark_price
        assert trigger == pytest.approx(liq + 0.02 * 60_000, rel=1e-3)
        # an unchanged report changes nothing: no duplicate
        assert await bs.maintain(await _report(src), 2.0) == 0
        assert len(book.working_stops) == 1

    async def test_moves_the_stop_when_liquidation_moves_past_the_step(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that a liquidation-price move beyond move_step cancels and replaces the stop."""
        fake, book, src = venue
        bs = _backstop(src, tmp_path, move_step=0.005)
        await bs.maintain(await _report(src), 1.0)
        first = book.working_stops[0]
        fake.account.wallet = 3_010.0  # liquidation moves ~10 USDT: well inside the step
        assert await bs.maintain(await _report(src), 2.0) == 0
        fake.account.wallet = 1_500.0  # liquidation moves ~1500 USDT up
        assert await bs.maintain(await _report(src), 3.0) == 2  # one cancel, one create
        (working,) = book.working_stops
        assert working["clientAlgoId"] == stop_client_id("acct", BTC, "long", 2)
        assert float(working["triggerPrice"]) > float(first["triggerPrice"])
        assert book.algo_orders[first["algoId"]]["algoStatus"] == "CANCELED"

    async def test_restart_adopts_existing_stop_instead_of_duplicating(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that a restarted daemon finds its stop by client id and places no second one."""
        _, book, src = venue
        await _backstop(src, tmp_path).maintain(await _report(src), 1.0)
        again = _backstop(src, tmp_path)
        assert await again.maintain(await _report(src), 2.0) == 0
        assert len(book.algo_received) == 1
        assert len(book.working_stops) == 1

    async def test_closed_position_cancels_its_stop(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that the stop of a position that no longer exists is cancelled."""
        fake, book, src = venue
        bs = _backstop(src, tmp_path)
        await bs.maintain(await _report(src), 1.0)
        del fake.account.positions[("BTCUSDT", "BOTH")]
        assert await bs.maintain(await _report(src), 2.0) == 1
        assert book.working_stops == []

    async def test_dry_run_places_nothing(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that with actions not enabled no stop reaches the venue."""
        _, book, src = venue
        assert await _backstop(src, tmp_path, live=False).maintain(await _report(src), 1.0) == 0
        assert book.algo_received == []


class TestSimStops:
    async def test_sim_stop_rests_until_the_mark_crosses(self, tmp_path: Path) -> None:
        """Test that the sim keeps the stop resting (open) and sized to the position."""
        sim = SimVenue("demo")
        bs = _backstop(sim, tmp_path)
        bs.ex.venue = "sim"
        rep = report(sim.snapshot())
        placed = await bs.maintain(rep, 1.0)
        open_orders = await sim.fetch_open_orders()
        assert placed == len(open_orders) > 0
        held = {(p.symbol, p.side): p.contracts for p in sim.snapshot().positions}
        for o in open_orders:
            side = "long" if o["side"] == "sell" else "short"
            assert o["amount"] == held[(o["symbol"], side)]
            assert o["reduceOnly"] is True

    async def test_places_then_a_restart_adopts_instead_of_duplicating(
        self, tmp_path: Path
    ) -> None:
        """Test that on the sim the backstop rests one reduce-only stop per cross position
        with a liquidation price, an unchanged report changes nothing, and a restarted
        backstop adopts the stops it finds (open_stops) instead of placing more."""
        sim = SimVenue("demo", SimSettings(speed=10_000))
        rep = report(sim.snapshot())
        guarded = [
            r
            for r in rep.positions
            if r.margin_mode == "cross"
            and r.contracts > 0
            and r.liquidation_price is not None
            and r.liquidation_price > 0
        ]
        assert guarded
        settings = ActionsSettings(stop_loss=StopLossSettings(enabled=True, distance=0.02))
        first = Executor(
            "demo",
            sim,
            sim.fetch_snapshot,
            settings=settings,
            action_ratio=0.7,
            state_dir=tmp_path,
            live=True,
            venue="sim",
        )
        try:
            backstop = StopBackstop(first, settings.stop_loss)
            assert await backstop.maintain(rep, 1.0) == len(guarded)
            assert await backstop.maintain(report(sim.snapshot()), 2.0) == 0
        finally:
            first.close()
        resting = [o for r in guarded for o in await sim.open_stops(r.symbol)]
        assert len(resting) == len(guarded)
        assert all(o["reduceOnly"] for o in resting)
        again = Executor(
            "demo",
            sim,
            sim.fetch_snapshot,
            settings=settings,
            action_ratio=0.7,
            state_dir=tmp_path,
            live=True,
            venue="sim",
        )
        try:
            assert await StopBackstop(again, settings.stop_loss).maintain(rep, 3.0) == 0
        finally:
            again.close()
        assert [o for r in guarded for o in await sim.open_stops(r.symbol)] == resting
