"""Sending protective orders: fresh read, proof, one writer, idempotent ids, audit. (I/O.)

The planner (`actions.py`) decides; this module is where money moves, so every rule of the
working agreement lives here, in the order a step runs:

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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from monitor.config.actions import ActionsSettings
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, MarginReport
from monitor.core.plan import (
    ActionHistory,
    ActionPlan,
    ActionPolicy,
    MarketRules,
    PlannedOrder,
    UnsafePlan,
    plan_step,
    prove_reduce_only,
)
from monitor.protect.desk import OrderDesk
from monitor.protect.switches import ActionSwitches
from monitor.sources.budget import urgent_requests
from monitor.venues.errors import catching
from monitor.venues.orders import amount_step, client_order_id, min_notional_exempt, order_params

__all__ = [
    "AccountLock",
    "Executor",
    "LockHeld",
    "kill_switch_file",
    "market_rules",
]

log = structlog.get_logger("monitor.executor")

Audit = Callable[[str, str, Mapping[str, Any], float], None]
Publish = Callable[[str, Mapping[str, Any]], None]
Alert = Callable[[str, str], None]
FreshRead = Callable[[], Any]  # async () -> AccountSnapshot

#: Least seconds before re-reading the venue after a step that could send nothing.
_QUIET = 5.0
#: Seconds between two fetch_order polls while waiting for a fill.
_POLL = 0.02
#: Clock skew allowed between this host and the venue when judging a request's lifetime.
_SKEW = 1.0
#: Venue answers that are decisions about the order, not transport trouble: never retried.
_REJECTIONS = ("InsufficientFunds", "InvalidOrder", "BadRequest", "ExchangeError")


def _transport() -> tuple[type[BaseException], ...]:
    """Errors that leave an order's fate unknown (timeout, lost answer): look it up."""
    return (*catching("RequestTimeout", "NetworkError"), TimeoutError)


class LockHeld(Exception):
    """Another process holds the account's writer lock."""


def private_dirs(path: Path) -> None:
    """`mkdir -p` with every directory it creates 0700 (pathlib's `parents=True` gives the
    intermediate ones the umask's mode): the state directory is its owner's alone."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)


def state_dir_problem(state_dir: Path) -> str | None:
    """Why protective actions could not write their state under `state_dir` (None: they can).

    Tried for real (a directory and a file are created and removed): permission bits do
    not tell about read-only mounts, /proc, or root (issue 13, `check`)."""
    created: list[Path] = []
    target = state_dir / "actions"
    try:
        for parent in reversed([target, *target.parents]):
            if not parent.exists():
                parent.mkdir(mode=0o700)
                created.append(parent)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        return f"{state_dir} is not writable ({(exc.strerror or type(exc).__name__).lower()})"
    finally:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


class AccountLock:
    """One writer per account: an exclusive, non-blocking `flock` on a file.

    The kernel drops the lock when the process dies, so a crashed daemon never leaves a stale
    lock behind (unlike a PID file); a second instance simply fails to take it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if free; True when this process now holds it."""
        if self._fd is not None:
            return True
        private_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let another instance take over (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def kill_switch_file(state_dir: Path, account: str) -> Path | None:
    """The PAUSE file that stops `account` (global first), or None if there is none."""
    for path in (state_dir / "PAUSE", state_dir / f"PAUSE.{account}"):
        if path.exists():
            return path
    return None


def market_rules(desk: OrderDesk, symbol: str, venue: str | None) -> MarketRules:
    """Step and minimums of `symbol` from ccxt's market structure (the step as the desk's
    `precision_mode` says to read it, venues/orders.py `amount_step`)."""
    market = desk.market(symbol)
    step = amount_step(market, desk.precision_mode)
    limits = market.get("limits") or {}
    min_amount = float((limits.get("amount") or {}).get("min") or 0.0)
    min_cost = float((limits.get("cost") or {}).get("min") or 0.0)
    return MarketRules(
        amount_step=step,
        min_amount=min_amount,
        min_notional=min_cost,
        min_notional_reduce_only_exempt=min_notional_exempt(venue),
    )


@dataclass
class _State:
    """What survives a restart, per account (`<state_dir>/actions/<account>.json`)."""

    episode: str | None = None
    step: int = 0
    last_step_at: float | None = None
    day: int = 0
    spent_today: float = 0.0
    halted: str | None = None  # why the episode stopped acting (a venue rejection)
    pending: list[dict[str, Any]] = field(default_factory=list)  # {client_id, symbol, amount}

    @property
    def history(self) -> ActionHistory:
        return ActionHistory(
            self.last_step_at, self.day, self.spent_today, in_episode=self.episode is not None
        )


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
        audit / publish / alert: the audit trail, the MQTT action topic, the alert hook.
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
        audit: Audit | None = None,
        publish: Publish | None = None,
        alert: Alert | None = None,
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
        self.audit_hook = audit
        self.publish_hook = publish
        self.alert_hook = alert
        #: called once per venue rejection (account, text); the daemon raises an alert
        self.reject_hook: Alert | None = None
        #: why protective actions cannot run at all (the state directory is not writable:
        #: no write-ahead order id, no lock), None while they can (issue 13)
        self.protection_disabled: str | None = None
        #: called with (account, reason) when that starts and (account, None) when it ends
        self.disabled_hook: Callable[[str, str | None], None] | None = None
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
        self._state_path = state_dir / "actions" / f"{account}.json"
        self.state = self._load()
        self._last_order_at = -math.inf
        self._last_skip: str | None = None
        self._last_alert: str | None = None
        self._quiet_until = -math.inf
        self._busy = asyncio.Lock()
        self.last_plan: ActionPlan | None = None
        self.orders_sent = 0
        #: used ratio / our model's ratio on the latest report (venue_ratio.py): > 1 when
        #: the venue's own figure is above ours, so a plan on our model aims lower
        self.venue_bias = 1.0

    # --- persistence --------------------------------------------------------------------------

    def _load(self) -> _State:
        try:
            data = json.loads(self._state_path.read_text())
            # A halt is a decision about this run; restarting the daemon is how a person
            # clears it after fixing the cause (the rejection is in the audit trail).
            return _State(**{**data, "halted": None})
        except FileNotFoundError:
            return _State()
        except (ValueError, TypeError) as exc:
            # A corrupt state file must not stop protection; the venue lookups below make a
            # lost pending id harmless (a fresh read sees what any order did).
            log.warning("actions.state_unreadable", account=self.account, error=str(exc))
            return _State()

    def _save(self) -> None:
        private_dirs(self._state_path.parent)
        tmp = self._state_path.with_suffix(".tmp")
        # 0600 whatever the umask (outside systemd's UMask=0077): order ids, the episode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(self.state), sort_keys=True))
        os.replace(tmp, self._state_path)  # atomic: a crash leaves the old or the new file

    # --- reporting ----------------------------------------------------------------------------

    def record(self, kind: str, payload: Mapping[str, Any], now: float | None = None) -> None:
        at = self.clock() if now is None else now
        body = {"kind": kind, "account": self.account, "live": self.live, **payload}
        if self.state.episode is not None:
            body.setdefault("episode", self.state.episode)
        log.info(f"actions.{kind}", **{k: v for k, v in body.items() if k != "kind"})
        if self.audit_hook is not None:
            # the daemon wires the alert sink's record_action: audit trail, MQTT action topic
            # and margin_monitor_actions_total{outcome} in one call (sinks/alerts.py)
            self.audit_hook(self.account, kind, body, at)
        if self.publish_hook is not None:
            self.publish_hook(self.account, body)

    def skip(self, reason: str, now: float, **extra: Any) -> None:
        """Audit a skipped step once per distinct reason (not on every tick)."""
        if reason != self._last_skip:
            self._last_skip = reason
            self.record("skipped", {"reason": reason, **extra}, now)

    def _raise_alert(self, text: str) -> None:
        if text == self._last_alert:
            return  # the same condition again: one alert, not one per report
        self._last_alert = text
        log.error("actions.alert", account=self.account, text=text)
        if self.alert_hook is not None:
            self.alert_hook(self.account, text)

    # --- switches -----------------------------------------------------------------------------

    def pause_reason(self, now: float) -> str | None:
        """Why orders must not be sent now (None: they may)."""
        if self.settings.paused:
            return "kill switch: actions.paused = true in the configuration"
        path = kill_switch_file(self.state_dir, self.account)
        if path is not None:
            return f"kill switch: {path} exists"
        if self.switches is not None and self.switches.is_paused(self.account, now):
            return "paused by command (MQTT/HTTP pause)"
        return None

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
        self.record("resolved", {"ratio": rep.margin_ratio, "steps": self.state.step}, now)
        self.state.episode = None
        self.state.step = 0
        self.state.halted = None
        self._last_skip = None
        self._last_alert = None
        self._save()

    @property
    def busy(self) -> bool:
        """True while a step runs (a report arriving now is dropped, not queued)."""
        return self._busy.locked()

    async def on_report(self, rep: MarginReport, now: float) -> ActionPlan | None:
        """Take one protective step if `rep` calls for it; None when no step ran."""
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
            with urgent_requests():
                return await self._step(now)

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
                if self.disabled_hook is not None:
                    self.disabled_hook(self.account, reason)
            return False
        if self.protection_disabled is not None:
            self.protection_disabled = None
            log.warning("actions.protection_enabled", account=self.account)
            if self.disabled_hook is not None:
                self.disabled_hook(self.account, None)
        return True

    async def _step(self, now: float) -> ActionPlan | None:
        if not self._writable():
            return None
        if not self.lock.acquire():
            self.skip(
                "another instance holds the writer lock for this account",
                now,
                lock=str(self.lock.path),
            )
            return None
        if self.state.halted is not None:
            self.skip(f"halted: {self.state.halted}", now)
            return None
        if self.state.pending and not await self._settle_pending(now):
            return None  # _settle_pending chose how long to wait before the next lookup
        try:
            fresh: AccountSnapshot = await self.fresh_read()
        except Exception as exc:  # any failed read means: do not act
            self.skip(f"fresh read failed: {type(exc).__name__}: {exc}", now)
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
            self._raise_alert(f"protective plan refused (would increase exposure): {exc}")
            self.record("refused", {"reason": str(exc)}, now)
            return None
        self.last_plan = plan
        if not plan.orders:
            self.skip(
                plan.reason,
                now,
                decision=plan.decision,
                ratio=plan.ratio_before,
                flags=[asdict(f) for f in plan.flags],
            )
            if plan.flags:
                self._raise_alert(plan.reason)
            if plan.decision in ("nothing", "daily_cap"):
                self._quiet(now)
            return plan
        if self.state.episode is None:
            self.state.episode = f"{int(now * 1000):x}"
            self.state.step = 0
        self.state.step += 1
        self._last_skip = None
        self.record("planned", _plan_payload(plan, self.state.step), now)
        if plan.flags:
            self._raise_alert("; ".join(f"{f.symbol} {f.side}: {f.reason}" for f in plan.flags))
        paused = self.pause_reason(now)
        if not self.live or paused is not None:
            why = paused or "dry run: actions.enabled = false"
            for leg, order in enumerate(plan.orders):
                self.record(
                    "would_have",
                    {**_order_payload(order), "reason": why, "leg": leg, "step": self.state.step},
                    now,
                )
            self._advance(plan, now, sent=False)
            return plan
        prove_reduce_only(fresh, plan.orders)  # the plan's own check, once more, explicitly
        filled_any = False
        for leg, order in enumerate(plan.orders):
            outcome = await self._send(order, leg)
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
        self._save()

    async def _rate_limit(self) -> None:
        wait = self._last_order_at + self.settings.min_order_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_order_at = time.monotonic()

    async def _send(self, order: PlannedOrder, leg: int) -> str:
        """Send one order and follow it to a final state; returns the outcome."""
        assert self.state.episode is not None
        cid = client_order_id(self.account, self.state.episode, self.state.step, leg, self.venue)
        params = order_params(order, self.venue, cid)
        await self._rate_limit()
        pending = {
            "client_id": cid,
            "symbol": order.symbol,
            "amount": order.amount,
            "sent_at": self.clock(),
        }
        self.state.pending.append(pending)
        self._save()  # write-ahead: a crash after the send still knows the id
        payload = {
            **_order_payload(order),
            "client_id": cid,
            "leg": leg,
            "step": self.state.step,
            "params": params,
        }
        self.record("sent", payload)
        try:
            placed = await self.desk.create_order(
                order.symbol, "market", order.side, order.amount, None, params
            )
        except _transport() as exc:
            try:
                found = await self._lookup(cid, order.symbol)
            except catching("BaseError") as lookup_error:
                log.warning("actions.lookup_failed", client_id=cid, error=str(lookup_error))
                found = None
            if found is None:
                self.record("unconfirmed", {**payload, "error": f"{type(exc).__name__}: {exc}"})
                self._raise_alert(
                    f"order {cid} on {order.symbol}: no answer from the venue ({exc}); "
                    "not re-sent, it will be looked up by client id before the next step"
                )
                return "unconfirmed"
            placed = found
        except catching(*_REJECTIONS) as exc:
            self.state.pending.remove(pending)
            self.state.halted = f"{order.symbol}: venue rejected the order ({type(exc).__name__})"
            self._save()
            self.record("rejected", {**payload, "error": f"{type(exc).__name__}: {exc}"})
            text = (
                f"protective order on {order.symbol} rejected by the venue: "
                f"{type(exc).__name__}: {exc}. Actions for this account are halted until the "
                "ratio is back at the target or the daemon is restarted."
            )
            self._raise_alert(text)
            if self.reject_hook is not None:
                # an `action_rejected` alert through the outbox (sinks/actions.py)
                self.reject_hook(self.account, text)
            return "rejected"
        self.orders_sent += 1
        final = await self._follow(placed, order.symbol)
        self.state.pending.remove(pending)
        self._save()
        return self._outcome(final, order, payload)

    def _outcome(
        self, final: Mapping[str, Any], order: PlannedOrder, payload: Mapping[str, Any]
    ) -> str:
        filled = float(final.get("filled") or 0.0)
        status = str(final.get("status"))
        body = {
            **payload,
            "order_id": final.get("id"),
            "status": status,
            "filled": filled,
            "average": final.get("average"),
        }
        if filled >= order.amount * (1 - 1e-9):
            self.record("filled", body)
            return "filled"
        if filled > 0:
            self.record("partial", body)
            return "partial"
        self.record("not_filled", body)
        return "not_filled"

    async def _follow(self, placed: Mapping[str, Any], symbol: str) -> Mapping[str, Any]:
        """Wait for a final state until `order_timeout`, then cancel what is left."""
        order: Mapping[str, Any] = placed
        deadline = time.monotonic() + self.settings.order_timeout
        while order.get("status") not in ("closed", "canceled", "expired", "rejected"):
            if time.monotonic() >= deadline:
                with contextlib.suppress(*catching("OrderNotFound", "InvalidOrder")):
                    order = await self.desk.cancel_order(str(order["id"]), symbol)
                with contextlib.suppress(*catching("BaseError")):
                    order = await self.desk.fetch_order(str(order["id"]), symbol)
                break
            await asyncio.sleep(_POLL)
            try:
                order = await self.desk.fetch_order(str(order["id"]), symbol)
            except catching("BaseError") as exc:
                log.warning("actions.fetch_order_failed", error=str(exc))
        return order

    async def _lookup(self, cid: str, symbol: str) -> dict[str, Any] | None:
        """Find an order by client id: open orders first, then the venue's own lookup."""
        with contextlib.suppress(*catching("BaseError")):
            for o in await self.desk.fetch_open_orders(symbol):
                if o.get("clientOrderId") == cid:
                    return o
        return await self.desk.find_order(cid, symbol)

    async def _settle_pending(self, now: float) -> bool:
        """Resolve orders left from a crash or timeout; True when none is still unknown."""
        for pending in list(self.state.pending):
            cid, symbol = str(pending["client_id"]), str(pending["symbol"])
            try:
                found = await self._lookup(cid, symbol)
            except catching("BaseError") as exc:
                self.skip(f"cannot look up pending order {cid}: {exc}", now)
                self._quiet(now)
                return False
            if found is not None:
                final = await self._follow(found, symbol)
                self.record(
                    "recovered",
                    {
                        "client_id": cid,
                        "symbol": symbol,
                        "status": final.get("status"),
                        "filled": final.get("filled"),
                    },
                    now,
                )
            elif (left := self._in_flight_left(pending)) > 0:
                # Not at the venue YET: a request the client timed out on is still executed
                # if it lands within its signature window (fault matrix, docs/benchmarks.md). Look
                # again when the window closes, not a full quiet period later: protection
                # waits on this answer.
                self.skip(
                    f"pending order {cid} not found yet; it may still reach the venue",
                    now,
                    client_id=cid,
                )
                self._quiet(now, min(left, max(self.policy.cooldown, _QUIET)))
                return False
            else:
                self.record("pending_absent", {"client_id": cid, "symbol": symbol}, now)
            self.state.pending.remove(pending)
            self._save()
        return True

    def _in_flight_left(self, pending: Mapping[str, Any]) -> float:
        """Seconds until a pending order can no longer reach the venue (<= 0: it cannot)."""
        sent_at = float(pending.get("sent_at") or 0.0)
        return sent_at + self._in_flight_for() - self.clock()

    def _in_flight_for(self) -> float:
        """Seconds after sending during which an unanswered order may still be executed.

        The venue accepts a signed request until `recvWindow` after its timestamp (Binance,
        Bybit; Binance: a 5xx means "execution status is UNKNOWN and could have been a
        success"), so "not found" proves nothing before that. Without a window, ccxt's
        timeout bounds the request's life. The sim answers in-process: no window.
        """
        window = self.desk.in_flight_window()
        return 0.0 if window is None else window + _SKEW

    async def _confirm(self, plan: ActionPlan) -> None:
        """Re-read and check the ratio really improved (a fill at a bad price may not)."""
        try:
            after = report(await self.fresh_read()).margin_ratio
        except Exception as exc:  # the step is done; only the check failed
            self.record("unverified", {"error": str(exc)})
            return
        improved = after < plan.ratio_before
        self.record(
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
            self._raise_alert(
                f"protective step did not improve the ratio ({plan.ratio_before:.4f} -> "
                f"{after:.4f})"
            )

    def close(self) -> None:
        """Release the writer lock."""
        self.lock.release()


def _order_payload(order: PlannedOrder) -> dict[str, Any]:
    return {
        "symbol": order.symbol,
        "position_side": order.position_side,
        "side": order.side,
        "amount": order.amount,
        "notional": order.notional,
        "hedged": order.hedged,
    }


def _plan_payload(plan: ActionPlan, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "reason": plan.reason,
        "ratio_before": plan.ratio_before,
        "ratio_after_planned": plan.ratio_after,
        "target": plan.target_ratio,
        "reached": plan.reached,
        "capped": plan.capped,
        "orders": [_order_payload(o) for o in plan.orders],
        "flags": [asdict(f) for f in plan.flags],
    }
