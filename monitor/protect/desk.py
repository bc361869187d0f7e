"""The order contract of the protective side: everything the executor and the backstop ask.

`OrderDesk` is implemented by a live account (`sources/exchange.py`, its venue's parameters
from `venues/orders.py`) and, fully, by the sim (`sources/sim.py`), so the executor's order
paths run the same on both: no caller reaches behind it to a ccxt object. The calls keep
ccxt's names, arguments and return structures (order dicts as in the ccxt manual, "Order
structure"; position dicts as in "Position structure"); errors are ccxt's own classes
(`ccxt.InvalidOrder`, `ccxt.OrderNotFound`, ...), raised by the sim too (docs/actions.md).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from monitor.core.plan import MarketRules
from monitor.sources.base import Source
from monitor.venues.orders import amount_step, min_notional_exempt

__all__ = ["OrderDesk", "TradingSource", "market_rules"]


@runtime_checkable
class OrderDesk(Protocol):
    """The whole order contract: ccxt-shaped calls (same names and arguments as ccxt's async
    API), and what a venue answers differently (stops, lookups, precision, in-flight time)."""

    #: the ccxt id of the venue whose conventions the desk follows (`binanceusdm`, `bybit`)
    venue: str

    async def create_order(  # noqa: PLR0917 - ccxt's positional signature
        self,
        symbol: str,
        type: str,  # ccxt's own parameter name, kept for drop-in compatibility
        side: str,
        amount: float,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Place an order; returns ccxt's unified order structure."""
        ...

    async def fetch_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        """One order by its venue id."""
        ...

    async def fetch_open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """Orders still working (resting limits, untriggered stops)."""
        ...

    async def cancel_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        """Cancel a working order; returns the order structure."""
        ...

    async def fetch_positions(self, symbols: list[str] | None = None) -> list[dict[str, Any]]:
        """Positions read fresh from the venue (ccxt position structures)."""
        ...

    def amount_to_precision(self, symbol: str, amount: float) -> str:
        """The amount truncated to the market's step, as ccxt returns it (a string)."""
        ...

    def market(self, symbol: str) -> dict[str, Any]:
        """The ccxt market structure: `precision`, `limits`, `contractSize`, ..."""
        ...

    @property
    def precision_mode(self) -> int | None:
        """ccxt's `precisionMode`: how `market()["precision"]["amount"]` is to be read."""
        ...

    async def find_order(self, client_id: str, symbol: str) -> dict[str, Any] | None:
        """Any order of ours by its client id, open or not (None: the venue has none)."""
        ...

    async def open_stops(self, symbol: str) -> list[dict[str, Any]]:
        """The trigger (stop) orders still resting on `symbol`."""
        ...

    async def cancel_stop(self, id: str, symbol: str) -> dict[str, Any]:
        """Cancel a resting trigger (stop) order."""
        ...

    def in_flight_window(self) -> float | None:
        """Seconds a sent, unanswered order may still be executed by the venue (its signed
        request's `recvWindow`, else the client timeout); None when orders are answered
        in-process (the sim) and an unanswered order cannot exist."""
        ...


@runtime_checkable
class TradingSource(Source, OrderDesk, Protocol):
    """A source that can also take orders (the sim; a live account with trading keys)."""


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
