"""Prometheus metrics and `/healthz`: what an operator's dashboards and probes read.

Two halves, both on one private `CollectorRegistry` (`REGISTRY`), never the global default
(so importing a library that registers there cannot collide with us):

- **process-wide counters** that other modules increment where the thing happens
  (`ALERTS_SENT` in the alert pipeline, `record_action` in the executor, `EVENTS` and
  `RECOMPUTE_LATENCY` here);
- **per-account gauges**, produced at scrape time (`ops/gauges.py`) from `MetricsSink`, a
  `monitor.sink.Sink` that keeps each account's newest report and the arrival time of each
  data kind. Computing them on scrape means a removed account (SIGHUP reload) simply
  disappears, and "data age" is the age *now*, not when the last event happened to set a gauge.

`/healthz` answers 200 while every configured account has fresh data and 503 naming the
blind ones: a monitor that cannot see an account must say so to its supervisor (container
HEALTHCHECK, uptime checker), because silence would read as "all is well" (docs/monitoring.md: "a
blind monitor is itself an alert"). The endpoint (`ops/metrics_server.py`) is off by default
and binds loopback unless told otherwise: the figures describe someone's money.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from monitor.config.monitoring import MetricsSettings
from monitor.core.model import (
    AccountUpdate,
    ModelDrift,
    PriceTick,
    SourceDown,
    SourceStale,
    SourceUp,
)
from monitor.ops.gauges import AccountCollector
from monitor.ops.metrics_server import serve
from monitor.sink import Sink

if TYPE_CHECKING:
    from monitor.core.model import AccountSnapshot, Event, MarginReport
    from monitor.sources.base import Source

__all__ = [
    "ACTIONS",
    "ALERTS_SENT",
    "EVENTS",
    "RECOMPUTE_LATENCY",
    "REGISTRY",
    "AccountHealth",
    "MetricsSink",
    "build_metrics_sink",
    "outbox_depth_of",
    "record_action",
    "record_alerts_sent",
]

log = structlog.get_logger("monitor.metrics")

_KIND_OF: dict[type, str] = {PriceTick: "prices", AccountUpdate: "account"}
#: data kinds an event refreshes: one account read brings positions and balances at once
_FRESHENS: dict[str, tuple[str, ...]] = {"prices": ("prices",), "account": ("positions", "balance")}
_SIGNAL_OF: dict[type, str] = {
    SourceStale: "stale",
    SourceDown: "down",
    SourceUp: "up",
    ModelDrift: "model_drift",
}


# --- process-wide metrics: incremented where the thing happens -------------------------------

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # cpu, memory, fds, start time: is the daemon itself ok

EVENTS = Counter(
    "margin_monitor_events",
    "Source events folded into account state (rate() gives events per second).",
    ["account", "kind"],
    registry=REGISTRY,
)
RECOMPUTE_LATENCY = Histogram(
    "margin_monitor_recompute_latency_seconds",
    "From the first event after a report to the next report reaching the sinks: the delay a "
    "price move takes to show in the margin ratio (coalescing included).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
ALERTS_SENT = Counter(
    "margin_monitor_alerts_sent",
    "Alert messages a sink acknowledged (MQTT PUBACK, Apprise success).",
    ["sink"],
    registry=REGISTRY,
)
ACTIONS = Counter(
    "margin_monitor_actions",
    "Protective-action decisions by outcome (filled, rejected, dry_run, skipped, ...).",
    ["account", "outcome"],
    registry=REGISTRY,
)


def record_alerts_sent(sink: str, count: int) -> None:
    """The alert pipeline calls this after `count` messages were acknowledged by `sink`."""
    if count > 0:
        ALERTS_SENT.labels(sink=sink).inc(count)


def record_action(account: str, outcome: str) -> None:
    """The executor calls this once per decision (`filled`, `dry_run`, `rejected`, ...)."""
    ACTIONS.labels(account=account, outcome=outcome).inc()


# --- per-account view --------------------------------------------------------------------------


@dataclass(slots=True)
class AccountHealth:
    """What the sink knows about one account; times are the sink's monotonic clock."""

    stale_after: float
    report: MarginReport | None = None
    shock: tuple[float | None, float | None] | None = None
    level: str = "ok"
    seen: dict[str, float] = field(default_factory=dict)  # data kind -> last arrival
    stale: dict[str, float] = field(default_factory=dict)  # kind -> age the source reported
    down: str | None = None
    pending_since: float | None = None  # first event not yet reflected in a report

    def blind_reason(self, now: float) -> str | None:
        """Why this account cannot be trusted right now, or None when its data is fresh."""
        if self.down is not None:
            return f"source down: {self.down}"
        if self.stale:
            kinds = ", ".join(f"{k} {age:.0f} s" for k, age in sorted(self.stale.items()))
            return f"stale data ({kinds})"
        if not self.seen:
            return "no data yet"
        age = now - max(self.seen.values())
        if age > self.stale_after:
            return f"no data for {age:.0f} s (stale_after {self.stale_after:g} s)"
        return None


Drift = Callable[[], float | None]


class MetricsSink(Sink):
    """A `Sink` that exports per-account gauges and serves `/metrics` and `/healthz`.

    Args:
        settings: the `[metrics]` section; when not enabled, nothing listens (the gauges are
            still kept, which is cheap, so a reload can turn the endpoint on later).
        accounts: account name -> its `stale_after` (the accounts `/healthz` must vouch for).
        outbox_depth: returns the queued alert messages per sink (the store's outbox).
        protection: account -> why its protective actions cannot run (the actions sink's).
        shard: (K, N) under `--shard K/N`, exported so a missing shard's process is noticed.
        routes: more routes for the same listener, each `install(app)` (the status page).
        clock: monotonic seconds.
    """

    name = "metrics"

    def __init__(
        self,
        settings: MetricsSettings,
        accounts: Mapping[str, float],
        *,
        outbox_depth: Callable[[], Mapping[str, int]] | None = None,
        protection: Callable[[], Mapping[str, str]] | None = None,
        shard: tuple[int, int] | None = None,
        routes: Sequence[Callable[[Any], None]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.outbox_depth = outbox_depth
        #: account -> why its protective actions cannot run (the actions sink's)
        self.protection = protection
        self.accounts: dict[str, AccountHealth] = {}
        self.drift: dict[str, Drift] = {}
        #: the systemd watchdog's progress check (daemon.py), for `/livez` (docs/kubernetes.md)
        self.liveness: Callable[[], str | None] | None = None
        #: (K, N) under `--shard K/N`: exported so a missing shard's process is noticed
        self.shard = shard
        self.address: tuple[str, int] | None = None
        self._runner: Any = None
        self._collector = AccountCollector(self)
        self._registered = False
        self._event_counters: dict[tuple[str, str], Any] = {}
        #: more routes for the same listener, each `install(app)` (the status page, web.py)
        self.routes = tuple(routes)
        self.set_accounts(accounts)

    # --- configuration ---------------------------------------------------------------------

    def watch_progress(self, alive: Callable[[], str | None]) -> None:
        """`/livez` asks the daemon's progress check (docs/kubernetes.md)."""
        self.liveness = alive

    def set_accounts(
        self, accounts: Mapping[str, float], sources: Mapping[str, Source] | None = None
    ) -> None:
        """The accounts to vouch for (start, SIGHUP reload): new ones start blind, removed
        ones disappear from `/metrics` and `/healthz`. `sources` (name -> source) exports
        each one's `venue_drift` (none while the source has no venue figure)."""
        for name in list(self.accounts):
            if name not in accounts:
                del self.accounts[name]
                self.drift.pop(name, None)
                for kind in (*_KIND_OF.values(), *_SIGNAL_OF.values()):
                    self._event_counters.pop((name, kind), None)
                    with contextlib.suppress(KeyError):  # that series never existed
                        EVENTS.remove(name, kind)
        for name, stale_after in accounts.items():
            health = self.accounts.get(name)
            if health is None:
                self.accounts[name] = AccountHealth(stale_after)
            else:
                health.stale_after = stale_after
        for name, source in (sources or {}).items():
            if name in self.accounts:
                self.watch_drift(name, source.venue_drift)

    def watch_drift(self, account: str, drift: Drift) -> None:
        """Export `drift()` (our ratio − the venue's) for `account` at each scrape."""
        self.drift[account] = drift

    # --- Sink protocol ---------------------------------------------------------------------

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Register the collector and, when enabled, listen on `host:port`."""
        del tg  # aiohttp serves from its own callbacks; no long-running task of ours
        if not self._registered:
            REGISTRY.register(self._collector)
            self._registered = True
        if self.settings.enabled:
            self._runner, self.address = await serve(self)

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        """Keep the newest report; the first report of a fresh read counts as data."""
        del snapshot, now
        health = self.accounts.get(account)
        if health is None:
            return
        mono = self.clock()
        health.report = report
        if report.shock_to_liquidation is not None:
            health.shock = (report.shock_to_liquidation.down, report.shock_to_liquidation.up)
        if health.pending_since is not None:
            RECOMPUTE_LATENCY.observe(max(0.0, mono - health.pending_since))
            health.pending_since = None
        else:
            # A report with no event before it comes from a fresh snapshot read (start,
            # reconnect after a failure), or from the deferred shock solve that follows the
            # last event by at most `shock_interval`: both are fresh enough to count as data.
            health.seen["snapshot"] = mono
            health.down = None

    async def on_event(self, event: Event) -> None:
        """Count the event; data kinds refresh their age, stale/down/up set health."""
        health = self.accounts.get(event.account)
        kind = _KIND_OF.get(type(event))
        key = (event.account, kind or _SIGNAL_OF[type(event)])
        counter = self._event_counters.get(key)
        if counter is None:
            # `labels()` costs ~2 µs (lock, label validation): once per series, not per tick
            counter = self._event_counters[key] = EVENTS.labels(account=key[0], kind=key[1])
        counter.inc()
        if health is None:
            return
        mono = self.clock()
        if kind is not None:
            for fresh in _FRESHENS[kind]:
                health.seen[fresh] = mono
                health.stale.pop(fresh, None)
            health.down = None
            if health.pending_since is None:
                health.pending_since = mono
        elif isinstance(event, SourceStale):
            health.stale[event.kind] = event.age
        elif isinstance(event, SourceUp):
            health.stale.pop(event.kind, None)
            health.down = None
        elif isinstance(event, SourceDown):
            health.down = event.reason

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        """Remember the level for the `margin_monitor_level` gauge."""
        del previous, report, now
        health = self.accounts.get(account)
        if health is not None:
            health.level = level

    async def close(self) -> None:
        """Stop listening and unregister the collector (a reload builds a new sink)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._registered:
            REGISTRY.unregister(self._collector)
            self._registered = False

    # --- health ----------------------------------------------------------------------------

    def blind(self) -> dict[str, str]:
        """Account -> why it is blind, for every account without fresh data."""
        now = self.clock()
        out = {}
        for name, health in sorted(self.accounts.items()):
            reason = health.blind_reason(now)
            if reason is not None:
                out[name] = reason
        return out

    def protection_disabled(self) -> dict[str, str]:
        """Account -> why its protective actions cannot run (from the actions sink)."""
        return dict(self.protection()) if self.protection is not None else {}

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in `REGISTRY`."""
        return generate_latest(REGISTRY)

    # --- HTTP ------------------------------------------------------------------------------


def outbox_depth_of(pending: Callable[[], Iterable[Any]]) -> Callable[[], Mapping[str, int]]:
    """Adapt `store.pending()` (rows with a `.sink`) to queued messages per sink."""

    def depth() -> Mapping[str, int]:
        return dict(Tally(row.sink for row in pending()))

    return depth


def build_metrics_sink(
    settings: MetricsSettings,
    accounts: Mapping[str, float],
    sources: Mapping[str, Source] | None = None,
    *,
    outbox: Callable[[], Iterable[Any]] | None = None,
    protection: Callable[[], Mapping[str, str]] | None = None,
    shard: tuple[int, int] | None = None,
    routes: Sequence[Callable[[Any], None]] = (),
) -> MetricsSink:
    """The metrics sink, given what it reports on (daemon/wiring.py builds the pieces).

    `outbox`: the alert store's pending rows (`.sink` each), read at scrape time only: the
    alert sink opens its store lazily and `check` must never open it. The venue drift is
    each source's `venue_drift` (the `Source` protocol, sources/base.py).
    """
    depth = outbox_depth_of(outbox) if outbox is not None else None
    metrics = MetricsSink(
        settings, accounts, outbox_depth=depth, protection=protection, shard=shard, routes=routes
    )
    metrics.set_accounts(accounts, sources)
    return metrics
