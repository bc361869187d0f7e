"""What the daemon hands its consumers: every new report, every source event, level changes.

The daemon loop knows nothing about MQTT, phones, metrics or orders; each of those is a
`Sink` in the list the daemon builds (`daemon/wiring.py` `build_sinks`), so adding one never touches
the loop. Calls are awaited inline on the account's recompute (reports) or source (events)
task, so a sink must return quickly: anything slow (a network send) belongs in the sink's
own task, started in `start` inside the daemon's TaskGroup and named `sink[<name>]`
(aiomqtt's habit of naming long-running tasks, STYLE.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from monitor.core.model import AccountSnapshot, Event, MarginReport, PriceTick

if TYPE_CHECKING:
    from monitor.config.settings import AccountSettings
    from monitor.sources.base import Source

__all__ = ["Sink"]


class Sink:
    """A consumer of the daemon's output. Exceptions are logged and never stop the daemon.

    Every call is a no-op here: a sink overrides the ones it listens to.
    """

    name: str = "sink"
    #: False: `on_event` has nothing to do with a `PriceTick`, and the daemon's tick path
    #: (20 000 ticks/s, docs/benchmarks.md) does not call it with one
    ticks: bool = True

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Open connections; spawn long-running work in `tg` (named `sink[<name>]`)."""
        del tg

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        """The newest report of `account`, computed from `snapshot` at wall time `now`.

        `report.shock_to_liquidation` is None when the (costly) shock solve was skipped for
        this recompute (`settings.shock_interval`); keep the last one you saw if you show it.
        """
        del account, report, snapshot, now

    async def on_event(self, event: Event) -> None:
        """Every event a source produced (ticks included), before it is folded into state."""
        del event

    def on_tick(self, tick: PriceTick) -> None:
        """A tick, in place of `on_event`, for a sink that overrides this: synchronous, for
        tick handling that is bookkeeping and never waits (the console's count). The tick
        path then makes no coroutine per tick for the sink (~0.4 µs each, 20 000 ticks/s:
        docs/benchmarks.md); `on_event` still gets every other event."""
        del tick

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        """The account's *ratio level* changed (`ok`, `warning`, `critical`, `emergency`).

        Where the margin ratio sits on the ladder, with the band's hysteresis
        (alert_config.ratio_level), at once: not the margin alert's level, which waits `hold_for`
        and survives restarts (rules.py; `AlertPipeline.level`). The two differ while a hold
        runs; alerts, their messages and MQTT's state carry the alert level.
        """
        del account, level, previous, report, now

    async def close(self) -> None:
        """Flush and release; called once at shutdown, after the sources are closed."""

    def watch_progress(self, alive: Callable[[], str | None]) -> None:
        """The daemon's progress check (None: every recompute is keeping up; else why not),
        handed over once the account tasks run; the metrics sink's `/livez` asks it."""
        del alive

    def set_accounts(
        self, accounts: Mapping[str, float], sources: Mapping[str, Source] | None = None
    ) -> None:
        """A SIGHUP reload changed the accounts (name -> stale_after seconds; their sources)."""
        del accounts, sources

    async def reload_accounts(
        self, accounts: Mapping[str, AccountSettings], sources: Mapping[str, Source]
    ) -> None:
        """After `set_accounts` on a reload: the accounts' full settings, for sinks that
        build per-account machinery (the protective executors)."""
        del accounts, sources
