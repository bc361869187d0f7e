"""Order endpoints for the fake Binance USDⓈ-M venue (engineer C's `FakeBinanceUsdm`).

Plugged into C's route table with `add_route`, so the account state stays C's and an order
moves the same positions and wallet that `/fapi/v3/positionRisk` and `/fapi/v3/account`
report. Wire formats and error codes from Binance's USDⓈ-M docs
(developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/New-Order,
Query-Order, Cancel-Order, Current-All-Open-Orders, New-Algo-Order, Cancel-Algo-Order,
Current-All-Algo-Open-Orders; error-code page):

- `-2022 ReduceOnly Order is rejected.`: a reduce-only order that would grow or open a position;
- `-1106 Parameter 'reduceOnly' sent when not required.`: reduceOnly in hedge mode;
- `-4061 Order's position side does not match user's setting.`;
- `-2013 Order does not exist.` (query), `-2011 Unknown order sent.` (cancel);
- `-4015 Client order id is not valid.`: a newClientOrderId already used by an open order;
- `-1021 Timestamp for this request is outside of the recvWindow.`: an order reaching the
  engine more than `recvWindow` (default 5 000 ms) after its `timestamp` (General Info,
  "Timing security"), so a late order can be executed only within its window.

Behaviour switches (`BinanceOrders` attributes): `reject` answers the next order with a
Binance error, `fill_fraction` < 1 leaves a market order partially filled until cancelled,
`lose_response` accepts and fills an order but answers only after `lose_for` seconds (the
client times out: "accepted, answer lost"), `late` holds the next order, received in full,
`late` seconds before the matching engine sees it (the client times out meanwhile and the
order is executed all the same: Binance, "HTTP 5XX ... the execution status is UNKNOWN").

Ground truth for the fault matrix (issue 7: "0 duplicate orders by client id, 0 orders that
increase a position"): every order is also recorded in `seen` with the position the venue
held when it arrived, before the order was applied, and whether it was accepted; the
answers still held back by `lose_response` are in `unanswered`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import json_response
from tests.fakes.binance import BinancePosition, FakeBinanceUsdm

__all__ = ["BinanceOrders", "OrderSeen", "install_orders"]


def _error(code: int, msg: str, status: int = 400) -> web.Response:
    return json_response({"code": code, "msg": msg}, status=status)


@dataclass(frozen=True)
class OrderSeen:
    """One order as the venue saw it on arrival, judged against the position held then."""

    client_id: str
    symbol: str
    side: str
    position_side: str
    quantity: float
    position_before: float  # signed amount of the position the order targets (0: none)
    accepted: bool
    error: int | None = None
    reduce_only: bool = False

    @property
    def increases(self) -> bool:
        """True when the order opens or grows a position (whether or not it was accepted)."""
        if self.position_side == "BOTH":
            if self.position_before == 0:
                # one-way mode, flat: an order opens a position unless it is reduce-only,
                # then it asks to close more than is held (`oversize`)
                return not self.reduce_only
            return (self.side == "BUY") == (self.position_before > 0)
        return (self.side == "BUY") == (self.position_side == "LONG")

    @property
    def oversize(self) -> bool:
        """True when a closing order is larger than the position it closes."""
        return not self.increases and self.quantity > abs(self.position_before) + 1e-12


@dataclass
class BinanceOrders:
    """The order book of one fake account, plus the switches tests flip."""

    fake: FakeBinanceUsdm
    taker_fee: float = 0.0005
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    algo_orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    received: list[dict[str, str]] = field(default_factory=list)
    algo_received: list[dict[str, str]] = field(default_factory=list)
    reject: tuple[int, str] | None = None
    fill_fraction: float = 1.0
    lose_response: bool = False
    lose_for: float = 3.0
    late: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    arrived_at: float = 0.0  # perf_counter() when the last order reached the handler (bench)
    seen: list[OrderSeen] = field(default_factory=list)
    unanswered: set[str] = field(default_factory=set)  # accepted, answer held by lose_response
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    @property
    def hedge_mode(self) -> bool:
        return any(side != "BOTH" for _, side in self.fake.account.positions)

    # --- orders -----------------------------------------------------------------------------

    async def new_order(self, request: web.Request) -> web.Response:
        p = dict(await request.post())
        params = {k: str(v) for k, v in p.items()}
        if self.late:
            delay, self.late = self.late, 0.0
            await asyncio.sleep(delay)  # queued past the client's timeout, then executed
        self.arrived_at = time.perf_counter()
        self.received.append(params)
        position_side = params.get("positionSide", "BOTH")
        held = self.fake.account.positions.get((params.get("symbol", ""), position_side))
        before = 0.0 if held is None else held.amount  # read before anything is applied
        self.arrived.set()
        cid = params.get("newClientOrderId", f"fake{next(self._ids)}")
        answer = self._place(params, cid)
        error = answer if isinstance(answer, tuple) else None
        code = None if error is None else error[0]
        seen = OrderSeen(
            client_id=cid,
            symbol=params.get("symbol", ""),
            side=params.get("side", ""),
            position_side=position_side,
            quantity=float(params.get("quantity") or 0.0),
            position_before=before,
            accepted=code is None,
            error=code,
            reduce_only=params.get("reduceOnly") == "true",
        )
        self.seen.append(seen)
        if error is not None:
            return _error(*error)
        assert isinstance(answer, dict)
        await self._announce(answer["symbol"], position_side)
        if self.lose_response:
            self.unanswered.add(cid)
            try:
                await asyncio.sleep(self.lose_for)
            finally:
                self.unanswered.discard(cid)
        return json_response(answer)

    def _place(self, params: dict[str, str], cid: str) -> dict[str, Any] | tuple[int, str]:
        """Validate and fill an order: the order row, or a Binance (code, msg) error."""
        if self.reject is not None:
            rejection, self.reject = self.reject, None
            return rejection
        stamp, window = params.get("timestamp"), params.get("recvWindow") or "5000"
        if stamp is not None and self.fake.now_ms() - int(stamp) > int(window):
            return (-1021, "Timestamp for this request is outside of the recvWindow.")
        symbol, side = params["symbol"], params["side"]
        qty = float(params["quantity"])
        reduce_only = params.get("reduceOnly") == "true"
        position_side = params.get("positionSide", "BOTH")
        if self.hedge_mode:
            if reduce_only:
                return (-1106, "Parameter 'reduceOnly' sent when not required.")
            if position_side == "BOTH":
                return (-4061, "Order's position side does not match user's setting.")
        elif position_side != "BOTH":
            return (-4061, "Order's position side does not match user's setting.")
        if any(o["clientOrderId"] == cid and o["status"] == "NEW" for o in self.orders.values()):
            return (-4015, "Client order id is not valid.")
        pos = self._position_reduced(symbol, side, position_side)
        closing = reduce_only or position_side != "BOTH"
        if closing and (pos is None or qty > abs(pos.amount) + 1e-12):
            return (-2022, "ReduceOnly Order is rejected.")
        if not closing:
            return (-2019, "Margin is insufficient.")  # this fake only closes
        order = self._order_row(params, cid, qty, position_side)
        self.orders[order["orderId"]] = order
        self._fill(order, qty * self.fill_fraction)
        return order

    def _position_reduced(
        self, symbol: str, side: str, position_side: str
    ) -> BinancePosition | None:
        pos = self.fake.account.positions.get((symbol, position_side))
        if pos is None:
            return None
        if position_side == "BOTH":
            grows = (side == "BUY") == (pos.amount > 0)
        else:
            grows = (side == "BUY") == (position_side == "LONG")
        return None if grows else pos

    def _order_row(self, params: dict[str, str], cid: str, qty: float, ps: str) -> dict[str, Any]:
        now = self.fake.now_ms()
        return {
            "orderId": next(self._ids),
            "symbol": params["symbol"],
            "status": "NEW",
            "clientOrderId": cid,
            "price": "0",
            "avgPrice": "0.00",
            "origQty": repr(qty),
            "executedQty": "0",
            "cumQty": "0",
            "cumQuote": "0",
            "timeInForce": "GTC",
            "type": params["type"],
            "reduceOnly": params.get("reduceOnly") == "true",
            "closePosition": False,
            "side": params["side"],
            "positionSide": ps,
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": params["type"],
            "priceMatch": "NONE",
            "selfTradePreventionMode": "NONE",
            "goodTillDate": 0,
            "time": now,
            "updateTime": now,
        }

    def _fill(self, order: dict[str, Any], qty: float) -> None:
        """Close `qty` at the mark: realised PnL minus the taker fee into the wallet."""
        account = self.fake.account
        key = (order["symbol"], order["positionSide"])
        pos = account.positions[key]
        qty = min(qty, abs(pos.amount))
        mark = account.marks[order["symbol"]]
        sign = 1.0 if pos.amount > 0 else -1.0
        account.wallet += sign * qty * (mark - pos.entry) - self.taker_fee * qty * mark
        remaining = pos.amount - sign * qty
        if abs(remaining) < 1e-12:
            del account.positions[key]
        else:
            pos.amount = remaining
        order["executedQty"] = repr(qty)
        order["cumQty"] = repr(qty)
        order["cumQuote"] = repr(qty * mark)
        order["avgPrice"] = repr(mark) if qty else "0.00"
        full = qty >= float(order["origQty"]) - 1e-12
        order["status"] = "FILLED" if full else ("PARTIALLY_FILLED" if qty else "NEW")
        order["updateTime"] = self.fake.now_ms()

    async def _announce(self, symbol: str, position_side: str) -> None:
        """ACCOUNT_UPDATE on the user stream, as a fill sends it (C's `set_position`)."""
        pos = self.fake.account.positions.get((symbol, position_side))
        if pos is None:
            await self.fake.set_position(symbol, 0.0, 0.0, position_side)
        else:
            await self.fake.set_position(symbol, pos.amount, pos.entry, position_side)

    def _find(self, query: Any) -> dict[str, Any] | None:
        if "orderId" in query:
            return self.orders.get(int(query["orderId"]))
        cid = query.get("origClientOrderId")
        return next((o for o in self.orders.values() if o["clientOrderId"] == cid), None)

    async def query_order(self, request: web.Request) -> web.Response:
        order = self._find(request.query)
        if order is None:
            return _error(-2013, "Order does not exist.")
        return json_response(order)

    async def cancel_order(self, request: web.Request) -> web.Response:
        order = self._find(request.query)
        if order is None or order["status"] not in ("NEW", "PARTIALLY_FILLED"):
            return _error(-2011, "Unknown order sent.")
        order["status"] = "CANCELED"
        order["updateTime"] = self.fake.now_ms()
        return json_response(order)

    async def open_orders(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        rows = [
            o
            for o in self.orders.values()
            if o["status"] in ("NEW", "PARTIALLY_FILLED")
            and (symbol is None or o["symbol"] == symbol)
        ]
        return json_response(rows)

    # --- algo (conditional) orders: stops live here since 2025 (docs/venues.md) ---------

    async def new_algo_order(self, request: web.Request) -> web.Response:
        params = {k: str(v) for k, v in (await request.post()).items()}
        self.algo_received.append(params)
        if params.get("algoType") != "CONDITIONAL":
            return _error(-1102, "Mandatory parameter 'algoType' was not sent.")
        now = self.fake.now_ms()
        algo_id = next(self._ids)
        row = {
            "algoId": algo_id,
            "clientAlgoId": params.get("clientAlgoId", f"algo{algo_id}"),
            "algoType": "CONDITIONAL",
            "orderType": params["type"],
            "symbol": params["symbol"],
            "side": params["side"],
            "positionSide": params.get("positionSide", "BOTH"),
            "timeInForce": "GTC",
            "quantity": params.get("quantity", "0"),
            "algoStatus": "NEW",
            "triggerPrice": params["triggerPrice"],
            "price": "0",
            "workingType": params.get("workingType", "CONTRACT_PRICE"),
            "priceMatch": "NONE",
            "closePosition": params.get("closePosition") == "true",
            "priceProtect": False,
            "reduceOnly": params.get("reduceOnly") == "true",
            "createTime": now,
            "updateTime": now,
            "triggerTime": 0,
            "goodTillDate": 0,
        }
        self.algo_orders[algo_id] = row
        return json_response(row)

    async def cancel_algo_order(self, request: web.Request) -> web.Response:
        algo_id = int(request.query.get("algoId", "0"))
        row = self.algo_orders.get(algo_id)
        if row is None or row["algoStatus"] != "NEW":
            return _error(-2011, "Unknown order sent.")
        row["algoStatus"] = "CANCELED"
        return json_response(
            {
                "algoId": algo_id,
                "clientAlgoId": row["clientAlgoId"],
                "code": "200",
                "msg": "success",
            }
        )

    async def open_algo_orders(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        rows = [
            o
            for o in self.algo_orders.values()
            if o["algoStatus"] == "NEW" and (symbol is None or o["symbol"] == symbol)
        ]
        return json_response(rows)

    # --- ground truth for the fault matrix -------------------------------------------------

    @property
    def duplicates(self) -> int:
        """Orders accepted under a client id the venue had already accepted once."""
        accepted = [o.client_id for o in self.seen if o.accepted]
        return len(accepted) - len(set(accepted))

    @property
    def resent_refused(self) -> int:
        """Re-sends the venue refused as a duplicate client id (-4015): not orders."""
        return sum(1 for o in self.seen if o.error == -4015)

    @property
    def increasing(self) -> int:
        """Orders that would open or grow a position, judged at their arrival."""
        return sum(1 for o in self.seen if o.increases)

    @property
    def oversized(self) -> int:
        """Closing orders larger than the position held at their arrival."""
        return sum(1 for o in self.seen if o.oversize)

    @property
    def working_stops(self) -> list[dict[str, Any]]:
        """Stops still resting at the venue."""
        return [o for o in self.algo_orders.values() if o["algoStatus"] == "NEW"]


def install_orders(fake: FakeBinanceUsdm) -> BinanceOrders:
    """Add the order routes to a fake Binance (before or after it started)."""
    book = BinanceOrders(fake)
    for method, path, handler in (
        ("POST", "/fapi/v1/order", book.new_order),
        ("GET", "/fapi/v1/order", book.query_order),
        ("DELETE", "/fapi/v1/order", book.cancel_order),
        ("GET", "/fapi/v1/openOrders", book.open_orders),
        ("POST", "/fapi/v1/algoOrder", book.new_algo_order),
        ("DELETE", "/fapi/v1/algoOrder", book.cancel_algo_order),
        ("GET", "/fapi/v1/openAlgoOrders", book.open_algo_orders),
    ):
        fake.add_route(method, path, fake.private(handler))
    return book
