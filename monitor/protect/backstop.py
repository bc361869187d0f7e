"""The exchange-resident stop-loss backstop: protection that survives a daemon outage.

The daemon can only reduce while it runs; if the host dies during a sell-off nothing does.
So, optionally per account (`[actions.stop_loss] enabled = true`), one reduce-only stop
order per position rests AT THE VENUE, `distance` × mark before that position's liquidation
price (`PositionRisk.liquidation_price` of the report), so the venue closes it before its
own liquidation engine would (docs/actions.md: "keep an optional exchange-resident stop").

Rules that keep it from doing harm:
- exactly one stop per (symbol, side): a stop is *replaced* (cancel, then create) only when
  the wanted trigger moved by more than `move_step` (relative) or the position size changed,
  never stacked;
- client ids are deterministic: `ms` + a hash of (account, symbol, side) + a generation
  number, so after a restart the daemon recognises its own stops at the venue instead of
  placing duplicates, and never touches orders it did not place;
- what rests at the venue is reconciled by that client-id prefix at start and after every
  pause (issue 13): the newest stop of ours per position is adopted, older ones of ours
  are cancelled, one gone at the venue is forgotten, and a generation is never reused (a
  stop whose removal a pause blocked used to be forgotten while it still rested, and the
  next stop reused its client id; the leftover could close part of a new position);
- the stop is reduce-only and sized to the position (Binance USDⓈ-M conditional orders go to
  `POST /fapi/v1/algoOrder` in ccxt 4.5.90, docs/venues.md; listed and cancelled with
  ccxt's unified `{'trigger': True}`);
- it obeys the executor's switches and writer lock (dry run: audited as "would_have").
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from monitor.config.actions import StopLossSettings
from monitor.core.model import MarginReport, PositionRisk, Side
from monitor.core.plan import PlannedOrder, closing_side, stop_price
from monitor.venues.errors import catching
from monitor.venues.orders import stop_client_id, stop_params, stop_stem

if TYPE_CHECKING:
    from monitor.protect.executor import Executor

__all__ = ["StopBackstop"]

log = structlog.get_logger("monitor.backstop")


@dataclass
class _Stop:
    """A stop of ours resting at the venue."""

    order_id: str
    client_id: str
    generation: int
    trigger: float
    amount: float


class StopBackstop:
    """Keeps one venue-side stop per position of one account, moved with the liquidation price."""

    def __init__(self, executor: Executor, settings: StopLossSettings) -> None:
        self.ex = executor
        self.settings = settings
        self.stops: dict[tuple[str, Side], _Stop] = {}
        self._generation: dict[tuple[str, Side], int] = {}  # highest ever seen or used
        self._synced = False
        self._was_paused = False
        self.placed = 0
        self.cancelled = 0

    async def _sync(self, symbols: set[str], now: float) -> None:
        """Reconcile with what rests at the venue, recognised by our client-id prefix."""
        found: dict[tuple[str, Side], list[_Stop]] = {}
        sides: tuple[Side, ...] = ("long", "short")
        for symbol in sorted(symbols):
            for o in await self.ex.desk.open_stops(symbol):
                cid = str(o.get("clientOrderId") or "")
                for side in sides:
                    stem = "ms" + stop_stem(self.ex.account, symbol, side)
                    if cid.startswith(stem) and cid[len(stem) :].isdigit():
                        stop = _Stop(
                            str(o["id"]),
                            cid,
                            int(cid[len(stem) :]),
                            float(o.get("triggerPrice") or 0.0),
                            float(o.get("amount") or 0.0),
                        )
                        found.setdefault((symbol, side), []).append(stop)
        complete = True
        for key in {k for k in self.stops if k[0] in symbols} | set(found):
            mine = sorted(found.get(key, ()), key=lambda stop: stop.generation)
            if not mine:
                self.stops.pop(key, None)  # triggered or cancelled at the venue: place anew
                continue
            self._generation[key] = max(self._generation.get(key, 0), mine[-1].generation)
            self.stops[key] = mine[-1]
            for extra in mine[:-1]:  # a leftover of ours: exactly one stop per position
                what = {"symbol": key[0], "client_id": extra.client_id}
                if self._blocked(now, "cancel_stop", what):
                    complete = False
                    continue
                with contextlib.suppress(*catching("OrderNotFound")):
                    await self.ex.desk.cancel_stop(extra.order_id, key[0])
                self.cancelled += 1
                self.ex.audit.record(
                    "stop_cancelled",
                    {
                        "symbol": key[0],
                        "side": key[1],
                        "client_id": extra.client_id,
                        "reason": "leftover of ours",
                    },
                    now,
                )
        self._synced = complete

    # --- the maintenance step ----------------------------------------------------------------

    def wanted(self, risk: PositionRisk) -> float | None:
        """The trigger this position's stop should have (None: no liquidation price)."""
        liq = risk.liquidation_price
        if liq is None or not math.isfinite(liq) or liq <= 0 or risk.contracts <= 0:
            return None
        return stop_price(risk.side, liq, risk.mark_price, self.settings.distance)

    def _moved(self, stop: _Stop, trigger: float, amount: float) -> bool:
        far = abs(stop.trigger - trigger) > self.settings.move_step * trigger
        return far or not math.isclose(stop.amount, amount, rel_tol=1e-9)

    async def maintain(self, rep: MarginReport, now: float) -> int:
        """Bring the venue's stops in line with `rep`; returns how many orders changed."""
        if not self.ex.lock.acquire():
            return 0
        cross = [r for r in rep.positions if r.margin_mode == "cross" and r.contracts > 0]
        paused = self.ex.pause_reason(now) is not None
        if self._was_paused and not paused:
            self._synced = False  # after every pause: the venue may have moved on without us
        self._was_paused = paused
        if not self._synced:
            await self._sync({r.symbol for r in cross} | {k[0] for k in self.stops}, now)
        changes = 0
        live = {(r.symbol, r.side) for r in cross}
        for key in [k for k in self.stops if k not in live]:
            changes += await self._remove(key, "position closed", now)
        for r in cross:
            trigger = self.wanted(r)
            if trigger is None:
                continue
            current = self.stops.get((r.symbol, r.side))
            if current is not None and not self._moved(current, trigger, r.contracts):
                continue
            changes += await self._replace(r, trigger, current, now)
        return changes

    async def _remove(self, key: tuple[str, Side], why: str, now: float) -> int:
        stop = self.stops[key]
        if self._blocked(now, "cancel_stop", {"symbol": key[0], "client_id": stop.client_id}):
            return 0  # still resting: kept, so the cancel is retried when allowed
        with contextlib.suppress(*catching("OrderNotFound")):  # triggered or cancelled by hand
            await self.ex.desk.cancel_stop(stop.order_id, key[0])
        del self.stops[key]
        self.cancelled += 1
        body = {"symbol": key[0], "side": key[1], "client_id": stop.client_id, "reason": why}
        self.ex.audit.record("stop_cancelled", body, now)
        return 1

    def _blocked(self, now: float, what: str, payload: dict[str, Any]) -> bool:
        """True (and audited as would_have) when the switches forbid touching the venue."""
        paused = self.ex.pause_reason(now)
        if self.ex.live and paused is None:
            return False
        why = paused or "dry run: actions.enabled = false"
        self.ex.audit.skip(f"{what} not sent: {why}", now, **payload)
        return True

    async def _replace(
        self, r: PositionRisk, trigger: float, current: _Stop | None, now: float
    ) -> int:
        key = (r.symbol, r.side)
        used = max(self._generation.get(key, 0), 0 if current is None else current.generation)
        generation = used + 1  # never a client id used before, even for a new position
        cid = stop_client_id(self.ex.account, r.symbol, r.side, generation)
        payload = {
            "symbol": r.symbol,
            "side": r.side,
            "trigger": trigger,
            "liquidation_price": r.liquidation_price,
            "amount": r.contracts,
            "client_id": cid,
        }
        if self._blocked(now, "stop", payload):
            return 0
        changes = 0
        if current is not None:
            changes += await self._remove((r.symbol, r.side), "liquidation price moved", now)
        order = PlannedOrder(r.symbol, r.side, r.contracts, r.notional, r.hedged)
        params = stop_params(
            self.ex.venue or "",
            r.side,
            hedged=r.hedged,
            client_id=cid,
            trigger=trigger,
            working_type=self.settings.working_type,
        )
        try:
            placed = await self.ex.desk.create_order(
                r.symbol, "market", closing_side(r.side), order.amount, None, params
            )
        except catching("BaseError") as exc:
            self.ex.audit.record(
                "stop_rejected", {**payload, "error": f"{type(exc).__name__}: {exc}"}, now
            )
            return changes
        self.stops[key] = _Stop(str(placed["id"]), cid, generation, trigger, r.contracts)
        self._generation[key] = generation
        self.placed += 1
        self.ex.audit.record("stop_placed", payload, now)
        return changes + 1
