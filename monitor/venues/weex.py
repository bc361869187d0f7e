"""WEEX futures (`weex`).

Sources: www.weex.com/api-doc (contract allPosition, balance, symbolPrice; the FAQs on key
permissions), docs/venues.md. ccxt reports no maintenance figure, rate or tiers: the ratio is
an estimate (1 / (2 × max leverage), sources/normalize.py `_max_leverage_mmr`).
"""

from __future__ import annotations

from monitor.venues import base


def size_in_base(contract_size: float) -> float:
    """WEEX: position `size` is already in the base coin (ccxt derives the entry price as
    openValue / size, which only holds in base units), yet ccxt attaches the market's
    `contractVal` as contractSize; the size of one unit is therefore 1."""
    del contract_size
    return 1.0


# WEEX: the API FAQ names Readonly/Spot/Futures key permissions but no endpoint returns
# them; spot GET /api/v3/account/ lists spot rights (e.g. SPOT_TRADING) only; a key
# without Futures gets -1052 "Insufficient permissions" when it places an order
trade_permission = base.unpublished("WEEX")


def units(contracts: float, contract_size: float, market: base.Json) -> tuple[float, float]:
    del market
    return contracts, size_in_base(contract_size)


VENUE = base.Venue(
    ("weex",),
    "www.weex.com/api-doc",
    positions=base.PositionQuirks(units=units),
    account=base.AccountQuirks(trade_permission=trade_permission),
)
