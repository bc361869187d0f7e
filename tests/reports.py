"""Reports built from a margin ratio alone, for the rule, pipeline and store tests."""

from __future__ import annotations

import math

from monitor.core.model import MarginReport, ShockToLiquidation


def ratio_report(ratio: float, account: str = "acct", shock: float | None = None) -> MarginReport:
    """A report whose only meaningful figures are the ratio and, if given, the downward
    shock that liquidates (a fraction of the price)."""
    return MarginReport(
        account=account,
        currency="USDT",
        wallet_balance=1000.0,
        unrealized_pnl=0.0,
        margin_balance=1000.0,
        initial_margin=0.0,
        maintenance_margin=ratio * 1000.0,
        margin_ratio=ratio,
        margin_level=math.inf if ratio == 0 else 1 / ratio,
        free_collateral=1000.0,
        liquidated=ratio >= 1,
        positions=(),
        shock_to_liquidation=None if shock is None else ShockToLiquidation(down=-shock, up=None),
    )
