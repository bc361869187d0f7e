"""The per-account loop: one source in, reports out to the sinks.

The TaskGroup, signals and reload are in `daemon/supervisor.py`; what is built from the
settings (sources, sinks) in `daemon/wiring.py`; the commands in `cli/`.

Per account two named tasks (aiomqtt's habit, STYLE.md): `source[<account>]` folds every
event into the account's view the moment it arrives, and `recompute[<account>]` turns the
*latest* view into a report. A mark-price tick goes into a `Ledger` (O(positions of that
symbol), no frozen copy of the snapshot), whose margin ratio is checked against the alert
thresholds on every tick: a threshold crossed toward danger, or a level left, reports to
the sinks in the same callback, never after a coalescing delay. Everything else meets the
recompute task at a dirty flag and an `asyncio.Event`, never a queue: when events come
faster than reports can be computed, the report is taken from the newest figures, so a
burst costs one recompute, not a backlog (docs/development.md, "one event in, at most one recompute
out"). `AccountLoop.events` vs `.recomputes` shows it working. A coalesced report follows
the account's previous report by at least `settings.report_spacing` seconds (default
1; a threshold crossing reports at once, see `AccountLoop._changed`): without it, a thousand
accounts whose ticks arrive a few at a time asked for a full report (every liquidation
price, the alert rules, the store) per handful of ticks, more than a core at 20 000 ticks/s
(docs/benchmarks.md), and a venue streaming each symbol's mark separately would ask for one per
tick.

Reports go to `Sink`s (monitor/sink.py) built in `wiring.build_sinks`; alerts, metrics and
protective actions plug in there. The shock-to-liquidation solve costs a few plain reports,
so the solves of all accounts share one CPU budget (`SHOCK_CPU_SHARE` of a core, task `shocks`,
monitor/core/shock_schedule.py): an account is solved at most every `settings.shock_interval`
seconds and only when its figures changed, nearest to danger first, never older than
`SHOCK_MAX_AGE` (reports in between carry `shock_to_liquidation=None`), and always for the
last state before the daemon stops (docs/benchmarks.md: 1 000 accounts x 20 positions on one core).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import structlog

from monitor.backoff import retry_after
from monitor.config.settings import AlertsSettings
from monitor.core import stress
from monitor.core.alert_config import ratio_level, shock_fraction
from monitor.core.levels import Level, level_exit, level_rank
from monitor.core.margin.ledger import Ledger
from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Event,
    MarginReport,
    ModelDrift,
    PriceTick,
    SourceDown,
)
from monitor.core.shock_schedule import ShockClaim, ShockScheduler
from monitor.core.state import AccountState, apply, initial_state
from monitor.core.venue_ratio import RatioSource, VenueAnchor, observe, used_ratio, with_venue
from monitor.errors import UserError, one_line
from monitor.sink import Sink
from monitor.sources.base import Source

__all__ = ["AMPLE_GAP", "PICK_GAP", "AccountLoop", "ShockSolver"]

log = structlog.get_logger("monitor.daemon")

Clock = Callable[[], float]

#: Shock solves of all accounts together take at most this share of one core on average
#: (docs/benchmarks.md: 1 000 accounts each solved every second needed more than a core).
#: Since the pre-summed solve they take ~17 % at 1 000 × 20 positions, under this ceiling; a
#: lower share made them no cheaper (solves out of the report spacing are extra reports) and
#: calm accounts' figures older (bench/RESULTS.md, "CPU lane").
SHOCK_CPU_SHARE = 0.25
#: ... but no changing account's shock figure gets older than this (seconds, or
#: shock_interval if longer), budget or not.
SHOCK_MAX_AGE = 60.0
#: Seconds the shock task lets pass after a wake-up before it solves: the wake-up is a tick,
#: whose urgent report may have queued I/O (an alert's MQTT publish, an order) that would
#: otherwise wait behind the solve (docs/benchmarks.md: tick -> alert p99 <= 10 ms).
SOLVE_AFTER_WAKE = 0.002
#: Most claims the `shocks` task takes per scan of every account (`ShockScheduler.pick`):
#: the scan costs ~0.3 ms at 1 000 accounts, so it is shared by up to this many solves; an
#: urgent claim arriving meanwhile cuts the batch short (docs/benchmarks.md).
PICK_LIMIT = 32
#: ... and, idle, it waits at least this long (seconds) for the next claims to fall due, so
#: that a scan finds a batch of them, not one (`shock_interval` is a least spacing anyway).
PICK_GAP = 0.025
#: ... or this long while the budget is ample (`ShockScheduler.ample`): then every due
#: account takes its solve with its own next report (`grant`), and the task only catches
#: what those miss (an urgent claim still wakes it at once). Scanning every 25 ms for
#: claims the accounts' own reports were about to take cost ~1.5 % of a core at 1 000
#: accounts (bench/RESULTS.md, "CPU lane, second round").
AMPLE_GAP = 0.25


# --- levels ----------------------------------------------------------------------------------
# Two levels, on purpose. The loop keeps the *ratio level*: where the reported margin ratio
# sits on the ladder, with the band's hysteresis (`ratio_level`), computed once per report.
# It decides which tick reports at once (`_alarm`) and is what `Sink.on_level` shows (the
# metrics gauge, the status page badge, the console colour). The *alert level* of the margin
# rule is the alert pipeline's (rules.evaluate, one of the sinks): it also waits `hold_for`
# before entering a higher level and is kept in the store across restarts, so the two differ
# while a hold runs, or after a restart with the ratio inside a band. The tick check must not
# wait for a hold: the report at the crossing is what starts the hold's clock.


# --- one account -----------------------------------------------------------------------------


class ShockSolver:
    """Task `shocks`: runs the shock solves `ShockScheduler.pick` hands out, one at a time.

    A solve runs as the account's own recompute (`AccountLoop.recompute(shock=True)`), so
    it also delivers the account's newest report; between solves the task yields, and it
    sleeps while the budget is spent, so ticks always get through. While idle it sleeps
    until the next claim falls due, and an account's change wakes it only when that account
    is due sooner (`changed`) or urgent (`urgent`): at 1 000 changing accounts, waking on
    every first change after a solve meant a scan of every account per change.
    """

    def __init__(self, scheduler: ShockScheduler) -> None:
        self.scheduler = scheduler
        self.wake = asyncio.Event()
        self.loops: dict[str, AccountLoop] = {}
        #: loop time by which the idle task wakes by itself (-inf while it is not idle)
        self._wakes_at = -math.inf
        self._urgent = False  # an urgent claim came in since the last pick

    def changed(self, claim: ShockClaim) -> None:
        """`claim`'s account changed since its last solve: wake the task if that makes the
        account due before the task wakes anyway."""
        if claim.solved_at + self.scheduler.interval < self._wakes_at:
            self.wake.set()

    def urgent(self, claim: ShockClaim) -> None:
        """`claim`'s account is heading into danger: it goes first, at once."""
        claim.urgent = True
        self._urgent = True
        self.wake.set()

    def add(self, account_loop: AccountLoop) -> ShockClaim:
        """Serve `account_loop` (a restarted account replaces its predecessor)."""
        self.loops[account_loop.account] = account_loop
        return self.scheduler.register(account_loop.account)

    def remove(self, account_loop: AccountLoop) -> None:
        """Stop serving `account_loop` (removed by a reload)."""
        if self.loops.get(account_loop.account) is account_loop:
            del self.loops[account_loop.account]
        self.scheduler.forget(account_loop.account, account_loop.claim)

    async def run(self) -> None:
        """Pick, solve, repeat; wait for a change, a due time or budget when there is none."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            claims, wait = self.scheduler.pick(now, PICK_LIMIT)
            self._urgent = False
            if not claims:
                if self.scheduler.tokens <= 0:
                    await asyncio.sleep(wait or 0.0)  # budget spent: changes cannot help
                    continue
                self.wake.clear()
                if wait is not None:
                    wait = max(wait, AMPLE_GAP if self.scheduler.ample(now) else PICK_GAP)
                self._wakes_at = math.inf if wait is None else now + wait
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self.wake.wait()
                finally:
                    self._wakes_at = -math.inf
                # what woke us (a tick) may have queued an urgent report's deliveries (an
                # MQTT publish, an order): their I/O goes out before the solve
                await asyncio.sleep(SOLVE_AFTER_WAKE)
                continue
            for claim in claims:
                account_loop = self.loops.get(claim.account)
                # solved inline meanwhile, or removed by a reload: nothing to do
                if account_loop is not None and account_loop.claim is claim and claim.changed:
                    await account_loop.recompute(shock=True)
                await asyncio.sleep(0)  # ticks first, then the next solve
                if self._urgent:
                    break  # picked again: the urgent claim goes first


class AccountLoop:
    """One account's state, its latest report, and the two tasks that keep them current.

    Per tick (docs/benchmarks.md): the mark goes into a `Ledger` (O(positions of the symbol)), whose
    margin ratio is checked against the alert thresholds at once; crossing one toward
    danger, or leaving the current level, reports to the sinks right there, in the same
    callback as the tick, never after a coalescing delay. Every other change only sets
    `dirty`, and `recompute[<account>]` reports the latest state once per wake-up. Shock
    solves come from the `ShockSolver`'s shared budget.
    """

    def __init__(
        self,
        source: Source,
        sinks: Sequence[Sink],
        alerts: AlertsSettings,
        shock_interval: float,
        *,
        clock: Clock = time.time,
        finite: bool = False,
        shocks: ShockSolver | None = None,
        urgent_ratios: Sequence[float] = (),
        report_spacing: float = 0.0,
        ratio_source: RatioSource = "worst",
        drift_tolerance: float = 0.01,
    ) -> None:
        """`finite`: the source ends by itself (a replay), and then the daemon may stop.
        `shocks`: the process's shared shock budget (a private one, never run, without).
        `urgent_ratios`: more ratios whose crossing reports at once (the action level).
        `report_spacing`: least seconds from a report to the next coalesced one
        (`run_daemon` passes `settings.report_spacing`). `ratio_source`, `drift_tolerance`:
        which ratio alerts and actions use where reads carry the venue's own, and when the
        two disagree enough to alert (monitor/core/venue_ratio.py)."""
        self.account = source.account
        self.source = source
        self.sinks = tuple(sinks)
        self.alerts = alerts
        self.shock_interval = shock_interval
        self.clock = clock
        self.finite = finite
        #: positions and balances as of the last full read; the latest marks are in `ledger`
        self.state: AccountState | None = None
        self.ledger: Ledger | None = None
        self.report: MarginReport | None = None
        #: the ratio level of the last report (see "levels" above), not the alert level
        self.ratio_level: Level = "ok"
        self.events = 0
        self.recomputes = 0
        self.shock_solves = 0
        self.urgent_reports = 0
        self.dirty = asyncio.Event()
        self.source_done = asyncio.Event()
        self._config = alerts.to_config()
        self._thresholds = sorted(
            {t for t in (*self._config.ratio_thresholds(), *urgent_ratios) if t is not None}
        )
        if shocks is None:
            shocks = ShockSolver(ShockScheduler(shock_interval, self._config))
        self.shocks = shocks
        self.claim = shocks.add(self)
        # a tick whose ratio leaves [_alarm_lo, _alarm_hi) reports at once (see _alarm)
        self._alarm_lo = -math.inf
        self._alarm_hi = self._thresholds[0] if self._thresholds else math.inf
        self._version = 0  # bumped by every change of the figures
        self._reported = -1  # the version the last report was computed from
        self.report_spacing = report_spacing
        self.ratio_source: RatioSource = ratio_source
        self.drift_tolerance = drift_tolerance
        #: the venue's ratio and ours on the last read that carried one
        self.anchor: VenueAnchor | None = None
        self._drift: ModelDrift | None = None  # a drift change the sinks are yet to hear
        self._reported_at = -math.inf  # loop time of the last report
        self._lock = asyncio.Lock()
        # bound once, and only the sinks that listen: a getattr, or an awaited no-op, per
        # sink per tick was measurable at 20 000 ticks/s (docs/benchmarks.md)
        listening = [sink for sink in self.sinks if type(sink).on_event is not Sink.on_event]
        self._on_event = tuple((sink.name, sink.on_event) for sink in listening)
        # a sink with its own synchronous `on_tick` gets ticks there, without a coroutine
        counting = [sink for sink in self.sinks if type(sink).on_tick is not Sink.on_tick]
        self._count_tick = tuple((sink.name, sink.on_tick) for sink in counting if sink.ticks)
        self._on_tick = tuple(
            (sink.name, sink.on_event)
            for sink in listening
            if sink.ticks and type(sink).on_tick is Sink.on_tick
        )
        self._on_report = tuple((sink.name, sink.on_report) for sink in self.sinks)

    async def run_source(self) -> None:
        """Task `source[<account>]`: fresh read, then fold events in; retry after failures."""
        attempt = 0
        on_event, on_tick, count_tick = self._on_event, self._on_tick, self._count_tick
        while True:
            try:
                sent = self.clock()  # the read's values are at least this new
                snapshot = await self.source.fetch_snapshot()
                if self._rebuild(initial_state(snapshot, sent)):
                    await self._report_now()
                attempt = 0
                account = self.account
                async for event in self.source.events():
                    self.events += 1
                    if type(event) is PriceTick:
                        for name, count in count_tick:
                            try:
                                count(event)
                            except Exception as exc:  # a broken sink must not stop the loop
                                log.error(
                                    "sink failed", sink=name, call="on_tick", error=one_line(exc)
                                )
                    for name, call in on_tick if type(event) is PriceTick else on_event:
                        try:
                            await call(event)
                        except Exception as exc:  # a broken sink must not stop the loop
                            log.error(
                                "sink failed", sink=name, call="on_event", error=one_line(exc)
                            )
                    if type(event) is PriceTick:
                        ledger = self.ledger
                        if (
                            ledger is not None
                            and event.account == account
                            and ledger.tick(event.symbol, event.mark_price, event.ts)
                            and self._changed()
                        ):
                            await self._report_now()
                    elif self._fold(event):
                        await self._report_now()
                    if self._drift is not None:
                        drift, self._drift = self._drift, None
                        await self._tell_event(drift)
            except Exception as exc:  # one account's failure never stops the others
                attempt += 1
                # a UserError is already the one line a person reads (a rejected key)
                reason = str(exc) if isinstance(exc, UserError) else one_line(exc)
                log.error("source failed", account=self.account, error=reason, attempt=attempt)
                await self._tell_event(SourceDown(self.account, reason))
                await asyncio.sleep(retry_after(attempt))
                continue
            if self.finite:
                log.info("source finished", account=self.account, events=self.events)
                self.source_done.set()
                return
            # a live source only ends when it gave up (it has sent SourceDown); read again
            attempt += 1
            log.warning("source stream ended; reconnecting", account=self.account)
            await asyncio.sleep(retry_after(attempt))

    def _fold(self, event: Event) -> bool:
        """A whole read (positions, balances, their marks): fold it in at once, rebuild the
        ledger on a change. Never half of it: a report between a read's positions and its
        balance showed a ratio the venue never had (docs/account-view.md).

        True when the sinks must hear of it now (see `_changed`).
        """
        state = self.state
        if state is None or not isinstance(event, AccountUpdate):
            return False
        before = self.anchor
        stale = state.read_at is not None and event.ts < state.read_at
        if event.venue_ratio is not None and not stale:
            self._check_venue(event, state.snapshot)
        # a new venue figure moves the ratio alerts use even when no figure of ours moved
        moved = self.anchor is not None and (
            before is None
            or (before.venue_ratio, before.model_ratio)
            != (self.anchor.venue_ratio, self.anchor.model_ratio)
        )
        if self.ledger is not None:
            # the latest ticks, with their times: newer marks than the read's are kept
            state = replace(state, snapshot=self.ledger.snapshot(), marks=self.ledger.marks())
        state, changed = apply(state, event)
        if not changed:
            self.state = state
            if self.ledger is None:
                return False
            self.ledger.hold(state.marks)
            return moved and self._changed()  # shown at once; urgent when a level moves
        return self._rebuild(state)

    def _check_venue(self, read: AccountUpdate, held: AccountSnapshot) -> None:
        """Our ratio on the read's own figures against the venue's from the same read."""
        assert read.venue_ratio is not None
        snapshot = AccountSnapshot(
            read.account,
            held.currency,
            read.collateral,
            read.positions,
            held.venue,
            read.venue_margin,
        )
        try:
            model = Ledger(snapshot).ratio()
        except Exception as exc:  # a core bug on odd data must not stop the monitor
            log.error("venue check failed", account=self.account, error=one_line(exc))
            return
        self.anchor, change = observe(self.anchor, model, read.venue_ratio, self.drift_tolerance)
        if change is not None:
            log.warning(
                "model_drift" if change else "model_drift_gone",
                account=self.account,
                ours=_number(model),
                venue=_number(read.venue_ratio),
            )
            self._drift = ModelDrift(self.account, change, model, read.venue_ratio)

    def _rebuild(self, state: AccountState) -> bool:
        """A new base after a full read: the ledger starts over from it (no drift)."""
        self.state = state
        try:
            self.ledger = Ledger(state.snapshot, state.marks)
        except Exception as exc:  # a core bug on odd data must not stop the monitor
            self.ledger = None
            log.error("recompute failed", account=self.account, error=one_line(exc))
            return False
        return self._changed()

    def _changed(self) -> bool:
        """Bookkeeping after the figures changed; True when the sinks must hear of it now.

        The ledger's ratio (O(assets)) is held against the alert thresholds on every change:
        at or past the next threshold above the last reported ratio (toward danger), or
        below the exit of the current level (hysteresis), is news that cannot wait for the
        coalesced report. Everything else only sets `dirty`.
        """
        self._version += 1
        self.dirty.set()
        claim = self.claim
        if not claim.changed:
            claim.changed = True
            self.shocks.changed(claim)
        assert self.ledger is not None
        ratio = self.ledger.ratio()
        if self.anchor is not None:
            ratio = used_ratio(ratio, self.anchor, self.ratio_source)
        claim.ratio = ratio
        if ratio >= self._alarm_hi:
            self.shocks.urgent(claim)  # fresh shock figures for an account heading into danger
            return True
        return ratio < self._alarm_lo

    async def _report_now(self) -> None:
        self.urgent_reports += 1
        await self.recompute(shock=False)  # the shock solve follows from the budget

    def _alarm(self, ratio: float, level: Level) -> None:
        """The ratio band in which a change is not urgent, after a report of `ratio`.

        Below: the exit of `level` (levels.level_exit, where `target_level` leaves it). Above:
        the first threshold above `ratio`, which is at most the entry of the next level. Two
        float compares per tick instead of a `target_level` call (docs/benchmarks.md).
        """
        self._alarm_lo = level_exit(level, self._config.ratio_thresholds(), self._config.band)
        self._alarm_hi = next((t for t in self._thresholds if t > ratio), math.inf)

    async def run_recompute(self) -> None:
        """Task `recompute[<account>]`: one report per wake-up, on the latest state, at
        most one per `report_spacing` seconds (changes meanwhile fold into the ledger)."""
        loop = asyncio.get_running_loop()
        dirty = self.dirty
        while True:
            # spacing first, then the flag: under a steady stream the flag is already set
            # when the spacing ends, so a report costs one wake-up of this task, not two
            # (docs/benchmarks.md); re-checked after the sleep, since an urgent report or a
            # shock solve meanwhile restarts the spacing
            reported_at = self._reported_at
            wait = reported_at + self.report_spacing - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await dirty.wait()  # at once when set
            if self._reported_at != reported_at:
                continue  # reported meanwhile (urgent or shock): space from that report
            dirty.clear()
            await self.recompute()

    async def recompute(
        self, force_shock: bool = False, *, shock: bool | None = None
    ) -> MarginReport | None:
        """Report on the current state; tells the sinks. Never raises (logs instead).

        `shock`: True solves the shock to liquidation, False does not, None (default) solves
        when the shared budget grants it inline (`ShockScheduler.grant`). Without a shock
        solve, a state already reported is not reported again.
        """
        if force_shock:
            shock = True
        async with self._lock:
            ledger = self.ledger
            if ledger is None:
                return None
            loop_now = asyncio.get_running_loop().time()
            scheduler = self.shocks.scheduler
            claim = self.claim
            if shock is None:
                shock = scheduler.grant(claim, loop_now)
            version = self._version
            if not shock and version == self._reported:
                return self.report  # an urgent report or a shock solve already covered it
            snapshot = ledger.snapshot()
            try:
                if shock:
                    started = time.thread_time()
                    try:
                        report = stress.assess(snapshot, ledger.report())
                    except Exception:
                        # charged and marked done all the same: no retry storm on bad data
                        scheduler.solved(claim, loop_now, None, time.thread_time() - started)
                        raise
                    cpu = time.thread_time() - started
                    scheduler.solved(claim, loop_now, shock_fraction(report), cpu)
                    self.shock_solves += 1
                else:
                    report = ledger.report()  # = margin.report(snapshot), from the ledger's pool
            except Exception as exc:  # a core bug on odd data must not stop the monitor
                log.error("recompute failed", account=self.account, error=one_line(exc))
                return None
            report = with_venue(report, self.anchor, self.ratio_source)
            self._reported = version
            self._reported_at = loop_now
            self.recomputes += 1
            self.report = report
            previous = self.ratio_level
            level = ratio_level(report.margin_ratio, previous, self._config)
            self.ratio_level = level
            self._alarm(report.margin_ratio, level)
            now = self.clock()
            account = self.account
            for name, on_report in self._on_report:
                try:
                    await on_report(account, report, snapshot, now)
                except Exception as exc:  # a broken sink must not stop the others or the loop
                    log.error("sink failed", sink=name, call="on_report", error=one_line(exc))
            if level != previous:
                _log_level(self.account, level, previous, report)
                await self._tell(
                    "on_level",
                    lambda sink: sink.on_level(self.account, level, previous, report, now),
                )
            return report

    async def settle(self) -> None:
        """Bring the report up to the final state (shock included) before stopping."""
        if self._version != self._reported or self.claim.changed:
            self.dirty.clear()
            await self.recompute(shock=True)

    async def _tell_event(self, event: Event) -> None:
        await self._tell("on_event", lambda sink: sink.on_event(event))

    async def _tell(self, method: str, call: Callable[[Sink], Awaitable[None]]) -> None:
        """`call` on every sink in turn; `method` names it in the log when a sink fails."""
        for sink in self.sinks:
            try:
                await call(sink)
            except Exception as exc:  # a broken sink must not stop the others or the loop
                log.error("sink failed", sink=sink.name, call=method, error=one_line(exc))


def _log_level(account: str, level: str, previous: str, report: MarginReport) -> None:
    method = "info" if level_rank(level) < level_rank(previous) else "warning"
    getattr(log, method)(
        "level changed",
        account=account,
        alert_level=level,
        previous_level=previous,
        margin_ratio=_number(report.margin_ratio),
        margin_balance=round(report.margin_balance, 2),
    )


def _number(value: float) -> float | str:
    return "inf" if math.isinf(value) else round(value, 6)
