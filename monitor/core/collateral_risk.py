"""Collateral risk in the user's terms: how much of the margin is non-stable collateral, and
which fall of one collateral asset alone liquidates the account.

The seed article's warning ("using BTC as collateral for a USDT contract ... a 20 % drop in
BTC decreases your available margin by 20 % instantly") is a question about one asset, not
the market: the uniform shock (`stress.shock_to_liquidation`) moves every price at once and
hides that a BTC-heavy collateral pool dies on a BTC fall the positions alone would survive.

"A fall of X % in <asset> alone" moves that asset's price everywhere the account sees it: the
collateral (valued after its haircut, `valuation.asset_value`) and every contract on that
asset (its mark is the asset's price); every other price holds. X is the smallest fall in
(−100 %, 0] that takes the account to ratio 1 (`None`: not even a fall to zero does), found
like the shock solve: a geometric bracket then regula falsi on the piecewise-linear surplus.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import replace

from monitor.core.margin.valuation import (
    asset_value,
    computed_maintenance_margin,
    pnl_at,
    surplus_at,
)
from monitor.core.model import (
    STABLE_ASSETS,
    AccountSnapshot,
    Collateral,
    CollateralFall,
    CollateralRisk,
    base_asset,
)
from monitor.core.stress import first_crossing

__all__ = ["collateral_risk", "describe", "fall_to_liquidation", "non_stable"]


def non_stable(snapshot: AccountSnapshot) -> list[str]:
    """Assets held (positive balance) whose price moves: not the report currency, not a
    stablecoin."""
    return [
        c.asset
        for c in snapshot.collateral
        if c.amount > 0 and c.asset != snapshot.currency and c.asset not in STABLE_ASSETS
    ]


def fall_to_liquidation(snapshot: AccountSnapshot, asset: str) -> float | None:
    """Smallest fall of `asset`'s price alone, in (−1, 0], that liquidates; None if none.

    0.0 means the account is already at or past liquidation.
    """
    base = _scheduled(snapshot)
    return _fall(base, _Pool(base), asset)


def _scheduled(snapshot: AccountSnapshot) -> AccountSnapshot:
    """Every figure from the schedule: a move recomputes what the venue reported."""
    return replace(
        snapshot, positions=tuple(p.scheduled() for p in snapshot.positions), venue_margin=None
    )


class _Pool:
    """Each cross position's (settle asset, PnL, MM) at its mark, and their sums per settle
    asset: computed once for all the assets solved (the O(positions) part of the solve)."""

    def __init__(self, base: AccountSnapshot) -> None:
        rules, currency = base.rules, base.currency
        self.rows: list[tuple[int, str, float, float]] = []
        self.pnl: dict[str, float] = {}
        self.owed: dict[str, float] = {}
        for i, p in enumerate(base.positions):
            if p.margin_mode != "cross":
                continue
            settle = p.settle or currency
            pnl = pnl_at(p, p.mark_price)
            mm = computed_maintenance_margin(p, rules, p.mark_price)
            self.rows.append((i, settle, pnl, mm))
            self.pnl[settle] = self.pnl.get(settle, 0.0) + pnl
            self.owed[settle] = self.owed.get(settle, 0.0) + mm


def _fall(base: AccountSnapshot, pool: _Pool, asset: str) -> float | None:
    price = next((c.price for c in base.collateral if c.asset == asset), None)
    if price is None:
        return None
    reduced, fixed = _only_what_moves(base, pool, asset)
    marks = [(p.mark_price, base_asset(p.symbol) == asset) for p in reduced.positions]

    def surplus(s: float) -> float:
        factor = max(1e-9, 1.0 + s)  # a price of 0 makes inverse contracts' value infinite
        return fixed + surplus_at(
            reduced, [m * factor if moves else m for m, moves in marks], {asset: price * factor}
        )

    return first_crossing(surplus, -1.0)


def _only_what_moves(
    base: AccountSnapshot, pool: _Pool, asset: str
) -> tuple[AccountSnapshot, float]:
    """The account reduced to what `asset`'s price moves, and the surplus that stays fixed.

    A position neither on nor settled in `asset` keeps its PnL and MM whatever `asset` does:
    its PnL is folded into its settle asset's balance (a balance's value depends on the
    asset's whole equity, so it cannot be split off) and its MM owed, linear in a price that
    does not move, into a constant. Exact, and each solve step then costs O(moving
    positions) instead of O(positions) (bench/collateral_risk.py).
    """
    pnl, owed = dict(pool.pnl), dict(pool.owed)
    moving = []
    for i, settle, p_pnl, p_mm in pool.rows:
        p = base.positions[i]
        if settle == asset or base_asset(p.symbol) == asset:
            moving.append(p)
            pnl[settle] -= p_pnl
            owed[settle] -= p_mm
    pnl.pop(asset, None)
    owed.pop(asset, None)
    collateral = [
        replace(c, amount=c.amount + pnl.pop(c.asset)) if c.asset in pnl else c
        for c in base.collateral
    ]
    collateral += [Collateral(a, amount) for a, amount in pnl.items()]  # no balance: price 1
    rate = {c.asset: c.price * (1.0 + c.liability_markup) for c in collateral}
    fixed = -sum(mm * rate.get(a, 1.0) for a, mm in owed.items())
    return replace(base, positions=tuple(moving), collateral=tuple(collateral)), fixed


def collateral_risk(snapshot: AccountSnapshot, margin_balance: float) -> CollateralRisk:
    """Each non-stable asset's margin value (after haircut), its share of `margin_balance`
    (the report's), and its fall to liquidation; largest value first."""
    falls = []
    total = 0.0
    moving = set(non_stable(snapshot))
    base = _scheduled(snapshot) if moving else snapshot
    pool = _Pool(base) if moving else None
    for c in snapshot.collateral:
        if c.asset not in moving or pool is None:
            continue
        value = asset_value(c, c.amount)
        total += value
        falls.append(
            CollateralFall(
                asset=c.asset,
                value=value,
                share=value / margin_balance if margin_balance > 0 else None,
                fall=_fall(base, pool, c.asset),
            )
        )
    falls.sort(key=lambda f: f.value, reverse=True)
    return CollateralRisk(
        non_stable_share=total / margin_balance if margin_balance > 0 else None,
        assets=tuple(falls),
    )


def describe(risk: CollateralRisk) -> list[str]:
    """The collateral risk as sentences a person reads (TUI, `report`, phone text)."""
    if not risk.assets:
        return []
    lines = []
    if risk.non_stable_share is not None:
        lines.append(f"{risk.non_stable_share:.1%} of the margin balance is non-stable collateral.")
    for a in risk.assets:
        if a.fall is None:
            lines.append(f"{a.asset}: no fall of {a.asset} alone liquidates.")
        elif a.fall == 0.0:
            lines.append(f"{a.asset}: the account is already at liquidation.")
        else:
            lines.append(
                f"{a.asset}: a fall of {-a.fall:.1%} in {a.asset} alone liquidates this account."
            )
    return lines
