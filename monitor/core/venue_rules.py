"""Where venues differ on the same margin quantities, and each venue's rules.

Pure data: the report, the valuation and the liquidation solver read these flags instead of
asking which venue they run for (docs/margin-math.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VenueRules", "rules_for_venue"]


@dataclass(frozen=True, slots=True)
class VenueRules:
    """Where venues differ on the same quantities (docs/margin-math.md).

    - `isolated_mm_on_entry`: Bybit values an isolated position's MM on its entry value.
    - `tier_deduction`: cumulative tiers (Binance, Bybit, Hyperliquid) vs one rate for the
      whole position with no deduction (OKX).
    - `equality_liquidates`: Binance and Bybit liquidate when the ratio *reaches* 100 %;
      Hyperliquid and dYdX only when equity falls strictly *below* MM.
    - `liquidation_fee`: the taker fee rate the venue charges at liquidation and counts in
      its liquidation condition on top of the maintenance rate (docs/margin-edges.md). OKX: margin
      ratio = equity / (maintenance margin + liquidation fees), isolated "(Margin balance
      + PnL) / (Face value × |Contracts| × Mark price × (Tiered MMR + fee rate))"; Gate:
      "Liquidation Price = (Entry Price ± Margin / Contract Multiplier / Size) /
      [1 ± (Maintenance Margin Ratio + Taker Rate)]" (docs/margin-edges.md). The figure is
      the venues' base-tier perpetual taker fee (ccxt 4.5.90 `fees.swap.taker`: 0.05 %);
      a position's own `liquidation_fee` wins. Binance, Bybit, Hyperliquid: no such term.
    """

    isolated_mm_on_entry: bool = False
    tier_deduction: bool = True
    equality_liquidates: bool = True
    liquidation_fee: float = 0.0


_DEFAULT_RULES = VenueRules()
_VENUE_RULES: dict[str, VenueRules] = {
    "bybit": VenueRules(isolated_mm_on_entry=True),
    "okx": VenueRules(tier_deduction=False, liquidation_fee=0.0005),
    "gate": VenueRules(liquidation_fee=0.0005),
    "gateio": VenueRules(liquidation_fee=0.0005),
    "hyperliquid": VenueRules(equality_liquidates=False),
    "dydx": VenueRules(equality_liquidates=False),
    "deribit": VenueRules(equality_liquidates=False),
}


def rules_for_venue(venue: str | None) -> VenueRules:
    """Rules of a ccxt venue id; unknown or absent venues get the Binance conventions."""
    if venue is None:
        return _DEFAULT_RULES
    return _VENUE_RULES.get(venue.lower(), _DEFAULT_RULES)
