"""Tests for the exchange-resident stop-loss backstop (monitor/protect/backstop.py).

Through the real ccxt path: Binance USDⓈ-M stops go to `POST /fapi/v1/algoOrder` (ccxt 4.5.90,
docs/venues.md), served by tests/fakes/binance_orders.py on engineer C's fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from monitor.config.actions import ActionsSettings, StopLossSettings
from monitor.config.settings import SimSettings
from monitor.core.margin.report import report
from monitor.core.model import MarginReport
from monitor.protect.backstop import StopBackstop
from monitor.protect.executor import Executor
from monitor.protect.switches import ActionSwitches
from monitor.sources.exchange import ExchangeSource
from monitor.sources.sim import SimVenue
from monitor.venues.orders import stop_client_id
from tests.desks import BTC, DESKS, Desk, open_desk
from tests.fakes.account import account_for
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
from tests.fakes.binance_orders import BinanceOrders, install_orders


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


def _backstop(
    src: Any,
    tmp_path: Path,
    *,
    live: bool = True,
    venue: str = "binanceusdm",
    switches: ActionSwitches | None = None,
    **kw: float,
) -> StopBackstop:
    settings = ActionsSettings(stop_loss=StopLossSettings(enabled=True, **kw))
    ex = Executor(
        "acct",
        src,
        src.fetch_snapshot,
        settings=settings,
        action_ratio=0.7,
        state_dir=tmp_path,
        live=live,
        venue=venue,
        switches=switches,
    )
    return StopBackstop(ex, settings.stop_loss)


async def _report(src: Any) -> MarginReport:
    return report(await src.fetch_snapshot())


@pytest.fixture(params=DESKS)
async def desk(request: pytest.FixtureRequest) -> AsyncIterator[Desk]:
    """1 BTC long at 60k on 3 000 USDT, on each desk."""
    async with open_desk(request.param, wallet=3_000.0, btc=1.0) as opened:
        yield opened


def _on(desk: Desk, tmp_path: Path, **kw: Any) -> StopBackstop:
    """A backstop trading on `desk`, as the daemon builds it for that venue."""
    return _backstop(desk.desk, tmp_path, venue=desk.venue, **kw)


class TestStops:
    """The backstop's stops, the same on the ccxt venue and on the sim (OrderDesk)."""

    async def test_places_one_reduce_only_stop_before_liquidation(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a long gets one reduce-only stop sized to it, above its liquidation
        price, under the first client id of that position, and no second one."""
        rep = await _report(desk.desk)
        liq = rep.positions[0].liquidation_price
        assert liq is not None
        bs = _on(desk, tmp_path, distance=0.02)
        assert await bs.maintain(rep, 1.0) == 1
        (sent,) = desk.stops_arrived()
        assert (sent.side, sent.amount, sent.reduce_only) == ("sell", 1.0, True)
        assert sent.client_id == stop_client_id("acct", BTC, "long", 1)
        assert sent.trigger is not None
        assert liq < sent.trigger < rep.positions[0].mark_price
        assert sent.trigger == pytest.approx(liq + 0.02 * 60_000, rel=1e-3)
        # an unchanged report changes nothing: no duplicate
        assert await bs.maintain(await _report(desk.desk), 2.0) == 0
        assert len(await desk.working_stops()) == 1

    async def test_moves_the_stop_when_liquidation_moves_past_the_step(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a liquidation-price move beyond move_step cancels and replaces the stop."""
        bs = _on(desk, tmp_path, move_step=0.005)
        await bs.maintain(await _report(desk.desk), 1.0)
        (first,) = await desk.working_stops()
        desk.hand_wallet(3_010.0)  # liquidation moves ~10 USDT: well inside the step
        assert await bs.maintain(await _report(desk.desk), 2.0) == 0
        desk.hand_wallet(1_500.0)  # liquidation moves ~1500 USDT up
        assert await bs.maintain(await _report(desk.desk), 3.0) == 2  # one cancel, one create
        (working,) = await desk.working_stops()  # the first one is cancelled
        assert first["clientOrderId"] == stop_client_id("acct", BTC, "long", 1)
        assert working["clientOrderId"] == stop_client_id("acct", BTC, "long", 2)
        assert float(working["triggerPrice"]) > float(first["triggerPrice"])

    async def test_restart_adopts_existing_stop_instead_of_duplicating(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a restarted daemon finds its stop by client id and places no second one."""
        await _on(desk, tmp_path).maintain(await _report(desk.desk), 1.0)
        again = _on(desk, tmp_path)
        assert await again.maintain(await _report(desk.desk), 2.0) == 0
        assert len(desk.stops_arrived()) == 1
        assert len(await desk.working_stops()) == 1

    async def test_closed_position_cancels_its_stop(self, desk: Desk, tmp_path: Path) -> None:
        """Test that the stop of a position that no longer exists is cancelled."""
        bs = _on(desk, tmp_path)
        await bs.maintain(await _report(desk.desk), 1.0)
        desk.hand_position(0.0)
        assert await bs.maintain(await _report(desk.desk), 2.0) == 1
        assert await desk.working_stops() == []

    async def test_dry_run_places_nothing(self, desk: Desk, tmp_path: Path) -> None:
        """Test that with actions not enabled no stop reaches the venue."""
        assert await _on(desk, tmp_path, live=False).maintain(await _report(desk.desk), 1.0) == 0
        assert desk.stops_arrived() == []


class TestBinanceWire:
    async def test_stop_is_a_conditional_stop_market_on_the_mark(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that ccxt sends the stop to the algo endpoint: CONDITIONAL, STOP_MARKET,
        SELL, reduceOnly, triggered on the mark price, with our client id."""
        _, book, src = venue
        assert await _backstop(src, tmp_path, distance=0.02).maintain(await _report(src), 1.0)
        (sent,) = book.algo_received
        assert sent["algoType"] == "CONDITIONAL"
        assert sent["type"] == "STOP_MARKET"
        assert sent["side"] == "SELL"
        assert sent["reduceOnly"] == "true"
        assert sent["workingType"] == "MARK_PRICE"
        assert sent["clientAlgoId"] == stop_client_id("acct", BTC, "long", 1)


class TestSimStops:
    async def test_sim_stop_rests_until_the_mark_crosses(self, tmp_path: Path) -> None:
        """Test that the sim keeps the stop resting (open) and sized to the position."""
        sim = SimVenue("demo")
        bs = _backstop(sim, tmp_path, venue="sim")
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
