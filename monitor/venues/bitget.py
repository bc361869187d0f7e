"""Bitget USDT-M futures, classic (v2 mix) accounts (`bitget`).

Sources: www.bitget.com/api-doc (contract/position/get-all-position, contract/account/
Get-Account-List, contract/market/Get-Discount-Rate, spot/account/Get-Account-Info), Bitget
help "Introduction to USDT-M Futures in Multi-Asset Mode", docs/venues.md and
docs/collateral.md.

- **Collateral.** `GET /api/v2/mix/account/accounts` `assetMode`: "single" (USDT only)
  or "union" (multi-asset); in union mode `GET /api/v2/mix/market/discount-rate` publishes
  each coin's discount-rate tiers in USDT value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monitor.venues import base


def keep_margin(row: base.Json, where: str) -> float | None:
    """Bitget: MM = position value × `keepMarginRate` (v2 all-position docs); ccxt's
    `maintenanceMargin` adds the taker fee to the rate (closing cost), which Bitget's
    account risk rate does not count."""
    rate = base.info_number(row, "keepMarginRate", where)
    contracts = base.number(row, "contracts", where, required=False)
    size = base.number(row, "contractSize", where, required=False) or 1.0
    mark = base.number(row, "markPrice", where, required=False)
    if rate is None or contracts is None or mark is None:
        return None
    return abs(contracts) * size * mark * rate


def wallets(info: object) -> Iterable[tuple[str, float, float | None]]:
    """Bitget mix `/api/v2/mix/account/accounts`: `accountEquity − unrealizedPL`."""
    for row in base.rows(info):
        equity = base.as_float(row.get("accountEquity"), "accountEquity")
        upnl = base.as_float(row.get("unrealizedPL") or 0, "unrealizedPL")
        yield str(row.get("marginCoin")), equity - upnl, None


#: Bitget USDT-M `assetMode` (Get Account List): "single" (USDT only) or "union" (multi-asset).
_MODES: dict[str, base.Mode] = {"single": "single_asset", "union": "multi_assets"}


def _data(answer: object, where: str) -> list[Mapping[str, Any]]:
    return base.answer_rows(answer.get("data") if isinstance(answer, Mapping) else None, where)


async def collateral_rules(exchange: Any, now: float) -> base.CollateralRules:
    """Bitget USDT-M futures: the account's `assetMode` (`privateMixGetV2MixAccountAccounts`,
    GET /api/v2/mix/account/accounts, api-doc contract/account/Get-Account-List) and, in
    union (multi-asset) mode, each coin's discount-rate tiers
    (`publicMixGetV2MixMarketDiscountRate`, GET /api/v2/mix/market/discount-rate, api-doc
    contract/market/Get-Discount-Rate: `discountRateList[].maxAmount`, "-1" for no cap, and
    `discountRate`). The tiers are USDT value, applied marginally: Bitget help "Introduction
    to USDT-M Futures in Multi-Asset Mode" counts 10 BTC at 60,000 as "the first 100,000
    USDT" at 0.975, "the next 400,000 USDT" at 0.97, and so on; a coin with no tier list
    (USDT) counts in full."""
    accounts = _data(
        await exchange.privateMixGetV2MixAccountAccounts({"productType": "USDT-FUTURES"}),
        "bitget accounts",
    )
    usdt = next(
        (r for r in accounts if r.get("marginCoin") == "USDT"), accounts[0] if accounts else {}
    )
    asset_mode = str(usdt.get("assetMode"))
    if asset_mode not in _MODES:
        raise base.MalformedPayload(
            f"bitget accounts: assetMode {asset_mode!r} is not single/union"
        )
    if _MODES[asset_mode] != "multi_assets":
        return base.CollateralRules(exchange.id, _MODES[asset_mode], {}, now)
    assets: dict[str, base.AssetRule] = {}
    for row in _data(await exchange.publicMixGetV2MixMarketDiscountRate(), "bitget discount-rate"):
        coin = str(row.get("coin"))
        bands = base.haircut_bands(
            row.get("discountRateList"), "maxAmount", "discountRate", f"bitget discount-rate {coin}"
        )
        assets[coin] = base.AssetRule(coin, haircut_tiers=bands, tier_basis="value")
    return base.CollateralRules(exchange.id, "multi_assets", assets, now)


async def trade_permission(exchange: Any, balance: Mapping[str, Any]) -> str:
    # Get Account Information (v2): `coow` is the futures order-write authority
    data = base.envelope_data(await exchange.privateSpotGetV2SpotAccountInfo())
    rights = data.get("authorities") if isinstance(data, Mapping) else None
    if isinstance(rights, list):
        return (
            base.CAN_TRADE
            if "coow" in rights
            else f"read-only (authorities {sorted(map(str, rights))} lack coow)"
        )
    return base.UNKNOWN


def figures(venue: str, info: object) -> base.VenueFigures | None:
    """mix accounts `crossedRiskRate`: the cross account's risk rate (liquidation at 1)."""
    if not isinstance(info, list) or not info:
        return None
    rate = info[0].get("crossedRiskRate")
    if rate in (None, ""):
        return None
    return base.VenueFigures(
        venue, base.as_float(rate, "crossedRiskRate"), source_fields="crossedRiskRate"
    )


def _wallet_list(info: object) -> list[base.Wallet]:
    return list(wallets(info))  # the accounts answer is a list: always read, never `total`


VENUE = base.Venue(
    ("bitget",),
    "www.bitget.com/api-doc",
    positions=base.PositionQuirks(maintenance_margin=keep_margin),
    balance=base.BalanceQuirks(_wallet_list, figures),
    account=base.AccountQuirks(collateral_rules, trade_permission=trade_permission),
)
