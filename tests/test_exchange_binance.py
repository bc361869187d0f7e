"""ExchangeSource against a fake Binance USDⓈ-M venue (real ccxt.pro parsing, loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from monitor.core import stress
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
from tests.fakes.binance import (
    API_KEY,
    SECRET,
    BinancePosition,
    FakeBinanceUsdm,
    use_production_errors,
)

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
    account = account_for(
        fake,
        key,
        SECRET,
        poll_interval=kw.pop("poll_interval", 0.2),
        stale_after=kw.pop("stale_after", 1.0),
    )
    return ExchangeSource(
        account, backoff_cap=0.2, reconcile_every=kw.pop("reconcile", 0.5), debounce=0.02
    )


@contextlib.asynccontextmanager
async def started(
    fake: FakeBinanceUsdm, **kw: float
) -> AsyncIterator[tuple[ExchangeSource, EventTap]]:
    """A running source and a tap on its events, after its first full read."""
    source = make_source(fake, **kw)
    tap = EventTap(source.events())
    try:
        await tap.wait_for(lambda e: isinstance(e, AccountUpdate))
        yield source, tap
    finally:
        await tap.stop()
        await source.close()


@pytest.fixture
async def running(fake: FakeBinanceUsdm) -> AsyncIterator[tuple[ExchangeSource, EventTap]]:
    async with started(fake) as pair:
        yield pair


@pytest.fixture
async def quiet(fake: FakeBinanceUsdm) -> AsyncIterator[tuple[ExchangeSource, EventTap]]:
    """A source whose periodic REST read is 10 s away: only a stream trigger reads sooner."""
    async with started(fake, stale_after=60.0, reconcile=10.0) as pair:
        yield pair


def is_positions(event: Event) -> bool:
    return isinstance(event, AccountUpdate)


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * abs(b)


class TestInitialSnapshot:
    async def test_positions_and_wallet(self, running: tuple[ExchangeSource, EventTap]) -> None:
        """Test that the first reconciliation yields both positions and the wallet balance."""
        _source, tap = running
        update = await tap.wait_for(is_positions)
        assert isinstance(update, AccountUpdate)
        by_symbol = {p.symbol: p for p in update.positions}
        assert by_symbol[BTC].side == "long"
        assert by_symbol[BTC].contracts == pytest.approx(0.8)
        assert by_symbol[ETH].side == "short"
        assert by_symbol[ETH].contracts == pytest.approx(4.0)
        # The venue's maintMargin (with cum), not ccxt's mmr × notional (docs/venues.md).
        assert by_symbol[ETH].maintenance_margin == pytest.approx(12_000 * 0.0065 - 15.0)
        balance = next(e for e in tap.seen if isinstance(e, AccountUpdate))
        assert [(c.asset, c.amount) for c in balance.collateral] == [("USDT", 1_000.0)]

    async def test_tiers_keep_cum(self, running: tuple[ExchangeSource, EventTap]) -> None:
        """Test that tiers carry Binance's raw cum as the maintenance amount."""
        source, tap = running
        await tap.wait_for(is_positions)
        eth = {p.symbol: p for p in source.positions}[ETH]
        assert [(t.max_notional, t.mmr, t.maintenance_amount) for t in eth.tiers[:3]] == [
            (10_000.0, 0.005, 0.0),
            (100_000.0, 0.0065, 15.0),
            (500_000.0, 0.01, 365.0),
        ]


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
        tick = await tap.wait_for(
            lambda e: isinstance(e, PriceTick) and e.mark_price == 70_000.0, after=mark
        )
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


class TestPrivateStream:
    async def test_position_change_triggers_reconciliation(
        self, fake: FakeBinanceUsdm, quiet: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that an ACCOUNT_UPDATE on the user stream leads to a fresh REST position read."""
        _source, tap = quiet
        await tap.wait_for(is_positions)
        await fake.wait_for_client("/private/ws")
        reads = fake.count("/fapi/v3/positionRisk")
        mark = len(tap.seen)
        await fake.set_position("BTCUSDT", 1.5, 59_500.0)
        update = await tap.wait_for(
            lambda e: (
                isinstance(e, AccountUpdate)
                and any(p.symbol == BTC and p.contracts == 1.5 for p in e.positions)
            ),
            after=mark,
        )
        assert isinstance(update, AccountUpdate)
        assert fake.count("/fapi/v3/positionRisk") > reads
        btc = next(p for p in update.positions if p.symbol == BTC)
        # Full REST fields, not the stream's stripped ones (docs/venues.md).
        assert btc.maintenance_margin is not None
        assert btc.mark_price == 60_000.0

    async def test_closed_position_disappears(
        self, fake: FakeBinanceUsdm, quiet: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that closing a position (side 'both', amount 0) removes it, leaving no ghost."""
        _source, tap = quiet
        await tap.wait_for(is_positions)
        await fake.wait_for_client("/private/ws")
        mark = len(tap.seen)
        await fake.set_position("ETHUSDT", 0.0, 0.0)
        update = await tap.wait_for(
            lambda e: isinstance(e, AccountUpdate) and len(e.positions) == 1, after=mark
        )
        assert isinstance(update, AccountUpdate)
        assert [p.symbol for p in update.positions] == [BTC]


class TestFaults:
    async def test_websocket_drop_and_reconnect(
        self, fake: FakeBinanceUsdm, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that after the venue drops every socket, marks stream again and REST re-reads."""
        _source, tap = running
        await tap.wait_for(is_positions)
        await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
        await fake.wait_for_client("/private/ws")
        reads = fake.count("/fapi/v3/positionRisk")
        await fake.drop_websockets()
        await asyncio.sleep(0.05)
        await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
        mark = len(tap.seen)
        await fake.push_mark("BTCUSDT", 61_234.5)
        await tap.wait_for(
            lambda e: isinstance(e, PriceTick) and e.mark_price == 61_234.5, after=mark
        )
        assert fake.count("/fapi/v3/positionRisk") > reads

    async def test_rate_limits_server_errors_and_timeouts(self, fake: FakeBinanceUsdm) -> None:
        """Test that 429, 503 and a stalled request delay the read but never stop the source."""
        fake.fail("/fapi/v3/positionRisk", 429, {"code": -1003, "msg": "Too many requests"})
        fake.fail("/fapi/v3/positionRisk", 503, "Service Unavailable", content_type="text/plain")
        fake.stall("/fapi/v3/positionRisk", 3.0)  # > the 2 s ccxt timeout of the account
        source = make_source(fake)
        tap = EventTap(source.events())
        try:
            update = await tap.wait_for(is_positions, within=10.0)
            assert isinstance(update, AccountUpdate)
            assert len(update.positions) == 2
            assert not any(isinstance(e, SourceDown) for e in tap.seen)
            assert fake.count("/fapi/v3/positionRisk") >= 4
        finally:
            await tap.stop()
            await source.close()

    async def test_auth_failure_goes_down_once(self, fake: FakeBinanceUsdm) -> None:
        """Test that a rejected key yields one SourceDown naming the fix, and no retry storm."""
        source = make_source(fake, key="revoked-key")
        tap = EventTap(source.events())
        try:
            down = await tap.wait_for(lambda e: isinstance(e, SourceDown))
            assert isinstance(down, SourceDown)
            assert "api_key" in down.reason
            assert "revoked-key" not in down.reason
            await asyncio.sleep(0.5)
            requests = len(fake.requests)
            await asyncio.sleep(0.6)
            assert len(fake.requests) == requests
            assert tap.done
            assert sum(isinstance(e, SourceDown) for e in tap.seen) == 1
        finally:
            await tap.stop()
            await source.close()

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            ("<html>502 Bad Gateway</html>", "text/html"),
            ('[{"symbol": "BTCUSDT", "positionAmt": "0.8", "entryP', "application/json"),
            (
                '[{"symbol": "BTCUSDT", "positionSide": "BOTH", "positionAmt": "0.8", '
                '"entryPrice": "abc", "markPrice": "60000", "notional": "48000", '
                '"updateTime": 1}]',
                "application/json",
            ),
        ],
        ids=["html", "truncated", "bad-number"],
    )
    async def test_garbage_keeps_last_good_state(
        self,
        fake: FakeBinanceUsdm,
        running: tuple[ExchangeSource, EventTap],
        body: str,
        content_type: str,
    ) -> None:
        """Test that garbage, truncated or malformed positions are rejected, not applied."""
        source, tap = running
        await tap.wait_for(is_positions)
        good = source.positions
        fake.fail("/fapi/v3/positionRisk", 200, body, times=3, content_type=content_type)
        await fake.wait_for_client("/private/ws")
        mark = len(tap.seen)
        await fake.set_position("BTCUSDT", 0.8, 59_000.0)  # a trigger: re-read now
        async with asyncio.timeout(5):
            while fake.faults.get("/fapi/v3/positionRisk"):  # noqa: ASYNC110 - polls the fake
                await asyncio.sleep(0.02)
        assert source.positions == good
        assert all(len(e.positions) == 2 for e in tap.seen[mark:] if isinstance(e, AccountUpdate))
        # ... and it recovers on the next good read.
        await tap.wait_for(is_positions, after=mark)

    async def test_garbage_websocket_frame_is_survived(
        self, fake: FakeBinanceUsdm, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that a non-JSON and a truncated mark frame do not stop the price stream."""
        _source, tap = running
        await tap.wait_for(is_positions)
        await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
        await fake.push("garbage{", path="/market/ws")
        await fake.push('{"e":"markPriceUpdate","s":"BTCUSDT","p":', path="/market/ws")
        await asyncio.sleep(0.1)
        await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
        mark = len(tap.seen)
        await fake.push_mark("BTCUSDT", 62_000.0)
        await tap.wait_for(
            lambda e: isinstance(e, PriceTick) and e.mark_price == 62_000.0, after=mark
        )


class TestSilence:
    async def test_silent_stream_polls_then_stale_then_fresh(
        self, fake: FakeBinanceUsdm, running: tuple[ExchangeSource, EventTap]
    ) -> None:
        """Test that a silent stream hands over to REST; a REST outage is stale; recovery is up."""
        _source, tap = running
        await tap.wait_for(is_positions)
        fake.silent = True
        polls = fake.count("/fapi/v1/premiumIndex")
        mark = len(tap.seen)
        fake.account.marks["BTCUSDT"] = 60_500.0  # only REST can tell
        await tap.wait_for(
            lambda e: isinstance(e, PriceTick) and e.mark_price == 60_500.0, after=mark
        )
        assert fake.count("/fapi/v1/premiumIndex") > polls
        fake.fail("/fapi/v1/premiumIndex", 503, "down", times=10_000, content_type="text/plain")
        stale = await tap.wait_for(
            lambda e: isinstance(e, SourceStale) and e.kind == "prices", within=5.0
        )
        assert isinstance(stale, SourceStale)
        assert stale.age > 1.0
        fake.clear_faults()
        up = await tap.wait_for(
            lambda e: isinstance(e, SourceUp) and e.kind == "prices", within=5.0
        )
        assert isinstance(up, SourceUp)


class TestRestart:
    async def test_down_source_reports_again_when_restarted(self, fake: FakeBinanceUsdm) -> None:
        """Test that iterating events() again after a SourceDown reports the fault again."""
        source = make_source(fake, key="revoked-key")
        try:
            for _ in range(2):
                async with asyncio.timeout(5):
                    seen = [e async for e in source.events()]
                assert isinstance(seen[-1], SourceDown)
        finally:
            await source.close()


class TestClockSkew:
    async def test_invalid_nonce_resyncs_time(self, fake: FakeBinanceUsdm) -> None:
        """Test that -1021 (timestamp outside recvWindow) resyncs the clock and recovers."""
        source = make_source(fake)
        exchange = await source.open()
        use_production_errors(exchange)
        fake.time_offset_ms = 2_500
        fake.fail(
            "/fapi/v3/account",
            400,
            {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."},
        )
        tap = EventTap(source.events())
        try:
            await tap.wait_for(lambda e: isinstance(e, AccountUpdate), within=5.0)
            assert fake.count("/fapi/v1/time") >= 1
            assert exchange.options["timeDifference"] < -2_000  # the venue runs 2.5 s ahead
        finally:
            await tap.stop()
            await source.close()


class TestManyAccounts:
    async def test_a_failing_account_does_not_disturb_another(self, fake: FakeBinanceUsdm) -> None:
        """Test that one account going down leaves a second account's stream running."""
        bad = make_source(fake, key="revoked-key")
        async with started(fake) as (_good, tap):
            bad_tap = EventTap(bad.events())
            try:
                await bad_tap.wait_for(lambda e: isinstance(e, SourceDown))
                await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
                mark = len(tap.seen)
                await fake.push_mark("BTCUSDT", 60_123.0)
                tick = await tap.wait_for(lambda e: isinstance(e, PriceTick), after=mark)
                assert isinstance(tick, PriceTick)
                assert tick.account != "revoked"
                assert not any(isinstance(e, SourceDown) for e in tap.seen)
            finally:
                await bad_tap.stop()
                await bad.close()


class TestMultiAssets:
    async def test_btc_collateral_is_priced_and_streamed(self, fake: FakeBinanceUsdm) -> None:
        """Test that BTC collateral with no BTC position gets a mark read, then streamed ticks."""
        fake.account.positions.pop(("BTCUSDT", "BOTH"))
        fake.account.assets["BTC"] = 0.1
        fake.account.multi_assets = True  # a BTC balance is margin only in Multi-Assets Mode
        fake.account.buffers["BTC"] = (0.0, 0.0)
        async with started(fake) as (source, tap):
            balance = next(e for e in reversed(tap.seen) if isinstance(e, AccountUpdate))
            btc = next(c for c in balance.collateral if c.asset == "BTC")
            assert (btc.amount, btc.price) == (0.1, 60_000.0)
            await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
            mark = len(tap.seen)
            await fake.push_mark("BTCUSDT", 50_000.0)
            await tap.wait_for(
                lambda e: isinstance(e, PriceTick) and e.mark_price == 50_000.0, after=mark
            )
            moved = next(c for c in source.snapshot().collateral if c.asset == "BTC")
            assert moved.price == 50_000.0


class TestTickBeforeRearm:
    async def test_a_streamed_mark_is_taken_before_the_watch_is_armed_again(
        self, fake: FakeBinanceUsdm
    ) -> None:
        """Test that the account's loop takes a streamed mark before the price task calls
        ccxt's watch again: the re-arm's synchronous work (~0.1 ms) is not on the path from
        the frame to the report (issue 16)."""
        source = make_source(fake, poll_interval=30.0, stale_after=60.0)
        exchange = await source.open()
        order: list[str] = []
        noted = asyncio.Event()
        real = exchange.watch_mark_price

        def note(what: str) -> None:
            order.append(what)
            noted.set()

        async def until(done: Callable[[], bool]) -> None:
            async with asyncio.timeout(10):
                while not done():
                    noted.clear()
                    await noted.wait()

        async def watch(symbol: str, params: dict[str, object] | None = None) -> object:
            note("watch")
            return await real(symbol, params or {})

        exchange.watch_mark_price = watch

        async def consume() -> None:
            async for event in source.events():
                if isinstance(event, PriceTick) and event.mark_price == 61_234.5:
                    note("tick")

        task = asyncio.create_task(consume())
        try:
            await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s", within=10)
            await until(lambda: order.count("watch") >= 2)  # BTC and ETH armed
            await asyncio.sleep(0.1)
            order.clear()
            await fake.push_mark("BTCUSDT", 61_234.5)
            await until(lambda: len(order) >= 2)
            assert order[:2] == ["tick", "watch"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await source.close()
