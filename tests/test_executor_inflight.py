"""Tests for the executor's handling of an order still travelling to the venue (issue 7 §5).

Found by the fault matrix (tests/faults/): a request the client timed out on can still be
executed by the venue afterwards, as long as its signature is valid (Binance: `recvWindow`
after its timestamp; "HTTP 5XX ... the execution status is UNKNOWN and could have been a
success", developers.binance.com/docs/derivatives/usds-margined-futures/general-info).
Exchange cases go through the REAL ccxt path against the fake Binance USDⓈ-M with its order
routes, as in tests/test_executor.py (whose helpers these tests reuse).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests import test_executor
from tests.fakes.binance import FakeBinanceUsdm
from tests.fakes.binance_orders import BinanceOrders
from tests.test_executor import ORDER, Trail, _executor, _report, _source

venue = test_executor.venue  # the same account: 2 BTC long at 60k, ratio 0.786


class TestOrderInFlight:
    """An unanswered order is not declared absent while it can still reach the venue."""

    async def test_late_order_is_not_replaced_by_a_second_one(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path
    ) -> None:
        """Test that an order reaching the venue after the timeout is found, not doubled."""
        fake, book = venue
        src = await _source(fake, timeout_ms=300)
        # The POST reaches the matching engine 1 s late, after the 0.3 s timeout. (Not
        # `fake.stall`: it holds the request before its body is read, so the client's
        # disconnect loses the order, and nothing would arrive late.)
        book.late = 1.0
        trail = Trail()
        ex = _executor(src, tmp_path, trail)
        try:
            await ex.step(await _report(src), 1_000.0)
            assert trail.kinds() == ["planned", "sent", "unconfirmed"]
            # The next report comes before the late order has landed: the lookup finds
            # nothing, but the request is still valid at the venue (recvWindow).
            await ex.step(await _report(src), 1_000.5)
            assert "pending_absent" not in trail.kinds()
            await asyncio.sleep(1.2)  # the late order lands and fills
            assert len(book.received) == 1
            await ex.step(await _report(src), 1_010.0)
            assert trail.of("recovered")[0]["status"] == "closed"
            posts = [o.client_id for o in book.seen]
            assert posts == [trail.of("sent")[0]["client_id"]]  # one order, never a second
        finally:
            ex.close()
            await src.close()

    async def test_order_that_never_arrived_is_given_up_after_its_window(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path
    ) -> None:
        """Test that an order refused before the venue is dropped once it cannot arrive."""
        fake, book = venue
        src = await _source(fake)
        src.exchange.options["recvWindow"] = 500  # a short signature window for the test
        fake.fail(ORDER, 502, "")  # a gateway error: the order never reached the venue
        trail = Trail()
        ex = _executor(src, tmp_path, trail)
        try:
            await ex.step(await _report(src), 1_000.0)
            assert trail.kinds() == ["planned", "sent", "unconfirmed"]
            assert book.seen == []
            await asyncio.sleep(2.0)  # past the 0.5 s window and the 1 s clock-skew allowance
            await ex.step(await _report(src), 1_010.0)
            assert "pending_absent" in trail.kinds()
            (order,) = book.seen  # protection goes on with the next step's order
            assert order.client_id != trail.of("sent")[0]["client_id"]
        finally:
            ex.close()
            await src.close()

    async def test_next_lookup_comes_when_the_window_closes(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path
    ) -> None:
        """Test that a pending order not found yet is looked up again once its window closes.

        Not a full quiet period (5 s) later: protection waits on that answer.
        """
        fake, book = venue
        src = await _source(fake)
        src.exchange.options["recvWindow"] = 1_000  # in flight for 1 s + 1 s of skew
        fake.fail(ORDER, 502, "")
        trail = Trail()
        ex = _executor(src, tmp_path, trail)
        try:
            await ex.step(await _report(src), 1_000.0)
            assert trail.kinds() == ["planned", "sent", "unconfirmed"]
            await ex.step(await _report(src), 1_000.1)  # not found yet: wait ~1.9 s
            assert trail.kinds()[-1] == "skipped"
            assert await ex.step(await _report(src), 1_001.0) is None  # still waiting
            assert len(trail.kinds()) == 4
            await asyncio.sleep(2.5)  # the window has closed
            await ex.step(await _report(src), 1_002.3)  # < 1 000.1 + 5 s of quiet
            assert "pending_absent" in trail.kinds()
            (order,) = book.seen  # the next step's order went out at once
            assert order.client_id != trail.of("sent")[0]["client_id"]
        finally:
            ex.close()
            await src.close()
