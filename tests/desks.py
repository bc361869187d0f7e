"""Two order desks behind one test interface: the executor's order paths run on both (issue 17).

- `ccxt`: an `ExchangeSource` on the fake Binance USDⓈ-M with its order routes
  (tests/fakes/binance.py, binance_orders.py): ccxt's own request building and parsing, the
  outside check.
- `sim`: the embedded venue (monitor/sources/sim.py) behind the link of
  tests/fakes/sim_wire.py: the desk a sim account trades on, with the sim's own engine.

Both hold the same account: one BTC/USDT:USDT long at 60 000 on a USDT wallet, Binance's
brackets (MM = notional x MMR - cum). What a test does to the venue (a rejection, a lost
answer, a late or a lost request, a hand trade) and what it reads back (the orders that
reached the engine, the stops resting) go through `Desk`, so one test body runs on both.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Literal

from monitor.core.model import AccountSnapshot, Collateral
from monitor.protect.desk import OrderDesk
from monitor.sources.exchange import ExchangeSource
from monitor.sources.sim_book import DEMO_BOOK, SimBook
from tests.fakes.account import account_for
from tests.fakes.binance import (
    API_KEY,
    SECRET,
    BinancePosition,
    FakeBinanceUsdm,
    use_production_errors,
)
from tests.fakes.binance_orders import BinanceOrders, install_orders
from tests.fakes.sim_wire import Arrival, WiredSim, insufficient_margin

__all__ = ["BTC", "DESKS", "Desk", "open_desk"]

BTC = "BTC/USDT:USDT"
ORDER = "/fapi/v1/order"
#: the two desks every order-path test runs on
DESKS = ("ccxt", "sim")

Refusal = Literal["margin", "reduce_only"]


class Desk:
    """One venue as the order-path tests drive and read it."""

    kind: str
    #: what the daemon passes the executor as `venue` for this desk
    venue: str
    desk: OrderDesk

    def __init__(self) -> None:
        self.reads = 0

    async def fresh_read(self) -> AccountSnapshot:
        """The executor's fresh read (counted: a quiet executor must not poll)."""
        self.reads += 1
        return await self.desk.fetch_snapshot()  # type: ignore[attr-defined, no-any-return]

    def arrived(self) -> list[Arrival]:
        """Orders (not stops) that reached the matching engine, accepted or not."""
        raise NotImplementedError

    def stops_arrived(self) -> list[Arrival]:
        """Stop orders that reached the venue."""
        raise NotImplementedError

    async def working_stops(self) -> list[dict[str, Any]]:
        """The stops resting on BTC (ccxt order structures)."""
        return await self.desk.open_stops(BTC)

    def lookups(self) -> int:
        """How many times the open orders were listed (the first step of a lookup by
        client id; a filled market order needs none)."""
        raise NotImplementedError

    def hand_position(self, contracts: float) -> None:
        """A person resizes (0: closes) the BTC long at the venue."""
        raise NotImplementedError

    def hand_wallet(self, amount: float) -> None:
        """A person moves money: the USDT wallet is now `amount`."""
        raise NotImplementedError

    def refuse_next(self, why: Refusal) -> None:
        """The venue refuses the next order: margin (-2019) or reduce-only (-2022)."""
        raise NotImplementedError

    def lose_next_answer(self) -> None:
        """The next order executes; its answer never comes back within the client timeout."""
        raise NotImplementedError

    async def order_arrived(self) -> None:
        """Wait until an order reached the engine."""
        raise NotImplementedError

    def fail_lookups(self, times: int) -> None:
        """The next `times` order lookups fail (the link is down)."""
        raise NotImplementedError

    def late_next(self, seconds: float) -> None:
        """The next order reaches the engine `seconds` after it was sent."""
        raise NotImplementedError

    def unreachable_next(self) -> None:
        """The next order never reaches the venue (a gateway error)."""
        raise NotImplementedError

    def link_ok(self) -> None:
        """No more trouble on the link."""
        raise NotImplementedError

    def set_timeout(self, seconds: float) -> None:
        """The client's request timeout."""
        raise NotImplementedError

    def set_window(self, seconds: float) -> None:
        """The signature window of a request (`recvWindow`)."""
        raise NotImplementedError


class CcxtDesk(Desk):
    """ccxt on the fake Binance USDⓈ-M."""

    kind = "ccxt"
    venue = "binanceusdm"

    def __init__(self, fake: FakeBinanceUsdm, book: BinanceOrders, src: ExchangeSource) -> None:
        super().__init__()
        self.fake, self.book, self.src = fake, book, src
        self.desk = src

    def arrived(self) -> list[Arrival]:
        """`BinanceOrders.seen` in unified names."""
        return [
            Arrival(
                client_id=o.client_id,
                symbol=BTC if o.symbol == "BTCUSDT" else o.symbol,
                side=o.side.lower(),
                amount=o.quantity,
                reduce_only=o.reduce_only,
                position_before=o.position_before,
                accepted=o.accepted,
            )
            for o in self.book.seen
        ]

    def stops_arrived(self) -> list[Arrival]:
        """`POST /fapi/v1/algoOrder` requests in unified names."""
        return [
            Arrival(
                client_id=p.get("clientAlgoId", ""),
                symbol=BTC if p.get("symbol") == "BTCUSDT" else p.get("symbol", ""),
                side=p.get("side", "").lower(),
                amount=float(p.get("quantity") or 0.0),
                reduce_only=p.get("reduceOnly") == "true",
                position_before=0.0,
                accepted=True,
                trigger=float(p["triggerPrice"]),
            )
            for p in self.book.algo_received
        ]

    def lookups(self) -> int:
        """`GET /fapi/v1/openOrders` requests."""
        return self.fake.count("/fapi/v1/openOrders")

    def hand_position(self, contracts: float) -> None:
        """Resize or close the fake's BTCUSDT one-way position."""
        key = ("BTCUSDT", "BOTH")
        if contracts <= 0:
            self.fake.account.positions.pop(key, None)
        elif key in self.fake.account.positions:
            self.fake.account.positions[key].amount = contracts
        else:
            self.fake.account.positions[key] = BinancePosition("BTCUSDT", contracts, 60_000.0)

    def hand_wallet(self, amount: float) -> None:
        """Set the fake's USDT wallet."""
        self.fake.account.wallet = amount

    def refuse_next(self, why: Refusal) -> None:
        """Binance's own error codes, as the fake answers them."""
        self.book.reject = (
            (-2019, "Margin is insufficient.")
            if why == "margin"
            else (-2022, "ReduceOnly Order is rejected.")
        )

    def lose_next_answer(self) -> None:
        """The fake fills and answers only after 1.5 s."""
        self.book.lose_response = True
        self.book.lose_for = 1.5

    async def order_arrived(self) -> None:
        """The fake's arrival event."""
        await self.book.arrived.wait()

    def fail_lookups(self, times: int) -> None:
        """HTTP 500 on the order query and the open-orders list."""
        self.fake.fail(ORDER, 500, "", times=times)
        self.fake.fail("/fapi/v1/openOrders", 500, "", times=times)

    def late_next(self, seconds: float) -> None:
        """The request body is received, the engine sees it `seconds` later."""
        self.book.late = seconds

    def unreachable_next(self) -> None:
        """A 502 from the gateway: the order never reached the venue."""
        self.fake.fail(ORDER, 502, "")

    def link_ok(self) -> None:
        """Answers on time, no faults."""
        self.book.lose_response = False
        self.fake.clear_faults()

    def set_timeout(self, seconds: float) -> None:
        """ccxt's `timeout` (ms)."""
        self.src.exchange.timeout = int(seconds * 1000)

    def set_window(self, seconds: float) -> None:
        """ccxt's `recvWindow` option (ms), sent with every signed request."""
        self.src.exchange.options["recvWindow"] = int(seconds * 1000)


class SimDesk(Desk):
    """The sim's own engine behind a link."""

    kind = "sim"
    venue = "sim"  # what build_actions_sink passes for a sim account

    def __init__(self, sim: WiredSim) -> None:
        super().__init__()
        self.sim = sim
        self.desk = sim

    def arrived(self) -> list[Arrival]:
        """The sim's arrivals without the stops."""
        return [a for a in self.sim.arrived if a.trigger is None]

    def stops_arrived(self) -> list[Arrival]:
        """The sim's stop arrivals."""
        return [a for a in self.sim.arrived if a.trigger is not None]

    def lookups(self) -> int:
        """`fetch_open_orders` calls over the link."""
        return self.sim.open_order_lists

    def hand_position(self, contracts: float) -> None:
        """A hand trade on the sim."""
        self.sim.hand_position(BTC, "long", contracts)

    def hand_wallet(self, amount: float) -> None:
        """A transfer on the sim."""
        self.sim.hand_wallet(amount)

    def refuse_next(self, why: Refusal) -> None:
        """Margin: the venue's refusal, carried back; reduce-only: the position is closed by
        hand just before the order lands, and the sim's engine refuses it itself."""
        if why == "margin":
            self.sim.trouble(insufficient_margin())
        else:
            self.sim.by_hand_at_arrival.append((BTC, "long", 0.0))

    def lose_next_answer(self) -> None:
        """Executed, the answer lost."""
        self.sim.trouble("lose_answer")

    async def order_arrived(self) -> None:
        """The sim's arrival event."""
        await self.sim.arrival.wait()

    def fail_lookups(self, times: int) -> None:
        """Lookups over the link fail."""
        self.sim.lookups_failing = times

    def late_next(self, seconds: float) -> None:
        """Delayed on the link."""
        self.sim.trouble(("late", seconds))

    def unreachable_next(self) -> None:
        """Lost on the link."""
        self.sim.trouble("unreachable")

    def link_ok(self) -> None:
        """No more trouble."""
        self.sim.troubles.clear()
        self.sim.lookups_failing = 0

    def set_timeout(self, seconds: float) -> None:
        """The link's client timeout."""
        self.sim.timeout = seconds

    def set_window(self, seconds: float) -> None:
        """The link's signature window."""
        self.sim.recv_window = seconds


def sim_book(wallet: float, btc: float) -> SimBook:
    """One BTC long at 60 000 (the demo book's BTC market and tiers) on a USDT wallet."""
    btc_market = next(m for m in DEMO_BOOK.markets if m.symbol == BTC)
    return SimBook(
        currency="USDT",
        markets=(replace(btc_market, price0=60_000.0),),
        positions=((BTC, "long", btc, 60_000.0),),
        collateral=(Collateral("USDT", wallet),),
    )


@contextlib.asynccontextmanager
async def open_desk(kind: str, *, wallet: float, btc: float) -> AsyncIterator[Desk]:
    """A desk of `kind` holding `btc` BTC long at 60 000 on `wallet` USDT."""
    if kind == "sim":
        sim = WiredSim("acct", book=sim_book(wallet, btc))
        try:
            yield SimDesk(sim)
        finally:
            await sim.close()
        return
    fake = FakeBinanceUsdm()
    fake.account.wallet = wallet
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", btc, 60_000.0)
    book = install_orders(fake)
    async with fake:
        account = account_for(fake, API_KEY, SECRET)
        account.ccxt["timeout"] = 2000
        src = ExchangeSource(account)
        try:
            await src.fetch_snapshot()  # load markets
            use_production_errors(src.exchange)  # ccxt.md §0.6: -2022 as InvalidOrder
            yield CcxtDesk(fake, book, src)
        finally:
            await src.close()
