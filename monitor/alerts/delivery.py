"""Outbox -> sinks: the delivery tasks of the alert pipeline, at least once, with backoff.

    sink[<name>] task: due rows ──▶ sink.deliver(batch) ──▶ delivered: delete rows
                                                         └─ failed: attempts+1, jittered backoff

Each sink drains its own rows, so a dead phone service never delays MQTT. `AlertPipeline`
(pipeline.py) persists the rows and wakes the task; this mixin is the half that sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Collection, Sequence
from typing import Protocol, runtime_checkable

import structlog

from monitor.alerts.message import AlertMessage
from monitor.core.model import MarginReport
from monitor.ops.metrics import record_alerts_sent
from monitor.store import Store

__all__ = [
    "BACKOFF_CAP",
    "AlertSink",
    "OutboxDelivery",
    "PacedSink",
    "ReportObserver",
    "backoff",
    "raise_if_cancelling",
]

log = structlog.get_logger("monitor.alerting")

#: Longest wait between two delivery attempts of one message (seconds).
BACKOFF_CAP = 60.0


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt` (1-based): full jitter, exponential, capped.

    The one-line form aiomqtt v3 uses for reconnects (STYLE.md); jitter keeps many queued
    messages from retrying in lockstep against a recovering service.
    """
    return min(BACKOFF_CAP, random.uniform(0, 1.5 ** min(10, attempt)))  # noqa: S311


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


class OutboxDelivery:
    """The delivery half of `AlertPipeline` (a mixin: the pipeline owns store and sinks)."""

    store: Store
    sinks: tuple[AlertSink, ...]
    clock: Callable[[], float]
    _wake: dict[str, asyncio.Event]

    def retry_now(self, sink_name: str) -> None:
        """Make `sink_name`'s queued messages due now and wake its delivery task."""
        self.store.reschedule(sink_name, self.clock())
        wake = self._wake.get(sink_name)
        if wake is not None:
            wake.set()

    async def deliver_forever(self, sink: AlertSink) -> None:
        """Drain `sink`'s outbox rows forever: deliver, acknowledge, or back off and retry."""
        wake = self._wake[sink.name]
        while True:
            raise_if_cancelling()
            wake.clear()
            now = self.clock()
            rows = self.store.due(sink.name, now)
            if not rows:
                next_at = self.store.next_due_at(sink.name)
                timeout = None if next_at is None else max(0.0, next_at - now)
                with contextlib.suppress(TimeoutError):  # not wait_for: cpython#86296
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                continue
            if isinstance(sink, PacedSink):
                await sink.ready()
                rows = self.store.due(sink.name, self.clock())  # what queued while waiting
                if not rows:
                    continue
            by_id = {row.message_id: row for row in rows}
            messages = [AlertMessage.from_json(row.payload) for row in rows]
            try:
                acked: Collection[str] = await sink.deliver(messages)
            except Exception as exc:  # a sink's failure is retried, never fatal
                acked = ()
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = "not acknowledged"
            done = [mid for mid in by_id if mid in acked]
            if done:
                self.store.delivered(sink.name, done)
                record_alerts_sent(sink.name, len(done))  # margin_monitor_alerts_sent
            now = self.clock()
            for mid, row in by_id.items():
                if mid not in acked:
                    delay = backoff(row.attempts + 1)
                    self.store.failed(sink.name, mid, now + delay, error)
                    log.warning(
                        "alert.delivery_failed",
                        sink=sink.name,
                        id=mid,
                        attempt=row.attempts + 1,
                        retry_in=round(delay, 2),
                        error=error,
                    )
