"""Issue 13 §6: a venue-side stop is never left behind, and no client id is used twice.

On both order desks (tests/desks.py, as test_backstop): ccxt against the fake Binance's
algo-order routes, and the sim.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from monitor.protect.switches import ActionSwitches
from tests.desks import BTC, Desk
from tests.test_backstop import _on, _report, desk

__all__ = ["desk"]  # the fixture: 1 BTC long at 60k on 3 000 USDT


class TestReconcile:
    """Stops are reconciled by client-id prefix at start and after every pause."""

    async def test_stop_kept_through_a_pause_is_cancelled_after_it(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a position closed while actions were paused keeps its stop in memory
        (it still rests), and once the pause ends and the position is back, one stop rests
        with a client id never used before."""
        switches = ActionSwitches()
        bs = _on(desk, tmp_path, switches=switches)
        assert await bs.maintain(await _report(desk.desk), 1.0) == 1
        switches.pause("acct", until=100.0)
        desk.hand_position(0.0)
        assert await bs.maintain(await _report(desk.desk), 2.0) == 0
        assert len(await desk.working_stops()) == 1  # the pause kept it at the venue ...
        assert len(bs.stops) == 1  # ... and in memory (it used to be forgotten here)
        desk.hand_position(0.5)
        await bs.maintain(await _report(desk.desk), 200.0)
        [stop] = await desk.working_stops()
        ids = [sent.client_id for sent in desk.stops_arrived()]
        assert Counter(ids).most_common(1)[0][1] == 1, ids  # no client id twice
        assert float(stop["amount"]) == 0.5  # sized to the new position

    async def test_leftovers_of_ours_are_cancelled_at_start(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a restart finding two stops of ours for one position keeps the newest,
        cancels the other, and a stop cancelled by hand is replaced after a pause."""
        # each process its own state dir: one process holds each dir's writer lock
        first = _on(desk, tmp_path / "a")
        await first.maintain(await _report(desk.desk), 1.0)
        second = _on(desk, tmp_path / "b")  # a process that missed the first's stop (gen 2)
        second._synced = True
        second._generation[(BTC, "long")] = 1
        await second.maintain(await _report(desk.desk), 1.0)
        assert len(await desk.working_stops()) == 2
        switches = ActionSwitches()
        restarted = _on(desk, tmp_path / "c", switches=switches)
        await restarted.maintain(await _report(desk.desk), 2.0)
        assert len(await desk.working_stops()) == 1
        # cancelled by hand at the venue during a pause: re-placed when the pause ends
        switches.pause("acct", until=10.0)
        await restarted.maintain(await _report(desk.desk), 3.0)
        [stop] = await desk.working_stops()
        await desk.desk.cancel_stop(str(stop["id"]), BTC)  # by hand
        assert await desk.working_stops() == []
        await restarted.maintain(await _report(desk.desk), 20.0)
        assert len(await desk.working_stops()) == 1
        ids = [sent.client_id for sent in desk.stops_arrived()]
        assert len(ids) == len(set(ids))
