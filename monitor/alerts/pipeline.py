"""The alert pipeline: rules -> outbox -> sinks, at least once, with retries and backoff.

    report / source event ──▶ rules.evaluate ──▶ store.commit(state + outbox rows) ──▶ hand / wake
                                                                                          │
    sink[<name>] task: due rows ──▶ sink.deliver(batch) ──▶ delivered: delete rows        ▼
                                                         └─ failed: attempts+1, jittered backoff

The rules stay pure; this module is the asyncio shell around them (STYLE.md, sans-IO). A
message is in SQLite before any sink sees it, so a crash between "decided" and "delivered"
only ever produces a duplicate (receivers deduplicate on the stable message id), never a
loss. Each sink drains its own rows (delivery.py, `OutboxDelivery`), so a dead phone service
never delays MQTT.

Commands (acknowledge, silence, pause/resume) arrive signed (signed_commands.py) from the
MQTT command topic or a phone's action button and are executed by this object's command
half (commands.py, `CommandHandling`), because it owns the alert state; pauses go to the
shared `ActionSwitches` the executor reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from monitor.alerts.commands import CommandHandling, _RefusalTally
from monitor.alerts.delivery import AlertSink, OutboxDelivery, ReportObserver
from monitor.alerts.message import AlertMessage, build_message
from monitor.core import rules
from monitor.core.alert_config import RULE_ACTION_REJECTED, AlertConfig
from monitor.core.alert_state import AlertEvent, AlertKind, RulesState, episode_id, fingerprint
from monitor.core.levels import Level
from monitor.core.model import MarginReport, ModelDrift, SourceDown, SourceStale, SourceUp
from monitor.ops.logs import redact
from monitor.protect.switches import ActionSwitches
from monitor.store import Store

__all__ = ["AlertPipeline"]

log = structlog.get_logger("monitor.alerting")

#: Seconds between two retention passes over the store (store.prune).
PRUNE_EVERY = 3600.0
#: structlog method per level, so a log-based alert rule can key on severity.
_LOG_METHOD = {"ok": "info", "warning": "warning", "critical": "error", "emergency": "critical"}

#: A message and the sinks that want it.
_Entry = tuple[AlertMessage, Sequence[str]]


class AlertPipeline(CommandHandling, OutboxDelivery):
    """Owns the alert state; turns reports into persisted, delivered messages.

    Args:
        store: the SQLite store (alert state, outbox, audit).
        config: thresholds and timing.
        sinks: where messages go; each gets its own delivery task `sink[<name>]`.
        switches: the pause switch shared with the actions side.
        command_secret: HMAC key for commands; None refuses every command.
        clock: wall-clock seconds (injectable for tests).
        action_note: what the protective action did or would do for an account, shown in
            the message (the actions side provides it; None: nothing to say).
    """

    def __init__(
        self,
        store: Store,
        config: AlertConfig,
        sinks: Sequence[AlertSink] = (),
        *,
        switches: ActionSwitches | None = None,
        command_secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
        action_note: Callable[[str], str | None] | None = None,
        accounts: Iterable[str] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.sinks = tuple(sinks)
        # found once: a runtime Protocol check per sink per report costs microseconds
        self._observers = tuple(s for s in self.sinks if isinstance(s, ReportObserver))
        self.switches = switches or ActionSwitches()
        # Pauses survive a restart: reload them, then persist every change.
        for account, until in store.load_pauses(clock()).items():
            self.switches.pause(account, until)
        self.switches.on_change = store.save_pause
        self.clock = clock
        self.action_note = action_note
        self._secret = command_secret
        self.state: RulesState = store.load_rules_state(clock())
        self._reports: dict[str, MarginReport] = {}
        #: configured account names; a command naming another is refused (None: no check);
        #: a reload replaces them (`AlertsSink.set_accounts`)
        self.accounts: frozenset[str] | None = None if accounts is None else frozenset(accounts)
        self._refusals: dict[str, _RefusalTally] = {}
        self._next_prune = 0.0
        self._degraded_announced = False
        self._direct: dict[str, tuple[float, Level]] = {}  # fingerprint -> (since, level)
        self._init_delivery()

    # --- inputs -----------------------------------------------------------------------------

    def on_report(self, report: MarginReport, now: float | None = None) -> tuple[AlertEvent, ...]:
        """Evaluate one report; persist and queue what it produced. Never blocks on a sink."""
        now = self.clock() if now is None else now
        self.state, events = rules.evaluate(self.state, report, now, self.config)
        previous = self._reports.get(report.account)
        if previous is not None:
            carried: dict[str, Any] = {}
            if report.shock_to_liquidation is None and previous.shock_to_liquidation is not None:
                # The shock solve is throttled (settings.shock_interval): messages and the
                # retained state show the last one computed rather than nothing.
                carried["shock_to_liquidation"] = previous.shock_to_liquidation
            if report.collateral_risk is None and previous.collateral_risk is not None:
                # solved with the shock (docs/collateral.md): the last one too, not nothing
                carried["collateral_risk"] = previous.collateral_risk
            if carried:  # one copy per report, not one per carried figure
                report = dataclasses.replace(report, **carried)
        self._reports[report.account] = report
        self._commit(events, now, (report.account,))
        if self._observers:
            level = self.state.account_level(report.account)
            for observer in self._observers:
                observer.observe_report(report, level)
        return events

    def on_source_event(
        self, event: SourceStale | SourceDown | SourceUp, now: float | None = None
    ) -> tuple[AlertEvent, ...]:
        """Stale data, a source down, a source back."""
        now = self.clock() if now is None else now
        if isinstance(event, SourceDown):
            # foreign text (a venue's error) on its way to MQTT, phones and SQLite
            event = dataclasses.replace(event, reason=redact(event.reason))
        self.state, events = rules.on_source_event(self.state, event, now, self.config)
        self._commit(events, now)
        return events

    def on_model_drift(self, event: ModelDrift, now: float | None = None) -> tuple[AlertEvent, ...]:
        """Our ratio and the venue's drifted apart (or agree again): `model_drift`, through
        the outbox like every alert."""
        now = self.clock() if now is None else now
        self.state, events = rules.on_model_drift(self.state, event, now, self.config)
        self._commit(events, now)
        return events

    def raise_action_alert(
        self, account: str, text: str, now: float | None = None
    ) -> tuple[AlertEvent, ...]:
        """A venue rejected a protective order: fire `<account>/action_rejected` (docs/actions.md).

        Through the outbox like every alert, so MQTT and the phone channels get it at least
        once; raising it again in the same episode sends nothing new.
        """
        now = self.clock() if now is None else now
        text = redact(text)  # it quotes the venue's answer
        self.state, events = rules.on_action_rejected(self.state, account, text, now, self.config)
        self._commit(events, now)
        return events

    def resolve_action_alert(
        self, account: str, now: float | None = None
    ) -> tuple[AlertEvent, ...]:
        """The rejection episode is over (back at target): resolve it. Cheap when not firing."""
        if not self.state.alert(account, RULE_ACTION_REJECTED).firing:
            return ()
        now = self.clock() if now is None else now
        self.state, events = rules.on_action_resolved(self.state, account, now, self.config)
        self._commit(events, now)
        return events

    def tick(self, now: float | None = None) -> tuple[AlertEvent, ...]:
        """Repeats, hold times and silence expiry while no data arrives."""
        now = self.clock() if now is None else now
        self.state, events = rules.tick(self.state, now, self.config)
        if events:
            self._commit(events, now)
        if self._refusals:
            self._flush_refusals(now)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self.store.prune(now)
        return events

    def level(self, account: str) -> str:
        """The account's current highest alert level."""
        return self.state.account_level(account)

    # --- persistence and fan-out ------------------------------------------------------------

    def _commit(
        self, events: Iterable[AlertEvent], now: float, accounts: Iterable[str] | None = None
    ) -> None:
        """Persist and queue; `accounts`: the only accounts whose alerts changed (a report).

        The log lines come after the hand-over: the alert leaves first (issue 16).
        """
        events = tuple(events)
        entries: list[_Entry] = []
        for event in events:
            if not event.delivered:
                continue
            note = self.action_note(event.account) if self.action_note else None
            entries.append(
                self._entry(build_message(event, self._reports.get(event.account), note))
            )
        if self.store.degraded and not self._degraded_announced:
            self._degraded_announced = True
            entries.append(self._store_alert(self.store.degraded, now))
        self._queue(entries, now, accounts)
        if self.store.degraded and not self._degraded_announced:
            # The commit itself hit the disk error; announce it (now from memory).
            self._degraded_announced = True
            self._queue([self._store_alert(self.store.degraded, now)], now)
        for event in events:
            self._log(event)

    def _entry(self, message: AlertMessage) -> _Entry:
        return message, [sink.name for sink in self.sinks if sink.wants(message)]

    def _queue(
        self, entries: Sequence[_Entry], now: float, accounts: Iterable[str] | None = None
    ) -> None:
        """Store the alert state and `entries` in one transaction, then hand them out: stored
        before any sink sees them."""
        rows = [(m.id, m.account, m.to_json(), targets) for m, targets in entries]
        self.store.commit(self.state, rows, now, accounts)
        if entries:
            self._fan_out(entries)

    def _store_alert(self, reason: str, now: float) -> _Entry:
        """A message about the state store itself: the daemon is running without memory."""
        return self._direct_alert("daemon", "state_store", "firing", "critical", now, now, reason)

    def protection_alert(
        self, account: str, reason: str | None, level: Level, now: float | None = None
    ) -> None:
        """`<account>/protection_disabled` at `level` (the action level) while protective
        actions cannot run (`reason`), resolved when they can again (None). Not a rule: the
        actions side knows when it starts and ends (issue 13)."""
        now = self.clock() if now is None else now
        key = fingerprint(account, "protection_disabled")
        if reason is not None:
            if key in self._direct:
                return
            self._direct[key] = (now, level)
            row = self._direct_alert(
                account, "protection_disabled", "firing", level, now, now, redact(reason)
            )
        else:
            if key not in self._direct:
                return
            started, level = self._direct.pop(key)
            row = self._direct_alert(
                account,
                "protection_disabled",
                "resolved",
                level,
                started,
                now,
                "protective actions can run again",
            )
        self._queue([row], now)

    def _direct_alert(  # noqa: PLR0917 - one event's fields
        self,
        account: str,
        rule: str,
        kind: AlertKind,
        level: Level,
        started: float,
        now: float,
        detail: str,
    ) -> _Entry:
        """An alert raised directly, not by the rules (no hysteresis, no repeats)."""
        key = fingerprint(account, rule)
        episode = episode_id(key, started)
        resolved = kind == "resolved"
        event = AlertEvent(
            id=f"{rule.replace('_', '-')}-{episode}.{1 if resolved else 0}",
            fingerprint=key,
            account=account,
            rule=rule,
            kind=kind,
            level="ok" if resolved else level,
            previous_level=level if resolved else "ok",
            episode=episode,
            started_at=started,
            at=now,
            value=None,
            previous_value=None,
            worst_value=None,
            worst_level=level,
            detail=detail,
        )
        self._log(event)
        return self._entry(build_message(event, self._reports.get(account)))

    @staticmethod
    def _log(event: AlertEvent) -> None:
        method = "info" if event.suppressed or event.kind == "resolved" else None
        emit = getattr(log, method or _LOG_METHOD[event.level])
        emit(
            "alert",
            id=event.id,
            account=event.account,
            rule=event.rule,
            kind=event.kind,
            alert_level=event.level,  # `level` is structlog's own key (log severity)
            previous_level=event.previous_level,
            value=event.value,
            worst_value=event.worst_value,
            duration=round(event.duration, 3),
            detail=event.detail or None,
            suppressed=event.suppressed,
        )

    # --- delivery (the tasks' loop is delivery.py's) ---------------------------------------

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Start the delivery tasks (`sink[<name>]`) and the clock (`alerts.tick`) in `tg`."""
        for sink in self.sinks:
            tg.create_task(self.deliver_forever(sink), name=f"sink[{sink.name}]")
        tg.create_task(self.tick_forever(), name="alerts.tick")

    async def run(self) -> None:
        """Run the delivery and tick tasks until cancelled (tests, bench)."""
        async with asyncio.TaskGroup() as tg:
            self.start(tg)

    async def tick_forever(self, interval: float = 1.0) -> None:
        """Call `tick` about every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            self.tick()
