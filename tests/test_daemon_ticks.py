"""Tests for monitor/daemon/loop.py's tick path: the per-tick threshold check and the shared
shock budget (issue 7: 20 000 ticks/s on one core without delaying an alert)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.alerts.sink import build_alerts_sink
from monitor.config.settings import AlertsSettings, load_settings
from monitor.core import rules
from monitor.core.alert_config import RULE_MARGIN, AlertConfig
from monitor.core.margin import report as margin
from monitor.core.margin.ledger import Ledger
from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Collateral,
    Event,
    MarginReport,
    Position,
    PriceTick,
)
from monitor.core.shock_schedule import ShockScheduler
from monitor.core.state import apply, initial_state
from monitor.daemon.loop import AMPLE_GAP, PICK_GAP, AccountLoop, ShockSolver
from monitor.daemon.supervisor import run_daemon, stop_leftover_tasks
from monitor.errors import UserError
from monitor.sink import Sink
from tests.strategies import SYMBOLS, accounts
from tests.test_daemon import BTC, _book, _Recorder, _until

# _book(): 1 000 USDT, long 0.1 BTC at 60 000, mmr 0.4 %: ratio 0.02 at 60 000,
# 0.67 at 50 300 (warning), 0.58 at 50 350 (still warning), 0.04 at 55 000 (ok).


class _Script:
    """A finite source that never yields to the loop between events, and notes after each
    event what the sinks had been told: the daemon's whole handling of an event runs
    between two resumptions of this generator, and the `recompute[..]` task cannot."""

    def __init__(
        self, recorder: _Recorder, script: list[Event | None], book: AccountSnapshot
    ) -> None:
        self.account = book.account
        self.recorder = recorder
        self.script = script
        self.book = book
        self.seen: list[tuple[int, float | None]] = []

    async def fetch_snapshot(self) -> AccountSnapshot:
        return self.book

    async def events(self) -> AsyncIterator[Event]:
        for event in self.script:
            if event is None:  # a pause: let recompute[..] deliver the coalesced report
                before = len(self.recorder.reports)
                for _ in range(2_000):
                    if len(self.recorder.reports) > before:
                        break
                    await asyncio.sleep(0.001)
                continue
            yield event
            last = self.recorder.reports[-1] if self.recorder.reports else None
            self.seen.append(
                (len(self.recorder.reports), last.positions[0].mark_price if last else None)
            )

    async def close(self) -> None:
        return None


_STAMPS = itertools.count(4_000_000_000)


def _tick(price: float) -> PriceTick:
    # stamped after the start-up read (initial_state stamps it with the wall clock), in
    # order: an older tick would be dropped (state.py, the ordering rule)
    return PriceTick("burst", BTC, price, float(next(_STAMPS)))


async def _run(source: _Script, recorder: _Recorder, **overrides: object) -> AccountLoop:
    settings = load_settings(None, shock_interval=3600.0, **overrides)
    (loop,) = await run_daemon(
        settings,
        [],
        [recorder],
        sources=[source],
        finite=True,
        handle_signals=False,
        duration=30,
    )
    return loop


class TestThresholdCrossing:
    async def test_crossing_reports_before_the_tick_handler_returns(self) -> None:
        """Test that a tick crossing a threshold (either way) is reported to the sinks while
        the tick is handled, and a tick that crosses nothing waits for the coalesced one."""
        recorder = _Recorder()
        prices = [59_000.0, 50_300.0, 50_350.0, 55_000.0]
        source = _Script(recorder, [_tick(p) for p in prices], _book())
        loop = await _run(source, recorder)
        assert source.seen == [
            (0, None),  # no crossing: left to recompute[burst]
            (1, 50_300.0),  # ok -> warning: reported at once
            (1, 50_300.0),  # still warning, nothing crossed: coalesced
            (2, 55_000.0),  # below warning's exit (0.45): reported at once
        ]
        assert recorder.levels == [("ok", "warning"), ("warning", "ok")]
        assert loop.urgent_reports == 2
        assert recorder.reports[-1].positions[0].mark_price == 55_000.0  # the final settle

    async def test_move_toward_danger_past_a_threshold_within_a_level(self) -> None:
        """Test that re-crossing the warning threshold upward while the level held (the
        hysteresis band) still reports at once."""
        recorder = _Recorder()
        # 0.67 (warning) -> 0.48 (held by the band; the coalesced report) -> 0.55
        script = [_tick(50_300.0), _tick(50_420.0), None, _tick(50_366.0)]
        source = _Script(recorder, script, _book())
        await _run(source, recorder)
        assert source.seen == [(1, 50_300.0), (1, 50_300.0), (3, 50_366.0)]
        assert recorder.reports[1].margin_ratio < 0.5 <= recorder.reports[2].margin_ratio
        assert recorder.levels == [("ok", "warning")]

    async def test_action_level_crossing_reports_at_once(self) -> None:
        """Test that the protective-action ratio counts as a threshold of its own."""
        recorder = _Recorder()
        price = 50_700.0  # ratio 0.29: below warning, past an action level of 0.25
        source = _Script(recorder, [_tick(price)], _book())
        await _run(source, recorder, actions={"action_level": 0.25, "target_ratio": 0.1})
        assert source.seen == [(1, price)]
        assert recorder.levels == []

    async def test_positions_update_crossing_reports_at_once(self) -> None:
        """Test that a full read that crosses a threshold (a bigger position) is not delayed."""
        recorder = _Recorder()
        book = _book()
        # 0.6 BTC at 58 650: margin balance 190, MM 140.76, ratio 0.74 (critical)
        bigger = replace(book.positions[0], contracts=0.6, mark_price=58_650.0)
        later = 5e9  # sent after the start-up read and after the tick before it
        read = AccountUpdate("burst", (bigger,), book.collateral, later)
        script: list[Event | None] = [_tick(59_000.0), read]
        source = _Script(recorder, script, book)
        loop = await _run(source, recorder)
        assert source.seen == [(0, None), (1, 58_650.0)]
        assert recorder.levels[0] == ("ok", "critical")
        assert loop.urgent_reports == 1


class TestRatioLevelAndAlertLevel:
    async def test_hold_for_delays_the_alert_not_the_ratio_level(self, tmp_path: Path) -> None:
        """Test that with hold_for > 0 a crossing tick still reports at once and moves the
        ratio level (on_level), while the margin alert, on the same reports, stays at ok and
        fires only once the hold has passed."""
        recorder = _Recorder()
        settings = load_settings(None, shock_interval=3600.0, alerts={"hold_for": 600.0})
        config = settings.alerts.to_config()
        alerts = build_alerts_sink(tmp_path, config, None, None)
        source = _Script(recorder, [_tick(50_300.0)], _book())  # ratio 0.67: warning
        (loop,) = await run_daemon(
            settings,
            [],
            [recorder, alerts],
            sources=[source],
            finite=True,
            handle_signals=False,
            duration=30,
        )
        assert source.seen == [(1, 50_300.0)]  # reported while the tick was handled
        assert recorder.levels == [("ok", "warning")]
        assert loop.ratio_level == "warning"
        state = alerts.pipeline.state
        held = state.alert("burst", RULE_MARGIN)
        assert (held.level, held.pending_level) == ("ok", "warning")
        assert alerts.pipeline.level("burst") == "ok"
        assert held.pending_since is not None
        _, events = rules.tick(state, held.pending_since + 599.0, config)
        assert [e for e in events if e.rule == RULE_MARGIN] == []
        _, events = rules.tick(state, held.pending_since + 600.0, config)
        fired = [(e.kind, e.level) for e in events if e.rule == RULE_MARGIN]
        assert fired == [("firing", "warning")]


class TestLedgerAgreesWithTheState:
    @settings(max_examples=150, deadline=None)
    @given(accounts(), st.data())
    def test_ledger_matches_folding_ticks_into_the_snapshot(
        self, s: AccountSnapshot, data: st.DataObject
    ) -> None:
        """Test that any tick sequence (held symbols, others, same prices, reports taken in
        between) leaves the daemon's Ledger equal to state.apply's snapshot and its ratio
        equal to margin.report's."""
        ledger = Ledger(s)
        state = initial_state(s, 0.0)
        for i in range(data.draw(st.integers(min_value=1, max_value=25))):
            symbol = data.draw(st.sampled_from(SYMBOLS))
            held = next((p.mark_price for p in s.positions if p.symbol == symbol), 60_000.0)
            price = held * data.draw(st.sampled_from((1.0, 0.9, 1.07, 0.5, 1.3)))
            changed = ledger.tick(symbol, price)
            state, expected = apply(state, PriceTick(s.account, symbol, price, float(i)))
            assert changed == expected
            if data.draw(st.booleans()):
                assert ledger.snapshot() == state.snapshot  # a coalesced report in between
        assert ledger.snapshot() == state.snapshot
        full = margin.report(state.snapshot).margin_ratio
        if full == float("inf"):
            assert ledger.ratio() == full
        else:
            assert abs(ledger.ratio() - full) <= 1e-9 * max(1.0, full)

    def test_collateral_only_market_moves_the_ratio(self) -> None:
        """Test that a tick of a market the account does not trade re-prices collateral held
        in its base asset, as state.apply does."""
        s = AccountSnapshot(
            "a",
            "USDT",
            (Collateral("USDT", 1_000), Collateral("ETH", 1, 3_000)),
            (Position(BTC, "long", 1, 60_000, 60_000, mmr=0.01),),
        )
        ledger = Ledger(s)
        assert ledger.tick("ETH/USDT:USDT", 2_000)
        moved = apply(initial_state(s, 0.0), PriceTick("a", "ETH/USDT:USDT", 2_000, 1.0))[0]
        assert ledger.snapshot() == moved.snapshot
        assert ledger.ratio() == margin.report(moved.snapshot).margin_ratio


class _Parked:
    """A source with one snapshot and no events until closed (an idle account)."""

    def __init__(self, book: AccountSnapshot) -> None:
        self.account = book.account
        self.book = book
        self.closed = asyncio.Event()

    async def fetch_snapshot(self) -> AccountSnapshot:
        return self.book

    async def events(self) -> AsyncIterator[Event]:
        await self.closed.wait()
        return
        yield  # an async generator

    async def close(self) -> None:
        self.closed.set()


class TestSharedShockBudget:
    async def test_the_account_in_danger_is_solved_first(self) -> None:
        """Test that with the budget contended, the shared solver serves the account past
        warning before 40 calm ones, and solves no account twice while figures stand still."""
        config = AlertConfig()
        solver = ShockSolver(ShockScheduler(1.0, config, share=0.25, burst=1e-3))
        recorder = _Recorder()
        books = [replace(_book(), account=f"calm{i:02d}") for i in range(40)]
        danger = replace(_book(), account="danger")
        danger = replace(danger, positions=(replace(danger.positions[0], mark_price=50_300.0),))
        books.insert(17, danger)
        loops = [
            AccountLoop(_Parked(b), [recorder], AlertsSettings(), 1.0, shocks=solver) for b in books
        ]
        tasks = [asyncio.create_task(lp.run_source()) for lp in loops]
        await _until(lambda: all(lp.ledger is not None for lp in loops))
        solver.scheduler.tokens = 1e-6  # contended: no inline solves, one handful per pick
        runner = asyncio.create_task(solver.run())
        try:
            await _until(lambda: sum(lp.shock_solves for lp in loops) >= len(loops))
        finally:
            runner.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(runner, *tasks, return_exceptions=True)
        solved = [r.account for r in recorder.reports if r.shock_to_liquidation is not None]
        assert solved[0] == "danger"
        assert sorted(solved) == sorted(b.account for b in books)  # each once: nothing moved


class _UrgentOnFirst(_Recorder):
    """A recorder that, on the first shock report, makes another account urgent (as a
    tick crossing toward danger does in its `source[..]` task)."""

    def __init__(self, solver: ShockSolver, account: str) -> None:
        super().__init__()
        self.solver = solver
        self.account = account
        self.solved: list[str] = []  # accounts in the order of their shock reports

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        await super().on_report(account, report, snapshot, now)
        if report.shock_to_liquidation is not None:
            self.solved.append(account)
            if len(self.solved) == 1:
                self.solver.urgent(self.solver.scheduler.claims[self.account])


class TestShockSolverWakes:
    async def test_an_urgent_claim_cuts_a_batch_short(self) -> None:
        """Test that an account turning urgent while a batch of solves runs is solved next,
        ahead of the rest of the batch it was not in."""
        config = AlertConfig()
        solver = ShockSolver(ShockScheduler(1.0, config, share=0.25, burst=1.0))
        books = [replace(_book(), account=f"calm{i:02d}") for i in range(40)]
        recorder = _UrgentOnFirst(solver, "calm39")
        loops = [
            AccountLoop(_Parked(b), [recorder], AlertsSettings(), 1.0, shocks=solver) for b in books
        ]
        tasks = [asyncio.create_task(lp.run_source()) for lp in loops]
        await _until(lambda: all(lp.ledger is not None for lp in loops))
        recorder.reports.clear()
        runner = asyncio.create_task(solver.run())
        try:
            await _until(lambda: len(recorder.solved) >= 3)
        finally:
            runner.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(runner, *tasks, return_exceptions=True)
        # the first batch holds the first 32 claims (calm00..calm31), calm39 is not one:
        # without the cut it would wait for the other 31
        assert recorder.solved[:3] == ["calm00", "calm39", "calm01"]

    def test_a_change_wakes_the_idle_task_only_for_an_account_due_sooner(self) -> None:
        """Test that while the task sleeps until a claim falls due, a change wakes it for an
        account due before then (or never solved), and not for one due later."""
        solver = ShockSolver(ShockScheduler(1.0, AlertConfig()))
        later = solver.scheduler.register("later")
        later.solved_at = 100.0  # due at 101.0
        sooner = solver.scheduler.register("sooner")
        sooner.solved_at = 99.2  # due at 100.2
        fresh = solver.scheduler.register("fresh")  # never solved
        solver._wakes_at = 100.5  # what `run` sets while it waits for the next due claim
        solver.changed(later)
        assert not solver.wake.is_set()
        solver.changed(sooner)
        assert solver.wake.is_set()
        solver.wake.clear()
        solver.changed(fresh)
        assert solver.wake.is_set()
        solver.wake.clear()
        solver._wakes_at = -float("inf")  # busy solving: it picks again by itself
        solver.changed(fresh)
        assert not solver.wake.is_set()

    @pytest.mark.parametrize(("tokens", "gap"), [(0.25, AMPLE_GAP), (0.1, PICK_GAP)])
    async def test_idle_waits_longer_while_accounts_solve_inline(
        self, tokens: float, gap: float
    ) -> None:
        """Test that the idle task, with a claim due in 10 ms, sleeps `AMPLE_GAP` while the
        budget is ample (the account's own report takes that solve) and `PICK_GAP` when not."""
        scheduler = ShockScheduler(1.0, AlertConfig(), share=0.25, burst=0.25)
        solver = ShockSolver(scheduler)
        loop = asyncio.get_running_loop()
        claim = scheduler.register("acct")
        claim.changed = True
        claim.solved_at = loop.time() - 0.99
        scheduler.tokens = tokens
        started = loop.time()
        runner = asyncio.create_task(solver.run())
        try:
            for _ in range(100):  # until the task waits (it picks nothing due yet first)
                await asyncio.sleep(0)
                if solver._wakes_at > 0:
                    break
            assert solver._wakes_at - started == pytest.approx(gap, abs=0.01)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


class _Paced(_Script):
    """Ticks 10 ms apart that cross nothing: only the coalesced report can carry them."""

    async def events(self) -> AsyncIterator[Event]:
        for event in self.script:
            yield event
            await asyncio.sleep(0.01)


class TestReportSpacing:
    async def test_setting_spaces_coalesced_reports(self) -> None:
        """Test that `report_spacing` bounds the reports of a steady stream, 0 does not."""
        counts: dict[float, int] = {}
        for spacing in (0.0, 0.25):
            recorder = _Recorder()
            ticks = [_tick(59_000.0 + i) for i in range(100)]  # ratio ~0.02 throughout
            source = _Paced(recorder, list(ticks), _book())
            loop = await _run(source, recorder, report_spacing=spacing)
            assert loop.urgent_reports == 0
            assert recorder.reports[-1].positions[0].mark_price == 59_099.0  # none lost
            counts[spacing] = len(recorder.reports)
        # ~1 s of ticks: one report per wake-up unspaced, at most ~1 per 0.25 s spaced
        assert counts[0.25] <= 8
        assert counts[0.0] >= 4 * counts[0.25]

    def test_negative_spacing_is_refused(self) -> None:
        """Test that a negative spacing is a one-line settings error naming the field."""
        with pytest.raises(UserError, match=r"report_spacing must be 0 or more"):
            load_settings(None, report_spacing=-1)


class _NoTicks(_Recorder):
    """A recorder that declares it has nothing to do with ticks."""

    name = "no-ticks"
    ticks = False


async def _run_script(source: _Script, sinks: list[Sink]) -> None:
    """The daemon on one scripted account with `sinks`, until the script ends."""
    settings = load_settings(None, shock_interval=3600.0)
    await run_daemon(
        settings, [], sinks, sources=[source], finite=True, handle_signals=False, duration=30
    )


class _Counting(_Recorder):
    """A recorder that takes ticks in its synchronous `on_tick` (the console's way)."""

    name = "counting"

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.ticked: list[PriceTick] = []
        self.broken = broken

    def on_tick(self, tick: PriceTick) -> None:
        self.ticked.append(tick)
        if self.broken:
            raise RuntimeError("boom")


class TestSinkEvents:
    @pytest.mark.parametrize("broken", [False, True])
    async def test_a_sink_with_on_tick_takes_ticks_there(self, broken: bool) -> None:
        """Test that a sink overriding `on_tick` gets every tick there and no tick in
        `on_event` (which still gets the read), and that one raising in it stops nothing."""
        every, counting = _Recorder(), _Counting(broken)
        book = _book()
        read = AccountUpdate("burst", book.positions, book.collateral, 5e9)
        ticks = [_tick(59_000.0), _tick(58_000.0)]
        await _run_script(_Script(every, [*ticks, read], book), [counting, every])
        assert counting.ticked == ticks
        assert counting.events == [read]
        assert [type(e) for e in every.events] == [PriceTick, PriceTick, AccountUpdate]
        assert [r.margin_ratio for r in counting.reports] == [r.margin_ratio for r in every.reports]

    async def test_a_sink_without_ticks_hears_every_other_event(self) -> None:
        """Test that `ticks = False` keeps PriceTicks from a sink's on_event, and only them:
        reads, and the reports built on the ticks, still reach it."""
        every, no_ticks = _Recorder(), _NoTicks()
        book = _book()
        read = AccountUpdate("burst", book.positions, book.collateral, 5e9)
        script: list[Event | None] = [_tick(59_000.0), _tick(58_000.0), read]
        await _run_script(_Script(every, script, book), [every, no_ticks])
        assert [type(e) for e in every.events] == [PriceTick, PriceTick, AccountUpdate]
        assert no_ticks.events == [read]
        assert [r.margin_ratio for r in no_ticks.reports] == [r.margin_ratio for r in every.reports]


class TestStopLeftoverTasks:
    async def test_a_task_that_swallows_its_cancel_is_named_not_waited_for(self) -> None:
        """Test that shutdown cancels leftovers, waits `grace`, and names the stubborn one."""
        stubborn_done = asyncio.Event()

        async def stubborn() -> None:
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    if stubborn_done.is_set():
                        raise
                    # swallowed: what 3.11's wait_for can do to a caller's cancel

        async def polite() -> None:
            await asyncio.sleep(10)

        tasks = [
            asyncio.create_task(stubborn(), name="stubborn"),
            asyncio.create_task(polite(), name="polite"),
        ]
        await asyncio.sleep(0)
        try:
            stuck = await stop_leftover_tasks(0.2)
            assert len(stuck) == 1
            assert stuck[0].startswith("stubborn at ")
            assert "test_daemon_ticks.py" in stuck[0]
            assert tasks[1].cancelled()
        finally:
            stubborn_done.set()  # now it ends on the next cancel
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def test_nothing_left_returns_at_once(self) -> None:
        """Test that with no other task there is no wait."""
        assert await stop_leftover_tasks(5.0) == []
