"""The daemon: sources in, reports out, one TaskGroup, clean stop on a signal.

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
0.5; a threshold crossing reports at once, see `AccountLoop._changed`): without it, a thousand
accounts whose ticks arrive a few at a time asked for a full report (every liquidation
price, the alert rules, the store) per handful of ticks, more than a core at 20 000 ticks/s
(docs/benchmarks.md), and a venue streaming each symbol's mark separately would ask for one per
tick.

Reports go to `Sink`s (sinks/base.py) built in `build_sinks`; alerts, metrics and protective
actions plug in there. The shock-to-liquidation solve costs ~30x a plain report, so the
solves of all accounts share one CPU budget (`SHOCK_CPU_SHARE` of a core, task `shocks`,
monitor/shock_schedule.py): an account is solved at most every `settings.shock_interval`
seconds and only when its figures changed, nearest to danger first, never older than
`SHOCK_MAX_AGE` (reports in between carry `shock_to_liquidation=None`), and always for the
last state before the daemon stops (docs/benchmarks.md: 1 000 accounts x 20 positions on one core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import structlog

from monitor import logs, margin, stress
from monitor.errors import UserError
from monitor.ledger import Ledger
from monitor.model import (
    AccountSnapshot,
    AccountUpdate,
    Event,
    MarginReport,
    ModelDrift,
    PriceTick,
    SourceDown,
)
from monitor.rules import Level, level_rank, ratio_level, shock_fraction
from monitor.sdnotify import Notifier, ProgressProbe, watchdog_interval, watchdog_loop
from monitor.settings import AccountSettings, AlertsSettings, Settings, load_settings
from monitor.shock_schedule import ShockClaim, ShockScheduler
from monitor.sinks.actions import build_actions_sink
from monitor.sinks.alerts import build_alerts_sink
from monitor.sinks.base import Sink
from monitor.sinks.console import ConsoleSink
from monitor.sources.base import Source
from monitor.sources.sim import DEMO_BOOK, SimVenue
from monitor.sources.sim_prices import ReplayStep, load_replay
from monitor.state import AccountState, apply, initial_state
from monitor.venue_ratio import RatioSource, VenueAnchor, observe, used_ratio, with_venue

__all__ = [
    "AccountLoop",
    "ShockSolver",
    "actions_mode",
    "build_sinks",
    "check_command",
    "classify_level",
    "open_source",
    "parse_shard",
    "run_command",
    "run_daemon",
    "select_shard",
]

log = structlog.get_logger("monitor.daemon")

Clock = Callable[[], float]

#: Seconds the final settle (end of --duration or of a replay) may take before stopping anyway.
SETTLE_LIMIT = 5.0
#: Seconds the process gives leftover tasks to end once the daemon has stopped.
STOP_GRACE = 5.0
#: Shock solves of all accounts together take at most this share of one core on average
#: (docs/benchmarks.md: 1 000 accounts each solved every second needed more than a core).
SHOCK_CPU_SHARE = 0.25
#: ... but no changing account's shock figure gets older than this (seconds, or
#: shock_interval if longer), budget or not.
SHOCK_MAX_AGE = 60.0
#: Seconds the shock task lets pass after a wake-up before it solves: the wake-up is a tick,
#: whose urgent report may have queued I/O (an alert's MQTT publish, an order) that would
#: otherwise wait behind the solve (docs/benchmarks.md: tick -> alert p99 <= 10 ms).
SOLVE_AFTER_WAKE = 0.002


# --- sharding --------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 ≤ K ≤ N) from `--shard`; anything else is a one-line UserError."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. --shard 1/3")
    return k, n


def shard_of(name: str, n: int) -> int:
    """Stable 1-based shard of an account name: the same in every process and release."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % n + 1


def select_shard(
    accounts: Sequence[AccountSettings], shard: str | None
) -> list[AccountSettings]:
    """The accounts this process runs under `--shard K/N` (all of them without it)."""
    if shard is None:
        return list(accounts)
    k, n = parse_shard(shard)
    return [a for a in accounts if shard_of(a.name, n) == k]


# --- levels ----------------------------------------------------------------------------------
# The level the console shows comes from the rule engine's hysteresis (monitor.rules); the
# alert lifecycle itself (docs/notifications.md) runs in the alert pipeline, one of the sinks.

_LEVELS = ("ok", "warning", "critical", "emergency")


def classify_level(ratio: float, previous: str, alerts: AlertsSettings) -> str:
    """The margin-ratio level with hysteresis (rules.ratio_level); the full alert lifecycle
    (repeats, shock, stale, silences) runs in the alert pipeline (sinks/alerts.py)."""
    return ratio_level(ratio, cast("Level", previous), alerts.to_config())


# --- one account -----------------------------------------------------------------------------


class ShockSolver:
    """Task `shocks`: runs the shock solves `ShockScheduler.pick` hands out, one at a time.

    A solve runs as the account's own recompute (`AccountLoop.recompute(shock=True)`), so
    it also delivers the account's newest report; between solves the task yields, and it
    sleeps while the budget is spent, so ticks always get through.
    """

    def __init__(self, scheduler: ShockScheduler) -> None:
        self.scheduler = scheduler
        self.wake = asyncio.Event()
        self.loops: dict[str, AccountLoop] = {}

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
            claims, wait = self.scheduler.pick(loop.time())
            if not claims:
                if self.scheduler.tokens <= 0:
                    await asyncio.sleep(wait or 0.0)  # budget spent: changes cannot help
                    continue
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wake.wait()
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
        two disagree enough to alert (monitor/venue_ratio.py)."""
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
        self.level = "ok"
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
        # bound once: a getattr per sink per tick was measurable at 20 000 ticks/s
        self._on_event = tuple((sink.name, sink.on_event) for sink in self.sinks)

    async def run_source(self) -> None:
        """Task `source[<account>]`: fresh read, then fold events in; retry after failures."""
        attempt = 0
        on_event = self._on_event
        while True:
            try:
                sent = self.clock()  # the read's values are at least this new
                snapshot = await self.source.fetch_snapshot()
                if self._rebuild(initial_state(snapshot, sent)):
                    await self._report_now()
                attempt = 0
                async for event in self.source.events():
                    self.events += 1
                    for name, call in on_event:
                        try:
                            await call(event)
                        except Exception as exc:  # a broken sink must not stop the loop
                            log.error("sink failed", sink=name, call="on_event",
                                      error=_one_line(exc))  # fmt: skip
                    if type(event) is PriceTick:
                        ledger = self.ledger
                        if (
                            ledger is not None
                            and event.account == self.account
                            and ledger.tick(event.symbol, event.mark_price, event.ts)
                            and self._changed()
                        ):
                            await self._report_now()
                    elif self._fold(event):
                        await self._report_now()
                    if self._drift is not None:
                        drift, self._drift = self._drift, None
                        await self._tell("on_event", drift)
            except Exception as exc:  # one account's failure never stops the others
                attempt += 1
                # a UserError is already the one line a person reads (a rejected key)
                reason = str(exc) if isinstance(exc, UserError) else _one_line(exc)
                log.error("source failed", account=self.account, error=reason, attempt=attempt)
                await self._tell("on_event", SourceDown(self.account, reason, self.clock()))
                await asyncio.sleep(random.uniform(0, 1.5 ** min(10, attempt)))  # noqa: S311
                continue
            if self.finite:
                log.info("source finished", account=self.account, events=self.events)
                self.source_done.set()
                return
            # a live source only ends when it gave up (it has sent SourceDown); read again
            attempt += 1
            log.warning("source stream ended; reconnecting", account=self.account)
            await asyncio.sleep(random.uniform(0, 1.5 ** min(10, attempt)))  # noqa: S311

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
        if event.venue_ratio is not None:
            self._check_venue(event, state.snapshot)
        # a new venue figure moves the ratio alerts use even when no figure of ours moved
        moved = self.anchor is not None and (
            before is None or (before.venue_ratio, before.model_ratio)
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
        snapshot = AccountSnapshot(read.account, held.currency, read.collateral,
                                   read.positions, held.venue)  # fmt: skip
        try:
            model = Ledger(snapshot).ratio()
        except Exception as exc:  # a core bug on odd data must not stop the monitor
            log.error("venue check failed", account=self.account, error=_one_line(exc))
            return
        self.anchor, change = observe(self.anchor, model, read.venue_ratio, read.ts,
                                      self.drift_tolerance)  # fmt: skip
        if change is not None:
            log.warning("model_drift" if change else "model_drift_gone", account=self.account,
                        ours=_number(model), venue=_number(read.venue_ratio))  # fmt: skip
            self._drift = ModelDrift(self.account, change, model, read.venue_ratio, read.ts)

    def _rebuild(self, state: AccountState) -> bool:
        """A new base after a full read: the ledger starts over from it (no drift)."""
        self.state = state
        try:
            self.ledger = Ledger(state.snapshot, state.marks)
        except Exception as exc:  # a core bug on odd data must not stop the monitor
            self.ledger = None
            log.error("recompute failed", account=self.account, error=_one_line(exc))
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
            self.shocks.wake.set()
        assert self.ledger is not None
        ratio = claim.ratio = used_ratio(self.ledger.ratio(), self.anchor, self.ratio_source)
        if ratio >= self._alarm_hi:
            claim.urgent = True  # fresh shock figures for an account heading into danger
            self.shocks.wake.set()
            return True
        return ratio < self._alarm_lo

    async def _report_now(self) -> None:
        self.urgent_reports += 1
        await self.recompute(shock=False)  # the shock solve follows from the budget

    def _alarm(self, ratio: float, level: str) -> None:
        """The ratio band in which a change is not urgent, after a report of `ratio`.

        Below: the exit of `level` (its threshold minus the band: rules.ratio_level). Above:
        the first threshold above `ratio`, which is at most the entry of the next level.
        """
        rank = level_rank(level)
        entry = self._config.ratio_thresholds()[rank - 1] if rank else None
        self._alarm_lo = -math.inf if entry is None else entry - self._config.band
        self._alarm_hi = next((t for t in self._thresholds if t > ratio), math.inf)

    async def run_recompute(self) -> None:
        """Task `recompute[<account>]`: one report per wake-up, on the latest state, at
        most one per `report_spacing` seconds (changes meanwhile fold into the ledger)."""
        loop = asyncio.get_running_loop()
        while True:
            await self.dirty.wait()
            wait = self._reported_at + self.report_spacing - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.dirty.clear()
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
                        report = stress.assess(snapshot)
                    except Exception:
                        # charged and marked done all the same: no retry storm on bad data
                        scheduler.solved(claim, loop_now, None, time.thread_time() - started)
                        raise
                    cpu = time.thread_time() - started
                    scheduler.solved(claim, loop_now, shock_fraction(report), cpu)
                    self.shock_solves += 1
                else:
                    report = margin.report(snapshot)
            except Exception as exc:  # a core bug on odd data must not stop the monitor
                log.error("recompute failed", account=self.account, error=_one_line(exc))
                return None
            report = with_venue(report, self.anchor, self.ratio_source)
            self._reported = version
            self._reported_at = loop_now
            self.recomputes += 1
            self.report = report
            previous = self.level
            level = ratio_level(report.margin_ratio, cast("Level", previous), self._config)
            self.level = level
            self._alarm(report.margin_ratio, level)
            now = self.clock()
            await self._tell("on_report", self.account, report, snapshot, now)
            if level != previous:
                _log_level(self.account, level, previous, report)
                await self._tell("on_level", self.account, level, previous, report, now)
            return report

    async def settle(self) -> None:
        """Bring the report up to the final state (shock included) before stopping."""
        if self._version != self._reported or self.claim.changed:
            self.dirty.clear()
            await self.recompute(shock=True)

    async def _tell(self, method: str, *args: Any) -> None:
        for sink in self.sinks:
            call: Callable[..., Awaitable[None]] = getattr(sink, method)
            try:
                await call(*args)
            except Exception as exc:  # a broken sink must not stop the others or the loop
                log.error("sink failed", sink=sink.name, call=method, error=_one_line(exc))


def _log_level(account: str, level: str, previous: str, report: MarginReport) -> None:
    method = "info" if _LEVELS.index(level) < _LEVELS.index(previous) else "warning"
    getattr(log, method)(
        "level changed",
        account=account,
        alert_level=level,
        previous_level=previous,
        margin_ratio=_number(report.margin_ratio),
        margin_balance=round(report.margin_balance, 2),
    )


# --- wiring ----------------------------------------------------------------------------------


def open_source(
    account: AccountSettings,
    replay: Sequence[ReplayStep] | None = None,
    state_dir: Path | None = None,
) -> Source:
    """The source of one configured account (the sim, or a live ccxt account); `state_dir`
    keeps the venue's collateral rules across restarts (docs/collateral.md)."""
    if account.is_sim:
        return SimVenue(account.name, account.sim, replay=replay)
    try:
        from monitor.sources.exchange import ExchangeSource  # noqa: PLC0415 - ccxt.pro is heavy
    except ImportError as exc:  # pragma: no cover - a build without ccxt.pro
        raise UserError(
            f"accounts.{account.name}: live exchanges are not available in this build ({exc})"
        ) from None
    source: Source = ExchangeSource(account, state_dir=state_dir)
    return source


def build_sinks(
    settings: Settings, tui: bool, sources: Mapping[str, Source] | None = None
) -> list[Sink]:
    """Every consumer of reports: console, alerts, actions, metrics (docs/ has a page for each).

    `sources` maps account names to their sources: the order desks (sources/base.py
    `OrderDesk`) that protective actions trade through; empty for `check`.
    """
    console = ConsoleSink(live=tui, accounts=[a.name for a in settings.accounts
                                              if sources is None or a.name in sources])
    sinks: list[Sink] = [console]
    actions = build_actions_sink(settings, sources)  # docs/actions.md: protective orders
    alerts = build_alerts_sink(settings.state_dir, settings.alerts.to_config(), settings.mqtt,
                               settings.notify, action_note=actions.note if actions else None,
                               accounts=[a.name for a in settings.accounts])
    if actions is not None:
        actions.attach(alerts)
        # before the alerts: an alert then carries the action state of its own report
        sinks.append(actions)
    sinks.append(alerts)
    console.alerts = alerts  # the screen's headline is the worst active alert (docs/alerts.md)
    if settings.metrics.enabled or settings.heartbeat.url is not None:
        # docs/monitoring.md: Prometheus /metrics and /healthz; the heartbeat pings only while the
        # metrics sink's freshness says every account is seen (it tracks it either way)
        from monitor.heartbeat import HeartbeatSink  # noqa: PLC0415
        from monitor.metrics import build_metrics_sink  # noqa: PLC0415

        watched = {a.name: a.stale_after for a in settings.accounts
                   if sources is None or a.name in sources}  # fmt: skip
        health = build_metrics_sink(settings.metrics, watched, sinks, sources)
        sinks.append(health)
        if settings.metrics.status_page:
            from monitor.web import StatusSink  # noqa: PLC0415 - docs/status-page.md

            status = StatusSink(watched, health.blind, lambda: alerts.pipeline)
            health.routes.append(status.install)
            sinks.append(status)
        if settings.heartbeat.url is not None:
            sinks.append(HeartbeatSink(settings.heartbeat, health.blind))
    return sinks


def _action_ratios(settings: Settings, account: str) -> tuple[float, ...]:
    """The ratio at which protective actions step in, if they cover `account`: crossing it
    must reach the actions sink at once, like an alert threshold (docs/benchmarks.md)."""
    actions, alerts = settings.actions, settings.alerts
    if not actions.covers(account):
        return ()
    thresholds = {"warning": alerts.warning, "critical": alerts.critical,
                  "emergency": alerts.emergency}  # fmt: skip
    return (actions.action_ratio(thresholds),)


class _Shutdown(Exception):
    """Raised inside the TaskGroup to stop every task (the TaskGroup way to cancel all)."""


async def run_daemon(
    settings: Settings,
    accounts: Sequence[AccountSettings],
    sinks: Sequence[Sink],
    *,
    duration: float | None = None,
    replay: Sequence[ReplayStep] | None = None,
    sources: Sequence[Source] | None = None,
    finite: bool | None = None,
    clock: Clock = time.time,
    handle_signals: bool = True,
    notifier: Notifier | None = None,
    reload: Callable[[], Sequence[AccountSettings]] | None = None,
    received: list[int] | None = None,
) -> list[AccountLoop]:
    """Run until SIGINT/SIGTERM, `duration` seconds, or the end of every finite source.

    `sources` overrides `open_source` (tests feed their own); `finite` says the sources end
    by themselves (default: when replaying). Returns the account loops, whose counters say
    what happened.

    Service lifecycle (docs/service.md): `notifier` gets READY=1 once the tasks run (not when the
    exchanges answer), WATCHDOG=1 only while the loop and every recompute make progress,
    STOPPING=1 at shutdown. `reload` (SIGHUP) re-reads the accounts: new ones start, removed
    ones stop, changed ones restart; everything else keeps running. `received` collects the
    stopping signal, so `run` can exit 130 after Ctrl-C as a shell expects.
    """
    if sources is None:
        sources = [open_source(a, replay, settings.state_dir) for a in accounts]
    if finite is None:
        finite = replay is not None
    state_dir = settings.state_dir
    # one shock budget for every account of the process (monitor/shock_schedule.py)
    shocks = ShockSolver(
        ShockScheduler(settings.shock_interval, settings.alerts.to_config(),
                       share=SHOCK_CPU_SHARE, max_age=SHOCK_MAX_AGE)
    )  # fmt: skip
    def make_loop(src: Source) -> AccountLoop:
        return AccountLoop(
            src, sinks, settings.alerts, settings.shock_interval, clock=clock, finite=finite,
            shocks=shocks, urgent_ratios=_action_ratios(settings, src.account),
            report_spacing=settings.report_spacing, ratio_source=settings.ratio_source,
            drift_tolerance=settings.drift_tolerance,
        )  # fmt: skip

    loops = [make_loop(src) for src in sources]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()

    def on_signal(sig: int) -> None:
        if received is not None:
            received.append(sig)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    hup = asyncio.Event()
    if handle_signals and reload is not None:
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        signals = (*signals, signal.SIGHUP)
    configured = {a.name: a for a in accounts}
    running: dict[str, tuple[asyncio.Task[None], ...]] = {}
    probes: dict[str, ProgressProbe] = {}
    interval = watchdog_interval() if notifier is not None else None
    log.info(
        "daemon starting",
        accounts=[s.account for s in sources],
        sinks=[s.name for s in sinks],
        duration=duration,
        replay=finite,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            for sink in sinks:
                await sink.start(tg)

            def launch(account_loop: AccountLoop) -> None:
                name = account_loop.account
                running[name] = (
                    tg.create_task(account_loop.run_source(), name=f"source[{name}]"),
                    tg.create_task(account_loop.run_recompute(), name=f"recompute[{name}]"),
                )
                probes[name] = ProgressProbe(
                    f"recompute[{name}]", account_loop.dirty.is_set,
                    lambda: account_loop.recomputes, max(1.0, interval or 0.0),
                )  # fmt: skip

            for account_loop in loops:
                launch(account_loop)

            def recomputes_alive() -> str | None:
                return next((r for p in list(probes.values()) if (r := p())), None)

            for sink in sinks:  # the metrics sink's /livez (docs/kubernetes.md) asks the same
                if hasattr(sink, "liveness"):
                    sink.liveness = recomputes_alive
            tg.create_task(shocks.run(), name="shocks")
            tg.create_task(_watch(stop, loops, duration, finite), name="shutdown")
            if reload is not None:
                tg.create_task(
                    _reload_on_hup(hup, reload, configured, loops, running, probes, launch,
                                   lambda a: make_loop(open_source(a, None, state_dir)),
                                   sinks, notifier),
                    name="reload",
                )  # fmt: skip
            if notifier is not None:
                if interval is not None:
                    tg.create_task(
                        watchdog_loop(notifier, interval, [recomputes_alive]), name="watchdog"
                    )
                notifier.ready(_status(loops))
    except* _Shutdown:
        pass
    finally:
        if notifier is not None:
            notifier.stopping("stopping: closing sources, flushing alerts")
        for sig in signals:
            loop.remove_signal_handler(sig)
        for src in sources:
            try:
                await src.close()
            except Exception as exc:
                log.error("source close failed", account=src.account, error=_one_line(exc))
        for sink in sinks:
            try:
                await sink.close()
            except Exception as exc:
                log.error("sink close failed", sink=sink.name, error=_one_line(exc))
    log.info(
        "daemon stopped",
        events=sum(lp.events for lp in loops),
        recomputes=sum(lp.recomputes for lp in loops),
    )
    return loops


async def _watch(
    stop: asyncio.Event, loops: Sequence[AccountLoop], duration: float | None, finite: bool
) -> None:
    """Task `shutdown`: wait for a signal, the duration, or the end of a replay."""
    waits: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if finite and loops:
        waits.append(asyncio.create_task(_all_done(loops)))
    try:
        await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    reason = "signal" if stop.is_set() else "replay finished" if finite else "duration"
    if reason != "signal":
        await _settle_all(loops)
    log.info("daemon stopping", reason=reason)
    raise _Shutdown


async def _settle_all(loops: Sequence[AccountLoop]) -> None:
    """Final reports of every account, at most `SETTLE_LIMIT` seconds in all.

    A sink stuck inside `on_report` holds the account's recompute lock, and an unbounded
    settle would then never let the daemon stop; past the limit it stops without them.
    """
    tasks = {
        asyncio.create_task(lp.settle(), name=f"settle[{lp.account}]"): lp.account for lp in loops
    }
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=SETTLE_LIMIT)
    for task in pending:
        task.cancel()
    if pending:
        log.warning("settle timed out; stopping without the final report",
                    accounts=sorted(tasks[t] for t in pending), limit=SETTLE_LIMIT)  # fmt: skip


def _status(loops: Sequence[AccountLoop]) -> str:
    """The line `systemctl status` shows."""
    return f"watching {len(loops)} account(s): {', '.join(lp.account for lp in loops)}"[:200]


async def _reload_on_hup(  # noqa: PLR0917 - the daemon's own state, passed once
    hup: asyncio.Event,
    reload: Callable[[], Sequence[AccountSettings]],
    configured: dict[str, AccountSettings],
    loops: list[AccountLoop],
    running: dict[str, tuple[asyncio.Task[None], ...]],
    probes: dict[str, ProgressProbe],
    launch: Callable[[AccountLoop], None],
    make_loop: Callable[[AccountSettings], AccountLoop],
    sinks: Sequence[Sink],
    notifier: Notifier | None,
) -> None:
    """Task `reload`: on SIGHUP re-read the accounts; add, remove and restart only those
    that changed. A bad file keeps the running configuration (one error line)."""
    while True:
        await hup.wait()
        hup.clear()
        if notifier is not None:
            notifier.reloading("reloading configuration")
        try:
            wanted = {a.name: a for a in reload()}
        except UserError as exc:
            log.error("reload failed; keeping the running configuration", error=str(exc))
            if notifier is not None:
                notifier.ready(_status(loops))
            continue
        gone = [n for n in configured if wanted.get(n) != configured[n]]
        for name in gone:
            account_loop = next(lp for lp in loops if lp.account == name)
            tasks = running.pop(name, ())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            probes.pop(name, None)
            loops.remove(account_loop)
            account_loop.shocks.remove(account_loop)
            del configured[name]
            try:
                await account_loop.source.close()
            except Exception as exc:
                log.error("source close failed", account=name, error=_one_line(exc))
        for name, account in wanted.items():
            if name not in configured:
                try:
                    account_loop = make_loop(account)
                except UserError as exc:
                    log.error("account not started", account=name, error=str(exc))
                    continue
                configured[name] = account
                loops.append(account_loop)
                launch(account_loop)
        current = {lp.account: lp.source for lp in loops}
        for sink in sinks:
            set_accounts = getattr(sink, "set_accounts", None)
            if set_accounts is not None:
                set_accounts({name: a.stale_after for name, a in configured.items()},
                             sources=current)  # fmt: skip
            reload_accounts = getattr(sink, "reload_accounts", None)
            if reload_accounts is not None:
                # protective actions follow: executors for added/restarted accounts
                try:
                    await reload_accounts(dict(configured), current)
                except Exception as exc:
                    log.error("sink reload failed", sink=sink.name, error=_one_line(exc))
        log.info("configuration reloaded", accounts=sorted(configured),
                 restarted=sorted(n for n in gone if n in configured))  # fmt: skip
        if notifier is not None:
            notifier.ready(_status(loops))


async def stop_leftover_tasks(grace: float) -> list[str]:
    """Cancel every other task and wait up to `grace` seconds; those still running, named.

    The daemon's own tasks end with its TaskGroup; what is left here was started by a
    library (ccxt, aiohttp, aiomqtt) or swallowed its cancellation (Python 3.11's
    `wait_for`, cpython#86296, hung the fault matrix's shutdown once). Named with where
    each is suspended, so the log says which one."""
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if not others:
        return []
    for task in others:
        task.cancel()
    _, pending = await asyncio.wait(others, timeout=grace)
    stuck = []
    for task in pending:
        frames = task.get_stack(limit=1)
        where = f" at {frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else ""
        stuck.append(f"{task.get_name()}{where}")
    return sorted(stuck)


async def _all_done(loops: Sequence[AccountLoop]) -> None:
    for account_loop in loops:
        await account_loop.source_done.wait()


# --- commands --------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """`margin-monitor run`: the daemon (no --config: the embedded sim demo)."""
    settings = load_settings(args.config)
    shard = args.shard
    if shard == "auto":  # docs/kubernetes.md: a StatefulSet pod's ordinal (monitor/shards.py)
        from monitor.shards import auto_shard  # noqa: PLC0415 - shards imports this module

        shard = auto_shard()
        log.info("shard from the pod's ordinal", shard=shard)
    accounts = select_shard(settings.accounts, shard)
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UserError(f"--duration {args.duration}: must be a positive number of seconds")
    replay = None
    if args.replay is not None:
        if not any(a.is_sim for a in accounts):
            raise UserError("--replay drives the sim venue; the configuration has no sim account")
        if not all(a.is_sim for a in accounts):
            raise UserError("--replay runs sim accounts only; remove the live accounts or --replay")
        replay = load_replay(args.replay, [m.symbol for m in DEMO_BOOK.markets])
    tui = not args.no_tui and sys.stdout.isatty()
    logs.configure(secrets=logs.secrets_of(settings))  # docs/service.md: redact every secret
    if not accounts:
        log.warning("no account in this shard; nothing to run", shard=shard)
        return 0
    sources = [open_source(a, replay, settings.state_dir) for a in accounts]
    sinks = build_sinks(settings, tui, {s.account: s for s in sources})
    for sink in sinks:  # docs/kubernetes.md: margin_monitor_shards tells a missing shard
        if shard is not None and hasattr(sink, "shard"):
            sink.shard = parse_shard(shard)

    def reload_accounts() -> list[AccountSettings]:
        fresh = load_settings(args.config)
        logs.set_secrets(logs.secrets_of(fresh))
        return select_shard(fresh.accounts, shard)

    received: list[int] = []

    async def main() -> None:
        failed = False
        try:
            await run_daemon(
                settings, accounts, sinks, duration=args.duration, replay=replay,
                sources=sources, notifier=Notifier(),
                reload=reload_accounts if replay is None else None, received=received,
            )  # fmt: skip
        except BaseException:
            failed = True
            raise
        finally:
            stuck = await stop_leftover_tasks(STOP_GRACE)
            if stuck:
                # asyncio.run would wait for them forever, and systemd's stop with it: the
                # state is already on disk (write-ahead), so the process leaves without them
                log.error("shutdown: tasks did not stop; exiting without them", tasks=stuck)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1 if failed else 130 if signal.SIGINT in received else 0)

    try:
        asyncio.run(main())
    except BaseExceptionGroup as group:
        # a UserError raised inside the TaskGroup (a sink that cannot start, say the metrics
        # port is taken) is still one line, not a traceback
        error = _first_user_error(group)
        if error is None:
            raise
        raise error from None
    # Ctrl-C is 128 + SIGINT like any shell tool; SIGTERM (systemd, docker stop) is a clean 0
    return 130 if signal.SIGINT in received else 0


def _first_user_error(group: BaseExceptionGroup[BaseException]) -> UserError | None:
    for exc in group.exceptions:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_user_error(exc)
            if found is not None:
                return found
    return None


def check_command(args: argparse.Namespace) -> int:
    """`margin-monitor check [--config FILE] [--offline]`: validate, say what would run."""
    settings = load_settings(args.config)
    out = sys.stdout
    origin = "embedded default (the sim demo)" if args.config is None else str(Path(args.config))
    out.write(f"configuration: {origin}: ok\n")
    out.write(f"state directory: {settings.state_dir}\n")
    a = settings.alerts
    shock_levels = (
        ("warning", a.shock_warning),
        ("critical", a.shock_critical),
        ("emergency", a.shock_emergency),
    )
    shocks = ", ".join(f"{name} {v * 100:g} %" for name, v in shock_levels if v is not None)
    out.write(
        f"alert levels on margin ratio: warning {a.warning:g}, critical {a.critical:g}, "
        f"emergency {a.emergency:g} (hysteresis {a.band:g}); on shock to liquidation: "
        f"{shocks or 'off'}\n"
    )
    build_sinks(settings, tui=False)  # what cannot be built fails here, not at `run`
    from monitor.notify_test import check_lines  # noqa: PLC0415 - Apprise only if configured

    out.writelines(f"{line}\n" for line in check_lines(settings))
    out.write(f"accounts ({len(settings.accounts)}):\n")
    for account in settings.accounts:
        out.write(f"  - {_describe(account)}; actions: {actions_mode(settings, account)}\n")
    failures = 0
    live = [acct for acct in settings.accounts if not acct.is_sim]
    if live and not args.offline:
        # the live check: connect, load markets, read balances, say what the keys can do
        from monitor.sources.exchange import check_account  # noqa: PLC0415 - heavy import

        for account in live:
            try:
                line = asyncio.run(check_account(account))
            except UserError as exc:
                failures += 1
                line = f"{account.name}: FAILED: {exc}"
            out.write(f"  check {logs.redact(line)}\n")
    return 1 if failures else 0


def actions_mode(settings: Settings, account: AccountSettings) -> str:
    """What protective actions do for `account`: off, paused, simulated, live or dry-run.

    The same decision `sinks/actions.build_actions_sink` and the executor's switches make,
    said before anything runs (a PAUSE command over MQTT lives in the state store and only
    shows in the daemon's `status` reply).
    """
    actions = settings.actions
    if not actions.covers(account.name):
        return "off (not in actions.accounts)"
    from monitor.executor import kill_switch_file, state_dir_problem  # noqa: PLC0415 - ccxt

    problem = state_dir_problem(settings.state_dir)
    if problem is not None:
        return f"DISABLED (protection_disabled: {problem}; no order can be sent)"
    if actions.paused:
        return "paused (actions.paused = true: plans and audits, sends nothing)"

    pause_file = kill_switch_file(settings.state_dir, account.name)
    if pause_file is not None:
        return f"paused ({pause_file} exists: plans and audits, sends nothing)"
    if account.is_sim and actions.simulated:
        return "simulated (reduce-only orders on the sim venue, fake money)"
    if actions.enabled:
        return "live (reduce-only orders are sent to the venue)"
    return "dry-run (actions.enabled = false: plans and audits 'would have', sends nothing)"


def _describe(account: AccountSettings) -> str:
    """One line about an account; credentials only as set / not set, never their value."""
    if account.is_sim and account.sim is not None:
        s = account.sim
        return (
            f"{account.name}: sim (scenario {s.scenario}, seed {s.seed}, "
            f"{s.tick_rate:g} ticks/s, speed x{s.speed:g})"
        )
    keys = ", ".join(
        f"{field} {'set' if getattr(account, field) is not None else 'not set'}"
        for field in ("api_key", "secret", "password")
    )
    mode = "sandbox" if account.sandbox else "production"
    return (
        f"{account.name}: {account.exchange} ({mode}; poll every {account.poll_interval:g} s, "
        f"stale after {account.stale_after:g} s; {keys})"
    )


def _number(value: float) -> float | str:
    return "inf" if math.isinf(value) else round(value, 6)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:300]
