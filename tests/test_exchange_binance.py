"""ExchangeSource against a fake Binance USDⓈ-M venue (real ccxt.pro parsing, loopback only)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from monitor import margin, stress
from monitor.model import (
    BalanceUpdate,
    Event,
    PositionsUpdate,
    PriceTick,
)
from monitor.sources.exchange import ExchangeSource
from tests.fakes.account import EventTap, account_for
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinanceUsdm]:
    venue = FakeBinanceUsdm()
    venue.account.wallet = 1_000.0
    venue.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.8, 59_000.0)
    venue.account.positions[("ETHUSDT", "BOTH")] = BinancePosition("ETHUSDT", -4.0, 3_100.0)
    async with venue:
        yield venue


def make_source(fake: FakeBinanceUsdm, key: str = API_KEY, **kw: float) -> ExchangeSource:
    account = account_for(fake, key, SECRET, poll_interval=kw.pop("poll_interval", 0.2),
                          stale_after=kw.pop("stale_after", 1.0))
    return ExchangeSource(account, backoff_cap=0.2, reconcile_every=kw.pop("reconcile", 5.0),
                          debounce=0.02)


@pytest.fixture
async def running(fake: FakeBinanceUsdm) -> AsyncIterator[tuple[ExchangeSource, EventTap]]:
    source = make_source(fake)
    tap = EventTap(source.events())
    await tap.wait_for(lambda e: isinstance(e, BalanceUpdate))
    yield source, tap
    await tap.stop()
    await source.close()


def is_positions(event: Event) -> bool:
    return isinstance(event, PositionsUpdate)


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * abs(b)


class TestInitialSnapshot:
    async def test_positions_and_wallet(self, running: tuple[ExchangeSource, EventTap]) -> None:
        """Test that the first reconciliation yields both positions and the wallet balance."""
        _source, tap = running
        update = await tap.wait_for(is_positions)
        assert isinstance(update, PositionsUpdate)
        by_symbol = {p.symbol: p for p in update.positions}
        assert by_symbol[BTC].side == "long"
        assert by_symbol[BTC].contracts == pytest.approx(0.8)
        assert by_symbol[ETH].side == "short"
        assert by_symbol[ETH].contracts == pytest.approx(4.0)
        # The venue's maintMargin (with cum), not ccxt's mmr × notional (notes/ccxt.md §0.7).
        assert by_symbol[ETH].maintenance_margin == pytest.approx(12_000 * 0.0065 - 15.0)
        balance = next(e for e in tap.seen if isinstance(e, BalanceUpdate))
        assert [(c.asset, c.amount) for c in balance.collateral] == [("USDT", 1_000.0)]

    async def test_tiers_keep_cum(self, running: tuple[ExchangeSource, EventTap]) -> None:
        """Test that tiers carry Binance's raw cum as the maintenance amount."""
        source, tap = running
        await tap.wait_for(is_positions)
        eth = {p.symbol: p for p in source.positions}[ETH]
        assert [(t.max_notional, t.mmr, t.maintenance_amount) for t in eth.tiers[:3]] == [
            (10_000.0, 0.005, 0.0), (100_000.0, 0.0065, 15.0), (500_000.0, 0.01, 365.0)]


class TestVenueAgreement:
    async def test_ratio_matches_venue(
        self, fake: FakeBinanceUsdm, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that our margin ratio equals totalMaintMargin/totalMarginBalance within 0.01 %."""
        source, tap = running
        await tap.wait_for(is_positions)
        ours = margin.report(source.snapshot()).margin_ratio
        assert close(ours, fake.account.venue_margin_ratio())
        check = source.venue_check
        assert check is not None
        assert check.relative_drift is not None
        assert abs(check.relative_drift) < 1e-4

    async def test_ratio_after_mark_move_crossing_a_tier(
        self, fake: FakeBinanceUsdm, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that after a streamed mark move into the next bracket (cum 50) we still match."""
        source, tap = running
        await tap.wait_for(is_positions)
        before = margin.report(source.snapshot()).margin_ratio
        await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
        mark = len(tap.seen)
        await fake.push_mark("BTCUSDT", 70_000.0)  # 0.8 × 70,000 = 56,000 > 50,000 cap
        tick = await tap.wait_for(lambda e: isinstance(e, PriceTick) and e.mark_price == 70_000.0,
                                  after=mark)
        assert isinstance(tick, PriceTick)
        assert tick.symbol == BTC
        after = margin.report(source.snapshot()).margin_ratio
        assert after != before
        assert close(after, fake.account.venue_margin_ratio())

    async def test_mark_move_crosses_threshold(
        self, fake: FakeBinanceUsdm, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that a streamed ETH spike takes the ratio across 0.5, as the venue's does."""
        source, tap = running
        await tap.wait_for(is_positions)
        assert margin.report(source.snapshot()).margin_ratio < 0.5
        await fake.wait_for_client("/market/ws", "ethusdt@markPrice@1s")
        await fake.push_mark("ETHUSDT", 3_450.0)
        await tap.wait_for(lambda e: isinstance(e, PriceTick) and e.mark_price == 3_450.0)
        ratio = margin.report(source.snapshot()).margin_ratio
        assert ratio > 0.5
        assert close(ratio, fake.account.venue_margin_ratio())
        # The what-if path (stress.with_prices) agrees with the live path.
        moved = stress.with_prices(source.snapshot(), {ETH: 3_450.0})
        assert margin.report(moved).margin_ratio == pytest.approx(ratio)
