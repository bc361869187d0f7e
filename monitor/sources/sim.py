"""The embedded simulated venue: one cross-margined USDT account that streams and trades.

What `margin-monitor run` shows with no configuration, and what tests and the protective
actions (docs/actions.md) run against without a network:

- The book (`DEMO_BOOK`, in sim_book.py with the sell-off script): BTC long, ETH short and
  SOL long on a USDT wallet, with BTC held as collateral, each market with a Binance-style
  tier table (cumulative deduction, as docs/margin-math.md describes). The sim publishes its
  collateral rules as Binance Multi-Assets Mode does (`multi_assets_margin()`,
  `asset_index()`: a 5 % BTC bid buffer), and values collateral through the parser a live
  read uses (`venues/binance.py rules_from_binance`, then `apply_rules`), so `make demo`
  shows the live haircut code path (docs/collateral.md).
- Mark prices from `sim_prices.ScriptedPath`: a seeded sell-off whose keyframes are solved
  from the book itself so the margin ratio passes 0.35 → 0.6 → 0.78 → 0.88 and recovers,
  i.e. warning → critical → emergency → resolved at the default thresholds; or from a CSV
  (`--replay`). Streamed as `PriceTick`s at `tick_rate` per sim second, `speed` sim seconds
  per wall second.
- Orders through the ccxt-shaped `OrderDesk` contract (protect/desk.py): reduce-only market
  orders fill at the mark, limit and trigger (stop) orders rest until the mark crosses; the
  sim rejects what a venue rejects (sim_orders.py, with the ccxt structures it answers in).
  A resent `clientOrderId` returns the existing order instead of placing a second one
  (Binance -4015 dedups the same way). A fill realises PnL minus the taker fee into the USDT
  wallet and is announced as one `AccountUpdate` (positions, wallet and marks together, the
  event a live account's REST reconciliation emits), so the demo runs the same code path as
  a live account (docs/account-view.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from monitor.config.settings import SimSettings
from monitor.core.margin import report as margin
from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Position,
    PriceTick,
    priced_collateral,
)
from monitor.sources.collateral_rules import apply_rules
from monitor.sources.sim_book import (
    DEMO_BOOK,
    VENUE,
    SimBook,
    SimMarket,
    asset_index,
    book_positions,
    marked_collateral,
    published_rules,
    selloff_keyframes,
)
from monitor.sources.sim_orders import (
    EPS,
    amount_to_precision,
    ccxt_market,
    ccxt_position,
    check_order,
    check_reduces,
    crossed,
    new_order,
    reduced_side,
    trigger_of,
)
from monitor.sources.sim_prices import Keyframe, ReplayStep, ScriptedPath
from monitor.venues.errors import BadSymbol, OrderNotFound
from monitor.venues.orders import TICK_SIZE

if TYPE_CHECKING:
    from monitor.core.model import Collateral, Event, Side

__all__ = ["SimVenue"]


class SimVenue:
    """The simulated venue of one account: a `TradingSource` (sources/base.py)."""

    venue = VENUE

    def __init__(
        self,
        account: str,
        settings: SimSettings | None = None,
        replay: Sequence[ReplayStep] | None = None,
        book: SimBook = DEMO_BOOK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`replay` replaces the scripted path; `clock` stamps events and orders."""
        self._account = account
        self._settings = settings or SimSettings()
        self._book = book
        self._clock = clock
        self._markets = {m.symbol: m for m in book.markets}
        self._replay = tuple(replay) if replay is not None else None
        keyframes = (
            selloff_keyframes(book, self.venue)
            if self._settings.scenario == "selloff"
            else (Keyframe(0.0, 1.0),)
        )
        self._path = ScriptedPath(
            [(m.symbol, m.price0, m.beta) for m in book.markets],
            keyframes,
            tick_rate=self._settings.tick_rate,
            seed=self._settings.seed,
            # 2 bp: the band from warning to liquidation is under 1 % of price for this book
            noise=0.0002,
        )
        self._marks = {m.symbol: m.price0 for m in book.markets}
        self._positions: dict[tuple[str, Side], Position] = {
            (p.symbol, p.side): p for p in book_positions(book, self._marks)
        }
        held = marked_collateral(book.collateral, self._marks, book.currency)
        self._collateral = {c.asset: c for c in held}
        #: read once, like a live account's hourly read: buffers do not move with prices
        self.collateral_rules = published_rules(book, self._marks, clock())
        if self._replay:
            # A replay starts where its file starts: the first snapshot already carries the
            # first row's prices, or a restart with a replay beginning at critical would
            # first report the built-in prices (a false resolve, then a new episode).
            for symbol, price in self._replay[0].prices:
                self._set_mark(symbol, price)
        self._orders: dict[str, dict[str, Any]] = {}
        self._by_client_id: dict[str, str] = {}
        self._ids = itertools.count(1)
        # Fills are rare (one per protective step), so this never grows unboundedly.
        self._pending: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self.fills = 0

    # --- Source ------------------------------------------------------------------------------

    @property
    def account(self) -> str:
        """The configured account name."""
        return self._account

    @property
    def keyframes_duration(self) -> float:
        """Sim seconds the scripted scenario lasts."""
        return self._path.duration

    def venue_drift(self) -> float | None:
        """None: the sim's figures are our own model's, there is nothing to compare."""
        return None

    async def fetch_snapshot(self) -> AccountSnapshot:
        """The account as it is now (marks, positions, balances)."""
        return self.snapshot()

    def snapshot(self) -> AccountSnapshot:
        """Synchronous form of `fetch_snapshot`, for tests and the executor's dry runs."""
        return AccountSnapshot(
            self._account,
            self._book.currency,
            self._valued_collateral(),
            tuple(self._positions.values()),
            venue=self.venue,
        )

    def _valued_collateral(self) -> tuple[Collateral, ...]:
        """Balances valued by the published rules, as `ExchangeSource` values a live read."""
        held = tuple(self._collateral.values())
        return apply_rules(held, self.collateral_rules, self._book.currency)

    def multi_assets_margin(self) -> dict[str, bool]:
        """`GET /fapi/v1/multiAssetsMargin` of the sim account (wire format)."""
        return {"multiAssetsMargin": bool(self._book.asset_buffers)}

    def asset_index(self) -> list[dict[str, Any]]:
        """`GET /fapi/v1/assetIndex` of the sim venue (wire format), at the current marks."""
        return asset_index(self._book, self._marks, self._clock())

    async def events(self) -> AsyncIterator[Event]:
        """Ticks on schedule; fill announcements as soon as they happen."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        interval = 1.0 / (self._settings.tick_rate * self._settings.speed)
        replay = iter(self._replay) if self._replay is not None else None
        replay_t0: float | None = None
        step = 0
        while not self._closed:
            while self._pending:
                yield self._pending.popleft()
            if replay is not None:
                item = next(replay, None)
                if item is None:
                    return  # a replay has nothing more to say: the daemon can finish
                replay_t0 = item.ts if replay_t0 is None else replay_t0
                due = start + (item.ts - replay_t0) / self._settings.speed
                await self._sleep_until(loop, due)
                prices = item.prices
            else:
                await self._sleep_until(loop, start + step * interval)
                _, prices = self._path.next_prices()
            if self._closed:
                return
            step += 1
            now = self._clock()
            for symbol, price in prices:
                # a fill announced meanwhile (an order placed while the daemon handled the
                # previous tick) goes first: the later ticks move the book it left
                while self._pending:
                    yield self._pending.popleft()
                self._set_mark(symbol, price)
                yield PriceTick(self._account, symbol, price, self._clock())
            self._trigger_resting(now)

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Sleep until `due`, waking early when a fill is to be announced."""
        delay = due - loop.time()
        if delay <= 0:
            await asyncio.sleep(0)  # let the daemon run even when the sim is behind
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def close(self) -> None:
        """Stop the stream (idempotent)."""
        self._closed = True
        self._wake.set()

    # --- OrderDesk (protect/desk.py): the whole order contract, as a live venue ------------

    def market(self, symbol: str) -> dict[str, Any]:
        """ccxt market structure of a sim market."""
        return ccxt_market(self._market(symbol), self._book.currency)

    def amount_to_precision(self, symbol: str, amount: float) -> str:
        """Truncate to the market's step (ccxt's TRUNCATE mode), as a string like ccxt."""
        return amount_to_precision(self._market(symbol).amount_step, amount)

    async def fetch_positions(self, symbols: list[str] | None = None) -> list[dict[str, Any]]:
        """Positions as ccxt position structures, read from the venue's live book."""
        now = self._clock()
        return [
            ccxt_position(p, now)
            for p in self._positions.values()
            if symbols is None or p.symbol in symbols
        ]

    async def create_order(  # noqa: PLR0917 - ccxt's positional signature
        self,
        symbol: str,
        type: str,  # ccxt's own parameter name
        side: str,
        amount: float,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Accept a reduce-only order, or raise the ccxt error a venue would answer with."""
        params = dict(params or {})
        client_id = params.get("clientOrderId")
        if client_id is not None and str(client_id) in self._by_client_id:
            return dict(self._orders[self._by_client_id[str(client_id)]])
        check_order(self._market(symbol), type, side, amount, price, params)
        target = check_reduces(
            self._reduced_position(symbol, side, params.get("positionSide")), symbol, side, amount
        )
        trigger = trigger_of(params)
        now = self._clock()
        order_id = str(next(self._ids))
        order = new_order(
            order_id,
            client_id=client_id,
            now=now,
            symbol=symbol,
            type=type,
            side=side,
            amount=amount,
            price=price,
            trigger=trigger,
            position_side=target.side,
        )
        self._orders[order_id] = order
        if order["clientOrderId"] is not None:
            self._by_client_id[order["clientOrderId"]] = order_id
        if trigger is None and (type == "market" or crossed(order, self._marks[symbol])):
            self._fill(order, now)
        return dict(order)

    async def fetch_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:  # ccxt name
        """One order by id (ccxt.OrderNotFound if unknown)."""
        order = self._orders.get(str(id))
        if order is None or (symbol is not None and order["symbol"] != symbol):
            raise OrderNotFound(f"sim: order {id} not found")
        return dict(order)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """Resting limit and untriggered stop orders."""
        return [
            dict(o)
            for o in self._orders.values()
            if o["status"] == "open" and (symbol is None or o["symbol"] == symbol)
        ]

    async def cancel_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:  # ccxt name
        """Cancel a working order; a filled or unknown one raises ccxt.OrderNotFound."""
        order = self._orders.get(str(id))
        if order is None or order["status"] != "open":
            raise OrderNotFound(f"sim: order {id} is not open")
        order["status"] = "canceled"
        return dict(order)

    @property
    def precision_mode(self) -> int:
        """ccxt's TICK_SIZE: `precision.amount` is the step itself."""
        return TICK_SIZE

    async def find_order(self, client_id: str, symbol: str) -> dict[str, Any] | None:
        """Any order of ours by client id, open, filled or cancelled (None: none sent)."""
        order_id = self._by_client_id.get(client_id)
        if order_id is None or self._orders[order_id]["symbol"] != symbol:
            return None
        return dict(self._orders[order_id])

    async def open_stops(self, symbol: str) -> list[dict[str, Any]]:
        """Untriggered stop orders on `symbol`."""
        return [o for o in await self.fetch_open_orders(symbol) if o.get("triggerPrice")]

    async def cancel_stop(self, id: str, symbol: str) -> dict[str, Any]:
        """Cancel a resting stop (the sim keeps stops with the other orders)."""
        return await self.cancel_order(id, symbol)

    def in_flight_window(self) -> float | None:
        """None: the sim answers every order in-process, none is ever left in flight."""
        return None

    # --- internals ---------------------------------------------------------------------------

    def _market(self, symbol: str) -> SimMarket:
        mk = self._markets.get(symbol)
        if mk is None:
            raise BadSymbol(f"sim: no market {symbol} (markets: {', '.join(self._markets)})")
        return mk

    def _reduced_position(self, symbol: str, side: str, position_side: object) -> Position | None:
        """The position an order on `side` would reduce, or None if it would grow one."""
        reduces = reduced_side(side)
        if position_side is not None and str(position_side).lower() not in (reduces, "both"):
            return None
        p = self._positions.get((symbol, reduces))
        return p if p is not None and p.contracts > EPS else None

    def _set_mark(self, symbol: str, price: float) -> None:
        self._marks[symbol] = price
        for key, p in self._positions.items():
            if p.symbol == symbol:
                self._positions[key] = replace(p, mark_price=price)
        asset = priced_collateral(symbol, self._book.currency)
        held = self._collateral.get(asset) if asset is not None else None
        if held is not None:
            self._collateral[held.asset] = replace(held, price=price)

    def _trigger_resting(self, now: float) -> None:
        for order in list(self._orders.values()):
            if order["status"] == "open" and crossed(order, self._marks[order["symbol"]]):
                self._fill(order, now)

    def _fill(self, order: dict[str, Any], now: float) -> None:
        key = (order["symbol"], reduced_side(order["side"]))
        p = self._positions.get(key)
        if p is None or p.contracts <= EPS:
            order["status"] = "canceled"  # reduce-only with nothing left to reduce
            return
        qty = min(order["amount"], p.contracts)
        fill = self._marks[order["symbol"]]
        size = qty * p.contract_size
        pnl = p.sign * size * (fill - p.entry_price)
        fee = self._settings.fee_rate * size * fill
        remaining = p.contracts - qty
        if remaining <= EPS:
            del self._positions[key]
        else:
            self._positions[key] = replace(p, contracts=remaining)
        wallet = self._collateral[self._book.currency]
        self._collateral[self._book.currency] = replace(wallet, amount=wallet.amount + pnl - fee)
        order.update(
            status="closed",
            filled=qty,
            remaining=order["amount"] - qty,
            average=fill,
            cost=size * fill,
            lastTradeTimestamp=int(now * 1000),
            fee={"cost": fee, "currency": self._book.currency},
        )
        self.fills += 1
        self._pending.append(self.read(now))
        self._wake.set()

    def read(self, ts: float) -> AccountUpdate:
        """The whole account as one read stamped `ts`, as `ExchangeSource` emits one."""
        return AccountUpdate(
            self._account,
            tuple(self._positions.values()),
            self._valued_collateral(),
            ts,
            tuple(sorted(self._marks.items())),
            margin.report(self.snapshot()).margin_ratio,
        )
