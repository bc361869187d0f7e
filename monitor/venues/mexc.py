"""MEXC futures (`mexc`).

Sources: mexcdevelop.github.io/apidocs/contract_v1_en (contract/detail, contract/ticker,
private/account/assets, private/position/open_positions), docs/venues.md.

- Positions carry no mark (read from the contract ticker, `fairPrice`) and no maintenance
  figure; the risk tiers are in contracts (not attached).
- No endpoint states a key's futures rights (contract API v1; spot `GET /api/v3/account`'s
  `canTrade` / `permissions: ["SPOT"]` describe the spot account only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from monitor.venues import base


def base_mmr(market: base.Json) -> float | None:
    """MEXC: positions carry no maintenance figure and the risk tiers are in contracts;
    the contract's base `maintenanceMarginRate` (contract/detail docs) is the rate of the
    first risk level, which is where all but very large positions sit."""
    info = market.get("info")
    if not isinstance(info, Mapping):
        return None
    try:
        rate = float(info.get("maintenanceMarginRate"))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return rate if 0 < rate < 1 else None


def wallets(info: base.Json) -> Iterable[tuple[str, float, float | None]]:
    """MEXC contract `/api/v1/private/account/assets`: `cashBalance` (excl. unrealized)."""
    for row in base.rows(info.get("data")):
        yield str(row.get("currency")), base.as_float(row.get("cashBalance"), "cashBalance"), None


# MEXC: contract API v1 (account/assets, position endpoints) carries no key rights;
# spot GET /api/v3/account's canTrade/permissions ["SPOT"] describe the spot account only
trade_permission = base.unpublished("MEXC")


def position_mmr(row: base.Json, market: base.Json, mm: float | None, where: str) -> float | None:
    del row, where
    return base_mmr(market) if mm is None else None


VENUE = base.Venue(
    ("mexc",),
    "mexcdevelop.github.io/apidocs/contract_v1_en",
    # risk tiers are in contracts (`riskIncrVol`), not notional: the base rate is used
    tiers_in_contracts=True,
    positions=base.PositionQuirks(mmr=position_mmr),
    balance=base.BalanceQuirks(base.mapping_wallets(wallets)),
    account=base.AccountQuirks(trade_permission=trade_permission),
)
