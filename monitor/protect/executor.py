"""One protective step: switches, one writer, fresh read, plan, proof, orders, audit. (I/O.)

The planner (`core/plan.py`) decides; this module is where money moves, so every rule of the
working agreement is applied here, in the order a step runs (each order's path from send to
final state is `sending.py`; the lock, the state file and the PAUSE files are `state.py`; the
audit trail and the alerts are `audit.py`):

1. Switches: the config kill switch (`actions.paused`), a `PAUSE` file in the state
   directory (`<state_dir>/PAUSE` for every account, `<state_dir>/PAUSE.<account>` for one),
   the MQTT/HTTP pause command (`switches.ActionSwitches`, engineer B's). Paused or not
   enabled: the step is planned and audited as "would have", nothing is sent.
2. One writer per account: an `fcntl.flock` on `<state_dir>/actions/<account>.lock`, held
   for the life of the executor; a second daemon on the same account plans nothing and
   audits why (passivbot's concurrent-instance protection, docs/actions.md).
3. A pending order from before a crash or timeout is looked up by its client id first;
   it is never re-sent blindly (StandX-CLI #200: "refuses to resubmit an unconfirmed exit").
4. Positions are read FRESH from the venue, the step is planned on that read, and
   `prove_reduce_only` checks each order against it again before `create_order`.
5. Client ids are derived from (account, episode, step, leg), written to the state file
   BEFORE the order is sent: a restart finds them and asks the venue instead of re-sending.
6. Each order: `create_order(symbol, 'market', side, amount, None, {'reduceOnly': True,
   'clientOrderId': ...})`, wait for the fill (or cancel after `order_timeout`), rate
   limited by `min_order_interval`.
7. A venue rejection (InsufficientFunds, reduce-only rejected, min notional) halts the
   episode and raises an alert; it is never retried in a loop.
8. A second fresh read confirms the ratio improved. Every decision goes to the audit trail
   and the MQTT action topic: planned, sent, filled, partial, rejected, skipped, would_have.
   `planned` and `sent` are written once `create_order` has returned or raised (only the
   write-ahead client id and the `sent` log line precede the order: issue 16, audit.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import structlog

from monitor.config.actions import ActionsSettings
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, MarginReport
from monitor.core.plan import (
    ActionPlan,
    ActionPolicy,
    UnsafePlan,
    plan_step,
    prove_reduce_only,
)
from monitor.protect.audit import ActionAudit, ActionHooks, order_payload, plan_payload
from monitor.protect.desk import OrderDesk, market_rules
from monitor.protect.sending import OrderSender
from monitor.protect.state import AccountLock, StateFile, kill_switch_file
from monitor.protect.switches import ActionSwitches
from monitor.sources.budget import urgent_requests

__all__ = ["Executor"]

log = structlog.get_logger("monitor.executor")

FreshRead = Callable[[], Any]  # async () -> AccountSnapshot

#: Least seconds before re-reading the venue after a step that could send nothing.
_QUIET = 5.0


class Executor:
    """The protective-action loop of one account.

    Args:
        account: the configured account name.
        desk: where orders go (the sim or a live `ExchangeSource`; protect/desk.py).
        fresh_read: an async callable returning a FRESH `AccountSnapshot` from the venue.
        settings: the `[actions]` section.
        action_ratio: the ratio at which a step is taken (the level resolved to a number).
        state_dir: where the lock, the state file and the PAUSE files live.
        live: False = dry run: plan and audit "would have", never send.
        venue: ccxt id (client id format, hedge params, exemptions).
        switches: the pause/resume switch of the command path (engineer B's).
        hooks: where decisions, alerts, rejections and "protection disabled" go
            (protect/audit.py); the daemon builds them from the alert side.
    """

    def __init__(
        self,
        account: str,
        desk: OrderDesk,
        fresh_read: FreshRead,
        *,
        settings: ActionsSettings,
        action_ratio: float,
        state_dir: Path,
        live: bool,
        venue: str | None = None,
        switches: ActionSwitches | None = None,
        hooks: ActionHooks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account = account
        self.desk = desk
        self.fresh_read = fresh_read
        self.settings = settings
        self.live = live
        self.venue = venue
        self.switches = switches
        self.state_dir = state_dir
        #: why protective actions cannot run at all (the state directory is not writable:
        #: no write-ahead order id, no lock), None while they can (issue 13)
        self.protection_disabled: str | None = None
        self.clock = clock
        self.policy = ActionPolicy(
            action_ratio=action_ratio,
            target_ratio=settings.target_ratio,
            policy=settings.policy,
            priority=tuple(settings.priority),
            max_fraction_per_step=settings.max_fraction_per_step,
            max_notional_per_step=settings.max_notional_per_step,
            max_notional_per_day=settings.max_notional_per_day,
            cooldown=settings.cooldown,
            fee_rate=settings.fee_rate,
        )
        self.lock = AccountLock(state_dir / "actions" / f"{account}.lock")
        self.state_file = StateFile(state_dir / "actions" / f"{account}.json", account)
        self.state = self.state_file.load()
        self.audit = ActionAudit(account, live, self.state, hooks or ActionHooks(), clock)
        self.sender = OrderSender(
            desk, self.state, self.state_file, self.audit, settings, venue=venue, clock=clock
        )
        self._quiet_until = -math.inf
        self._busy = asyncio.Lock()
        self.last_plan: ActionPlan | None = None
        #: used ratio / our model's ratio on the latest report (venue_ratio.py): > 1 when
        #: the venue's own figure is above ours, so a plan on our model aims lower
        self.venue_bias = 1.0
        #: the PAUSE file found by the last look (`pause_reason`, `look_for_kill_switch`),
        #: for what an alert says (`pause_reason(now, looked=True)`), never for an order
        self.kill_switch_seen = kill_switch_file(state_dir, account)

    # --- switches -----------------------------------------------------------------------------

    def pause_reason(self, now: float, *, looked: bool = False) -> str | None:
        """Why orders must not be sent now (None: they may).

        `looked`: take the PAUSE files as the last look found them (at most
        `KILL_SWITCH_LOOK` s old, protect/sink.py) instead of looking now. For an alert's
        words only (protect/notes.py): the first file lookup after an idle second cost an
        alert ~0.1 ms of its path (issue 16); an order is always checked against the disk.
        """
        if self.settings.paused:
            return "kill switch: actions.paused = true in the configuration"
        path = self.kill_switch_seen if looked else self.look_for_kill_switch()
        if path is not None:
            return f"kill switch: {path} exists"
        if self.switches is not None and self.switches.is_paused(self.account, now):
            return "paused by command (MQTT/HTTP pause)"
        return None

    def look_for_kill_switch(self) -> Path | None:
        """The PAUSE file that stops this account now (a file lookup), remembered."""
        self.kill_switch_seen = kill_switch_file(self.state_dir, self.account)
        return self.kill_switch_seen

    # --- the step -------------------------------------------------------------------------------

    def wants(self, rep: MarginReport, now: float) -> bool:
        """Cheap pre-check on the daemon's report: is a step worth a fresh read?"""
        ratio = rep.margin_ratio
        if now < self._quiet_until:
            return False  # the last step could do nothing: do not re-read the venue per tick
        if self.state.pending:
            return True  # an order from before a crash or timeout must be looked up first
        if self.state.episode is not None and ratio <= self.policy.target_ratio:
            self._close_episode(rep, now)  # back at the target: the episode is over
            return False
        if ratio < self.policy.action_ratio and self.state.episode is None:
            return False
        last = self.state.last_step_at
        return not (last is not None and now - last < self.policy.cooldown)

    def _close_episode(self, rep: MarginReport, now: float) -> None:
        self.audit.record("resolved", {"ratio": rep.margin_ratio, "steps": self.state.step}, now)
        self.state.episode = None
        self.state.step = 0
        self.state.halted = None
        self.audit.episode_closed()
        self.state_file.save(self.state)

    @property
    def orders_sent(self) -> int:
        """Orders the venue accepted since this executor started."""
        return self.sender.sent

    @property
    def busy(self) -> bool:
        """True while a step runs (a report arriving now is dropped, not queued)."""
        return self._busy.locked()

    async def step(self, rep: MarginReport, now: float) -> ActionPlan | None:
        """Take one protective step if `rep` calls for it; None when no step ran.

        Not a sink's `on_report` (monitor/sink.py): the executor is driven by the actions
        sink's task of its account, takes no snapshot because it acts only on a fresh read,
        and returns the plan it took."""
        model = rep.model_ratio
        self.venue_bias = (
            rep.margin_ratio / model
            if model is not None
            and model > 0
            and math.isfinite(model)
            and math.isfinite(rep.margin_ratio)
            else 1.0
        )
        if not self.wants(rep, now) or self.busy:
            return None
        async with self._busy:
            # the step's venue requests (fresh reads, order, lookups) go ahead of polling
            # and may spend the budget's reserve (sources/budget.py)
            try:
                with urgent_requests():
                    return await self._take_step(now)
            finally:
                self.audit.flush()  # nothing held beyond its step (a plan that raised)

    def _writable(self) -> bool:
        """Take the writer lock; an unwritable state directory disables protection, loudly.

        The order id is written ahead of every send and the lock is a file: without a
        writable state directory no order may go out (safe), and a person must hear of it
        rather than find out at emergency (issue 13: `protection_disabled`)."""
        try:
            self.lock.acquire()
        except OSError as exc:
            reason = (
                f"state directory {self.state_dir} is not writable "
                f"({(exc.strerror or type(exc).__name__).lower()}): protective orders are off"
            )
            if self.protection_disabled is None:
                self.protection_disabled = reason
                log.error("actions.protection_disabled", account=self.account, reason=reason)
                self.audit.disabled(reason)
            return False
        if self.protection_disabled is not None:
            self.protection_disabled = None
            log.warning("actions.protection_enabled", account=self.account)
            self.audit.disabled(None)
        return True

    async def _take_step(self, now: float) -> ActionPlan | None:
        if not self._writable():
            return None
        if not self.lock.acquire():
            self.audit.skip(
                "another instance holds the writer lock for this account",
                now,
                lock=str(self.lock.path),
            )
            return None
        if self.state.halted is not None:
            self.audit.skip(f"halted: {self.state.halted}", now)
            return None
        if self.state.pending:
            wait = await self.sender.settle_pending(now, max(self.policy.cooldown, _QUIET))
            if wait is not None:  # an order may still be in flight: ask again after `wait`
                self._quiet(now, wait)
                return None
        try:
            fresh: AccountSnapshot = await self.fresh_read()
        except Exception as exc:  # any failed read means: do not act
            self.audit.skip(f"fresh read failed: {type(exc).__name__}: {exc}", now)
            self._quiet(now)
            return None
        fresh_report = report(fresh)
        markets = {}
        for p in fresh.positions:
            try:
                markets[p.symbol] = market_rules(self.desk, p.symbol, self.venue)
            except Exception as exc:  # an unknown market is flagged by the planner
                log.warning("actions.no_market", symbol=p.symbol, error=str(exc))
        try:
            # the fresh read is valued by our model: aim its ratio where the used ratio
            # (the venue's, carried forward, when that is worse) meets the target
            policy = (
                self.policy
                if self.venue_bias == 1.0
                else replace(
                    self.policy,
                    action_ratio=self.policy.action_ratio / self.venue_bias,
                    target_ratio=self.policy.target_ratio / self.venue_bias,
                )
            )
            plan = plan_step(fresh, policy, markets, self.state.history, now, current=fresh_report)
        except UnsafePlan as exc:
            self.audit.alert(f"protective plan refused (would increase exposure): {exc}")
            self.audit.record("refused", {"reason": str(exc)}, now)
            return None
        self.last_plan = plan
        if not plan.orders:
            self.audit.skip(
                plan.reason,
                now,
                decision=plan.decision,
                ratio=plan.ratio_before,
                flags=[asdict(f) for f in plan.flags],
            )
            if plan.flags:
                self.audit.alert(plan.reason)
            if plan.decision in ("nothing", "daily_cap"):
                self._quiet(now)
            return plan
        if self.state.episode is None:
            self.state.episode = f"{int(now * 1000):x}"
            self.state.step = 0
        self.state.step += 1
        self.audit.acted()
        # written once the first order has left (sending.py), or by the next record
        self.audit.hold("planned", plan_payload(plan, self.state.step), now, log_now=False)
        if plan.flags:
            self.audit.alert("; ".join(f"{f.symbol} {f.side}: {f.reason}" for f in plan.flags))
        paused = self.pause_reason(now)
        if not self.live or paused is not None:
            why = paused or "dry run: actions.enabled = false"
            for leg, order in enumerate(plan.orders):
                self.audit.record(
                    "would_have",
                    {**order_payload(order), "reason": why, "leg": leg, "step": self.state.step},
                    now,
                )
            self._advance(plan, now, sent=False)
            return plan
        prove_reduce_only(fresh, plan.orders)  # the plan's own check, once more, explicitly
        filled_any = False
        for leg, order in enumerate(plan.orders):
            outcome = await self.sender.send(order, leg)
            filled_any = filled_any or outcome in {"filled", "partial"}
            if outcome in ("rejected", "unconfirmed"):
                break
        self._advance(plan, now)
        if filled_any:
            await self._confirm(plan)
        return plan

    def _quiet(self, now: float, seconds: float | None = None) -> None:
        """No new fresh read for a while: the venue must not be polled on every tick."""
        self._quiet_until = now + (
            max(self.policy.cooldown, _QUIET) if seconds is None else seconds
        )

    def _advance(self, plan: ActionPlan, now: float, *, sent: bool = True) -> None:
        """Start the cooldown; only orders really sent count against the daily cap."""
        history = self.state.history.after(plan.notional if sent else 0.0, now)
        self.state.last_step_at = history.last_step_at
        self.state.day = history.day
        self.state.spent_today = history.spent_today
        self.state_file.save(self.state)

    async def _confirm(self, plan: ActionPlan) -> None:
        """Re-read and check the ratio really improved (a fill at a bad price may not)."""
        try:
            after = report(await self.fresh_read()).margin_ratio
        except Exception as exc:  # the step is done; only the check failed
            self.audit.record("unverified", {"error": str(exc)})
            return
        improved = after < plan.ratio_before
        self.audit.record(
            "result",
            {
                "ratio_before": plan.ratio_before,
                "ratio_after": after,
                "improved": improved,
                "target": plan.target_ratio,
                "reached": after <= plan.target_ratio,
            },
        )
        if not improved:
            self.audit.alert(
                f"protective step did not improve the ratio ({plan.ratio_before:.4f} -> "
                f"{after:.4f})"
            )

    def close(self) -> None:
        """Release the writer lock and the state journal."""
        self.state_file.close()
        self.lock.release()
