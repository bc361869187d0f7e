"""Running cross-pool totals that a mark-price tick updates in O(positions of that symbol).

A full report re-values every position and solves every liquidation price: milliseconds for
a thousand positions. The question a tick must answer at once is smaller: where is the
margin ratio now? A `Ledger` keeps each position's figures and the per-asset sums of the
pool, so a tick only re-values the positions of its symbol (hedge mode: two) and re-sums a
handful of assets. The daemon asks it on every tick and re-runs the full report (liquidation
prices, shock to liquidation) coalesced, at its own pace.

Pure like the rest of the core (no I/O, no clock), but deliberately mutable: it is owned by
one account's task and never shared. Running sums drift by rounding, so a ledger is rebuilt
from its snapshot whenever positions or balances are re-read (`Ledger(snapshot)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from monitor.model import AccountSnapshot, Position, priced_collateral
from monitor.valuation import AssetBook, figures_of, pool

__all__ = ["Ledger", "Summary"]


@dataclass(frozen=True, slots=True)
class Summary:
    """The cross-pool figures a threshold rule needs, without liquidation prices."""

    margin_balance: float
    initial_margin: float
    maintenance_margin: float
    margin_ratio: float

    @property
    def free_collateral(self) -> float:
        """Margin balance − initial margin."""
        return self.margin_balance - self.initial_margin


class Ledger:
    """Per-position figures and per-asset sums of one account, updated tick by tick."""

    __slots__ = ("_books", "_by_symbol", "_figures", "_moving", "_positions", "_rules",
                 "_snapshot")

    def __init__(self, snapshot: AccountSnapshot) -> None:
        books, figures = pool(snapshot)
        self._snapshot = snapshot
        self._rules = snapshot.rules
        self._books: dict[str, AssetBook] = books
        self._figures = list(figures)
        self._positions = list(snapshot.positions)
        self._by_symbol: dict[str, list[int]] = {}
        for i, p in enumerate(snapshot.positions):
            self._by_symbol.setdefault(p.symbol, []).append(i)
        # the collateral asset a X/<currency> market re-prices (as `stress.with_prices` does)
        self._moving: dict[str, str] = {}
        for symbol in {p.symbol for p in snapshot.positions}:
            asset = priced_collateral(symbol, snapshot.currency)
            if asset is not None and asset in books:
                self._moving[symbol] = asset

    def tick(self, symbol: str, price: float) -> bool:
        """Move `symbol`'s mark to `price`; False when nothing the ledger holds changed."""
        if not (math.isfinite(price) and price > 0.0):
            return False
        indices = self._by_symbol.get(symbol)
        asset = self._moving.get(symbol)
        if indices is None and asset is None:
            return False
        changed = False
        for i in indices or ():
            old = self._positions[i]
            if old.mark_price == price:
                continue
            new = old.at_mark(price)
            figures = figures_of(new, self._rules)
            if new.margin_mode == "cross":
                book = self._books[new.settle or self._snapshot.currency]
                before = self._figures[i]
                book.pnl += figures[0] - before[0]
                book.im += figures[1] - before[1]
                book.mm += figures[2] - before[2]
            self._positions[i] = new
            self._figures[i] = figures
            changed = True
        if asset is not None:
            book = self._books[asset]
            if book.collateral.price != price:
                book.collateral = replace(book.collateral, price=price)
                changed = True
        return changed

    def summary(self) -> Summary:
        """Margin balance, IM, MM and ratio of the cross pool at the latest ticks."""
        balance = 0.0
        im = 0.0
        mm = 0.0
        for book in self._books.values():
            balance += book.surplus(book.pnl, 0.0)
            ask = book.ask
            im += book.im * ask
            mm += book.mm * ask
        ratio = mm / balance if balance > 0 else math.inf
        return Summary(balance, im, mm, ratio)

    def snapshot(self) -> AccountSnapshot:
        """The account at the latest ticks, for a full report."""
        positions: tuple[Position, ...] = tuple(self._positions)
        collateral = tuple(
            self._books[c.asset].collateral if c.asset in self._books else c
            for c in self._snapshot.collateral
        )
        return replace(self._snapshot, positions=positions, collateral=collateral)
