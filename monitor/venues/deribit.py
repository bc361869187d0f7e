"""Deribit (`deribit`): units differ (docs/margin-math.md; Deribit API get_positions)."""

from __future__ import annotations

from monitor.venues import base


def usd_size(contracts: float, contract_size: float) -> float:
    """Deribit futures: `size` (ccxt `contracts`) is in USD, signed ("Position size for
    futures size in quote currency", get_positions docs), while the market's contract size
    is 10 USD (BTC) or 1 USD (ETH); the count of contracts is |size| / contract size."""
    return abs(contracts) / contract_size


def percent_units(rate: float | None) -> float | None:
    """Deribit: ccxt's margin percentages are × 100 (percent units), unlike the fractions
    of Binance/OKX/Bybit (docs/margin-math.md)."""
    return None if rate is None else rate / 100.0


def unsigned(contracts: float, side: str | None) -> tuple[float, str | None]:
    """`size` is signed; the side is ccxt's `direction`."""
    return abs(contracts), side


def units(contracts: float, contract_size: float, market: base.Json) -> tuple[float, float]:
    if market.get("inverse"):
        return usd_size(contracts, contract_size), contract_size
    return contracts, contract_size


def position_mmr(row: base.Json, market: base.Json, mm: float | None, where: str) -> float | None:
    del market, mm
    return percent_units(base.number(row, "maintenanceMarginPercentage", where, required=False))


VENUE = base.Venue(
    ("deribit",),
    "docs.deribit.com",
    positions=base.PositionQuirks(contracts=unsigned, units=units, mmr=position_mmr),
)
