"""Running cross-pool totals that a mark-price tick updates in O(positions of that symbol).

A full report re-values every position and solves every liquidation price: milliseconds for
a thousand positions. The question a tick must answer at once is smaller: where is the
margin ratio now? A `Ledger` keeps each position's figures and the per-asset sums of the
pool, so a tick only re-values the positions of its symbol (hedge mode: two) and re-sums a
handful of assets. The daemon asks it on every tick, and takes the coalesced full report
from it too (`report()`: the same report as `report(snapshot)`, to the bit, from the figures
kept here rather than re-valued, with the liquidation work of the last report that still
holds, `liquidation.Kept`), at its own pace (20 000 ticks/s a core: see docs/benchmarks.md).

A tick never builds a `Position`: each position is turned once into its schedule-only form
(`Position.scheduled`, venue figures become the rates they imply, exactly what
`Position.at_mark` does on the first move) and its figures at a new mark come from a price
argument (`valuation.pnl_at` and friends). Building frozen dataclasses per tick was most of
the tick's cost; `snapshot()` builds the moved positions once per full report instead.

Pure like the rest of the core (no I/O, no clock), but deliberately mutable: it is owned by
one account's task and never shared. Running sums drift by rounding: `report()` re-sums
them from the per-position figures, and a ledger is rebuilt from its snapshot whenever
positions or balances are re-read (`Ledger(snapshot)`).
"""

from __future__ import annotations

import math
from dataclasses import replace

from monitor.core.margin.liquidation import Kept
from monitor.core.margin.report import assemble
from monitor.core.margin.valuation import (
    AssetBook,
    asset_value,
    computed_initial_margin,
    computed_maintenance_margin,
    margin_ratio,
    members,
    pnl_at,
    pool,
    resum,
)
from monitor.core.model import AccountSnapshot, MarginReport, Position, priced_collateral
from monitor.core.state import Marks

__all__ = ["Ledger"]


class Ledger:
    """Per-position figures and per-asset sums of one account, updated tick by tick."""

    __slots__ = (
        "_books",
        "_by_symbol",
        "_collateral_moved",
        "_exposed",
        "_held",
        "_im",
        "_kept",
        "_marks",
        "_members",
        "_mm",
        "_moved",
        "_moving",
        "_pnl",
        "_rules",
        "_scheduled",
        "_settles",
        "_snapshot",
    )

    def __init__(self, snapshot: AccountSnapshot, marks: Marks | None = None) -> None:
        """`marks`: the newest mark per symbol with its time (AccountState.marks), so a
        tick older than one already held is dropped (state.py, the ordering rule)."""
        books, pnl, im, mm = pool(snapshot)
        self._snapshot = snapshot
        self._held: dict[str, tuple[float, float]] = dict(marks or {})
        # the books' PnL and MM sums move tick by tick (the ratio needs nothing else); their
        # IM moves with `snapshot()`: nothing reads IM between two reports
        self._books: dict[str, AssetBook] = books
        self._pnl = pnl
        self._im = im
        self._mm = mm
        self._marks = [p.mark_price for p in snapshot.positions]
        self._rules = snapshot.rules  # a property that builds; once, not per tick
        # the book a position's figures sum into (None: isolated, outside the pool)
        owners = [
            p.settle or snapshot.currency if p.margin_mode == "cross" else None
            for p in snapshot.positions
        ]
        self._settles: list[AssetBook | None] = [
            None if owner is None else books[owner] for owner in owners
        ]
        # per book, what picks its positions' figures out of a list (`report` re-sums them)
        self._members = members(books, owners)
        # positions never change between two reads: an empty cross pool stays empty
        self._exposed = any(p.margin_mode == "cross" for p in snapshot.positions)
        # schedule-only twins, made on a position's first move (most accounts never move
        # every position between two full reads)
        self._scheduled: list[Position | None] = [None] * len(snapshot.positions)
        self._moved: set[int] = set()
        self._by_symbol: dict[str, list[int]] = {}
        for i, p in enumerate(snapshot.positions):
            self._by_symbol.setdefault(p.symbol, []).append(i)
        # symbol -> the collateral asset its mark re-prices (as `stress.with_prices` does),
        # filled on first sight of a symbol: a market the account does not trade still
        # prices collateral held in its base asset (state.apply's rule)
        self._moving: dict[str, str | None] = {}
        self._collateral_moved = False  # a tick re-priced collateral since the last snapshot
        # what the last report's liquidation work left that still holds (`liquidation.Kept`)
        self._kept = Kept.empty(len(snapshot.positions))

    def tick(self, symbol: str, price: float, ts: float | None = None) -> bool:
        """Move `symbol`'s mark to `price`; False when nothing the ledger holds changed.

        `ts` is the price's time (PriceTick.ts); a tick older than the mark held for the
        symbol changes nothing (state.py, the ordering rule). None: no time, taken as newest.
        """
        if not (math.isfinite(price) and price > 0.0):
            return False
        held = self._held.get(symbol)
        if ts is not None and held is not None and ts < held[1]:
            return False
        changed = False
        indices = self._by_symbol.get(symbol)
        if indices is not None:
            marks = self._marks
            for i in indices:
                if marks[i] == price:
                    continue
                p = self._scheduled[i]
                if p is None:
                    p = self._scheduled[i] = self._snapshot.positions[i].scheduled()
                pnl = pnl_at(p, price)
                mm = computed_maintenance_margin(p, self._rules, price)
                book = self._settles[i]
                if book is not None:
                    book.pnl += pnl - self._pnl[i]
                    book.mm += mm - self._mm[i]
                marks[i] = price
                self._pnl[i] = pnl
                self._mm[i] = mm
                self._moved.add(i)
                changed = True
        try:
            asset = self._moving[symbol]
        except KeyError:
            asset = priced_collateral(symbol, self._snapshot.currency)
            if asset not in self._books:
                asset = None
            self._moving[symbol] = asset
        if asset is not None:
            book = self._books[asset]
            if book.collateral.price != price:
                book.collateral = replace(book.collateral, price=price)
                self._collateral_moved = changed = True
        if indices is not None or asset is not None:  # symbols it holds only: bounded
            if ts is not None:
                self._held[symbol] = (price, ts)
            elif held is not None:
                self._held[symbol] = (price, held[1])
        return changed

    def hold(self, marks: Marks) -> None:
        """Take `marks` (a read applied without changing a figure) as the newest held."""
        self._held = dict(marks)

    def marks(self) -> dict[str, tuple[float, float]]:
        """The newest mark per symbol with its time, for the next `AccountUpdate`'s merge."""
        return dict(self._held)

    def ratio(self) -> float:
        """Margin ratio of the cross pool at the latest ticks (the per-tick threshold check);
        for a portfolio-margin account the venue's figure, which ticks do not move."""
        venue = self._snapshot.venue_margin
        if venue is not None and venue.margin_ratio is not None:
            return venue.margin_ratio
        balance = 0.0
        mm = 0.0
        for book in self._books.values():
            # book.surplus(pnl, 0) + book.mm * book.ask, without two calls: once per tick
            balance += asset_value(book.collateral, book.collateral.amount + book.pnl)
            mm += book.mm * book.ask
        return margin_ratio(mm, balance, exposed=self._exposed)

    def report(self) -> MarginReport:
        """The full report at the latest ticks: exactly `report(self.snapshot())`, from the
        figures the ledger keeps instead of re-valuing every position.

        The books' sums are taken afresh from the per-position figures by `valuation.resum`,
        the very additions `valuation.pool` makes, rather than from the running sums the
        ticks keep: the report is then the reference one to the last bit
        (tests/test_ledger_report.py), and the running sums' rounding drift goes back to
        zero at every report. C-speed: ~10 ns a position.
        """
        snapshot = self.snapshot()
        pnl, im, mm = self._pnl, self._im, self._mm
        resum(self._members, pnl, im, mm)
        return assemble(snapshot, self._books, pnl, im, mm, kept=self._kept)

    def snapshot(self) -> AccountSnapshot:
        """The account at the latest ticks, for a full report.

        Builds only the positions moved since the last call (a coalesced report follows a
        handful of ticks), and makes the result the ledger's new base.
        """
        base = self._snapshot
        if not self._moved and not self._collateral_moved:
            return base
        collateral = base.collateral
        if self._collateral_moved:
            books = self._books
            collateral = tuple(
                books[c.asset].collateral if c.asset in books else c for c in collateral
            )
            self._collateral_moved = False
            self._kept = Kept.empty(len(base.positions))  # the rates it was done at moved
        positions = base.positions
        if self._moved:
            moved = list(positions)
            ims = self._im
            kept = self._kept
            for i in self._moved:
                kept.forget(i)
                scheduled = self._scheduled[i]
                assert scheduled is not None  # set by the tick that moved it
                p = moved[i] = scheduled.repriced(self._marks[i])  # schedule-only already
                ims[i] = computed_initial_margin(p, p.mark_price)  # books' IM: `report`
            self._moved.clear()
            positions = tuple(moved)
        self._snapshot = AccountSnapshot(
            base.account,
            base.currency,
            collateral,
            positions,
            base.venue,
            base.venue_margin,
        )
        return self._snapshot
