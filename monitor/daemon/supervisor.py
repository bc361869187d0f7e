"""Supervision: one TaskGroup for every account and sink, signals, SIGHUP reload, clean stop.

`run_daemon` starts the sinks, two tasks per account (`daemon/loop.py`), the shared shock
solver, the shutdown watch and the reload task, and on a signal (or the end of `--duration`
or of a replay) settles the last reports, closes sources and sinks and returns the loops.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from monitor.config.settings import AccountSettings, Settings
from monitor.core.shock_schedule import ShockScheduler
from monitor.daemon.loop import (
    SHOCK_CPU_SHARE,
    SHOCK_MAX_AGE,
    AccountLoop,
    Clock,
    ShockSolver,
)
from monitor.daemon.wiring import action_ratios, open_source
from monitor.errors import UserError, one_line
from monitor.ops.sdnotify import Notifier, ProgressProbe, watchdog_interval, watchdog_loop
from monitor.sink import Sink
from monitor.sources.base import Source
from monitor.sources.sim_prices import ReplayStep

__all__ = ["STOP_GRACE", "run_daemon", "shock_solver", "stop_leftover_tasks"]

log = structlog.get_logger("monitor.daemon")


#: Seconds the final settle (end of --duration or of a replay) may take before stopping anyway.
SETTLE_LIMIT = 5.0
#: Seconds the process gives leftover tasks to end once the daemon has stopped.
STOP_GRACE = 5.0


class _Shutdown(Exception):
    """Raised inside the TaskGroup to stop every task (the TaskGroup way to cancel all)."""


def shock_solver(settings: Settings) -> ShockSolver:
    """One shock budget for every account of the process (monitor/core/shock_schedule.py)."""
    return ShockSolver(
        ShockScheduler(
            settings.shock_interval,
            settings.alerts.to_config(),
            share=SHOCK_CPU_SHARE,
            max_age=SHOCK_MAX_AGE,
        )
    )


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
    shocks: ShockSolver | None = None,
) -> list[AccountLoop]:
    """Run until SIGINT/SIGTERM, `duration` seconds, or the end of every finite source.

    `sources` overrides `open_source` (tests feed their own); `finite` says the sources end
    by themselves (default: when replaying). Returns the account loops, whose counters say
    what happened.

    Service lifecycle (docs/service.md): `notifier` gets READY=1 once the tasks run (not when the
    exchanges answer), WATCHDOG=1 only while the loop and every recompute make progress,
    STOPPING=1 at shutdown. `reload` (SIGHUP) re-reads the accounts: new ones start, removed
    ones stop, changed ones restart; everything else keeps running. `received` collects the
    stopping signal, so `run` can exit 130 after Ctrl-C as a shell expects. `shocks`: the
    shared shock budget, `shock_solver(settings)` without (a benchmark passes its own to
    read what the solves spent).
    """
    if sources is None:
        sources = [open_source(a, replay, settings.state_dir) for a in accounts]
    if finite is None:
        finite = replay is not None
    state_dir = settings.state_dir
    if shocks is None:
        shocks = shock_solver(settings)

    def make_loop(src: Source) -> AccountLoop:
        return AccountLoop(
            src,
            sinks,
            settings.alerts,
            settings.shock_interval,
            clock=clock,
            finite=finite,
            shocks=shocks,
            urgent_ratios=action_ratios(settings, src.account),
            report_spacing=settings.report_spacing,
            ratio_source=settings.ratio_source,
            drift_tolerance=settings.drift_tolerance,
        )

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
                    f"recompute[{name}]",
                    account_loop.dirty.is_set,
                    lambda: account_loop.recomputes,
                    max(1.0, interval or 0.0),
                )

            for account_loop in loops:
                launch(account_loop)

            def recomputes_alive() -> str | None:
                return next((r for p in list(probes.values()) if (r := p())), None)

            for sink in sinks:  # the metrics sink's /livez (docs/kubernetes.md) asks the same
                sink.watch_progress(recomputes_alive)
            tg.create_task(shocks.run(), name="shocks")
            tg.create_task(_watch(stop, loops, duration, finite), name="shutdown")
            if reload is not None:
                tg.create_task(
                    _reload_on_hup(
                        hup,
                        reload,
                        configured,
                        loops,
                        running,
                        probes,
                        launch,
                        lambda a: make_loop(open_source(a, None, state_dir)),
                        sinks,
                        notifier,
                    ),
                    name="reload",
                )
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
                log.error("source close failed", account=src.account, error=one_line(exc))
        for sink in sinks:
            try:
                await sink.close()
            except Exception as exc:
                log.error("sink close failed", sink=sink.name, error=one_line(exc))
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
        log.warning(
            "settle timed out; stopping without the final report",
            accounts=sorted(tasks[t] for t in pending),
            limit=SETTLE_LIMIT,
        )


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
                log.error("source close failed", account=name, error=one_line(exc))
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
            sink.set_accounts(
                {name: a.stale_after for name, a in configured.items()}, sources=current
            )
            # protective actions follow: executors for added/restarted accounts
            try:
                await sink.reload_accounts(dict(configured), current)
            except Exception as exc:
                log.error("sink reload failed", sink=sink.name, error=one_line(exc))
        log.info(
            "configuration reloaded",
            accounts=sorted(configured),
            restarted=sorted(n for n in gone if n in configured),
        )
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
