"""Order endpoints for the fake Bybit v5 venue (engineer C's `FakeBybit`).

Plugged into C's route table with `add_route`; an order moves the same positions and wallet
that `/v5/position/list` and `/v5/account/wallet-balance` report. Wire formats from Bybit's v5
docs (bybit-exchange.github.io/docs/v5/order/create-order, /order/open-order (`realtime`),
/order/cancel-order) and its error-code table:

- `110017` "current position is zero, cannot fix reduce-only order qty" (reduce-only that
  would open or grow a position);
- `110007` "ab not enough for new order" (insufficient balance);
- `110001` "order not exists or too late to cancel".

`GET /v5/order/realtime` with `orderId` or `orderLinkId` answers that order whatever its
status (Bybit keeps recent closed orders there); without either, only open orders.
`lose_response` fills an order but answers too late for the client ("accepted, answer lost").
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import json_response
from tests.fakes.bybit import FakeBybit, _ms, ok

__all__ = ["BybitOrders", "install_orders"]


def _error(code: int, msg: str) -> web.Response:
    return json_response(
        {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": _ms()}
    )


@dataclass
class BybitOrders:
    """The order book of one fake Bybit account, plus the switches tests flip."""

    fake: FakeBybit
    taker_fee: float = 0.00055
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    reject: tuple[int, str] | None = None
    lose_response: bool = False  # accept and fill, but answer only after `lose_for` seconds
    lose_for: float = 2.0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(5000))

    async def create(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text())
        self.received.append(body)
        if self.reject is not None:
            code, msg = self.reject
            self.reject = None
            return _error(code, msg)
        symbol, side, qty = body["symbol"], body["side"], float(body["qty"])
        idx = int(body.get("positionIdx", 0))
        pos = self.fake.account.positions.get((symbol, idx))
        closing = body.get("reduceOnly") is True or idx in (1, 2)
        if not closing:
            return _error(110007, "ab not enough for new order")  # this fake only closes
        if pos is None or pos.side == side or qty > pos.size + 1e-12:
            return _error(110017, "current position is zero, cannot fix reduce-only order qty")
        order_id = f"{next(self._ids)}-bybit"
        mark = self.fake.account.marks[symbol]
        sign = 1.0 if pos.side == "Buy" else -1.0
        self.fake.account.wallet += sign * qty * (mark - pos.entry) - self.taker_fee * qty * mark
        await self.fake.set_position(symbol, pos.side, pos.size - qty, pos.entry, idx)
        now = str(_ms())
        self.orders[order_id] = {
            "orderId": order_id,
            "orderLinkId": body.get("orderLinkId", ""),
            "symbol": symbol,
            "price": "0",
            "qty": repr(qty),
            "side": side,
            "positionIdx": idx,
            "orderStatus": "Filled",
            "avgPrice": repr(mark),
            "leavesQty": "0",
            "cumExecQty": repr(qty),
            "cumExecValue": repr(qty * mark),
            "cumExecFee": repr(self.taker_fee * qty * mark),
            "timeInForce": "IOC",
            "orderType": "Market",
            "reduceOnly": body.get("reduceOnly") is True,
            "closeOnTrigger": False,
            "triggerPrice": "",
            "createdTime": now,
            "updatedTime": now,
        }
        if self.lose_response:
            await asyncio.sleep(self.lose_for)
        return ok({"orderId": order_id, "orderLinkId": body.get("orderLinkId", "")})

    async def realtime(self, request: web.Request) -> web.Response:
        q = request.query
        rows = list(self.orders.values())
        if q.get("orderId"):
            rows = [o for o in rows if o["orderId"] == q["orderId"]]
        elif q.get("orderLinkId"):
            rows = [o for o in rows if o["orderLinkId"] == q["orderLinkId"]]
        else:
            rows = [o for o in rows if o["orderStatus"] in ("New", "PartiallyFilled")]
        if q.get("symbol"):
            rows = [o for o in rows if o["symbol"] == q["symbol"]]
        return ok({"category": "linear", "list": rows, "nextPageCursor": ""})

    async def cancel(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text())
        order = self.orders.get(body.get("orderId", ""))
        if order is None or order["orderStatus"] not in ("New", "PartiallyFilled"):
            return _error(110001, "order not exists or too late to cancel")
        order["orderStatus"] = "Cancelled"
        return ok({"orderId": order["orderId"], "orderLinkId": order["orderLinkId"]})


def install_orders(fake: FakeBybit) -> BybitOrders:
    """Add the order routes to a fake Bybit (before or after it started)."""
    book = BybitOrders(fake)
    fake.add_route("POST", "/v5/order/create", fake.private(book.create))
    fake.add_route("GET", "/v5/order/realtime", fake.private(book.realtime))
    fake.add_route("POST", "/v5/order/cancel", fake.private(book.cancel))
    return book
