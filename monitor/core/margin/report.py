"""Margin math: one account snapshot in, one `MarginReport` out. Pure; no I/O, no clock.

The valuation (position figures, collateral haircuts, the cross pool per asset) lives in
`monitor.core.margin.valuation`, the liquidation-price solver in
`monitor.core.margin.liquidation`; this module puts them together in the report the daemon,
the CLI and every sink read:

- margin ratio = maintenance margin / margin balance (Binance, Bybit: liquidation when it
  reaches 100 %); +inf once the balance is gone, never a division error; 0 when nothing
  is open in the cross pool (an empty pool is no risk: `valuation.margin_ratio`);
- margin level = its inverse; free collateral = margin balance − initial margin;
- `liquidated` follows the venue: Binance/Bybit at equality, Hyperliquid/dYdX strictly above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from monitor.core.margin.liquidation import Kept, position_risks
from monitor.core.margin.valuation import (
    AssetBook,
    asset_value,
    computed_initial_margin,
    computed_maintenance_margin,
    margin_ratio,
    pnl_at,
    pool,
    surplus,
    tier_for,
)
from monitor.core.model import AccountSnapshot, MarginReport
from monitor.core.venue_rules import VenueRules

__all__ = [
    "assemble",
    "computed_initial_margin",
    "computed_maintenance_margin",
    "is_liquidated",
    "pnl_at",
    "ratio_of",
    "report",
    "surplus",
    "tier_for",
]

INF = math.inf


def report(snapshot: AccountSnapshot) -> MarginReport:
    """Value the account at its current prices: totals, ratios and liquidation prices."""
    return assemble(snapshot, *pool(snapshot))


def assemble(
    snapshot: AccountSnapshot,
    books: dict[str, AssetBook],
    pnl: Sequence[float],
    im: Sequence[float],
    mm: Sequence[float],
    *,
    kept: Kept | None = None,
) -> MarginReport:
    """The report of `snapshot` from its pool: the per-asset books and each position's
    pnl, im and mm in its settle asset (`valuation.pool`).

    The one place a report is put together: `report` pools the snapshot from scratch, the
    `Ledger` hands over the pool it keeps tick by tick (`Ledger.report`), so a routine
    report skips re-valuing the positions that did not move, and what it keeps of the last
    report's liquidation work (`kept`: `liquidation.Kept`), so a walk resumes where it
    stopped and a line that still holds is taken as it was.
    """
    rules = snapshot.rules
    # one pass over the books, each sum in the order `sum` and `_balance_and_mm` take
    wallet = upnl = balance = total_mm = total_im = 0.0
    for b in books.values():
        c = b.collateral
        ask = b.ask
        wallet += asset_value(c, c.amount)
        upnl += b.pnl * c.price
        balance += asset_value(c, c.amount + b.pnl)
        total_mm += b.mm * ask
        total_im += b.im * ask
    risks, exposed = position_risks(snapshot, books, pnl, im, mm, kept=kept)
    ratio = margin_ratio(total_mm, balance, exposed=exposed)
    level = INF if ratio == 0 else balance / total_mm if balance > 0 else 0.0
    model: Literal["cross", "venue", "estimate"] = "cross"
    venue = snapshot.venue_margin
    if venue is not None:
        # Portfolio margin (docs/collateral.md): the venue's figure is the live ratio, never ours.
        model = "estimate"
        if venue.margin_ratio is not None:
            model = "venue"
            ratio = venue.margin_ratio
            if venue.margin_balance is not None:
                balance = venue.margin_balance
            if venue.maintenance_margin is not None:
                total_mm = venue.maintenance_margin
            elif math.isfinite(ratio):
                total_mm = ratio * balance
            level = (1.0 / ratio if ratio > 0 else INF) if math.isfinite(ratio) else 0.0
    return MarginReport(
        account=snapshot.account,
        currency=snapshot.currency,
        wallet_balance=wallet,
        unrealized_pnl=upnl,
        margin_balance=balance,
        initial_margin=total_im,
        maintenance_margin=total_mm,
        margin_ratio=ratio,
        margin_level=level,
        free_collateral=balance - total_im,
        liquidated=is_liquidated(ratio, rules),
        positions=tuple(risks),
        model=model,
        # ours is the used ratio until a venue figure says otherwise (venue_ratio.with_venue,
        # which then has nothing to copy for the usual account: no venue ratio read)
        model_ratio=ratio,
    )


def ratio_of(snapshot: AccountSnapshot) -> float:
    """`report(snapshot).margin_ratio`, without the liquidation prices and position lines.

    The planner values ~15 reduced books per plan and previews a plan for the alert at the
    action level (issue 14), on the tick -> alert path; the liquidation prices were 70 % of
    each valuation. `stress.ReducedRatios` is the planner's fast path and the reference it
    is tested against is this function of `stress.reduced`'s book.
    """
    books = pool(snapshot)[0]
    balance, total_mm = _balance_and_mm(books)
    exposed = any(p.margin_mode == "cross" for p in snapshot.positions)
    return margin_ratio(total_mm, balance, exposed=exposed)


def _balance_and_mm(books: Mapping[str, AssetBook]) -> tuple[float, float]:
    """The cross pool's margin balance and maintenance margin in the report currency."""
    balance = sum(asset_value(b.collateral, b.collateral.amount + b.pnl) for b in books.values())
    return balance, sum(b.mm * b.ask for b in books.values())


def is_liquidated(ratio: float, rules: VenueRules) -> bool:
    """Binance/Bybit liquidate when the ratio reaches 1; Hyperliquid/dYdX only above it."""
    return ratio >= 1.0 if rules.equality_liquidates else ratio > 1.0
