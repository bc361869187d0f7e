"""ExchangeSource against a fake Bybit v5 UTA venue (real ccxt.pro parsing, loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from monitor.core.margin import report as margin
from monitor.core.model import (
    AccountUpdate,
    Event,
    PriceTick,
    SourceDown,
    SourceStale,
    SourceUp,
)
from monitor.sources.exchange import ExchangeSource
from tests.fakes.account import EventTap, account_for
from tests.fakes.bybit import API_KEY, SECRET, BybitPosition, FakeBybit

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBybit]:
    venue = FakeBybit()
    venue.account.wallet = 20_000.0
    venue.account.positions[("BTCUSDT", 0)] = BybitPosition("BTCUSDT", "Buy", 0.5, 58_000.0)
    venue.account.positions[("ETHUSDT", 0)] = BybitPosition("ETHUSDT", "Sell", 30.0, 3_100.0)
    async with venue:
        yield venue


@contextlib.asynccontextmanager
async def started(
    fake: FakeBybit, key: str = API_KEY, stale_after: float = 1.0, reconcile: float = 0.5
) -> AsyncIterator[tuple[ExchangeSource, EventTap]]:
    account = account_for(fake, key, SECRET, poll_interval=0.2, stale_after=stale_after)
    source = ExchangeSource(account, backoff_cap=0.2, reconcile_every=reconcile, debounce=0.02)
    tap = EventTap(source.events())
    try:
        yield source, tap
    finally:
        await tap.stop()
        await source.close()


@pytest.fixture
async def running(fake: FakeBybit) -> AsyncIterator[tuple[ExchangeSource, EventTap]]:
    async with started(fake) as (source, tap):
        await tap.wait_for(lambda e: isinstance(e, AccountUpdate))
        yield source, tap


def is_positions(event: Event) -> bool:
    return isinstance(event, AccountUpdate)


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * abs(b)


class TestInitialSnapshot:
    async def test_positions_wallet_and_mode(
        self, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that positions come through with Bybit's cross mode and the wallet excludes UPL."""
        source, tap = running
        await tap.wait_for(is_positions)
        by_symbol = {p.symbol: p for p in source.positions}
        assert by_symbol[BTC].side == "long"
        assert by_symbol[ETH].side == "short"
        assert by_symbol[ETH].contracts == pytest.approx(30.0)
        assert {p.margin_mode for p in source.positions} == {"cross"}
        assert by_symbol[BTC].maintenance_margin == pytest.approx(30_000 * 0.005)
        assert [(c.asset, c.amount) for c in source.collateral] == [("USDT", 20_000.0)]

    async def test_tiers_keep_mm_deduction(self, running: tuple[ExchangeSource, EventTap]) -> None:
        """Test that risk-limit tiers keep Bybit's mmDeduction and fill it where it is blank."""
        source, tap = running
        await tap.wait_for(is_positions)
        eth = {p.symbol: p for p in source.positions}[ETH]
        assert [(t.max_notional, t.mmr, t.maintenance_amount) for t in eth.tiers] == [
            (100_000.0, 0.01, 0.0),
            (500_000.0, 0.015, 500.0),
            (1_000_000.0, 0.02, 3_000.0),
        ]


class TestVenueAgreement:
    async def test_ratio_matches_account_mm_rate(
        self, fake: FakeBybit, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that our margin ratio equals Bybit's accountMMRate within 0.01 %."""
        source, tap = running
        await tap.wait_for(is_positions)
        ours = margin.report(source.snapshot()).margin_ratio
        assert close(ours, fake.account.totals()["mm_rate"])
        check = source.venue_check
        assert check is not None
        assert check.venue.source_fields == "accountMMRate"
        assert check.relative_drift is not None
        assert abs(check.relative_drift) < 1e-4

    async def test_ratio_after_ticker_move_into_next_tier(
        self, fake: FakeBybit, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that a streamed ticker taking ETH into risk tier 2 still matches Bybit's rate."""
        source, tap = running
        await tap.wait_for(is_positions)
        before = margin.report(source.snapshot()).margin_ratio
        await fake.wait_for_client("/v5/public", "tickers.ETHUSDT")
        mark = len(tap.seen)
        await fake.push_mark("ETHUSDT", 3_500.0)  # 30 × 3,500 = 105,000 > 100,000
        await tap.wait_for(
            lambda e: isinstance(e, PriceTick) and e.mark_price == 3_500.0, after=mark
        )
        ratio = margin.report(source.snapshot()).margin_ratio
        venue = fake.account.totals()["mm_rate"]
        assert close(ratio, venue)
        assert before < 0.1 < ratio  # the move crossed a 10 % alert line


class TestPrivateStream:
    async def test_position_topic_triggers_reconciliation(self, fake: FakeBybit) -> None:
        """Test that a `position` push leads to a REST re-read with the new size."""
        async with started(fake, stale_after=60.0, reconcile=10.0) as (_source, tap):
            await tap.wait_for(is_positions)
            await fake.wait_for_client("/v5/private", "position")
            mark = len(tap.seen)
            await fake.set_position("BTCUSDT", "Buy", 1.25, 58_400.0)
            update = await tap.wait_for(
                lambda e: (
                    isinstance(e, AccountUpdate)
                    and any(p.symbol == BTC and p.contracts == 1.25 for p in e.positions)
                ),
                after=mark,
                within=3.0,
            )
            assert isinstance(update, AccountUpdate)


class TestFaults:
    async def test_websocket_drop_and_reconnect(
        self, fake: FakeBybit, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that ticker streaming resumes after the venue closes every socket."""
        _source, tap = running
        await tap.wait_for(is_positions)
        await fake.wait_for_client("/v5/public", "tickers.BTCUSDT")
        await fake.drop_websockets()
        await asyncio.sleep(0.05)
        await fake.wait_for_client("/v5/public", "tickers.BTCUSDT")
        await fake.wait_for_client("/v5/private", "position")
        mark = len(tap.seen)
        await fake.push_mark("BTCUSDT", 60_777.0)
        await tap.wait_for(
            lambda e: isinstance(e, PriceTick) and e.mark_price == 60_777.0, after=mark
        )

    async def test_rate_limit_and_server_error(self, fake: FakeBybit) -> None:
        """Test that retCode 10006 and an HTTP 502 delay the read but never stop the source."""
        fake.fail(
            "/v5/position/list",
            200,
            {
                "retCode": 10006,
                "retMsg": "Too many visits!",
                "result": {},
                "retExtInfo": {},
                "time": 1,
            },
        )
        fake.fail("/v5/position/list", 502, "Bad Gateway", content_type="text/plain")
        async with started(fake) as (source, tap):
            await tap.wait_for(is_positions, within=8.0)
            assert not any(isinstance(e, SourceDown) for e in tap.seen)
            assert fake.count("/v5/position/list") >= 3
            assert source.down_reason is None

    async def test_invalid_key_goes_down(self, fake: FakeBybit) -> None:
        """Test that retCode 10003 (invalid key) ends the source with one SourceDown."""
        async with started(fake, key="wrong-key") as (_source, tap):
            down = await tap.wait_for(lambda e: isinstance(e, SourceDown))
            assert isinstance(down, SourceDown)
            assert "api_key" in down.reason
            await asyncio.sleep(0.3)
            assert tap.done

    async def test_truncated_wallet_keeps_last_balance(
        self, fake: FakeBybit, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that a truncated wallet-balance body is rejected and the last balance kept."""
        source, tap = running
        await tap.wait_for(is_positions)
        good = source.collateral
        fake.fail(
            "/v5/account/wallet-balance", 200, '{"retCode":0,"result":{"list":[{"tot', times=2
        )
        mark = len(tap.seen)
        async with asyncio.timeout(5):
            while fake.faults.get("/v5/account/wallet-balance"):  # noqa: ASYNC110 - polls the fake
                await asyncio.sleep(0.02)
        assert source.collateral == good
        await tap.wait_for(lambda e: isinstance(e, AccountUpdate), after=mark)


class TestSilence:
    async def test_silent_ticker_stream_polls_then_stale_then_fresh(
        self, fake: FakeBybit, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that REST tickers take over a silent stream; a REST outage is stale, then up."""
        _source, tap = running
        await tap.wait_for(is_positions)
        fake.silent = True
        mark = len(tap.seen)
        fake.account.marks["BTCUSDT"] = 59_100.0
        await tap.wait_for(
            lambda e: isinstance(e, PriceTick) and e.mark_price == 59_100.0, after=mark
        )
        fake.fail("/v5/market/tickers", 503, "down", times=10_000, content_type="text/plain")
        await tap.wait_for(lambda e: isinstance(e, SourceStale) and e.kind == "prices")
        fake.clear_faults()
        await tap.wait_for(lambda e: isinstance(e, SourceUp) and e.kind == "prices")

    async def test_failing_reads_make_positions_stale_then_fresh(
        self, fake: FakeBybit, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that REST reads failing past stale_after raise stale positions, then clear."""
        _source, tap = running
        await tap.wait_for(is_positions)
        fake.fail("/v5/position/list", 503, "down", times=10_000, content_type="text/plain")
        stale = await tap.wait_for(lambda e: isinstance(e, SourceStale) and e.kind == "positions")
        assert isinstance(stale, SourceStale)
        assert stale.age > 1.0
        fake.clear_faults()
        await tap.wait_for(lambda e: isinstance(e, SourceUp) and e.kind == "positions")


class TestTiers:
    async def test_tiers_are_refreshed(self, fake: FakeBybit) -> None:
        """Test that cached risk tiers are read again once `tiers_every` has passed."""
        account = account_for(fake, API_KEY, SECRET, poll_interval=0.1, stale_after=1.0)
        source = ExchangeSource(account, backoff_cap=0.2, reconcile_every=0.1, tiers_every=0.3)
        tap = EventTap(source.events())
        try:
            await tap.wait_for(is_positions)
            first = fake.count("/v5/market/risk-limit")
            assert first >= 1
            fake.account.tiers["ETHUSDT"] = [(100_000, 0.012, 0.0, 50), (500_000, 0.02, 800.0, 25)]
            async with asyncio.timeout(5):
                while fake.count("/v5/market/risk-limit") <= first:  # noqa: ASYNC110 - polls the fake
                    await asyncio.sleep(0.05)
            await tap.wait_for(
                lambda e: (
                    isinstance(e, AccountUpdate)
                    and any(p.symbol == ETH and p.tiers[0].mmr == 0.012 for p in e.positions)
                )
            )
        finally:
            await tap.stop()
            await source.close()


class TestCollateral:
    async def test_uta_coins_priced_by_usd_value(self, fake: FakeBybit) -> None:
        """Test that a UTA coin is first priced by usdValue/equity (before any mark is known)
        and that a coin switched off as collateral is skipped."""
        fake.account.coins["BTC"] = (0.05, 61_000.0, True)
        fake.account.coins["DOGE"] = (1_000.0, 0.1, False)
        # no BTC position: its mark in the same read would price the coin (issue 12)
        fake.account.positions.pop(("BTCUSDT", 0))
        async with started(fake) as (_source, tap):
            first = await tap.wait_for(lambda e: isinstance(e, AccountUpdate))
            assert isinstance(first, AccountUpdate)
            by_asset = {c.asset: c for c in first.collateral}
        assert set(by_asset) == {"USDT", "BTC"}
        assert by_asset["BTC"].amount == 0.05
        assert by_asset["BTC"].price == pytest.approx(61_000.0)
