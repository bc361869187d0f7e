"""How the protective side is heard: every decision audited, every alert said once.

Money moves in the executor and the backstop; what they decide must reach the audit trail, the
MQTT action topic and, where a person must act, an alert (docs/actions.md: "audits every
decision, including 'would have' in dry-run"). The daemon passes the destinations at
construction (`ActionHooks`, built by protect/sink.py from the alert side); a bare executor
in a test or a dry run logs only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from monitor.core.plan import ActionPlan, PlannedOrder
from monitor.protect.state import ActionState

__all__ = ["ActionAudit", "ActionHooks", "order_payload", "plan_payload"]

log = structlog.get_logger("monitor.executor")

Audit = Callable[[str, str, Mapping[str, Any], float], None]
Publish = Callable[[str, Mapping[str, Any]], None]
Alert = Callable[[str, str], None]
Disabled = Callable[[str, str | None], None]


@dataclass(frozen=True, slots=True)
class ActionHooks:
    """Where one account's protective decisions go; None: the log only.

    Attributes:
        audit: (account, kind, payload, at): the alert side's `record_action` (audit
            trail, `<prefix>/<account>/action`, `margin_monitor_actions_total`).
        publish: (account, payload): another live feed of the same records.
        alert: (account, text): a condition a person must hear of (said once per text).
        reject: (account, text): a venue refused an order: an `action_rejected` alert.
        disabled: (account, reason or None): protection cannot run (issue 13) or runs again.
    """

    audit: Audit | None = None
    publish: Publish | None = None
    alert: Alert | None = None
    reject: Alert | None = None
    disabled: Disabled | None = None


class ActionAudit:
    """The audit trail and the alerts of one account's executor (and its backstop)."""

    def __init__(
        self,
        account: str,
        live: bool,
        state: ActionState,
        hooks: ActionHooks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account = account
        self.live = live
        self.state = state
        self.hooks = hooks
        self.clock = clock
        self._last_skip: str | None = None
        self._last_alert: str | None = None
        #: records held until the order they describe has left (`hold`): kind, body, at,
        #: and whether the log line still has to be written
        self._held: list[tuple[str, dict[str, Any], float, bool]] = []

    def _body(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        body = {"kind": kind, "account": self.account, "live": self.live, **payload}
        if self.state.episode is not None:
            body.setdefault("episode", self.state.episode)
        return body

    def _log(self, kind: str, body: Mapping[str, Any]) -> None:
        log.info(f"actions.{kind}", **{k: v for k, v in body.items() if k != "kind"})

    def _emit(self, kind: str, body: Mapping[str, Any], at: float) -> None:
        if self.hooks.audit is not None:
            self.hooks.audit(self.account, kind, body, at)
        if self.hooks.publish is not None:
            self.hooks.publish(self.account, body)

    def record(self, kind: str, payload: Mapping[str, Any], now: float | None = None) -> None:
        """One decision, stamped with the account, the mode and the open episode (after
        any held ones: the trail keeps the order in which things were decided)."""
        at = self.clock() if now is None else now
        self.flush()
        body = self._body(kind, payload)
        self._log(kind, body)
        self._emit(kind, body, at)

    def hold(
        self, kind: str, payload: Mapping[str, Any], now: float | None = None, *, log_now: bool
    ) -> None:
        """A record written by the next `flush` or `record`, stamped with the time of now.

        The step's `planned` and `sent` records are held until `create_order` has returned
        or raised (issue 16: their SQLite rows, log lines and MQTT publishes were ~0.7 ms
        between the crossing frame and the order). What must precede an order is only the
        client id written ahead in the state file; `log_now` also writes the log line now,
        so the journal of a process killed mid-send still names the order it sent."""
        body = self._body(kind, payload)
        if log_now:
            self._log(kind, body)
        self._held.append((kind, body, self.clock() if now is None else now, not log_now))

    def flush(self) -> None:
        """Write the held records, oldest first."""
        held, self._held = self._held, []
        for kind, body, at, unlogged in held:
            if unlogged:
                self._log(kind, body)
            self._emit(kind, body, at)

    def skip(self, reason: str, now: float, **extra: Any) -> None:
        """Audit a skipped step once per distinct reason (not on every tick)."""
        if reason != self._last_skip:
            self._last_skip = reason
            self.record("skipped", {"reason": reason, **extra}, now)

    def acted(self) -> None:
        """A step planned orders: the next skip is news again, even for the same reason."""
        self._last_skip = None

    def alert(self, text: str) -> None:
        """Tell a person, once per condition (not once per report)."""
        if text == self._last_alert:
            return
        self._last_alert = text
        log.error("actions.alert", account=self.account, text=text)
        if self.hooks.alert is not None:
            self.hooks.alert(self.account, text)

    def rejected(self, text: str) -> None:
        """A venue rejection: the alert above, and an `action_rejected` alert via the outbox."""
        self.alert(text)
        if self.hooks.reject is not None:
            self.hooks.reject(self.account, text)

    def disabled(self, reason: str | None) -> None:
        """Protection cannot run (reason) or runs again (None)."""
        if self.hooks.disabled is not None:
            self.hooks.disabled(self.account, reason)

    def episode_closed(self) -> None:
        """A new episode starts with a clean slate: its first skip and alert are said."""
        self._last_skip = None
        self._last_alert = None


def order_payload(order: PlannedOrder) -> dict[str, Any]:
    """The audit fields of one planned order."""
    return {
        "symbol": order.symbol,
        "position_side": order.position_side,
        "side": order.side,
        "amount": order.amount,
        "notional": order.notional,
        "hedged": order.hedged,
    }


def plan_payload(plan: ActionPlan, step: int) -> dict[str, Any]:
    """The audit fields of one planned step."""
    return {
        "step": step,
        "reason": plan.reason,
        "ratio_before": plan.ratio_before,
        "ratio_after_planned": plan.ratio_after,
        "target": plan.target_ratio,
        "reached": plan.reached,
        "capped": plan.capped,
        "orders": [order_payload(o) for o in plan.orders],
        "flags": [asdict(f) for f in plan.flags],
    }
