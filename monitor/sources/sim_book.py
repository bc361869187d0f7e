"""The sim's account and markets, and the sell-off script solved from them. Pure.

- The book (`DEMO_BOOK`): BTC long, ETH short and SOL long on a USDT wallet, with BTC held
  as collateral, each market with a Binance-style tier table (cumulative deduction, as
  docs/margin-math.md describes). The sim publishes its collateral rules as Binance
  Multi-Assets Mode does (`asset_index()`: a 5 % BTC bid buffer), parsed by the same
  `venues/binance.py rules_from_binance` as a live read (docs/collateral.md).
- The sell-off (`selloff_keyframes`): keyframes of the market factor solved from the book
  itself, so the margin ratio passes 0.35 → 0.6 → 0.78 → 0.88 and recovers, i.e. warning →
  critical → emergency → resolved at the default thresholds (prices: `sim_prices.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from monitor.core.margin import report as margin
from monitor.core.model import AccountSnapshot, Collateral, Position, Side, Tier, priced_collateral
from monitor.sources.collateral_rules import apply_rules
from monitor.sources.sim_prices import Keyframe
from monitor.venues.base import CollateralRules
from monitor.venues.binance import rules_from_binance

__all__ = [
    "DEMO_BOOK",
    "VENUE",
    "SimBook",
    "SimMarket",
    "asset_index",
    "book_positions",
    "marked_collateral",
    "published_rules",
    "selloff_keyframes",
]

#: the sim follows Binance USDⓈ-M conventions (mark value, cumulative tiers)
VENUE = "binanceusdm"


@dataclass(frozen=True, slots=True)
class SimMarket:
    """One linear USDT perpetual of the sim, with the figures ccxt's `market()` reports."""

    symbol: str
    price0: float
    beta: float
    tiers: tuple[Tier, ...]
    leverage: float
    amount_step: float
    min_amount: float


@dataclass(frozen=True, slots=True)
class SimBook:
    """The account the sim starts from."""

    currency: str
    markets: tuple[SimMarket, ...]
    positions: tuple[tuple[str, Side, float, float], ...]  # symbol, side, contracts, entry
    collateral: tuple[Collateral, ...]  # balances as held; haircuts come from the rules
    #: (asset, bidBuffer, askBuffer) the sim publishes in Binance's assetIndex format;
    #: empty: Single-Asset Mode
    asset_buffers: tuple[tuple[str, float, float], ...] = ()


# Tier tables in the shape of Binance USDⓈ-M's leverage brackets (docs/margin-math.md);
# the numbers are illustrative, the cumulative deductions keep MM continuous at each edge.
DEMO_BOOK = SimBook(
    currency="USDT",
    markets=(
        SimMarket(
            "BTC/USDT:USDT",
            64000.0,
            1.0,
            (
                Tier(50_000, 0.004, 0),
                Tier(250_000, 0.005, 50),
                Tier(1_000_000, 0.01, 1_300),
                Tier(10_000_000, 0.025, 16_300),
            ),
            leverage=20,
            amount_step=0.001,
            min_amount=0.001,
        ),
        SimMarket(
            "ETH/USDT:USDT",
            3400.0,
            1.2,
            (
                Tier(10_000, 0.005, 0),
                Tier(100_000, 0.0065, 15),
                Tier(500_000, 0.01, 365),
                Tier(5_000_000, 0.02, 5_365),
            ),
            leverage=20,
            amount_step=0.01,
            min_amount=0.01,
        ),
        SimMarket(
            "SOL/USDT:USDT",
            140.0,
            1.6,
            (
                Tier(5_000, 0.01, 0),
                Tier(50_000, 0.015, 25),
                Tier(250_000, 0.025, 525),
                Tier(2_000_000, 0.05, 6_775),
            ),
            leverage=10,
            amount_step=0.1,
            min_amount=0.1,
        ),
    ),
    positions=(
        ("BTC/USDT:USDT", "long", 1.5, 62000.0),
        ("ETH/USDT:USDT", "short", 12.0, 3300.0),
        ("SOL/USDT:USDT", "long", 400.0, 150.0),
    ),
    collateral=(
        Collateral("USDT", 10_000.0),
        Collateral("BTC", 0.25, 64000.0),
    ),
    asset_buffers=(("USDT", 0.0, 0.0), ("BTC", 0.05, 0.05)),
)


def asset_index(book: SimBook, marks: Mapping[str, float], now: float) -> list[dict[str, Any]]:
    """`GET /fapi/v1/assetIndex` as the sim publishes it (Multi-Assets-Mode-Asset-Index
    format: index, buffers, rates as strings); an asset's index is its USDT market's mark
    (the sim takes USDT as its USD)."""
    rows = []
    for asset, bid, ask in book.asset_buffers:
        index = marks.get(f"{asset}/{book.currency}:{book.currency}", 1.0)
        rows.append(
            {
                "symbol": f"{asset}USD",
                "time": int(now * 1000),
                "index": f"{index:.8f}",
                "bidBuffer": f"{bid:.8f}",
                "askBuffer": f"{ask:.8f}",
                "bidRate": f"{index * (1 - bid):.8f}",
                "askRate": f"{index * (1 + ask):.8f}",
            }
        )
    return rows


def published_rules(book: SimBook, marks: Mapping[str, float], now: float) -> CollateralRules:
    """The sim's collateral rules, through the same parser as a live Binance read."""
    mode = {"multiAssetsMargin": bool(book.asset_buffers)}
    return rules_from_binance(VENUE, mode, asset_index(book, marks, now), now)


# (sim seconds, target margin ratio or None for the calm start price): the sell-off script.
_SELLOFF_SCRIPT: tuple[tuple[float, float | None], ...] = (
    (0.0, None),
    (8.0, None),
    (20.0, 0.35),
    (28.0, 0.6),
    (36.0, 0.78),
    (44.0, 0.88),
    (52.0, 0.88),
    (64.0, 0.3),
    (80.0, None),
)


def selloff_keyframes(book: SimBook, venue: str | None = None) -> tuple[Keyframe, ...]:
    """Keyframes of the market factor that put `book` at each scripted margin ratio.

    Solved by bisection on the book's own report, so the script crosses the alert levels
    whatever the book holds (as long as a fall of the market hurts it).
    """
    frames = []
    for t, target in _SELLOFF_SCRIPT:
        frames.append(Keyframe(t, 1.0 if target is None else _factor_for(book, target, venue)))
    return tuple(frames)


def _factor_for(book: SimBook, target: float, venue: str | None) -> float:
    lo, hi = 0.01, 1.0  # ratio(lo) >= target > ratio(hi) for a book hurt by a fall
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if margin.report(_book_at(book, mid, venue)).margin_ratio >= target:
            lo = mid
        else:
            hi = mid
    return hi


def _book_at(book: SimBook, m: float, venue: str | None) -> AccountSnapshot:
    prices = {mk.symbol: mk.price0 * m**mk.beta for mk in book.markets}
    positions = book_positions(book, prices)
    collateral = marked_collateral(book.collateral, prices, book.currency)
    collateral = apply_rules(collateral, published_rules(book, prices, 0.0), book.currency)
    return AccountSnapshot("sim", book.currency, collateral, positions, venue=venue)


def book_positions(book: SimBook, marks: Mapping[str, float]) -> tuple[Position, ...]:
    """The book's positions at `marks`, each with its market's leverage, tiers and beta."""
    markets = {mk.symbol: mk for mk in book.markets}
    return tuple(
        Position(
            symbol,
            side,
            contracts,
            entry,
            marks[symbol],
            leverage=markets[symbol].leverage,
            tiers=markets[symbol].tiers,
            beta=markets[symbol].beta,
        )
        for symbol, side, contracts, entry in book.positions
    )


def marked_collateral(
    held: Iterable[Collateral], marks: Mapping[str, float], currency: str
) -> tuple[Collateral, ...]:
    """Balances priced at the marks that price them (BTC at BTC/USDT:USDT's mark, as
    `core.model.priced_collateral` says); the others as they are."""
    prices = {}
    for symbol, price in marks.items():
        asset = priced_collateral(symbol, currency)
        if asset is not None:
            prices[asset] = price
    return tuple(replace(c, price=prices[c.asset]) if c.asset in prices else c for c in held)
