"""The sim behind a network link: what lies between a daemon and a live venue, for tests.

`SimVenue` (monitor/sources/sim.py) is called in-process, so its answers never get lost and
an order never arrives late. A live venue sits behind a link where both happen, and the
executor's order paths exist for exactly that (docs/actions.md): an answer lost after the
order executed, a request that reaches the venue after the client gave up on it (executed
if it lands within its signature window, Binance `recvWindow`, refused with -1021 after
it), a request that never reaches it (a 502 from the gateway), lookups failing while the
link is down. `WiredSim` adds that link around the sim's own matching engine, the way
tests/fakes/binance_orders.py adds it around the fake Binance: the sim still decides every
order (reduce-only, step, minimum, the position it closes); the link only delays, loses
or refuses to carry.

What a person does by hand at the venue (close part of a position, move money, cancel a
stop) is here too, since the sim has no user interface of its own.

Ground truth, as the fake Binance keeps it: every order that reached the matching engine
is in `arrived`, judged against the position held when it arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, replace
from typing import Any, Literal

from monitor.core.model import Position, Side
from monitor.sources.sim import SimVenue
from monitor.venues.errors import BaseError, InsufficientFunds, NetworkError, RequestTimeout

__all__ = ["Arrival", "WiredSim"]

Trouble = Literal["lose_answer", "unreachable"] | tuple[Literal["late"], float] | BaseError


@dataclass(frozen=True)
class Arrival:
    """One order as the venue's engine saw it on arrival (tests/fakes/binance_orders.py
    `OrderSeen`, in ccxt's unified names)."""

    client_id: str
    symbol: str
    side: str  # "buy" / "sell"
    amount: float
    reduce_only: bool
    position_before: float  # signed size of the position the order would reduce (0: none)
    accepted: bool
    trigger: float | None = None

    @property
    def increases(self) -> bool:
        """True when the order would open or grow a position."""
        if self.position_before == 0:
            return not self.reduce_only
        return (self.side == "buy") == (self.position_before > 0)

    @property
    def oversize(self) -> bool:
        """True when a closing order is larger than the position it closes."""
        return not self.increases and self.amount > abs(self.position_before) + 1e-12


class WiredSim(SimVenue):
    """`SimVenue` reached over a link with a client `timeout` and a signature window.

    `recv_window` None (the default) is the plain sim: answered in-process, nothing in
    flight. Troubles are queued per order request (`trouble`); lookups fail while
    `lookups_failing` is above zero (each failed call counts one down).
    """

    def __init__(
        self,
        *args: Any,
        timeout: float = 10.0,
        recv_window: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self.recv_window = recv_window
        self.troubles: collections.deque[Trouble] = collections.deque()
        self.lookups_failing = 0
        self.open_order_lists = 0
        self.arrived: list[Arrival] = []
        self.arrival = asyncio.Event()
        self.by_hand_at_arrival: list[tuple[str, Side, float]] = []
        self._late: set[asyncio.Task[None]] = set()

    # --- what a person does at the venue ---------------------------------------------------

    def hand_position(self, symbol: str, side: Side, contracts: float) -> None:
        """Set a position's size by hand (0 closes it; a new one opens at the mark)."""
        key = (symbol, side)
        held = self._positions.get(key)
        if contracts <= 0:
            self._positions.pop(key, None)
        elif held is not None:
            self._positions[key] = replace(held, contracts=contracts)
        else:
            mk, mark = self._markets[symbol], self._marks[symbol]
            self._positions[key] = Position(
                symbol,
                side,
                contracts,
                mark,
                mark,
                leverage=mk.leverage,
                tiers=mk.tiers,
                beta=mk.beta,
            )

    def hand_wallet(self, amount: float) -> None:
        """Set the settlement-currency wallet (a transfer in or out)."""
        currency = self._book.currency
        self._collateral[currency] = replace(self._collateral[currency], amount=amount)

    # --- the link ----------------------------------------------------------------------------

    def trouble(self, *troubles: Trouble) -> None:
        """Queue what happens to the next order requests, one each (an exception: the
        venue refuses the order with it)."""
        self.troubles.extend(troubles)

    def in_flight_window(self) -> float | None:
        """The link's signature window: a request may still execute until then."""
        return self.recv_window

    async def create_order(  # noqa: PLR0917 - ccxt's positional signature
        self,
        symbol: str,
        type: str,  # ccxt's own parameter name
        side: str,
        amount: float,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Carry the order over the link to the sim's engine, as the next trouble says."""
        trouble = self.troubles.popleft() if self.troubles else None
        order = (symbol, type, side, amount, price, params)
        if trouble == "unreachable":
            raise NetworkError("sim link: 502 Bad Gateway, the request never reached the venue")
        if isinstance(trouble, tuple):
            delay = trouble[1]
            if delay <= self.timeout:  # slow, but answered in time
                await asyncio.sleep(delay)
                return await self._engine(order)
            task = asyncio.get_running_loop().create_task(self._land_late(delay, order))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            await asyncio.sleep(self.timeout)
            raise RequestTimeout(f"sim link: no answer within {self.timeout} s")
        if isinstance(trouble, BaseError):
            self._arrive(order, self._held(symbol, side), accepted=False)
            raise trouble
        placed = await self._engine(order)
        if trouble == "lose_answer":
            await asyncio.sleep(self.timeout)  # the client waits its timeout, then gives up
            raise RequestTimeout("sim link: the answer was lost on the way back")
        return placed

    async def _land_late(self, delay: float, order: tuple[Any, ...]) -> None:
        await asyncio.sleep(delay)
        if self.recv_window is not None and delay > self.recv_window:
            # Binance -1021: "Timestamp for this request is outside of the recvWindow."
            self._arrive(order, self._held(order[0], order[2]), accepted=False)
            return
        with contextlib.suppress(BaseError):  # refused: recorded in `arrived`, nobody listens
            await self._engine(order)

    async def _engine(self, order: tuple[Any, ...]) -> dict[str, Any]:
        """The sim's own matching engine, with the arrival recorded."""
        symbol, type_, side, amount, price, params = order
        for hand_symbol, hand_side, contracts in self.by_hand_at_arrival:
            self.hand_position(hand_symbol, hand_side, contracts)
        self.by_hand_at_arrival.clear()
        before = self._held(symbol, side)  # judged before the order is applied
        try:
            placed = await super().create_order(symbol, type_, side, amount, price, params)
        except BaseError:
            self._arrive(order, before, accepted=False)
            raise
        self._arrive(order, before, accepted=True)
        return placed

    def _held(self, symbol: str, side: str) -> float:
        """Signed size of the position an order on `side` would reduce (0: none)."""
        reduces: Side = "long" if side == "sell" else "short"
        held = self._positions.get((symbol, reduces))
        return 0.0 if held is None else held.contracts * (1 if reduces == "long" else -1)

    def _arrive(self, order: tuple[Any, ...], before: float, *, accepted: bool) -> None:
        symbol, _, side, amount, _, params = order
        params = params or {}
        trigger = params.get("stopLossPrice") or params.get("triggerPrice")
        self.arrival.set()
        self.arrived.append(
            Arrival(
                client_id=str(params.get("clientOrderId", "")),
                symbol=symbol,
                side=side,
                amount=float(amount),
                reduce_only=bool(params.get("reduceOnly")),
                position_before=before,
                accepted=accepted,
                trigger=None if trigger is None else float(trigger),
            )
        )

    # --- lookups over the same link ------------------------------------------------------------

    def _lookup_fails(self) -> None:
        if self.lookups_failing > 0:
            self.lookups_failing -= 1
            raise NetworkError("sim link: 500 Internal Server Error")

    async def fetch_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:  # ccxt name
        """`SimVenue.fetch_order` over the link."""
        self._lookup_fails()
        return await super().fetch_order(id, symbol)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """`SimVenue.fetch_open_orders` over the link."""
        self.open_order_lists += 1
        self._lookup_fails()
        return await super().fetch_open_orders(symbol)

    async def find_order(self, client_id: str, symbol: str) -> dict[str, Any] | None:
        """`SimVenue.find_order` over the link."""
        self._lookup_fails()
        return await super().find_order(client_id, symbol)

    async def close(self) -> None:
        """Stop the stream and whatever is still travelling."""
        for task in list(self._late):
            task.cancel()
        await super().close()


def insufficient_margin() -> InsufficientFunds:
    """Binance -2019 as ccxt raises it."""
    return InsufficientFunds('binanceusdm {"code":-2019,"msg":"Margin is insufficient."}')
