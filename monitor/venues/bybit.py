"""Bybit v5 unified trading account (`bybit`).

Sources: bybit-exchange.github.io/docs/v5 (position/list, account/wallet-balance,
account/info, account/collateral-info, spot-margin-uta/tier-collateral-ratio,
user/apikey-info), Bybit Help "Assets-Collateral-Value-Ratio-List-UTA", docs/venues.md and
docs/collateral.md.

- **Collateral.** `GET /v5/account/info` (`privateGetV5AccountInfo`) `marginMode`:
  REGULAR_MARGIN (cross) or ISOLATED_MARGIN value collateral by ratio, PORTFOLIO_MARGIN is
  portfolio margin. `GET /v5/spot-margin-trade/collateral` (`publicGetV5SpotMarginTradeCollateral`,
  docs v5/spot-margin-uta/tier-collateral-ratio) publishes each coin's tiered collateral
  ratios in coin units ("" = infinity), applied marginally to a positive balance; a negative
  balance counts in full (Help "Assets-Collateral-Value-Ratio-List-UTA", docs/collateral.md).
  `GET /v5/account/collateral-info` (`privateGetV5AccountCollateralInfo`) says per coin
  whether the platform (`marginCollateral`) and the user (`collateralSwitch`) let it count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monitor.core.model import MarginMode
from monitor.venues import base


def margin_mode(row: base.Json) -> MarginMode:
    """Bybit v5: ccxt leaves marginMode None ("tradeMode was deprecated"); UTA reports
    `tradeMode` 1 only for isolated positions (v5 position/list docs)."""
    info = row.get("info")
    if isinstance(info, Mapping) and str(info.get("tradeMode")) == "1":
        return "isolated"
    return "cross"


def wallets(info: base.Json) -> Iterable[tuple[str, float, float | None]]:
    """Bybit UTA `/v5/account/wallet-balance` coins: `walletBalance` with the USD price
    implied by `usdValue / equity`; coins switched off as collateral are not margin."""
    result = info.get("result")
    accounts = base.rows(result.get("list")) if isinstance(result, Mapping) else []
    for account in accounts:
        for row in base.rows(account.get("coin")):
            if row.get("marginCollateral") is False or row.get("collateralSwitch") is False:
                continue
            equity = base.as_float(row.get("equity") or 0, "equity")
            usd = base.as_float(row.get("usdValue") or 0, "usdValue")
            price = usd / equity if equity else None
            yield (
                str(row.get("coin")),
                base.as_float(row.get("walletBalance"), "walletBalance"),
                price,
            )


def _result(answer: object, where: str) -> Mapping[str, Any]:
    result = answer.get("result") if isinstance(answer, Mapping) else None
    if not isinstance(result, Mapping):
        raise base.MalformedPayload(f"{where}: field 'result' is missing")
    return result


async def collateral_rules(exchange: Any, now: float) -> base.CollateralRules:
    """UTA margin mode, per-coin switches and tiered collateral ratios (module docstring)."""
    info = _result(await exchange.privateGetV5AccountInfo(), "bybit account info")
    if info.get("marginMode") == "PORTFOLIO_MARGIN":
        return base.CollateralRules(exchange.id, "portfolio", {}, now)
    switches: dict[str, bool] = {}
    answer = await exchange.privateGetV5AccountCollateralInfo()
    for row in base.answer_rows(
        _result(answer, "bybit collateral-info").get("list"), "bybit collateral-info"
    ):
        on = all(row.get(k) in (True, "true") for k in ("marginCollateral", "collateralSwitch"))
        switches[str(row.get("currency"))] = on
    assets: dict[str, base.AssetRule] = {}
    answer = await exchange.publicGetV5SpotMarginTradeCollateral()
    for row in base.answer_rows(
        _result(answer, "bybit collateral").get("list"), "bybit collateral"
    ):
        coin = str(row.get("currency"))
        bands = base.haircut_bands(
            row.get("collateralRatioList"), "maxQty", "collateralRatio", f"bybit collateral {coin}"
        )
        assets[coin] = base.AssetRule(
            coin, haircut_tiers=bands, collateral=switches.get(coin, True)
        )
    for coin, on in switches.items():
        if coin not in assets:
            assets[coin] = base.AssetRule(coin, collateral=on)
    return base.CollateralRules(exchange.id, "multi_assets", assets, now)


async def trade_permission(exchange: Any, balance: Mapping[str, Any]) -> str:
    answer = await exchange.privateGetV5UserQueryApi()
    read_only = str(answer.get("result", {}).get("readOnly"))
    return "read-only (readOnly=1)" if read_only == "1" else base.CAN_TRADE


def figures(venue: str, info: object) -> base.VenueFigures | None:
    """wallet-balance's account `accountMMRate` (its liquidation line is 100 %), with
    `totalMaintenanceMargin` and `totalMarginBalance`."""
    if not isinstance(info, Mapping):
        return None
    account = base.rows(info["result"]["list"])[0]
    return base.VenueFigures(
        venue,
        base.as_float(account["accountMMRate"], "accountMMRate"),
        base.as_float(account["totalMaintenanceMargin"], "totalMaintenanceMargin"),
        base.as_float(account["totalMarginBalance"], "totalMarginBalance"),
        "accountMMRate",
    )


VENUE = base.Venue(
    ("bybit",),
    "bybit-exchange.github.io/docs/v5",
    positions=base.PositionQuirks(margin_mode=margin_mode),
    balance=base.BalanceQuirks(base.mapping_wallets(wallets), figures),
    account=base.AccountQuirks(collateral_rules, trade_permission=trade_permission),
    # ccxt's fetch_order refuses without `acknowledged`: it only sees the last 500 orders
    # (`/v5/order/realtime`), fine for an order placed seconds ago; a lookup by client id is
    # GET /v5/order/realtime?orderLinkId= (passed through as is)
    orders=base.OrderQuirks(query={"acknowledged": True}, client_id_param="orderLinkId"),
)
