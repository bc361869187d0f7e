"""The daemon: sources in, reports out, one TaskGroup, clean stop on a signal.

Per account two named tasks (aiomqtt's habit, STYLE.md): `source[<account>]` folds every
event into the account's state the moment it arrives (`state.apply`, microseconds), and
`recompute[<account>]` turns the *latest* state into a report. The two meet at a dirty flag
and an `asyncio.Event`, never a queue: when events come faster than reports can be
computed, the state keeps only the newest value of each price and the next report is taken
from it, so a burst costs one recompute, not a backlog (DESIGN.md, "one event in, at most
one recompute out"). `AccountLoop.events` vs `.recomputes` shows it working.

Reports go to `Sink`s (sinks/base.py) built in `build_sinks`; alerts, metrics and protective
actions plug in there. The shock-to-liquidation solve costs ~30x a plain report, so it is
refreshed at most every `settings.shock_interval` seconds per account (reports in between
carry `shock_to_liquidation=None`), and always for the last state before the loop idles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import structlog

from monitor import logs, margin, stress
from monitor.errors import UserError
from monitor.model import MarginReport, SourceDown
from monitor.rules import Level, ratio_level
from monitor.sdnotify import Notifier, ProgressProbe, watchdog_interval, watchdog_loop
from monitor.settings import AccountSettings, AlertsSettings, Settings, load_settings
from monitor.sinks.actions import build_actions_sink
from monitor.sinks.alerts import build_alerts_sink
from monitor.sinks.base import Sink
from monitor.sinks.console import ConsoleSink
from monitor.sources.base import Source
from monitor.sources.sim import DEMO_BOOK, SimVenue
from monitor.sources.sim_prices import ReplayStep, load_replay
from monitor.state import AccountState, apply, initial_state

__all__ = [
    "AccountLoop",
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
# alert lifecycle itself (issue 4) runs in the alert pipeline, one of the sinks.

_LEVELS = ("ok", "warning", "critical", "emergency")


def classify_level(ratio: float, previous: str, alerts: AlertsSettings) -> str:
    """The margin-ratio level with hysteresis (rules.ratio_level); the full alert lifecycle
    (repeats, shock, stale, silences) runs in the alert pipeline (sinks/alerts.py)."""
    return ratio_level(ratio, cast("Level", previous), alerts.to_config())


# --- one account -----------------------------------------------------------------------------


class AccountLoop:
    """One account's state, its latest report, and the two tasks that keep them current."""

    def __init__(
        self,
        source: Source,
        sinks: Sequence[Sink],
        alerts: AlertsSettings,
        shock_interval: float,
        *,
        clock: Clock = time.time,
        finite: bool = False,
    ) -> None:
        """`finite`: the source ends by itself (a replay), and then the daemon may stop."""
        self.account = source.account
        self.source = source
        self.sinks = tuple(sinks)
        self.alerts = alerts
        self.shock_interval = shock_interval
        self.clock = clock
        self.finite = finite
        self.state: AccountState | None = None
        self.report: MarginReport | None = None
        self.level = "ok"
        self.events = 0
        self.recomputes = 0
        self.shock_solves = 0
        self.dirty = asyncio.Event()
        self.source_done = asyncio.Event()
        self._shock_at = -math.inf
        self._shock_stale = False
        self._lock = asyncio.Lock()

    async def run_source(self) -> None:
        """Task `source[<account>]`: fresh read, then fold events in; retry after failures."""
        attempt = 0
        while True:
            try:
                snapshot = await self.source.fetch_snapshot()
                self.state = initial_state(snapshot, self.clock())
                self.dirty.set()
                attempt = 0
                async for event in self.source.events():
                    self.events += 1
                    await self._tell("on_event", event)
                    self.state, changed = apply(self.state, event)
                    if changed:
                        self.dirty.set()
            except Exception as exc:  # one account's failure never stops the others
                attempt += 1
                reason = _one_line(exc)
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

    async def run_recompute(self) -> None:
        """Task `recompute[<account>]`: one report per wake-up, on the latest state."""
        while True:
            timeout = None
            if self._shock_stale:
                # the last report skipped the shock solve: refresh it once it is due
                due = self._shock_at + self.shock_interval - asyncio.get_running_loop().time()
                timeout = max(0.0, due)
            # asyncio.timeout, not wait_for: 3.11's wait_for can sit on a cancelled inner
            # task at shutdown, which kept the TaskGroup from ever finishing.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.dirty.wait()
            self.dirty.clear()
            await self.recompute()

    async def recompute(self, force_shock: bool = False) -> MarginReport | None:
        """Report on the current state; tells the sinks. Never raises (logs instead)."""
        async with self._lock:
            state = self.state
            if state is None:
                return None
            loop_now = asyncio.get_running_loop().time()
            solve = force_shock or loop_now - self._shock_at >= self.shock_interval
            try:
                if solve:
                    report = stress.assess(state.snapshot)
                    self._shock_at = loop_now
                    self.shock_solves += 1
                else:
                    report = margin.report(state.snapshot)
            except Exception as exc:  # a core bug on odd data must not stop the monitor
                log.error("recompute failed", account=self.account, error=_one_line(exc))
                return None
            self._shock_stale = not solve
            self.recomputes += 1
            self.report = report
            now = self.clock()
            await self._tell("on_report", self.account, report, state.snapshot, now)
            level = classify_level(report.margin_ratio, self.level, self.alerts)
            if level != self.level:
                previous, self.level = self.level, level
                _log_level(self.account, level, previous, report)
                await self._tell("on_level", self.account, level, previous, report, now)
            return report

    async def settle(self) -> None:
        """Bring the report up to the final state (shock included) before stopping."""
        if self.dirty.is_set() or self._shock_stale:
            self.dirty.clear()
            await self.recompute(force_shock=True)

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


def open_source(account: AccountSettings, replay: Sequence[ReplayStep] | None = None) -> Source:
    """The source of one configured account (the sim, or a live ccxt account)."""
    if account.is_sim:
        return SimVenue(account.name, account.sim, replay=replay)
    try:
        from monitor.sources.exchange import ExchangeSource  # noqa: PLC0415 - ccxt.pro is heavy
    except ImportError as exc:  # pragma: no cover - only before issue 3 lands
        raise UserError(
            f"accounts.{account.name}: live exchanges are not available in this build ({exc})"
        ) from None
    source: Source = ExchangeSource(account)
    return source


def build_sinks(
    settings: Settings, tui: bool, sources: Mapping[str, Source] | None = None
) -> list[Sink]:
    """Every consumer of reports. Alerts (issue 4), metrics (6), actions (5) join here.

    `sources` maps account names to their sources: the order desks (sources/base.py
    `OrderDesk`) that protective actions trade through; empty for `check`.
    """
    sinks: list[Sink] = [ConsoleSink(live=tui)]
    actions = build_actions_sink(settings, sources)  # issue 5: protective orders
    alerts = build_alerts_sink(settings.state_dir, settings.alerts.to_config(), settings.mqtt,
                               settings.notify, action_note=actions.note if actions else None)
    sinks.append(alerts)
    if actions is not None:
        actions.attach(alerts)
        sinks.append(actions)
    if settings.metrics.enabled or settings.heartbeat.url is not None:
        # issue 6: Prometheus /metrics and /healthz; the heartbeat pings only while the
        # metrics sink's freshness says every account is seen (it tracks it either way)
        from monitor.heartbeat import HeartbeatSink  # noqa: PLC0415
        from monitor.metrics import build_metrics_sink  # noqa: PLC0415

        watched = {a.name: a.stale_after for a in settings.accounts
                   if sources is None or a.name in sources}  # fmt: skip
        health = build_metrics_sink(settings.metrics, watched, sinks, sources)
        sinks.append(health)
        if settings.heartbeat.url is not None:
            sinks.append(HeartbeatSink(settings.heartbeat, health.blind))
    return sinks


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
) -> list[AccountLoop]:
    """Run until SIGINT/SIGTERM, `duration` seconds, or the end of every finite source.

    `sources` overrides `open_source` (tests feed their own); `finite` says the sources end
    by themselves (default: when replaying). Returns the account loops, whose counters say
    what happened.

    Service lifecycle (issue 6): `notifier` gets READY=1 once the tasks run (not when the
    exchanges answer), WATCHDOG=1 only while the loop and every recompute make progress,
    STOPPING=1 at shutdown. `reload` (SIGHUP) re-reads the accounts: new ones start, removed
    ones stop, changed ones restart; everything else keeps running.
    """
    if sources is None:
        sources = [open_source(a, replay) for a in accounts]
    if finite is None:
        finite = replay is not None
    loops = [
        AccountLoop(
            src, sinks, settings.alerts, settings.shock_interval, clock=clock, finite=finite
        )
        for src in sources
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
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
            tg.create_task(_watch(stop, loops, duration, finite), name="shutdown")
            if reload is not None:
                tg.create_task(
                    _reload_on_hup(hup, reload, configured, loops, running, probes, launch,
                                   lambda a: AccountLoop(open_source(a), sinks, settings.alerts,
                                                         settings.shock_interval, clock=clock),
                                   sinks, notifier),
                    name="reload",
                )  # fmt: skip
            if notifier is not None:
                if interval is not None:

                    def recomputes_alive() -> str | None:
                        return next((r for p in list(probes.values()) if (r := p())), None)

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


async def _all_done(loops: Sequence[AccountLoop]) -> None:
    for account_loop in loops:
        await account_loop.source_done.wait()


# --- commands --------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """`margin-monitor run`: the daemon (no --config: the embedded sim demo)."""
    settings = load_settings(args.config)
    accounts = select_shard(settings.accounts, args.shard)
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
    logs.configure(secrets=logs.secrets_of(settings))  # issue 6: redact every secret
    if not accounts:
        log.warning("no account in this shard; nothing to run", shard=args.shard)
        return 0
    sources = [open_source(a, replay) for a in accounts]
    sinks = build_sinks(settings, tui, {s.account: s for s in sources})

    def reload_accounts() -> list[AccountSettings]:
        fresh = load_settings(args.config)
        logs.set_secrets(logs.secrets_of(fresh))
        return select_shard(fresh.accounts, args.shard)

    try:
        asyncio.run(
            run_daemon(
                settings, accounts, sinks, duration=args.duration, replay=replay,
                sources=sources, notifier=Notifier(),
                reload=reload_accounts if replay is None else None,
            )
        )  # fmt: skip
    except BaseExceptionGroup as group:
        # a UserError raised inside the TaskGroup (a sink that cannot start, say the metrics
        # port is taken) is still one line, not a traceback
        error = _first_user_error(group)
        if error is None:
            raise
        raise error from None
    return 0


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
    shocks = ", ".join(f"{name} {v:.0%}" for name, v in shock_levels if v is not None)
    out.write(
        f"alert levels on margin ratio: warning {a.warning:g}, critical {a.critical:g}, "
        f"emergency {a.emergency:g} (hysteresis {a.band:g}); on shock to liquidation: "
        f"{shocks or 'off'}\n"
    )
    out.write(f"sinks: {', '.join(s.name for s in build_sinks(settings, tui=False))}\n")
    out.write(f"accounts ({len(settings.accounts)}):\n")
    for account in settings.accounts:
        out.write(f"  - {_describe(account)}; actions: {actions_mode(settings, account)}\n")
    failures = 0
    live = [acct for acct in settings.accounts if not acct.is_sim]
    if live and not args.offline:
        # issue 3's live check: connect, load markets, read balances, say what the keys can do
        from monitor.sources.exchange import check_account  # noqa: PLC0415 - heavy import

        for account in live:
            try:
                line = asyncio.run(check_account(account))
            except UserError as exc:
                failures += 1
                line = f"{account.name}: FAILED: {exc}"
            out.write(f"  check {line}\n")
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
    if actions.paused:
        return "paused (actions.paused = true: plans and audits, sends nothing)"
    from monitor.executor import kill_switch_file  # noqa: PLC0415 - ccxt: heavy import

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
