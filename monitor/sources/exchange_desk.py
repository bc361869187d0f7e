"""The order desk of a live account (protect/desk.py `OrderDesk`): ccxt's calls as they are,
with the venue's parameters from venues/orders.py (queries, lookups by client id, stops).

A mixin of `ExchangeSource`, which owns the ccxt instance (`open`) and the venue id: the
executor and the backstop hold the account's source as their desk, so a live account and the
sim answer the same contract (docs/actions.md).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ccxt.base import errors as ccxt_errors

from monitor.venues.orders import TRIGGER, client_id_query, query_params

__all__ = ["LiveDesk"]


class LiveDesk:
    """ccxt-shaped order calls on the account's exchange (the executor owns the checks)."""

    venue: str
    exchange: Any

    async def open(self) -> Any:
        """The account's ccxt instance (ExchangeSource.open)."""
        raise NotImplementedError

    async def _ready(self) -> Any:
        exchange = await self.open()
        await exchange.load_markets()
        return exchange

    async def create_order(  # noqa: PLR0917 - ccxt's positional signature, kept for drop-in use
        self,
        symbol: str,
        type: str,  # ccxt's parameter name
        side: str,
        amount: float,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Place an order through ccxt (the executor owns the money-safety checks)."""
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.create_order(
            symbol, type, side, amount, price, params or {}
        )
        return order

    async def fetch_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.fetch_order(id, symbol, query_params(self.venue))
        return order

    async def find_order(self, client_id: str, symbol: str) -> dict[str, Any] | None:
        exchange = await self._ready()
        with contextlib.suppress(ccxt_errors.OrderNotFound):
            found: dict[str, Any] = await exchange.fetch_order(
                "", symbol, client_id_query(self.venue, client_id)
            )
            return found
        return None

    async def open_stops(self, symbol: str) -> list[dict[str, Any]]:
        exchange = await self._ready()
        rows: list[dict[str, Any]] = await exchange.fetch_open_orders(
            symbol, None, None, dict(TRIGGER)
        )
        return rows

    async def cancel_stop(self, id: str, symbol: str) -> dict[str, Any]:
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.cancel_order(id, symbol, dict(TRIGGER))
        return order

    async def fetch_open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        exchange = await self._ready()
        orders: list[dict[str, Any]] = await exchange.fetch_open_orders(symbol)
        return orders

    async def cancel_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.cancel_order(id, symbol)
        return order

    async def fetch_positions(self, symbols: list[str] | None = None) -> list[dict[str, Any]]:
        exchange = await self._ready()
        rows: list[dict[str, Any]] = await exchange.fetch_positions(symbols)
        return rows

    def amount_to_precision(self, symbol: str, amount: float) -> str:
        return str(self.exchange.amount_to_precision(symbol, amount))

    def market(self, symbol: str) -> dict[str, Any]:
        found: dict[str, Any] = self.exchange.market(symbol)
        return found

    @property
    def precision_mode(self) -> int | None:
        mode: int | None = None if self.exchange is None else self.exchange.precisionMode
        return mode

    def in_flight_window(self) -> float | None:
        exchange = self.exchange
        if exchange is None:
            return None
        window_ms = (exchange.options or {}).get("recvWindow") or exchange.timeout or 0
        return float(window_ms) / 1000.0
