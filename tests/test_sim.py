"""Tests for monitor/sources/sim.py and sim_prices.py: the embedded simulated venue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from monitor.config.settings import SimSettings
from monitor.core.margin import report as margin
from monitor.core.model import AccountUpdate, Event, PriceTick
from monitor.core.state import apply, initial_state
from monitor.errors import UserError
from monitor.protect.desk import TradingSource, market_rules
from monitor.sources.base import Source
from monitor.sources.sim import SimVenue
from monitor.sources.sim_book import DEMO_BOOK, selloff_keyframes
from monitor.sources.sim_prices import Keyframe, ScriptedPath, load_replay
from monitor.venues import errors as venue_errors

BTC, ETH, SOL = (m.symbol for m in DEMO_BOOK.markets)
SYMBOLS = [m.symbol for m in DEMO_BOOK.markets]
FAST = SimSettings(speed=10_000)


async def _collect(venue: SimVenue, count: int) -> list[Event]:
    out: list[Event] = []
    async for event in venue.events():
        out.append(event)
        if len(out) >= count:
            break
    return out


def _ratios(settings: SimSettings, steps: int) -> list[float]:
    """The margin ratio after each step of the scripted path, through state.apply."""
    venue = SimVenue("demo", settings)
    state = initial_state(venue.snapshot(), 0.0)
    out = []

    async def run() -> None:
        nonlocal state
        n = 0
        async for event in venue.events():
            state, _ = apply(state, event)
            n += 1
            if n % len(SYMBOLS) == 0:
                out.append(margin.report(state.snapshot).margin_ratio)
            if n >= steps * len(SYMBOLS):
                break

    asyncio.run(run())
    return out


class TestProtocol:
    def test_sim_is_a_trading_source(self) -> None:
        """Test that the sim satisfies both the Source and the OrderDesk protocols."""
        venue = SimVenue("demo")
        assert isinstance(venue, Source)
        assert isinstance(venue, TradingSource)
        assert venue.account == "demo"


class TestScriptedPath:
    def test_same_seed_same_prices(self) -> None:
        """Test that a seed reproduces the exact price path."""
        a = asyncio.run(_collect(SimVenue("demo", SimSettings(seed=3, speed=10_000)), 300))
        b = asyncio.run(_collect(SimVenue("demo", SimSettings(seed=3, speed=10_000)), 300))
        c = asyncio.run(_collect(SimVenue("demo", SimSettings(seed=4, speed=10_000)), 300))
        prices = [[e.mark_price for e in run if isinstance(e, PriceTick)] for run in (a, b, c)]
        assert prices[0] == prices[1]
        assert prices[0] != prices[2]

    def test_path_does_not_depend_on_speed(self) -> None:
        """Test that speed changes the pacing, never the prices."""
        slow = asyncio.run(_collect(SimVenue("demo", SimSettings(speed=50)), 30))
        fast = asyncio.run(_collect(SimVenue("demo", SimSettings(speed=10_000)), 30))
        assert [e.mark_price for e in slow if isinstance(e, PriceTick)] == [
            e.mark_price for e in fast if isinstance(e, PriceTick)
        ]

    def test_one_tick_per_symbol_per_step(self) -> None:
        """Test that each step streams one PriceTick for every market, in book order."""
        events = asyncio.run(_collect(SimVenue("demo", FAST), 9))
        assert [e.symbol for e in events if isinstance(e, PriceTick)] == SYMBOLS * 3

    def test_factor_interpolates_keyframes(self) -> None:
        """Test that the market factor is linear between keyframes and held after the last."""
        path = ScriptedPath(
            [(BTC, 100.0, 1.0)], [Keyframe(0, 1.0), Keyframe(10, 0.5)], tick_rate=10, seed=1
        )
        assert path.factor(5) == pytest.approx(0.75)
        assert path.factor(99) == 0.5
        assert path.duration == 10

    def test_keyframes_hit_their_target_ratios(self) -> None:
        """Test that the solved keyframes put the noiseless book at the scripted ratios."""
        frames = selloff_keyframes(DEMO_BOOK, "binanceusdm")
        bottom = min(frames, key=lambda k: k.m)
        path = ScriptedPath(
            [(m.symbol, m.price0, m.beta) for m in DEMO_BOOK.markets],
            [Keyframe(0, bottom.m)],
            tick_rate=10,
            seed=1,
            noise=0.0,
        )
        venue = SimVenue("x")
        _, prices = path.next_prices()
        for symbol, price in prices:
            venue._set_mark(symbol, price)
        assert margin.report(venue.snapshot()).margin_ratio == pytest.approx(0.88, rel=1e-6)


class TestSelloff:
    def test_crosses_every_level_and_recovers(self) -> None:
        """Test that the scripted sell-off passes warning, critical, emergency, then recovers."""
        ratios = _ratios(SimSettings(speed=10_000), 800)
        peak = max(ratios)
        top = ratios.index(peak)
        assert ratios[0] < 0.2
        assert 0.85 < peak < 1.0
        assert ratios[-1] < 0.2
        # the climb passes through each band, not just jumps over it
        assert any(0.5 <= r < 0.7 for r in ratios[:top])
        assert any(0.7 <= r < 0.85 for r in ratios[:top])

    def test_calm_scenario_stays_calm(self) -> None:
        """Test that the calm scenario never reaches the warning level."""
        assert max(_ratios(SimSettings(speed=10_000, scenario="calm"), 300)) < 0.2


class TestOrders:
    async def test_reduce_only_market_fill(self) -> None:
        """Test that a reduce-only market order fills at mark, shrinks the position, pays PnL."""
        venue = SimVenue("demo", FAST)
        before = venue.snapshot()
        wallet = before.collateral[0].amount
        btc = next(p for p in before.positions if p.symbol == BTC)
        order = await venue.create_order(BTC, "market", "sell", 0.5, None, {"reduceOnly": True})
        assert order["status"] == "closed"
        assert order["filled"] == 0.5
        assert order["average"] == btc.mark_price
        after = venue.snapshot()
        assert next(p for p in after.positions if p.symbol == BTC).contracts == pytest.approx(1.0)
        pnl = 0.5 * (btc.mark_price - btc.entry_price)
        fee = 0.0005 * 0.5 * btc.mark_price
        assert after.collateral[0].amount == pytest.approx(wallet + pnl - fee)
        assert order["fee"] == {"cost": pytest.approx(fee), "currency": "USDT"}

    async def test_fill_is_announced_on_the_stream(self) -> None:
        """Test that a fill is streamed as ONE AccountUpdate: positions and wallet together."""
        venue = SimVenue("demo", FAST)
        await venue.create_order(SOL, "market", "sell", 400, None, {"reduceOnly": True})
        wallet = venue.snapshot().collateral[0]
        events = await _collect(venue, 2)
        assert isinstance(events[0], AccountUpdate)
        assert [p.symbol for p in events[0].positions] == [BTC, ETH]
        assert events[0].collateral[0] == wallet  # the wallet after the fill, same event
        assert dict(events[0].marks)[SOL] == pytest.approx(140.0, rel=0.05)
        assert not isinstance(events[1], AccountUpdate)  # the next is a tick, not a half

    async def test_short_is_reduced_by_a_buy(self) -> None:
        """Test that a reduce-only buy reduces the short ETH position."""
        venue = SimVenue("demo", FAST)
        await venue.create_order(ETH, "market", "buy", 2, None, {"reduceOnly": True})
        eth = next(p for p in venue.snapshot().positions if p.symbol == ETH)
        assert (eth.side, eth.contracts) == ("short", pytest.approx(10.0))

    @pytest.mark.parametrize(
        ("symbol", "side", "amount", "params", "match"),
        [
            (BTC, "buy", 0.1, {"reduceOnly": True}, "would increase or open"),
            (ETH, "sell", 1, {"reduceOnly": True}, "would increase or open"),
            (BTC, "sell", 2.0, {"reduceOnly": True}, "exceeds the long position"),
            (BTC, "sell", 0.1, {}, "only reduce-only orders"),
            (BTC, "sell", 0.1, {"reduceOnly": False}, "only reduce-only orders"),
            (BTC, "sell", 0.0005, {"reduceOnly": True}, "below the minimum"),
            (BTC, "sell", 0.0015, {"reduceOnly": True}, "not a multiple of the step"),
            (BTC, "sell", -1, {"reduceOnly": True}, "positive number"),
            (BTC, "sell", float("nan"), {"reduceOnly": True}, "positive number"),
            (BTC, "sell", 0.1, {"reduceOnly": True, "positionSide": "SHORT"}, "would increase"),
        ],
    )
    async def test_rejections(
        self, symbol: str, side: str, amount: float, params: dict[str, object], match: str
    ) -> None:
        """Test that orders a venue would refuse raise InvalidOrder and change nothing."""
        venue = SimVenue("demo", FAST)
        before = venue.snapshot()
        with pytest.raises(venue_errors.InvalidOrder, match=match):
            await venue.create_order(symbol, "market", side, amount, None, params)
        assert venue.snapshot() == before
        assert await venue.fetch_open_orders() == []

    async def test_unknown_symbol(self) -> None:
        """Test that an unknown market raises venue_errors.BadSymbol."""
        with pytest.raises(venue_errors.BadSymbol):
            await SimVenue("demo").create_order("XRP/USDT:USDT", "market", "sell", 1, None, {})

    async def test_client_order_id_dedups(self) -> None:
        """Test that resending a clientOrderId returns the first order and fills only once."""
        venue = SimVenue("demo", FAST)
        params = {"reduceOnly": True, "clientOrderId": "mm-demo-ep1-1"}
        first = await venue.create_order(BTC, "market", "sell", 0.5, None, params)
        again = await venue.create_order(BTC, "market", "sell", 0.5, None, params)
        assert again == first
        assert venue.fills == 1
        btc = next(p for p in venue.snapshot().positions if p.symbol == BTC)
        assert btc.contracts == pytest.approx(1.0)
        assert (await venue.fetch_order(first["id"], BTC))["clientOrderId"] == "mm-demo-ep1-1"

    async def test_stop_rests_then_triggers(self) -> None:
        """Test that a reduce-only stop waits for the mark to cross, then fills."""
        venue = SimVenue("demo", FAST)
        mark = venue.snapshot().positions[0].mark_price
        stop = await venue.create_order(
            BTC, "market", "sell", 1.5, None, {"reduceOnly": True, "triggerPrice": mark * 0.9}
        )
        assert stop["status"] == "open"
        assert [o["id"] for o in await venue.fetch_open_orders(BTC)] == [stop["id"]]
        venue._set_mark(BTC, mark * 0.95)
        venue._trigger_resting(0.0)
        assert (await venue.fetch_order(stop["id"]))["status"] == "open"
        venue._set_mark(BTC, mark * 0.89)
        venue._trigger_resting(0.0)
        filled = await venue.fetch_order(stop["id"])
        assert (filled["status"], filled["filled"]) == ("closed", 1.5)
        assert all(p.symbol != BTC for p in venue.snapshot().positions)

    async def test_limit_rests_and_cancels(self) -> None:
        """Test that an unmarketable reduce-only limit rests and can be cancelled once."""
        venue = SimVenue("demo", FAST)
        mark = venue.snapshot().positions[0].mark_price
        params = {"reduceOnly": True}
        order = await venue.create_order(BTC, "limit", "sell", 0.1, mark * 1.5, params)
        assert order["status"] == "open"
        cancelled = await venue.cancel_order(order["id"], BTC)
        assert cancelled["status"] == "canceled"
        with pytest.raises(venue_errors.OrderNotFound):
            await venue.cancel_order(order["id"], BTC)
        with pytest.raises(venue_errors.OrderNotFound):
            await venue.fetch_order("999")

    async def test_fetch_positions_is_ccxt_shaped(self) -> None:
        """Test that positions come back as ccxt position structures."""
        venue = SimVenue("demo", FAST)
        rows = await venue.fetch_positions([ETH])
        assert len(rows) == 1
        row = rows[0]
        assert (row["symbol"], row["side"], row["contracts"], row["marginMode"]) == (
            ETH,
            "short",
            12.0,
            "cross",
        )
        assert row["unrealizedPnl"] == pytest.approx(12.0 * (3300.0 - row["markPrice"]))

    def test_precision_and_market(self) -> None:
        """Test that amounts truncate to the step like ccxt and the market lists its limits."""
        venue = SimVenue("demo")
        assert venue.amount_to_precision(BTC, 0.12345) == "0.123"
        assert venue.amount_to_precision(SOL, 12.39) == "12.3"
        market = venue.market(ETH)
        assert market["precision"]["amount"] == 0.01
        assert market["limits"]["amount"]["min"] == 0.01


class TestOrderDesk:
    """The rest of the order contract (protect/desk.py), as a live account answers it."""

    async def test_find_order_by_client_id_open_or_filled(self) -> None:
        """Test that a filled order is found by client id though no longer open, and that an
        unknown client id or another symbol finds nothing."""
        venue = SimVenue("demo", FAST)
        params = {"reduceOnly": True, "clientOrderId": "mm-find-1"}
        placed = await venue.create_order(BTC, "market", "sell", 0.5, None, params)
        assert await venue.fetch_open_orders(BTC) == []
        found = await venue.find_order("mm-find-1", BTC)
        assert found is not None
        assert (found["id"], found["status"], found["filled"]) == (placed["id"], "closed", 0.5)
        assert await venue.find_order("mm-find-2", BTC) is None
        assert await venue.find_order("mm-find-1", ETH) is None

    async def test_stops_listed_and_cancelled_apart_from_limits(self) -> None:
        """Test that open_stops lists resting stops only (not a resting limit) and that
        cancel_stop cancels one, after which it is gone from the list."""
        venue = SimVenue("demo", FAST)
        mark = venue.snapshot().positions[0].mark_price
        stop = await venue.create_order(
            BTC, "market", "sell", 0.5, None, {"reduceOnly": True, "stopLossPrice": mark * 0.9}
        )
        await venue.create_order(BTC, "limit", "sell", 0.1, mark * 1.5, {"reduceOnly": True})
        assert [o["id"] for o in await venue.open_stops(BTC)] == [stop["id"]]
        cancelled = await venue.cancel_stop(stop["id"], BTC)
        assert cancelled["status"] == "canceled"
        assert await venue.open_stops(BTC) == []
        assert len(await venue.fetch_open_orders(BTC)) == 1

    def test_precision_and_in_flight_window(self) -> None:
        """Test that the sim reads amount precision as a step (ccxt TICK_SIZE) and has no
        in-flight window: it answers every order in-process."""
        venue = SimVenue("demo", FAST)
        assert venue.precision_mode == 4  # ccxt.base.decimal_to_precision.TICK_SIZE
        rules = market_rules(venue, BTC, "sim")
        assert rules.amount_step == venue.market(BTC)["precision"]["amount"]
        assert venue.in_flight_window() is None


class TestStream:
    async def test_close_ends_the_stream(self) -> None:
        """Test that close() stops events() promptly even between slow ticks."""
        venue = SimVenue("demo", SimSettings(tick_rate=0.1))
        received: list[Event] = []

        async def consume() -> None:
            async for event in venue.events():
                received.append(event)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        await venue.close()
        await asyncio.wait_for(task, 2)
        assert len(received) == len(SYMBOLS)

    async def test_replay_streams_the_file_and_ends(self, tmp_path: Path) -> None:
        """Test that a replay streams its rows, grouped by ts, and then ends."""
        path = tmp_path / "prices.csv"
        path.write_text(f"ts,symbol,price\n0,{BTC},60000\n0,{ETH},3000\n1,{BTC},59000\n")
        replay = load_replay(path, SYMBOLS)
        venue = SimVenue("demo", FAST, replay=replay)
        events = [e async for e in venue.events()]
        assert [(e.symbol, e.mark_price) for e in events if isinstance(e, PriceTick)] == [
            (BTC, 60000.0),
            (ETH, 3000.0),
            (BTC, 59000.0),
        ]

    async def test_replay_starts_at_the_first_row(self, tmp_path: Path) -> None:
        """Test that the first snapshot of a replay has the file's first prices, not the book's."""
        path = tmp_path / "prices.csv"
        path.write_text(f"ts,symbol,price\n5,{BTC},41000\n6,{BTC},40000\n")
        venue = SimVenue("demo", FAST, replay=load_replay(path, SYMBOLS))
        first = await venue.fetch_snapshot()
        book = SimVenue("demo", FAST).snapshot()
        marks = {p.symbol: p.mark_price for p in first.positions}
        assert marks[BTC] == 41000.0
        assert {p.symbol: p.mark_price for p in book.positions}[BTC] != 41000.0
        others = {p.symbol: p.mark_price for p in book.positions if p.symbol != BTC}
        assert {s: m for s, m in marks.items() if s != BTC} == others


class TestReplayFile:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "prices.csv: empty replay file"),
            ("time,sym,px\n", "prices.csv: line 1: the header must be 'ts,symbol,price'"),
            ("ts,symbol,price\n", "prices.csv: no price rows after the header"),
            (f"ts,symbol,price\n0,{BTC}\n", "prices.csv: line 2: expected 3 columns"),
            (f"ts,symbol,price\nsoon,{BTC},1\n", "prices.csv: line 2, column ts: 'soon' is not"),
            (f"ts,symbol,price\n0,{BTC},abc\n", "prices.csv: line 2, column price: 'abc'"),
            (f"ts,symbol,price\n0,{BTC},nan\n", "prices.csv: line 2, column price: nan is not a"),
            (f"ts,symbol,price\n0,{BTC},-5\n", "prices.csv: line 2, column price: -5 must be"),
            ("ts,symbol,price\n0,XRP/USDT:USDT,1\n", "prices.csv: line 2, column symbol: 'XRP"),
            (
                f"ts,symbol,price\n# comment\n\n5,{BTC},1\n4,{BTC},1\n",
                "prices.csv: line 5, column ts: 4 is earlier",
            ),
        ],
    )
    def test_bad_rows_are_one_line(self, tmp_path: Path, text: str, message: str) -> None:
        """Test that each bad replay file gives one line naming the line and column."""
        path = tmp_path / "prices.csv"
        path.write_text(text)
        with pytest.raises(UserError) as info:
            load_replay(path, SYMBOLS)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith(message), str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """Test that a missing replay file is a one-line error."""
        with pytest.raises(UserError, match="no such file"):
            load_replay(tmp_path / "nope.csv", SYMBOLS)
