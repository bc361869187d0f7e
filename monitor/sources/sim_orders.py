"""The sim's order rules and its ccxt structures. Pure: no clock, no state of the venue.

What the sim accepts and answers is the contract the executor is written against
(protect/desk.py), so it rejects what a venue rejects, with ccxt's class name
(`InvalidOrder`, from monitor/venues/errors.py, so a sim-only daemon never imports ccxt):
an order without `reduceOnly`, one in the direction that would grow the position, or one
larger than the position (Binance answers -2022 "ReduceOnly Order is rejected"); an amount
off the market's step or below its minimum. A limit or trigger (stop) order rests until the
mark crosses it (`crossed`). `sources/sim.py` keeps the orders and the account they fill.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from monitor.core.margin import report as margin
from monitor.core.model import Position, Side, base_asset
from monitor.sources.sim_book import SimMarket
from monitor.venues.errors import InvalidOrder

__all__ = [
    "EPS",
    "amount_to_precision",
    "ccxt_market",
    "ccxt_position",
    "check_order",
    "check_reduces",
    "crossed",
    "iso",
    "new_order",
    "reduced_side",
    "trigger_of",
]

EPS = 1e-12


def ccxt_market(mk: SimMarket, currency: str) -> dict[str, Any]:
    """ccxt market structure of a sim market."""
    symbol = mk.symbol
    base = base_asset(symbol)
    return {
        "id": symbol.split(":", 1)[0].replace("/", ""),
        "symbol": symbol,
        "base": base,
        "quote": currency,
        "settle": currency,
        "type": "swap",
        "swap": True,
        "linear": True,
        "inverse": False,
        "contract": True,
        "contractSize": 1.0,
        "precision": {"amount": mk.amount_step, "price": None},
        "limits": {"amount": {"min": mk.min_amount, "max": None}},
        "info": {},
    }


def amount_to_precision(step: float, amount: float) -> str:
    """Truncate to the market's step (ccxt's TRUNCATE mode), as a string like ccxt."""
    steps = math.floor(amount / step + 1e-9)
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{steps * step:.{decimals}f}"


def ccxt_position(p: Position, now: float) -> dict[str, Any]:
    """ccxt position structure of a sim position, read at `now`."""
    return {
        "symbol": p.symbol,
        "side": p.side,
        "contracts": p.contracts,
        "contractSize": p.contract_size,
        "entryPrice": p.entry_price,
        "markPrice": p.mark_price,
        "notional": p.contracts * p.contract_size * p.mark_price,
        "unrealizedPnl": margin.pnl_at(p, p.mark_price),
        "leverage": p.leverage,
        "marginMode": p.margin_mode,
        "hedged": p.hedged,
        "timestamp": int(now * 1000),
        "datetime": iso(now),
        "info": {},
    }


def check_order(  # noqa: PLR0917 - ccxt's positional order arguments
    mk: SimMarket,
    type: str,  # ccxt's own parameter name
    side: str,
    amount: float,
    price: float | None,
    params: Mapping[str, Any],
) -> None:
    """Raise the `InvalidOrder` a venue would answer an order on `mk` with, if any, before
    looking at the position it would reduce (`check_reduces`)."""
    if type not in ("market", "limit"):
        raise InvalidOrder(f"sim: order type '{type}' is not supported (market, limit)")
    if side not in ("buy", "sell"):
        raise InvalidOrder(f"sim: side must be 'buy' or 'sell', not '{side}'")
    if not (isinstance(amount, int | float) and math.isfinite(amount) and amount > 0):
        raise InvalidOrder(f"sim: amount must be a positive number, not {amount!r}")
    if amount < mk.min_amount - EPS:
        raise InvalidOrder(f"sim: amount {amount} is below the minimum {mk.min_amount}")
    if abs(amount / mk.amount_step - round(amount / mk.amount_step)) > 1e-6:
        raise InvalidOrder(f"sim: amount {amount} is not a multiple of the step {mk.amount_step}")
    if type == "limit" and (price is None or not math.isfinite(price) or price <= 0):
        raise InvalidOrder("sim: a limit order needs a positive price")
    if not params.get("reduceOnly", False):
        raise InvalidOrder(
            "sim: only reduce-only orders are accepted (params={'reduceOnly': True})"
        )


def check_reduces(target: Position | None, symbol: str, side: str, amount: float) -> Position:
    """`target`, the position a reduce-only `side` order of `amount` reduces; the venue's
    rejection when there is none (it would grow one) or the order is larger."""
    if target is None:
        raise InvalidOrder(
            f"sim: ReduceOnly Order is rejected: a {side} order would increase or open a "
            f"position in {symbol}"
        )
    if amount > target.contracts + EPS:
        raise InvalidOrder(
            f"sim: ReduceOnly Order is rejected: amount {amount} exceeds the {target.side} "
            f"position of {target.contracts} {symbol}"
        )
    return target


def reduced_side(side: str) -> Side:
    """The position side an order on `side` reduces (a sell reduces a long)."""
    return "long" if side == "sell" else "short"


def new_order(
    order_id: str,
    *,
    client_id: object,
    now: float,
    symbol: str,
    type: str,  # ccxt's own parameter name
    side: str,
    amount: float,
    price: float | None,
    trigger: float | None,
    position_side: Side,
) -> dict[str, Any]:
    """A new, open reduce-only order as ccxt's order structure."""
    return {
        "id": order_id,
        "clientOrderId": None if client_id is None else str(client_id),
        "timestamp": int(now * 1000),
        "datetime": iso(now),
        "lastTradeTimestamp": None,
        "status": "open",
        "symbol": symbol,
        "type": type,
        "timeInForce": "GTC" if type == "limit" else "IOC",
        "side": side,
        "price": price,
        "average": None,
        "amount": float(amount),
        "filled": 0.0,
        "remaining": float(amount),
        "cost": 0.0,
        "triggerPrice": trigger,
        "stopPrice": trigger,
        "reduceOnly": True,
        "positionSide": position_side,
        "fee": None,
        "trades": [],
        "info": {"positionSide": position_side.upper()},
    }


def crossed(order: Mapping[str, Any], mark: float) -> bool:
    """Whether a resting limit or stop order executes at `mark`."""
    trigger = order["triggerPrice"]
    if trigger is not None:
        # a stop-loss fires when the mark moves through it against the position
        return bool(mark <= trigger if order["side"] == "sell" else mark >= trigger)
    limit = order["price"]
    return bool(mark >= limit if order["side"] == "sell" else mark <= limit)


def trigger_of(params: Mapping[str, Any]) -> float | None:
    """The order's trigger price (ccxt spells it three ways), None for a plain order."""
    for key in ("triggerPrice", "stopPrice", "stopLossPrice"):
        value = params.get(key)
        if value is not None:
            price = float(value)
            if not (math.isfinite(price) and price > 0):
                raise InvalidOrder(f"sim: {key} must be a positive price, not {value!r}")
            return price
    return None


def iso(ts: float) -> str:
    """ccxt's `datetime` field: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
