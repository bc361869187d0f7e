"""Valuing one account at given prices: position figures and the cross pool, per asset.

Formulas and their sources (details and worked examples in docs/margin-math.md):

- Maintenance margin of a position = notional × mmr(tier) − maintenance amount (Binance USDⓈ-M
  "Maintenance Margin = Position Notional × MMR − Maintenance Amount", FAQ b3c689c1…; Bybit
  "Position Value × MMR − MM Deduction"; Hyperliquid "maintenance deduction"). OKX applies one
  rate to the whole position without a deduction (`VenueRules.tier_deduction = False`).
- Notional is valued at the mark price (Binance's example B1 uses mark notional), except for
  Bybit isolated positions, whose MM is taken on the entry value (Bybit "Liquidation Price
  (USDT Contract)": Position Value = Contract Size × Entry Price).
- Per-asset equity = balance + unrealised PnL of the cross positions settled in it, worth
  `equity × price × (1 − haircut)` when positive and `equity × price × (1 + liability_markup)`
  when negative (Binance multi-assets: Account Equity = Σ min(assetEquity × bidRate,
  assetEquity × askRate)); margin owed in an asset is converted at the ask side too (example
  M1: MM in USDT × 0.99495). Tiered haircuts apply marginally per band (Bybit UTA, OKX, Bitget).

Pure: no I/O, no clock. `AssetBook` is mutable scratch space private to one computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

from monitor.core.model import (
    AccountSnapshot,
    Collateral,
    CollateralTier,
    Position,
    Tier,
)
from monitor.core.venue_rules import VenueRules

__all__ = [
    "AssetBook",
    "Figures",
    "asset_breakpoints",
    "asset_value",
    "computed_initial_margin",
    "computed_maintenance_margin",
    "figures_of",
    "isolated_margin_of",
    "liquidation_fee_of",
    "margin_ratio",
    "members",
    "picker",
    "pnl_at",
    "pool",
    "resum",
    "surplus",
    "surplus_at",
    "tier_for",
]

INF = math.inf

#: (unrealised PnL, initial margin, maintenance margin) of one position, in its settle asset.
Figures = tuple[float, float, float]


def margin_ratio(mm: float, balance: float, *, exposed: bool = False) -> float:
    """Maintenance margin / margin balance, the one rule every surface reads (docs/margin-edges.md).

    `exposed`: a position is open in this pool. A pool with nothing open and no MM owed has
    nothing to liquidate, whatever its balance: ratio 0 (Binance multi-assets FAQ, example
    M1: "No positions ... margin ratio 0"), so an empty cross pool (isolated positions only,
    or nothing open) never reads as liquidated. A balance ≤ 0 under an open position or
    owed MM is +inf (past liquidation; also when the position's MM schedule is unknown),
    never a division error.
    """
    if balance > 0.0:
        return mm / balance if mm > 0.0 else 0.0
    return INF if exposed or mm > 0.0 else 0.0


def tier_for(tiers: Sequence[Tier], notional: float) -> Tier:
    """The tier whose bracket holds `notional` (upper bounds inclusive; beyond the last: last)."""
    for tier in tiers:
        if notional <= tier.max_notional:
            return tier
    return tiers[-1]


def pnl_at(p: Position, price: float) -> float:
    """Unrealised PnL at `price`, in the settle asset (coins for inverse contracts)."""
    size = p.contracts * p.contract_size
    if p.inverse:
        if price <= 0:
            return -INF if p.side == "long" else INF
        return p.sign * size * (1.0 / p.entry_price - 1.0 / price)
    return p.sign * size * (price - p.entry_price)


def computed_maintenance_margin(p: Position, rules: VenueRules, price: float) -> float:
    """MM from the venue's schedule (tiers, else flat mmr), in the settle asset."""
    if rules.isolated_mm_on_entry and p.margin_mode == "isolated":
        return _maintenance_on(p, rules, p.settle_notional(p.entry_price))
    return _maintenance_on(p, rules, p.settle_notional(price))


def liquidation_fee_of(p: Position, rules: VenueRules) -> float:
    """Taker fee rate the venue counts in `p`'s liquidation condition (OKX, Gate; else 0)."""
    return p.liquidation_fee if p.liquidation_fee is not None else rules.liquidation_fee


def _maintenance_on(p: Position, rules: VenueRules, notional: float) -> float:
    """MM of the schedule for a position worth `notional` (settle asset), plus the fee the
    venue charges at liquidation where its condition counts it (OKX "maintenance margin +
    liquidation fees"): the whole requirement the margin balance is held against."""
    fee = notional * liquidation_fee_of(p, rules)
    if p.tiers:
        tier = tier_for(p.tiers, notional)
        deduction = tier.maintenance_amount if rules.tier_deduction else 0.0
        return notional * tier.mmr - deduction + fee
    if p.mmr is not None:
        return notional * p.mmr + fee
    return fee


def computed_initial_margin(p: Position, price: float) -> float:
    """IM = notional / leverage (or the tier's IMR), in the settle asset."""
    return _initial_on(p, p.settle_notional(price))


def _initial_on(p: Position, notional: float) -> float:
    """IM of the schedule for a position worth `notional` (settle asset)."""
    if p.leverage:
        return notional / p.leverage
    if p.tiers:
        imr = tier_for(p.tiers, notional).imr
        if imr is not None:
            return notional * imr
    return 0.0


def isolated_margin_of(p: Position) -> float:
    """Margin held by an isolated position: as reported, else IM at entry (Bybit: PV / lev)."""
    if p.isolated_margin is not None:
        return p.isolated_margin
    if p.initial_margin is not None:
        return p.initial_margin
    if p.leverage:
        return p.settle_notional(p.entry_price) / p.leverage
    return 0.0


def figures_of(p: Position, rules: VenueRules) -> Figures:
    """(pnl, im, mm) at the current mark, venue-reported figures winning.

    Runs once per position per report and per tick: the notional is computed once for
    both margins (the entry-priced Bybit isolated MM aside), not once per figure.
    """
    mark = p.mark_price
    notional = p.settle_notional(mark)
    pnl = p.unrealized_pnl if p.unrealized_pnl is not None else pnl_at(p, mark)
    im = p.initial_margin if p.initial_margin is not None else _initial_on(p, notional)
    mm = p.maintenance_margin
    if mm is not None:  # the venue's MM has no fee in it (OKX `mmr`)
        mm += notional * liquidation_fee_of(p, rules)
    elif rules.isolated_mm_on_entry and p.margin_mode == "isolated":
        mm = computed_maintenance_margin(p, rules, mark)
    else:
        mm = _maintenance_on(p, rules, notional)
    return pnl, im, mm


# --- collateral valuation -----------------------------------------------------------------


def _banded(amount: float, bands: Sequence[CollateralTier]) -> float:
    """Σ over bands of (part of `amount` inside the band) × ratio, bands applied marginally."""
    value, floor = 0.0, 0.0
    for band in bands:
        if amount <= floor:
            break
        part = min(amount, band.up_to) - floor
        value += part * band.ratio
        floor = band.up_to
    return value


def asset_value(c: Collateral, equity: float, price: float | None = None) -> float:
    """What `equity` units of the asset count for in the report currency (at `price`)."""
    if price is None:
        price = c.price
    if equity <= 0:
        return equity * price * (1.0 + c.liability_markup)
    if c.haircut_tiers:
        if c.tier_basis == "value":
            return _banded(equity * price, c.haircut_tiers)
        return _banded(equity, c.haircut_tiers) * price
    return equity * price * (1.0 - c.haircut)


def asset_breakpoints(c: Collateral) -> tuple[float, ...]:
    """Equity levels (asset units) where the valuation changes slope: zero and band edges."""
    edges = [0.0]
    for band in c.haircut_tiers:
        if math.isfinite(band.up_to):
            edges.append(band.up_to / c.price if c.tier_basis == "value" else band.up_to)
    return tuple(edges)


@dataclass(slots=True)
class AssetBook:
    """Per-asset cross-pool totals: the balance, plus the PnL and margin settled in it.

    Mutable scratch space, private to one computation: it is what lets a solver move one
    symbol's contribution in and out without re-walking every other position.
    """

    collateral: Collateral
    pnl: float = 0.0
    im: float = 0.0
    mm: float = 0.0

    @property
    def ask(self) -> float:
        """Rate at which margin owed in this asset is counted (Binance ask rate)."""
        return self.collateral.price * (1.0 + self.collateral.liability_markup)

    def surplus(self, pnl: float, mm: float, price: float | None = None) -> float:
        """Margin balance minus MM contributed by this asset for the given PnL and MM."""
        c = self.collateral
        if price is None:
            return asset_value(c, c.amount + pnl) - mm * self.ask
        return asset_value(c, c.amount + pnl, price) - mm * price * (1.0 + c.liability_markup)


def _books(snapshot: AccountSnapshot) -> dict[str, AssetBook]:
    books = {c.asset: AssetBook(c) for c in snapshot.collateral}
    for p in snapshot.positions:
        settle = p.settle or snapshot.currency
        if settle not in books:
            if settle != snapshot.currency:
                msg = f"position {p.symbol} settles in {settle}, which has no collateral price"
                raise ValueError(msg)
            books[settle] = AssetBook(Collateral(asset=settle, amount=0.0))
    return books


def pool(
    snapshot: AccountSnapshot,
) -> tuple[dict[str, AssetBook], list[float], list[float], list[float]]:
    """Per-asset books of the cross pool and every position's pnl, im and mm (three lists:
    the `Ledger` keeps them as they are and moves one entry per tick)."""
    rules = snapshot.rules
    currency = snapshot.currency
    deduct = rules.tier_deduction
    on_entry = rules.isolated_mm_on_entry
    venue_fee = rules.liquidation_fee
    books = _books(snapshot)
    pnls: list[float] = []
    ims: list[float] = []
    mms: list[float] = []
    owners: list[str | None] = []  # the book each position's figures sum into (None: isolated)
    for p in snapshot.positions:
        if (
            p.inverse
            or p.unrealized_pnl is not None
            or p.initial_margin is not None
            or p.maintenance_margin is not None
            or (on_entry and p.margin_mode == "isolated")
        ):
            pnl, im, mm = figures_of(p, rules)
        else:
            # `figures_of` of a linear position valued from its schedule, inlined: this
            # loop runs once per position per report (docs/benchmarks.md: 1 000 positions in 2 ms)
            size = p.contracts * p.contract_size
            mark = p.mark_price
            notional = size * mark
            pnl = (
                (mark - p.entry_price) * size if p.side == "long" else (p.entry_price - mark) * size
            )
            fee = notional * (venue_fee if p.liquidation_fee is None else p.liquidation_fee)
            tiers = p.tiers
            if tiers:
                for tier in tiers:
                    if notional <= tier.max_notional:
                        break
                mm = notional * tier.mmr - (tier.maintenance_amount if deduct else 0.0) + fee
            else:
                mm = notional * p.mmr + fee if p.mmr is not None else fee
            im = notional / p.leverage if p.leverage else _initial_on(p, notional)
        pnls.append(pnl)
        ims.append(im)
        mms.append(mm)
        owners.append(p.settle or currency if p.margin_mode == "cross" else None)
    resum(members(books, owners), pnls, ims, mms)
    return books, pnls, ims, mms


def surplus(snapshot: AccountSnapshot) -> float:
    """Margin balance − maintenance margin of the cross pool (≤ 0: at or past liquidation).

    The quantity every solver drives to zero; cheaper than a report (no liquidation prices).
    """
    books = pool(snapshot)[0]
    return sum(b.surplus(b.pnl, b.mm) for b in books.values())


def surplus_at(
    snapshot: AccountSnapshot, marks: Sequence[float], asset_prices: Mapping[str, float]
) -> float:
    """Margin balance − MM of the cross pool with position i at `marks[i]` and collateral
    at `asset_prices` (others at their own price), every figure from the schedule.

    Equal to `surplus` of the same account re-priced with `Position.at_mark` once venue
    figures are turned into rates; the shock solver calls it dozens of times per account,
    and building re-priced `Position` objects was most of its cost (docs/benchmarks.md).
    """
    rules = snapshot.rules
    currency = snapshot.currency
    pnl: dict[str, float] = {}
    mm: dict[str, float] = {}
    for p, mark in zip(snapshot.positions, marks, strict=True):
        if p.margin_mode != "cross":
            continue
        settle = p.settle or currency
        pnl[settle] = pnl.get(settle, 0.0) + pnl_at(p, mark)
        mm[settle] = mm.get(settle, 0.0) + computed_maintenance_margin(p, rules, mark)
    total = 0.0
    for c in snapshot.collateral:
        price = asset_prices.get(c.asset, c.price)
        owed = mm.pop(c.asset, 0.0) * price * (1.0 + c.liability_markup)
        total += asset_value(c, c.amount + pnl.pop(c.asset, 0.0), price) - owed
    for asset, owed in mm.items():  # the report currency with no balance entry: price 1
        total += asset_value(Collateral(asset, 0.0), pnl[asset]) - owed
    return total


#: Takes a book's entries out of a per-position list of figures, in position order.
Picker = Callable[[list[float]], Iterable[float]]


def members(
    books: Mapping[str, AssetBook], owners: list[str | None]
) -> list[tuple[AssetBook, Picker]]:
    """Each book that cross positions sum into, with what picks their figures out of a
    per-position list; `owners[i]`: position i's settle asset, None when isolated.

    The usual account, every position in one book, picks the whole list (C-speed counts,
    no index list): `pool` finds members on every report from scratch.
    """
    found: list[tuple[AssetBook, Picker]] = []
    for asset, book in books.items():
        count = owners.count(asset)
        if count == len(owners) and count:
            found.append((book, _every))
        elif count:
            found.append((book, picker([i for i, o in enumerate(owners) if o == asset])))
    return found


def resum(
    found: list[tuple[AssetBook, Picker]], pnl: list[float], im: list[float], mm: list[float]
) -> None:
    """Each book's PnL, IM and MM as the sums of its positions' figures, in position order.

    `pool` and `Ledger.report` both sum here, so a report from scratch and the ledger's
    are the same additions in the same order, to the bit, whatever `sum`'s algorithm
    (CPython 3.12 made it compensated); and a book no position sums into keeps its 0.0.
    """
    for book, pick in found:
        book.pnl = sum(pick(pnl))
        book.im = sum(pick(im))
        book.mm = sum(pick(mm))


def _every(values: list[float]) -> list[float]:
    """Every entry: the book every position sums into."""
    return values


def picker(indices: list[int]) -> Callable[[list[float]], Iterable[float]]:
    """A function taking these entries of a list, in order (C-speed: `itemgetter`)."""
    if len(indices) == 1:
        (i,) = indices
        return lambda values: (values[i],)
    return itemgetter(*indices)
