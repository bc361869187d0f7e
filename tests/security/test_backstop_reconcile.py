"""Issue 13 §6: a venue-side stop is never left behind, and no client id is used twice.

Through the real ccxt path against the fake Binance's algo-order routes (as test_backstop).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from monitor.protect.switches import ActionSwitches
from tests.fakes.binance import BinancePosition, FakeBinanceUsdm
from tests.fakes.binance_orders import BinanceOrders
from tests.test_backstop import _backstop, _report, venue  # noqa: F401 - the fixture

Venue = tuple[FakeBinanceUsdm, BinanceOrders, "object"]


class TestReconcile:
    """Stops are reconciled by client-id prefix at start and after every pause."""

    async def test_stop_kept_through_a_pause_is_cancelled_after_it(
        self,
        venue: Venue,  # noqa: F811
        tmp_path: Path,
    ) -> None:
        """Test that a position closed while actions were paused keeps its stop in memory
        (it still rests), and once the pause ends and the position is back, one stop rests
        with a client id never used before."""
        fake, book, src = venue
        bs = _backstop(src, tmp_path)
        switches = ActionSwitches()
        bs.ex.switches = switches
        assert await bs.maintain(await _report(src), 1.0) == 1  # type: ignore[arg-type]
        switches.pause("acct", until=100.0)
        del fake.account.positions[("BTCUSDT", "BOTH")]
        assert await bs.maintain(await _report(src), 2.0) == 0  # type: ignore[arg-type]
        assert len(book.working_stops) == 1  # the pause kept it at the venue ...
        assert len(bs.stops) == 1  # ... and in memory (it used to be forgotten here)
        fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.5, 60_000.0)
        await bs.maintain(await _report(src), 200.0)  # type: ignore[arg-type]
        [stop] = book.working_stops
        ids = [sent["clientAlgoId"] for sent in book.algo_received]
        assert Counter(ids).most_common(1)[0][1] == 1, ids  # no client id twice
        assert float(stop["quantity"]) == 0.5  # sized to the new position

    async def test_leftovers_of_ours_are_cancelled_at_start(
        self,
        venue: Venue,  # noqa: F811
        tmp_path: Path,
    ) -> None:
        """Test that a restart finding two stops of ours for one position keeps the newest,
        cancels the other, and a stop cancelled by hand is replaced after a pause."""
        _, book, src = venue
        # each process its own state dir: one process holds each dir's writer lock
        first = _backstop(src, tmp_path / "a")
        await first.maintain(await _report(src), 1.0)  # type: ignore[arg-type]
        second = _backstop(src, tmp_path / "b")  # a process that missed the first's stop (gen 2)
        second._synced = True
        second._generation[("BTC/USDT:USDT", "long")] = 1
        await second.maintain(await _report(src), 1.0)  # type: ignore[arg-type]
        assert len(book.working_stops) == 2
        restarted = _backstop(src, tmp_path / "c")
        switches = ActionSwitches()
        restarted.ex.switches = switches
        await restarted.maintain(await _report(src), 2.0)  # type: ignore[arg-type]
        assert len(book.working_stops) == 1
        # cancelled by hand at the venue during a pause: re-placed when the pause ends
        switches.pause("acct", until=10.0)
        await restarted.maintain(await _report(src), 3.0)  # type: ignore[arg-type]
        [stop] = book.working_stops
        await src.exchange.cancel_order(stop["algoId"], "BTC/USDT:USDT", {"trigger": True})  # type: ignore[attr-defined]
        assert book.working_stops == []
        await restarted.maintain(await _report(src), 20.0)  # type: ignore[arg-type]
        assert len(book.working_stops) == 1
        ids = [sent["clientAlgoId"] for sent in book.algo_received]
        assert len(ids) == len(set(ids))
