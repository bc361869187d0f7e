"""Tests for the executor's handling of an order still travelling to the venue (issue 7 §5).

Found by the fault matrix (tests/faults/): a request the client timed out on can still be
executed by the venue afterwards, as long as its signature is valid (Binance: `recvWindow`
after its timestamp; "HTTP 5XX ... the execution status is UNKNOWN and could have been a
success", developers.binance.com/docs/derivatives/usds-margined-futures/general-info).
Each test runs on both order desks (tests/desks.py): ccxt against the fake Binance USDⓈ-M
with its order routes, and the sim behind its link (tests/fakes/sim_wire.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.desks import Desk
from tests.test_executor import Trail, _on, _report, _safe, desk

__all__ = ["desk"]  # the fixture: the same account, 2 BTC long at 60k, ratio 0.786


class TestOrderInFlight:
    """An unanswered order is not declared absent while it can still reach the venue."""

    async def test_late_order_is_not_replaced_by_a_second_one(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that an order reaching the venue after the timeout is found, not doubled."""
        desk.set_timeout(0.3)
        desk.set_window(10.0)
        # The order reaches the matching engine 1 s late, after the 0.3 s timeout. (On the
        # fake, not `fake.stall`: it holds the request before its body is read, so the
        # client's disconnect loses the order, and nothing would arrive late.)
        desk.late_next(1.0)
        trail = Trail()
        ex = _on(desk, tmp_path, trail)
        try:
            await ex.step(await _report(desk.desk), 1_000.0)
            assert trail.kinds() == ["planned", "sent", "unconfirmed"]
            # The next report comes before the late order has landed: the lookup finds
            # nothing, but the request is still valid at the venue (recvWindow).
            await ex.step(await _report(desk.desk), 1_000.5)
            assert "pending_absent" not in trail.kinds()
            await asyncio.sleep(1.2)  # the late order lands and fills
            assert len(desk.arrived()) == 1
            await ex.step(await _report(desk.desk), 1_010.0)
            assert trail.of("recovered")[0]["status"] == "closed"
            posts = [o.client_id for o in desk.arrived()]
            assert posts == [trail.of("sent")[0]["client_id"]]  # one order, never a second
            _safe(desk)
        finally:
            ex.close()

    async def test_order_that_never_arrived_is_given_up_after_its_window(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that an order refused before the venue is dropped once it cannot arrive."""
        desk.set_window(0.5)  # a short signature window for the test
        desk.unreachable_next()  # a gateway error: the order never reached the venue
        trail = Trail()
        ex = _on(desk, tmp_path, trail)
        try:
            await ex.step(await _report(desk.desk), 1_000.0)
            assert trail.kinds() == ["planned", "sent", "unconfirmed"]
            assert desk.arrived() == []
            await asyncio.sleep(2.0)  # past the 0.5 s window and the 1 s clock-skew allowance
            await ex.step(await _report(desk.desk), 1_010.0)
            assert "pending_absent" in trail.kinds()
            (order,) = desk.arrived()  # protection goes on with the next step's order
            assert order.client_id != trail.of("sent")[0]["client_id"]
            _safe(desk)
        finally:
            ex.close()

    async def test_next_lookup_comes_when_the_window_closes(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a pending order not found yet is looked up again once its window closes.

        Not a full quiet period (5 s) later: protection waits on that answer.
        """
        desk.set_window(1.0)  # in flight for 1 s + 1 s of skew
        desk.unreachable_next()
        trail = Trail()
        ex = _on(desk, tmp_path, trail)
        try:
            await ex.step(await _report(desk.desk), 1_000.0)
            assert trail.kinds() == ["planned", "sent", "unconfirmed"]
            await ex.step(await _report(desk.desk), 1_000.1)  # not found yet: wait ~1.9 s
            assert trail.kinds()[-1] == "skipped"
            assert await ex.step(await _report(desk.desk), 1_001.0) is None  # still waiting
            assert len(trail.kinds()) == 4
            await asyncio.sleep(2.5)  # the window has closed
            await ex.step(await _report(desk.desk), 1_002.3)  # < 1 000.1 + 5 s of quiet
            assert "pending_absent" in trail.kinds()
            (order,) = desk.arrived()  # the next step's order went out at once
            assert order.client_id != trail.of("sent")[0]["client_id"]
        finally:
            ex.close()
