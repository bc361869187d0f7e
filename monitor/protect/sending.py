"""One protective order from send to final state, and the orders left in flight.

The executor decides a step; this is how each of its orders reaches the venue (docs/actions.md):
the client id is written ahead, the order is sent rate limited, followed to a final state
(cancelled after `order_timeout`), and an order whose answer was lost is looked up by its
client id, never re-sent blindly (StandX-CLI #200: "refuses to resubmit an unconfirmed exit").
A lookup that finds nothing proves nothing while the request may still reach the venue (its
signature window, `OrderDesk.in_flight_window`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from monitor.config.actions import ActionsSettings
from monitor.core.plan import PlannedOrder
from monitor.protect.audit import ActionAudit, order_payload
from monitor.protect.desk import OrderDesk
from monitor.protect.state import ActionState, StateFile
from monitor.venues.errors import catching
from monitor.venues.orders import client_order_id, order_params

__all__ = ["OrderSender"]

log = structlog.get_logger("monitor.executor")

#: Seconds between two fetch_order polls while waiting for a fill.
_POLL = 0.02
#: Clock skew allowed between this host and the venue when judging a request's lifetime.
_SKEW = 1.0
#: Venue answers that are decisions about the order, not transport trouble: never retried.
_REJECTIONS = ("InsufficientFunds", "InvalidOrder", "BadRequest", "ExchangeError")


def _transport() -> tuple[type[BaseException], ...]:
    """Errors that leave an order's fate unknown (timeout, lost answer): look it up."""
    return (*catching("RequestTimeout", "NetworkError"), TimeoutError)


class OrderSender:
    """Sends one account's protective orders and settles the ones left pending.

    Args:
        desk: where orders go (protect/desk.py).
        state / state_file: the account's state; pending client ids are written ahead.
        audit: where every outcome goes (protect/audit.py).
        settings: `order_timeout` and `min_order_interval` of the `[actions]` section.
        venue: ccxt id (client id format, order params).
    """

    def __init__(
        self,
        desk: OrderDesk,
        state: ActionState,
        state_file: StateFile,
        audit: ActionAudit,
        settings: ActionsSettings,
        *,
        venue: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.desk = desk
        self.state = state
        self.state_file = state_file
        self.audit = audit
        self.settings = settings
        self.venue = venue
        self.clock = clock
        self.sent = 0
        self._last_order_at = -math.inf

    def _save(self) -> None:
        self.state_file.save(self.state)

    async def _rate_limit(self) -> None:
        wait = self._last_order_at + self.settings.min_order_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_order_at = time.monotonic()

    async def send(self, order: PlannedOrder, leg: int) -> str:
        """Send one order and follow it to a final state; returns the outcome."""
        assert self.state.episode is not None
        account = self.audit.account
        cid = client_order_id(account, self.state.episode, self.state.step, leg, self.venue)
        params = order_params(order, self.venue, cid)
        await self._rate_limit()
        pending = {
            "client_id": cid,
            "symbol": order.symbol,
            "amount": order.amount,
            "sent_at": self.clock(),
        }
        self.state.pending.append(pending)
        self.state_file.write_ahead(self.state)  # a crash after the send still knows the id
        payload = {
            **order_payload(order),
            "client_id": cid,
            "leg": leg,
            "step": self.state.step,
            "params": params,
        }
        self.audit.hold("sent", payload, log_now=True)
        try:
            try:
                placed = await self.desk.create_order(
                    order.symbol, "market", order.side, order.amount, None, params
                )
            finally:
                self.audit.flush()  # `planned`, `sent`: audited once the order has left
        except _transport() as exc:
            try:
                found = await self._lookup(cid, order.symbol)
            except catching("BaseError") as lookup_error:
                log.warning("actions.lookup_failed", client_id=cid, error=str(lookup_error))
                found = None
            if found is None:
                error = f"{type(exc).__name__}: {exc}"
                self.audit.record("unconfirmed", {**payload, "error": error})
                self.audit.alert(
                    f"order {cid} on {order.symbol}: no answer from the venue ({exc}); "
                    "not re-sent, it will be looked up by client id before the next step"
                )
                return "unconfirmed"
            placed = found
        except catching(*_REJECTIONS) as exc:
            self.state.pending.remove(pending)
            self.state.halted = f"{order.symbol}: venue rejected the order ({type(exc).__name__})"
            self._save()
            self.audit.record("rejected", {**payload, "error": f"{type(exc).__name__}: {exc}"})
            self.audit.rejected(
                f"protective order on {order.symbol} rejected by the venue: "
                f"{type(exc).__name__}: {exc}. Actions for this account are halted until the "
                "ratio is back at the target or the daemon is restarted."
            )
            return "rejected"
        self.sent += 1
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
            self.audit.record("filled", body)
            return "filled"
        if filled > 0:
            self.audit.record("partial", body)
            return "partial"
        self.audit.record("not_filled", body)
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

    async def settle_pending(self, now: float, quiet: float) -> float | None:
        """Resolve orders left from a crash or timeout.

        Returns None when none is still unknown, else the seconds to wait before the next
        lookup (`quiet` at most)."""
        for pending in list(self.state.pending):
            cid, symbol = str(pending["client_id"]), str(pending["symbol"])
            try:
                found = await self._lookup(cid, symbol)
            except catching("BaseError") as exc:
                self.audit.skip(f"cannot look up pending order {cid}: {exc}", now)
                return quiet
            if found is not None:
                final = await self._follow(found, symbol)
                self.audit.record(
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
                self.audit.skip(
                    f"pending order {cid} not found yet; it may still reach the venue",
                    now,
                    client_id=cid,
                )
                return min(left, quiet)
            else:
                self.audit.record("pending_absent", {"client_id": cid, "symbol": symbol}, now)
            self.state.pending.remove(pending)
            self._save()
        return None

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
