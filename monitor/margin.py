"""Margin math: one account snapshot in, one `MarginReport` out. Pure; no I/O, no clock.

Formulas and their sources (details and worked examples in shared/notes/margin-math.md):

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
- Margin ratio = MM / margin balance (Binance, Bybit: liquidation when it reaches 100 %).
- Liquidation price of a cross position: the mark of that symbol at which MM = margin balance
  with every other price held (Binance's LP formula is the one-tier, one-asset special case);
  isolated: the mark at which the position's own margin + PnL = its MM.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from monitor.model import (
    AccountSnapshot,
    Collateral,
    CollateralTier,
    MarginReport,
    Position,
    PositionRisk,
    Tier,
    VenueRules,
    base_asset,
    quote_asset,
)

__all__ = [
    "AssetBook",
    "computed_initial_margin",
    "computed_maintenance_margin",
    "isolated_margin_of",
    "liquidation_prices",
    "pnl_at",
    "report",
    "surplus",
    "tier_for",
]

INF = math.inf


# --- one position -------------------------------------------------------------------------


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
        notional = p.settle_notional(p.entry_price)
    else:
        notional = p.settle_notional(price)
    if p.tiers:
        tier = tier_for(p.tiers, notional)
        deduction = tier.maintenance_amount if rules.tier_deduction else 0.0
        return notional * tier.mmr - deduction
    if p.mmr is not None:
        return notional * p.mmr
    return 0.0


def computed_initial_margin(p: Position, price: float) -> float:
    """IM = notional / leverage (or the tier's IMR), in the settle asset."""
    notional = p.settle_notional(price)
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


def _figures(p: Position, rules: VenueRules) -> tuple[float, float, float]:
    """(pnl, im, mm) at the current mark, venue-reported figures winning."""
    pnl = p.unrealized_pnl if p.unrealized_pnl is not None else pnl_at(p, p.mark_price)
    im = (
        p.initial_margin
        if p.initial_margin is not None
        else computed_initial_margin(p, p.mark_price)
    )
    mm = (
        p.maintenance_margin
        if p.maintenance_margin is not None
        else computed_maintenance_margin(p, rules, p.mark_price)
    )
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


# --- the report ---------------------------------------------------------------------------


def _pool(
    snapshot: AccountSnapshot,
) -> tuple[dict[str, AssetBook], list[tuple[float, float, float]]]:
    """Per-asset books of the cross pool and every position's (pnl, im, mm)."""
    rules = snapshot.rules
    books = _books(snapshot)
    figures: list[tuple[float, float, float]] = []
    for p in snapshot.positions:
        pnl, im, mm = _figures(p, rules)
        figures.append((pnl, im, mm))
        if p.margin_mode == "cross":
            book = books[p.settle or snapshot.currency]
            book.pnl += pnl
            book.im += im
            book.mm += mm
    return books, figures


def surplus(snapshot: AccountSnapshot) -> float:
    """Margin balance − maintenance margin of the cross pool (≤ 0: at or past liquidation).

    The quantity every solver drives to zero; cheaper than a report (no liquidation prices).
    """
    books, _ = _pool(snapshot)
    return sum(b.surplus(b.pnl, b.mm) for b in books.values())


def report(snapshot: AccountSnapshot) -> MarginReport:
    """Value the account at its current prices: totals, ratios and liquidation prices."""
    rules = snapshot.rules
    books, figures = _pool(snapshot)
    wallet = sum(asset_value(b.collateral, b.collateral.amount) for b in books.values())
    upnl = sum(b.pnl * b.collateral.price for b in books.values())
    balance = sum(asset_value(b.collateral, b.collateral.amount + b.pnl) for b in books.values())
    total_im = sum(b.im * b.ask for b in books.values())
    total_mm = sum(b.mm * b.ask for b in books.values())
    ratio = _ratio(total_mm, balance)

    liq = liquidation_prices(snapshot, books, figures)
    risks = []
    for p, (pnl, im, mm), lp in zip(snapshot.positions, figures, liq, strict=True):
        price = books[p.settle or snapshot.currency].collateral.price
        ask = books[p.settle or snapshot.currency].ask
        own: float | None = None
        if p.margin_mode == "isolated":
            own = _ratio(mm, isolated_margin_of(p) + pnl)
        risks.append(
            PositionRisk(
                symbol=p.symbol,
                side=p.side,
                margin_mode=p.margin_mode,
                contracts=p.contracts,
                mark_price=p.mark_price,
                notional=p.settle_notional(p.mark_price) * price,
                unrealized_pnl=pnl * price,
                initial_margin=im * ask,
                maintenance_margin=mm * ask,
                margin_ratio=own,
                liquidation_price=lp,
                hedged=p.hedged,
            )
        )
    return MarginReport(
        account=snapshot.account,
        currency=snapshot.currency,
        wallet_balance=wallet,
        unrealized_pnl=upnl,
        margin_balance=balance,
        initial_margin=total_im,
        maintenance_margin=total_mm,
        margin_ratio=ratio,
        margin_level=(balance / total_mm if total_mm > 0 else INF) if balance > 0 else 0.0,
        free_collateral=balance - total_im,
        liquidated=is_liquidated(ratio, rules),
        positions=tuple(risks),
    )


def _ratio(mm: float, balance: float) -> float:
    """MM / balance; +inf once the balance is gone (never a division error)."""
    if balance <= 0:
        return INF
    return mm / balance


def is_liquidated(ratio: float, rules: VenueRules) -> bool:
    """Binance/Bybit liquidate when the ratio reaches 1; Hyperliquid/dYdX only above it."""
    return ratio >= 1.0 if rules.equality_liquidates else ratio > 1.0


# --- liquidation prices -------------------------------------------------------------------

# A position's value is linear in x = price (linear contracts) or x = 1/price (inverse
# contracts) between breakpoints; so is its PnL and, within a tier, its MM. Between the
# breakpoints of one symbol (tier edges, the settle asset's equity crossing zero or a haircut
# band) the account's surplus is therefore exactly linear in x and each segment is solved
# in closed form. This is Binance's formula generalised to tiers, hedge mode and haircuts.


@dataclass(frozen=True, slots=True)
class _Group:
    """The positions sharing one price (one symbol, or one isolated position)."""

    positions: tuple[Position, ...]
    inverse: bool


def _x(price: float, inverse: bool) -> float:
    return 1.0 / price if inverse else price


def _price(x: float, inverse: bool) -> float:
    return 1.0 / x if inverse else x


def _tier_edges(group: _Group, rules: VenueRules) -> list[float]:
    edges: list[float] = []
    for p in group.positions:
        if rules.isolated_mm_on_entry and p.margin_mode == "isolated":
            continue
        size = p.contracts * p.contract_size
        if size <= 0:
            continue
        # notional = size × x in both cases (linear: size·price; inverse: size/price)
        edges.extend(t.max_notional / size for t in p.tiers[:-1] if math.isfinite(t.max_notional))
    return edges


def _pnl_slope(group: _Group) -> float:
    """d(PnL)/dx of the group, settle units: linear +size per long, inverse −size per long."""
    slope = sum(p.sign * p.contracts * p.contract_size for p in group.positions)
    return -slope if group.inverse else slope


def _solve(
    surplus: _Surplus,
    group: _Group,
    edges: Iterable[float],
    x_now: float,
) -> float | None:
    """Root of the piecewise-linear surplus(x) on x > 0 nearest x_now, as a price."""
    points = sorted({e for e in edges if e > 0 and math.isfinite(e)})
    bounds = [0.0, *points, INF]
    roots: list[float] = []
    previous_end: float | None = None
    for lo, hi in itertools.pairwise(bounds):
        span = hi - lo if math.isfinite(hi) else max(lo, x_now, 1e-12)
        x1 = lo + span / 3.0
        x2 = lo + 2.0 * span / 3.0
        f1, f2 = surplus(x1), surplus(x2)
        slope = (f2 - f1) / (x2 - x1)
        f_lo = f1 - slope * (x1 - lo)
        if previous_end is not None and (previous_end > 0) != (f_lo > 0):
            roots.append(lo)  # a jump across zero at an edge (OKX whole-position tiers)
        if slope != 0.0:
            root = x1 - f1 / slope
            if lo <= root <= hi:
                roots.append(root)
        previous_end = f1 + slope * (hi - x1) if math.isfinite(hi) else None
    # a root within rounding of x = 0 means "only at a price of zero" (or infinity): none
    roots = [x for x in roots if x > x_now * 1e-9]
    if not roots:
        return None
    best = min(roots, key=lambda x: abs(math.log(x / x_now)) if x > 0 else INF)
    return _price(best, group.inverse)


class _Surplus:
    """margin balance − MM of the pool as a function of one group's x, all else held.

    `moving` is the collateral asset priced by the same market (BTC collateral while
    BTC/USDT moves), which a real move takes along; every other price is held.
    """

    __slots__ = ("base", "books", "group", "moving", "rules", "settle")

    def __init__(
        self,
        group: _Group,
        rules: VenueRules,
        books: dict[str, AssetBook] | None,
        settle: str,
        *,
        base: float,
        moving: str | None = None,
    ) -> None:
        self.group = group
        self.rules = rules
        self.books = books
        self.settle = settle
        self.base = base
        self.moving = moving

    def __call__(self, x: float) -> float:
        price = _price(x, self.group.inverse)
        pnl = 0.0
        mm = 0.0
        for p in self.group.positions:
            pnl += pnl_at(p, price)
            mm += computed_maintenance_margin(p, self.rules, price)
        if self.books is None:  # isolated: the position's own margin, in the settle asset
            return self.base + pnl - mm
        book = self.books[self.settle]
        total = self.base + book.surplus(book.pnl + pnl, book.mm + mm)
        if self.moving is not None:
            moving = self.books[self.moving]
            total += moving.surplus(moving.pnl, moving.mm, price)
        return total


def liquidation_prices(
    snapshot: AccountSnapshot,
    books: dict[str, AssetBook],
    figures: Sequence[tuple[float, float, float]],
) -> list[float | None]:
    """Liquidation price of every position (cross ones share one price per symbol)."""
    rules = snapshot.rules
    result: list[float | None] = [None] * len(snapshot.positions)
    by_symbol: dict[str, list[int]] = {}
    for i, p in enumerate(snapshot.positions):
        if p.contracts <= 0 or p.mark_price <= 0:
            continue
        if p.margin_mode == "isolated":
            if not p.inverse and not (rules.isolated_mm_on_entry and p.margin_mode == "isolated"):
                fast = _walk_linear(p, rules, k=isolated_margin_of(p), equity=0.0, rate=1.0,
                                    ask=1.0)
                if fast is None or not math.isnan(fast):
                    result[i] = fast
                    continue
            group = _Group((p,), p.inverse)
            surplus = _Surplus(group, rules, None, "", base=isolated_margin_of(p))
            x_now = _x(p.mark_price, p.inverse)
            edges = _tier_edges(group, rules)
            result[i] = _solve(surplus, group, edges, x_now)
        else:
            by_symbol.setdefault(p.symbol, []).append(i)

    if not by_symbol:
        return result
    pool = {a: b.surplus(b.pnl, b.mm) for a, b in books.items()}
    pool_total = sum(pool.values())
    several_assets = len(books) > 1
    for indices in by_symbol.values():
        first = snapshot.positions[indices[0]]
        settle = first.settle or snapshot.currency
        book = books[settle]
        moving = (
            _moving_asset(first, snapshot.currency, books, settle) if several_assets else None
        )
        base = pool_total - pool[settle] - (pool[moving] if moving else 0.0)
        # take this symbol's current contribution out of its settle asset's book
        own_pnl = sum(figures[i][0] for i in indices)
        own_mm = sum(figures[i][2] for i in indices)
        book.pnl -= own_pnl
        book.mm -= own_mm
        try:
            lp = _cross_liquidation_price(snapshot, rules, indices, book, base=base, moving=moving)
        finally:
            book.pnl += own_pnl
            book.mm += own_mm
        for i in indices:
            result[i] = lp
    return result


def _cross_liquidation_price(
    snapshot: AccountSnapshot,
    rules: VenueRules,
    indices: Sequence[int],
    book: AssetBook,
    *,
    base: float,
    moving: str | None,
) -> float | None:
    """LP of one symbol's cross positions; `book` holds every other position's share."""
    first = snapshot.positions[indices[0]]
    c = book.collateral
    if len(indices) == 1 and not first.inverse and moving is None and not c.haircut_tiers:
        ask = book.ask
        fast = _walk_linear(
            first,
            rules,
            k=base - ask * book.mm,
            equity=c.amount + book.pnl,
            rate=c.price * (1.0 - c.haircut),
            ask=ask,
        )
        if fast is None or not math.isnan(fast):
            return fast
    group = _Group(tuple(snapshot.positions[i] for i in indices), first.inverse)
    settle = first.settle or snapshot.currency
    surplus = _Surplus(group, rules, {settle: book, **({moving: _book_of(snapshot, moving)}
                                                       if moving else {})},
                       settle, base=base, moving=moving)
    x_now = _x(first.mark_price, group.inverse)
    edges = _tier_edges(group, rules)
    edges.extend(_equity_edges(book, group, x_now))
    if moving is not None:
        edges.extend(_value_edges(_book_of(snapshot, moving)))
    return _solve(surplus, group, edges, x_now)


def _book_of(snapshot: AccountSnapshot, asset: str) -> AssetBook:
    """A collateral asset's book; only used for assets no cross position settles in."""
    return AssetBook(next(c for c in snapshot.collateral if c.asset == asset))


def _equity_edges(book: AssetBook, group: _Group, x_now: float) -> list[float]:
    """x where the settle asset's equity crosses zero or a haircut band edge."""
    slope = _pnl_slope(group)
    if slope == 0.0:
        return []
    price = _price(x_now, group.inverse)
    equity_now = book.collateral.amount + book.pnl + sum(pnl_at(p, price) for p in group.positions)
    return [x_now + (level - equity_now) / slope for level in asset_breakpoints(book.collateral)]


def _moving_asset(
    p: Position, currency: str, books: dict[str, AssetBook], settle: str
) -> str | None:
    """The collateral asset a linear X/<currency> market re-prices (see `with_prices`)."""
    if p.inverse or quote_asset(p.symbol) != currency:
        return None
    asset = base_asset(p.symbol)
    if asset in (settle, currency) or asset not in books:
        return None
    return asset


def _value_edges(book: AssetBook) -> list[float]:
    """Prices where value-based haircut bands of a re-priced collateral asset change slope."""
    c = book.collateral
    equity = c.amount + book.pnl
    if c.tier_basis != "value" or equity <= 0:
        return []
    return [band.up_to / equity for band in c.haircut_tiers if math.isfinite(band.up_to)]


def _walk_linear(
    p: Position, rules: VenueRules, *, k: float, equity: float, rate: float, ask: float
) -> float | None:
    """Closed-form LP of a lone linear position, walking tiers outward from the current one.

    surplus(x) = k + rate·(equity + s·q·(x − entry)) − ask·(q·x·mmr_t − deduction_t): the
    Binance formula, re-solved in the neighbouring tier when the answer falls outside the
    tier it assumed (the FAQ's instruction). Monotone by construction, so the root is unique.
    Returns NaN when the shortcut's assumptions fail (then the general solver runs).
    """
    q = p.contracts * p.contract_size
    sign = p.sign
    tiers = p.tiers
    n = len(tiers)
    i = 0
    if n:
        notional = q * p.mark_price
        while i < n - 1 and notional > tiers[i].max_notional:
            i += 1
    heading = 0
    for _ in range(n + 2):
        if n:
            tier = tiers[i]
            mmr = tier.mmr
            deduction = tier.maintenance_amount if rules.tier_deduction else 0.0
            lo = tiers[i - 1].max_notional / q if i else 0.0
            hi = tier.max_notional / q if i < n - 1 else math.inf
        else:
            mmr, deduction, lo, hi = (p.mmr or 0.0), 0.0, 0.0, math.inf
        slope = q * (rate * sign - ask * mmr)
        if slope * sign <= 0.0:
            return math.nan
        x = -(k + rate * (equity - sign * q * p.entry_price) + ask * deduction) / slope
        if x < lo:
            step = -1
        elif x > hi:
            step = 1
        else:
            if rate != ask and equity + sign * q * (x - p.entry_price) <= 0.0:
                return math.nan  # the settle asset went negative: another valuation rate
            return x if x > p.mark_price * 1e-9 else None  # ~0 is rounding: none
        if heading and step != heading:
            return lo if step < 0 else hi  # surplus jumps across zero at this tier edge (OKX)
        heading = step
        i += step
        if i < 0:
            return None  # the root is at a price ≤ 0: nothing liquidates
        if i >= max(n, 1):
            return math.nan
    return math.nan
