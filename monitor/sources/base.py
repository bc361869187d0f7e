"""What the daemon needs from a venue: a stream of events, a fresh read, and an order desk.

Two small protocols instead of one large base class, so the sim (`sources/sim.py`) and a
live ccxt account (`sources/exchange.py`) share no code yet look the same to their users:

- `Source` feeds the daemon: `events()` is the live stream (prices, full position and
  balance reads, health events); `fetch_snapshot()` is a fresh full read used at start-up
  and whenever a caller must not trust the streamed view.
- `OrderDesk` is the order surface of the executor (docs/actions.md). It is deliberately the
  subset of ccxt's unified async API the executor uses, with ccxt's names, arguments and
  return structures (order dicts as in the ccxt manual, "Order structure"; position dicts
  as in "Position structure"), so one executor talks to a real `ccxt.pro` exchange object
  and to the sim without an adapter. Errors are ccxt's own classes (`ccxt.InvalidOrder`,
  `ccxt.OrderNotFound`, ...), raised by the sim too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from monitor.core.model import AccountSnapshot, Event

__all__ = ["OrderDesk", "Source", "TradingSource"]


@runtime_checkable
class Source(Protocol):
    """One account's data feed. `close()` must be safe to call more than once."""

    @property
    def account(self) -> str:
        """The configured account name, as used in every event."""
        ...

    def events(self) -> AsyncIterator[Event]:
        """The live stream; ends only when the source has nothing more to say (a replay)."""
        ...

    async def fetch_snapshot(self) -> AccountSnapshot:
        """A fresh full read of balances, positions and marks."""
        ...

    async def close(self) -> None:
        """Release connections and stop the stream."""
        ...


@runtime_checkable
class OrderDesk(Protocol):
    """The ccxt-shaped order surface (same names and arguments as ccxt's async API)."""

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


@runtime_checkable
class TradingSource(Source, OrderDesk, Protocol):
    """A source that can also take orders (the sim; a live account with trading keys)."""
