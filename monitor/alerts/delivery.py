"""Outbox -> sinks: the delivery tasks of the alert pipeline, at least once, with backoff.

    sink[<name>] task: due rows ──▶ sink.deliver(batch) ──▶ delivered: delete rows
                                                         └─ failed: attempts+1, jittered backoff

Each sink drains its own rows, so a dead phone service never delays MQTT. `AlertPipeline`
(pipeline.py) persists the rows and wakes the task; this mixin is the half that sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import Protocol, runtime_checkable

import structlog

from monitor.alerts.message import AlertMessage
from monitor.backoff import retry_after
from monitor.core.model import MarginReport
from monitor.ops.metrics import record_alerts_sent
from monitor.store import Store

__all__ = [
    "MAX_IN_FLIGHT",
    "AlertSink",
    "ImmediateSink",
    "OutboxDelivery",
    "PacedSink",
    "ReconnectingSink",
    "ReportObserver",
    "raise_if_cancelling",
]

log = structlog.get_logger("monitor.alerting")

#: Most messages handed to one immediate sink and not yet acknowledged; past it the task
#: waits for acknowledgements before it hands the next batch (paho keeps 20 in flight).
MAX_IN_FLIGHT = 200


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that was swallowed on the way here.

    Python 3.11's `asyncio.wait_for` (aiomqtt 2.x uses it for every acknowledgement) loses
    a cancellation that arrives as the awaited future completes (CPython gh-86296, fixed in
    3.12); the request count stays set, so checking it at safe points restores shutdown.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@runtime_checkable
class AlertSink(Protocol):
    """Something that delivers alert messages (MQTT, a phone channel, the console)."""

    name: str

    def wants(self, message: AlertMessage) -> bool:
        """Whether this sink should get `message` at all (decided once, at enqueue time)."""
        ...

    async def deliver(self, messages: Sequence[AlertMessage]) -> Collection[str]:
        """Deliver a batch; return the ids the far side acknowledged. Raise on total failure."""
        ...


@runtime_checkable
class PacedSink(Protocol):
    """A sink that can only take a batch at certain moments (a paced channel, a session).

    `deliver_forever` awaits `ready()` BEFORE it picks the batch, so everything that became
    due while the sink was not ready (an escalation during a phone channel's pacing wait)
    leaves in the first batch the sink can take, not one round later (docs/alerts.md).
    """

    async def ready(self) -> None:
        """Return once a batch given now would be sent at once."""
        ...


@runtime_checkable
class ReportObserver(Protocol):
    """A sink that also shows every report (MQTT's retained state topic)."""

    def observe_report(self, report: MarginReport, level: str) -> None:
        """Take the newest report of an account; must not block."""
        ...


@runtime_checkable
class ImmediateSink(Protocol):
    """A sink that takes a committed message at once, in the committing call (MQTT).

    Waking a delivery task costs loop passes, a re-read of the outbox and a parse before the
    first byte moves (issue 16: ~0.7 ms of a 2.4 ms tick -> alert). An immediate sink is handed
    the messages right after the commit that stored them, so they are still stored before the
    sink sees them; its acknowledgements settle the rows later, as the task would.
    """

    name: str

    def send_now(self, messages: Sequence[AlertMessage]) -> asyncio.Future[Collection[str]] | None:
        """Hand `messages` to the transport before returning; the future gives the ids the
        far side acknowledged (never raises). None: cannot now (no session): the delivery
        task takes them when the sink is ready."""
        ...

    def written(self) -> asyncio.Future[None]:
        """Done once everything handed so far is written to the transport (or cannot be)."""
        ...


@runtime_checkable
class ReconnectingSink(Protocol):
    """A sink whose session comes back (MQTT): its backlog is retried then, not after backoff."""

    def set_on_connected(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time a session is up."""
        ...


class OutboxDelivery:
    """The delivery half of `AlertPipeline` (a mixin: the pipeline owns store and sinks)."""

    store: Store
    sinks: tuple[AlertSink, ...]
    clock: Callable[[], float]
    _wake: dict[str, asyncio.Event]
    #: ids handed to an immediate sink and not yet settled (acknowledged or failed)
    _in_flight: dict[str, set[str]]
    #: sink -> when its parked delivery task wakes by itself (inf: only when woken)
    _parked: dict[str, float]
    _immediate: dict[str, ImmediateSink]

    def _init_delivery(self) -> None:
        """Delivery bookkeeping, and the reconnect hook of every sink that has sessions."""
        self._wake = {sink.name: asyncio.Event() for sink in self.sinks}
        self._in_flight = {sink.name: set() for sink in self.sinks}
        self._parked = {}
        # by name, found once: a runtime Protocol isinstance walks the protocol's members
        self._immediate = {s.name: s for s in self.sinks if isinstance(s, ImmediateSink)}
        for sink in self.sinks:
            if isinstance(sink, ReconnectingSink):
                sink.set_on_connected(functools.partial(self.retry_now, sink.name))

    def _fan_out(self, entries: Sequence[tuple[AlertMessage, Sequence[str]]]) -> None:
        """After the commit that stored `entries` (message, target sinks): hand each immediate
        sink its messages now if its task is idle, else wake the task.

        Idle means parked with nothing due: a backlog (a reconnect, a retry coming due) goes
        first, through the task, in outbox order.
        """
        now = self.clock()
        for sink in self.sinks:
            batch = [message for message, targets in entries if sink.name in targets]
            if not batch:
                continue
            wake = self._wake[sink.name]
            idle = not wake.is_set() and self._parked.get(sink.name, now) > now
            immediate = self._immediate.get(sink.name)  # not isinstance per alert (issue 16)
            if not (idle and immediate is not None and self._hand(immediate, batch, {})):
                wake.set()

    def _hand(
        self, sink: ImmediateSink, messages: Sequence[AlertMessage], attempts: dict[str, int]
    ) -> bool:
        """Give `messages` to `sink` now; False when it cannot take them (no session)."""
        try:
            acked = sink.send_now(messages)
        except Exception:  # the task's `deliver` retries it with backoff
            log.exception("alert.send_failed", sink=sink.name)
            return False
        if acked is None:
            return False
        name = sink.name
        ids = {m.id: attempts.get(m.id, 0) for m in messages}
        self._in_flight[name].update(ids)
        acked.add_done_callback(functools.partial(self._settle, name, ids))
        return True

    def _settle(
        self, name: str, ids: dict[str, int], acked: asyncio.Future[Collection[str]]
    ) -> None:
        """A handed batch is acknowledged (rows go) or not (retried with backoff)."""
        self._in_flight[name].difference_update(ids)
        self._wake[name].set()  # the task re-plans its wait (and takes a held-back batch)
        if acked.cancelled():
            return  # shutdown: the rows stay due, the next start sends them
        try:
            self._settled(name, ids, acked.result(), "not acknowledged")
        except sqlite3.ProgrammingError:  # settled after the store closed (a stop): rows stay
            log.info("alert.settled_after_close", sink=name, ids=sorted(ids))

    def _settled(
        self, name: str, attempts: dict[str, int], acked: Collection[str], error: str
    ) -> None:
        done = [mid for mid in attempts if mid in acked]
        if done:
            self.store.delivered(name, done)
            record_alerts_sent(name, len(done))  # margin_monitor_alerts_sent
        now = self.clock()
        for mid, tried in attempts.items():
            if mid not in acked:
                delay = retry_after(tried + 1)
                self.store.failed(name, mid, now + delay, error)
                log.warning(
                    "alert.delivery_failed",
                    sink=name,
                    id=mid,
                    attempt=tried + 1,
                    retry_in=round(delay, 2),
                    error=error,
                )

    async def handover(self) -> None:
        """Return once the alerts handed so far are written to every immediate sink's
        transport (a protective step waits for this, bounded: protect/sink.py)."""
        for sink in self._immediate.values():
            await sink.written()

    def retry_now(self, sink_name: str) -> None:
        """Make `sink_name`'s queued messages due now and wake its delivery task."""
        self.store.reschedule(sink_name, self.clock())
        wake = self._wake.get(sink_name)
        if wake is not None:
            wake.set()

    async def deliver_forever(self, sink: AlertSink) -> None:
        """Drain `sink`'s outbox rows forever: deliver, acknowledge, or back off and retry."""
        wake = self._wake[sink.name]
        in_flight = self._in_flight[sink.name]
        try:
            while True:
                raise_if_cancelling()
                wake.clear()
                now = self.clock()
                rows = [r for r in self.store.due(sink.name, now) if r.message_id not in in_flight]
                if not rows or len(in_flight) >= MAX_IN_FLIGHT:
                    # in-flight rows are due but handed: their settling wakes this task
                    next_at = None if rows else self._next_due(sink.name)
                    self._parked[sink.name] = math.inf if next_at is None else next_at
                    timeout = None if next_at is None else max(0.0, next_at - now)
                    with contextlib.suppress(TimeoutError):  # not wait_for: cpython#86296
                        async with asyncio.timeout(timeout):
                            await wake.wait()
                    del self._parked[sink.name]
                    continue
                if isinstance(sink, PacedSink):
                    await sink.ready()
                    rows = [  # what queued while waiting
                        r
                        for r in self.store.due(sink.name, self.clock())
                        if r.message_id not in in_flight
                    ]
                    if not rows:
                        continue
                attempts = {row.message_id: row.attempts for row in rows}
                messages = [AlertMessage.from_json(row.payload) for row in rows]
                if isinstance(sink, ImmediateSink) and self._hand(sink, messages, attempts):
                    continue  # settled by its acknowledgements, as a batch handed at commit
                try:
                    acked: Collection[str] = await sink.deliver(messages)
                except Exception as exc:  # a sink's failure is retried, never fatal
                    self._settled(sink.name, attempts, (), f"{type(exc).__name__}: {exc}")
                else:
                    self._settled(sink.name, attempts, acked, "not acknowledged")
        finally:
            self._parked.pop(sink.name, None)

    def _next_due(self, name: str) -> float | None:
        """When the next row not in flight becomes due (None: none queued)."""
        next_at = self.store.next_due_at(name)
        if next_at is not None and next_at <= self.clock() and self._in_flight[name]:
            return None  # only in-flight rows are due now: wait for their settling
        return next_at
