"""The daemon's alert consumer: reports and source events in, the alert pipeline running.

The one object `daemon.build_sinks` adds for alerts (docs/notifications.md). It owns the pipeline
(alerting.py: rules -> SQLite outbox -> sinks), the MQTT connection, the phone channels and
the HTTP command endpoint, and starts their tasks in the daemon's TaskGroup:
`sink[mqtt]`, `sink[notify[<channel>]]`, `alerts.tick`; the MQTT session (`mqtt`) runs
beside the TaskGroup, because it must outlive it.

At shutdown the daemon's tasks are already cancelled when `close` runs. `close` drains what
is still queued (the final resolve of a demo run, queued phone alerts) over the MQTT session
that is still up, so Home Assistant sees `online` ... `offline` once and nothing after it
(docs/alerts.md), and only then ends the session and closes the store. The drain is sized from
the queue and the channels' pacing (`drain_budget`), capped by `DRAIN_CAP` so the whole stop
stays inside systemd's `TimeoutStopSec`; what does not make it stays in the outbox, is named
in the log, and goes out on the next start.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from aiohttp import web

from monitor.alerts.command_http import serve_commands
from monitor.alerts.pipeline import AlertPipeline
from monitor.config.alerts import MqttSettings, NotifySettings
from monitor.core.alert_config import AlertConfig
from monitor.core.alert_state import AlertState
from monitor.core.levels import Level, level_rank
from monitor.core.model import (
    AccountSnapshot,
    Event,
    MarginReport,
    ModelDrift,
    SourceDown,
    SourceStale,
    SourceUp,
)
from monitor.ops.metrics import record_action as record_action_metric
from monitor.protect.switches import ActionSwitches
from monitor.sink import Sink
from monitor.store import Store

if TYPE_CHECKING:
    from monitor.alerts.signed_commands import Command
    from monitor.channels.mqtt import MqttSink
    from monitor.channels.notify import NotifySink
    from monitor.sources.base import Source

__all__ = ["DRAIN_CAP", "DRAIN_LIMIT", "AlertsSink", "Draining", "build_alerts_sink"]

log = structlog.get_logger("monitor.sinks.alerts")

#: Longest drain at shutdown (seconds): the units' TimeoutStopSec=30s, minus the daemon's
#: STOP_GRACE (5 s) for leftover tasks, minus 5 s for closing sources and the store
#: (tests/test_sinks_alerts.py holds this against systemd/*.service).
DRAIN_CAP = 20.0
#: How many protective-action decisions the live screen lists.
RECENT_ACTIONS = 5
#: Shortest drain: an MQTT publish to a live broker, with room to spare.
DRAIN_LIMIT = 2.0


class Draining(Protocol):
    """A delivery channel that knows how long its queue takes to go out (MQTT, a phone
    channel): what sizes the drain at shutdown."""

    @property
    def name(self) -> str:
        """The pipeline's sink name, which its outbox rows carry."""
        ...

    def drain_time(self, queued: int) -> float:
        """Seconds `queued` messages need at most, pacing included."""
        ...


class AlertsSink(Sink):
    """A `monitor.sink.Sink` that feeds the alert pipeline.

    The pipeline (and its SQLite store) is built on first use, so `margin-monitor check`,
    which only lists the sinks, never creates a state file.

    Args:
        make_pipeline: builds the alert pipeline (its sinks are MQTT and phone channels).
        mqtt: the MQTT sink whose connection loop this starts (None: no MQTT).
        command_listen: host:port of the HTTP command endpoint (None: off).
        switches: the pause switch the actions side reads (docs/actions.md); the pipeline's
            pause/resume commands write it.
        drains: the pipeline's channels whose queue `close` drains, each with its own
            drain-time estimate (`drain_budget`).
    """

    name = "alerts"
    ticks = False  # ticks move no alert of their own: the reports do

    def __init__(
        self,
        make_pipeline: Callable[[], AlertPipeline],
        mqtt: MqttSink | None = None,
        command_listen: str | None = None,
        switches: ActionSwitches | None = None,
        drains: Sequence[Draining] = (),
    ) -> None:
        self._make_pipeline = make_pipeline
        self._drains = tuple(drains)
        self._pipeline: AlertPipeline | None = None
        self.mqtt = mqtt
        self.command_listen = command_listen
        self.switches = switches or ActionSwitches()
        self._runner: web.AppRunner | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        #: the newest protective-action decisions (at, account, kind, text), for the screen
        self.recent_actions: collections.deque[tuple[float, str, str, str]] = collections.deque(
            maxlen=RECENT_ACTIONS
        )

    def record_action(self, account: str, kind: str, payload: Mapping[str, Any], at: float) -> None:
        """Audit a protective-action decision and publish it on `<prefix>/<account>/action`.

        For the actions side (docs/actions.md): the SQLite audit trail is the durable record (query
        it with `pipeline.store.audit_trail(...)`); the MQTT topic is the live feed.
        """
        self.pipeline.store.audit(account, kind, payload, at)
        self.recent_actions.append((at, account, kind, _action_text(payload)))
        record_action_metric(account, kind)  # docs/monitoring.md: margin_monitor_actions_total
        if self.mqtt is not None:
            self.mqtt.publish_action(account, {"kind": kind, "at": at, **payload})

    def active_alerts(self) -> list[AlertState]:
        """Every firing alert, worst first (the level MQTT and Home Assistant show)."""
        if self._pipeline is None:
            return []
        firing = [a for a in self._pipeline.state.alerts.values() if a.firing]
        return sorted(firing, key=lambda a: (-level_rank(a.level), a.started_at))

    def account_level(self, account: str) -> str:
        """The account's worst alert level, all rules (what its MQTT state says)."""
        return "ok" if self._pipeline is None else self._pipeline.level(account)

    def raise_action_alert(self, account: str, text: str, now: float | None = None) -> None:
        """A venue rejected a protective order: an `action_rejected` alert (docs/actions.md)."""
        self.pipeline.raise_action_alert(account, text, now)

    def disable_protection(self, account: str, reason: str | None, level: str) -> None:
        """Protective actions of `account` cannot run (reason) or run again (None): the
        `protection_disabled` alert, the retained MQTT state carries the reason, and the
        audit trail and the terminal's action list say it (`record_action`)."""
        self.pipeline.protection_alert(account, reason, cast("Level", level))
        if self.mqtt is not None:
            self.mqtt.set_protection(account, reason)
        kind = "protection_disabled" if reason is not None else "protection_enabled"
        text = reason if reason is not None else "protective actions can run again"
        self.record_action(account, kind, {"reason": text}, self.pipeline.clock())

    def resolve_action_alert(self, account: str, now: float | None = None) -> bool:
        """End the account's `action_rejected` alert; True when one was firing."""
        return bool(self.pipeline.resolve_action_alert(account, now))

    def set_accounts(
        self, accounts: Mapping[str, float], sources: Mapping[str, Source] | None = None
    ) -> None:
        """A reload changed the accounts: commands may name exactly these from now on."""
        del sources
        if self._pipeline is not None and self._pipeline.accounts is not None:
            self._pipeline.accounts = frozenset(accounts)

    @property
    def pipeline(self) -> AlertPipeline:
        """The alert pipeline, built (and its store opened) on first use."""
        if self._pipeline is None:
            self._pipeline = self._make_pipeline()
        return self._pipeline

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Start delivery, the clock, the MQTT connection and the command endpoint."""
        self.pipeline.start(tg)
        if self.mqtt is not None:
            # Outside the TaskGroup: the session must still be up while `close` drains the
            # outbox, or a second session would say `online` after `offline` (docs/alerts.md).
            # `run` never raises but CancelledError; `close` (always called) cancels it.
            self._mqtt_task = asyncio.create_task(self.mqtt.run(), name="mqtt")
        if self.command_listen is not None and self.pipeline.can_sign:
            pipeline = self.pipeline
            self._runner = await serve_commands(
                lambda raw, source: pipeline.handle_command(raw, source=source),
                self.command_listen,
            )

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        """Evaluate the rules on the newest report."""
        del account, snapshot
        self.pipeline.on_report(report, now)

    async def on_event(self, event: Event) -> None:
        """Stale, down, up and model drift have their own alerts; ticks are ignored here."""
        if isinstance(event, SourceStale | SourceDown | SourceUp):
            self.pipeline.on_source_event(event)
        elif isinstance(event, ModelDrift):
            self.pipeline.on_model_drift(event)

    async def close(self) -> None:
        """Drain the outbox (bounded), end the MQTT session, close the store."""
        try:
            if self._pipeline is not None:
                if self._runner is not None:
                    await self._runner.cleanup()
                if self.pipeline.store.pending():
                    await self._drain()
        finally:
            await self._stop_mqtt()
            if self._pipeline is not None:
                self._report_left()
                self.pipeline.flush()  # refusal counts kept in memory (docs/hardening.md)
                self.pipeline.store.close()

    async def _stop_mqtt(self) -> None:
        task, self._mqtt_task = self._mqtt_task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def drain_budget(self) -> float:
        """Seconds the queue needs at most: per sink, its pacing wait plus its send time.

        Sinks drain in parallel, so the slowest one sets it; `DRAIN_LIMIT` at least and
        `DRAIN_CAP` at most (the stop must fit in systemd's TimeoutStopSec).
        """
        need = DRAIN_LIMIT
        for channel in self._drains:
            queued = len(self.pipeline.store.pending(channel.name))
            if queued:
                need = max(need, channel.drain_time(queued))
        return min(DRAIN_CAP, need)

    async def _drain(self) -> None:
        budget = self.drain_budget()
        tasks = []
        for sink in self.pipeline.sinks:
            self.pipeline.retry_now(sink.name)
            tasks.append(
                asyncio.create_task(self.pipeline.deliver_forever(sink), name=f"drain[{sink.name}]")
            )
        log.info(
            "alerts.draining", messages=len(self.pipeline.store.pending()), limit=round(budget, 2)
        )
        try:
            for _ in range(math.ceil(budget / 0.02)):
                if not self.pipeline.store.pending():
                    break
                await asyncio.sleep(0.02)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _report_left(self) -> None:
        """Say what stays queued for the next start, per sink, by id (docs/alerts.md)."""
        left = self.pipeline.store.pending()
        if not left:
            return
        by_sink: dict[str, list[str]] = {}
        for row in left:
            by_sink.setdefault(row.sink, []).append(row.message_id)
        log.warning(
            "alerts.undelivered_at_shutdown",
            messages=len(left),
            sinks={name: len(ids) for name, ids in sorted(by_sink.items())},
            ids={name: ids[:20] for name, ids in sorted(by_sink.items())},
            note="kept in the outbox; delivered on the next start",
        )


def _action_text(payload: Mapping[str, Any]) -> str:
    """One short line of an action audit record (order legs, or the reason)."""
    orders = payload.get("orders")
    legs = orders if isinstance(orders, list) else [payload]
    if all(isinstance(o, Mapping) and "side" in o and "symbol" in o for o in legs) and legs:
        return ", ".join(f"{o['side']} {o.get('amount', '')} {o['symbol']}" for o in legs)
    for key in ("reason", "error", "status"):
        if key in payload:
            return str(payload[key])[:120]
    return ""


def build_alerts_sink(
    state_dir: Path,
    alerts: AlertConfig,
    mqtt: MqttSettings | None,
    notify: NotifySettings | None,
    *,
    clock: Callable[[], float] = time.time,
    action_note: Callable[[str], str | None] | None = None,
    accounts: Iterable[str] | None = None,
) -> AlertsSink:
    """Wire the store, the pipeline, MQTT and the phone channels from the settings."""
    notify = notify or NotifySettings.model_validate({})
    secret = None
    if mqtt is not None and mqtt.command_secret is not None:
        secret = mqtt.command_secret.get_secret_value().encode()
    switches = ActionSwitches()

    # The channels need the pipeline's command handler and signer, and the pipeline needs
    # the channels: they call through the sink, whose pipeline exists before any command or
    # button (AlertsSink.start builds it before MQTT connects, a message before it is sent).
    def handle_command(raw: bytes) -> Mapping[str, Any]:
        return sink.pipeline.handle_command(raw)

    def sign(command: Command, now: float) -> str:
        return sink.pipeline.sign(command, now)

    mqtt_sink = None
    if mqtt is not None:
        from monitor.channels.mqtt import MqttSink  # noqa: PLC0415 - aiomqtt only when configured

        mqtt_sink = MqttSink(mqtt, clock=clock, command_handler=handle_command)
    # Buttons only when the daemon can sign them and the phone can reach them.
    buttons = secret is not None and bool(notify.command_url)
    channel_sinks: list[NotifySink] = []
    if notify.channels:
        from monitor.channels.notify import NotifySink  # noqa: PLC0415 - Apprise: ~150 ms import

        channel_sinks = [
            NotifySink(
                c,
                token_ttl=notify.token_ttl,
                silence_for=notify.silence_for,
                clock=clock,
                command_url=notify.command_url if buttons else None,
                sign=sign if buttons else None,
            )
            for c in notify.channels
        ]
    channels: tuple[MqttSink | NotifySink, ...] = (
        *([mqtt_sink] if mqtt_sink else []),
        *channel_sinks,
    )

    def make_pipeline() -> AlertPipeline:
        return AlertPipeline(
            Store(state_dir / "alerts.sqlite3"),
            alerts,
            channels,
            switches=switches,
            command_secret=secret,
            clock=clock,
            action_note=action_note,
            accounts=accounts,  # a command for another account is refused
        )

    sink = AlertsSink(make_pipeline, mqtt_sink, notify.command_listen, switches, channels)
    return sink
