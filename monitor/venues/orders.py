"""Order parameters as each venue wants them: reduce-only orders, stops, client ids, queries.

Everything the protective side sends goes through ccxt's unified `create_order`; what differs
per venue is in the params, read from the venue's module (registry.venue_for): hedge mode's
`positionSide` (Binance family; the sim follows Binance), Binance's `workingType` for stops
and its reduce-only minimum-notional waiver, Bybit's `acknowledged` for order queries and its
`orderLinkId` for a lookup by client id, Hyperliquid's hex `cloid` (docs/venues.md,
docs/actions.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from monitor.core.model import Side
from monitor.core.plan import PlannedOrder
from monitor.venues.registry import venue_for

__all__ = [
    "TRIGGER",
    "amount_step",
    "client_id_query",
    "client_order_id",
    "hedge_params",
    "min_notional_exempt",
    "order_params",
    "query_params",
    "stop_client_id",
    "stop_params",
    "stop_stem",
]

#: ccxt's precisionMode values (ccxt/base/decimal_to_precision.py).
DECIMAL_PLACES = 2
SIGNIFICANT_DIGITS = 3
TICK_SIZE = 4

#: ccxt params that address a venue's trigger (stop) orders rather than its plain orders.
TRIGGER: Mapping[str, Any] = {"trigger": True}


def hedge_params(venue: str | None, position_side: Side) -> dict[str, Any]:
    """Hedge mode: ccxt's unified `hedged=True` with `reduceOnly` sets Binance's
    `positionSide` / Bybit's `positionIdx` to the position being closed; Binance-family venues
    (and the sim, which follows Binance) also get `positionSide` explicitly, so the intent is
    in the request, not derived from `side`."""
    params: dict[str, Any] = {"hedged": True}
    if venue in (None, "sim") or venue_for(venue).orders.hedge_position_side:
        params["positionSide"] = position_side.upper()
    return params


def order_params(order: PlannedOrder, venue: str | None, client_id: str) -> dict[str, Any]:
    """ccxt `create_order` params for a reduce-only market order (docs/venues.md).

    One-way mode: `reduceOnly` (Binance/Bybit/OKX map it); hedge mode: `hedge_params`.
    """
    params: dict[str, Any] = {"reduceOnly": True, "clientOrderId": client_id}
    if order.hedged:
        params.update(hedge_params(venue, order.position_side))
    return params


def stop_params(
    venue: str, side: Side, *, hedged: bool, client_id: str, trigger: float, working_type: str
) -> dict[str, Any]:
    """ccxt params of a reduce-only stop-market order (the backstop, docs/actions.md)."""
    params: dict[str, Any] = {
        "reduceOnly": True,
        "clientOrderId": client_id,
        "stopLossPrice": trigger,
    }
    if venue_for(venue).orders.stop_working_type:
        params["workingType"] = working_type  # trigger on mark, not last
    if hedged:
        params.update(hedge_params(venue, side))
    return params


def client_order_id(account: str, episode: str, step: int, leg: int, venue: str | None) -> str:
    """Deterministic client id for (account, episode, step, leg): a resend is a duplicate.

    32 characters of [a-z0-9] fit most venues' rules (Binance ≤ 36 `[.A-Z:/a-z0-9_-]`,
    Bybit orderLinkId ≤ 36, OKX clOrdId ≤ 32 alphanumeric); a venue with its own format
    (Hyperliquid's hex cloid) shapes the digest itself.
    """
    digest = hashlib.sha256(f"{account}|{episode}|{step}|{leg}".encode()).hexdigest()
    shape = venue_for(venue).orders.client_id
    return shape(digest) if shape is not None else "mm" + digest[:30]


def stop_client_id(account: str, symbol: str, side: Side, generation: int) -> str:
    """`ms<12 hex of (account, symbol, side)><generation:08d>`: ours, per position, ordered."""
    return "ms" + stop_stem(account, symbol, side) + f"{generation:08d}"


def stop_stem(account: str, symbol: str, side: Side) -> str:
    """The part of a stop's client id that names the position (`ms` + it + generation)."""
    return hashlib.sha256(f"{account}|{symbol}|{side}".encode()).hexdigest()[:12]


def query_params(venue: str | None) -> dict[str, Any]:
    """Extra ccxt params an order query needs on this venue (Bybit's `acknowledged`)."""
    return dict(venue_for(venue).orders.query)


def client_id_query(venue: str | None, client_id: str) -> dict[str, Any]:
    """ccxt `fetch_order` params that find an order by our client id.

    Binance: GET /fapi/v1/order?origClientOrderId= (ccxt maps `clientOrderId`); a venue
    with its own parameter names it (Bybit's `orderLinkId`).
    """
    return {venue_for(venue).orders.client_id_param: client_id, **query_params(venue)}


def min_notional_exempt(venue: str | None) -> bool:
    """Whether the venue waives the market's minimum notional for reduce-only orders
    (Binance -4164: "notional must be no smaller than 5 (unless you choose reduce only)")."""
    return venue_for(venue).orders.reduce_only_min_notional_exempt


def amount_step(market: Mapping[str, Any], precision_mode: int | None) -> float:
    """The amount step of a ccxt market structure.

    ccxt reports `precision.amount` as a step (TICK_SIZE) on most venues but as a number of
    decimals or significant digits on some (`precisionMode`), so it is converted here.
    """
    raw = (market.get("precision") or {}).get("amount")
    step = float(raw) if raw is not None else 1.0
    if precision_mode == DECIMAL_PLACES and raw is not None:
        step = 10.0 ** -int(raw)
    elif precision_mode == SIGNIFICANT_DIGITS:
        step = 1.0  # rare on derivatives venues; whole contracts are always accepted
    return step
