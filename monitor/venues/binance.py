"""Binance (USDⓈ-M `binanceusdm`, and the `binance` / `binancecoinm` ids where they share it).

Sources: developers.binance.com derivatives/usds-margined-futures (Position Information V3,
Account Information V3, Notional and Leverage Brackets, Get Current Multi-Assets Mode,
Multi-Assets Mode Asset Index, Futures Account Configuration), Binance FAQ pages cited per
quirk, docs/venues.md and docs/collateral.md.

- **Multi-Assets Mode.** `GET /fapi/v1/multiAssetsMargin` (ccxt `fapiPrivateGetMultiAssetsMargin`,
  developers.binance.com …/account/rest-api/Get-Current-Multi-Assets-Mode) says whether the
  account is in Multi-Assets Mode. There, `GET /fapi/v1/assetIndex` (`fapiPublicGetAssetIndex`,
  …/market-data/rest-api/Multi-Assets-Mode-Asset-Index) publishes per `<ASSET>USD`
  `index`, `bidBuffer`, `askBuffer`, with bidRate = index × (1 − bidBuffer) and askRate =
  index × (1 + askBuffer). Account Equity = Σ min(equity × bidRate, equity × askRate) and
  margin owed in an asset counts at its ask rate (FAQ c983a926…, example M1), which is
  `haircut = bidBuffer`, `liability_markup = askBuffer` at price index / index(report
  currency): every figure is then the venue's USD figure divided by one constant, so the
  ratio is the venue's own. In Single-Asset Mode only stablecoin margin assets (USDT, USDC,
  …) back contracts, so a BTC balance is not margin at all and is dropped.
- **Portfolio Margin** (ccxt's `portfolioMargin` option) is scenario-based: the live ratio is
  the venue's own, 1.05 / uniMMR (it liquidates at uniMMR ≤ 1.05).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from monitor.core.margin.valuation import margin_ratio
from monitor.venues import base

__all__ = ["COINM", "PM_LIQUIDATION_UNI_MMR", "SPOT", "USDM", "rules_from_binance", "side_of_both"]

DOC = "developers.binance.com/docs/derivatives/usds-margined-futures"


def maintenance_margin(row: base.Json, where: str) -> float | None:
    """ccxt's `maintenanceMargin` is the bracket's mmr × notional ignoring its deduction
    (`cum`, docs/venues.md); positionRisk's own `maintMargin` is the venue's figure."""
    return base.info_number(row, "maintMargin", where)


def side_of_both(row: base.Json, where: str) -> str:
    """Binance one-way mode: the user stream (and ccxt's watch cache) reports side 'both'
    (docs/venues.md); the direction is the sign of `positionAmt` / `pa`."""
    info = row.get("info")
    amount = None
    if isinstance(info, Mapping):
        amount = base.number(info, "positionAmt", where, required=False)
        if amount is None:
            amount = base.number(info, "pa", where, required=False)
    if amount is None:
        notional = base.number(row, "notional", where, required=False)
        amount = notional
    if amount is None or amount == 0:
        raise base.MalformedPayload(
            f"{where}: side 'both' with no signed amount to tell its direction"
        )
    return "long" if amount > 0 else "short"


def wallets(info: base.Json) -> Iterable[tuple[str, float, float | None]]:
    """Binance USDⓈ-M `/fapi/v3/account` `assets[].walletBalance` (excludes UPnL).

    ccxt skips assets whose `updateTime == 0` (issue #27997, docs/venues.md); reading
    `info` directly keeps a non-zero wallet even then, and zero ones are dropped anyway.
    """
    for row in base.rows(info.get("assets")):
        yield str(row.get("asset")), base.as_float(row.get("walletBalance"), "walletBalance"), None


def torn_read(positions: object, balance: object) -> bool:
    """True when a positions answer and a balance answer of one read saw different books.

    The two are separate requests; a fill landing between them pairs new positions with the
    old wallet (or the reverse): a state the venue never had (docs/account-view.md). Binance's
    `GET /fapi/v3/account` lists every open position's `positionAmt` too (Account
    Information V3, USDⓈ-M docs), so the two answers must agree on them. Venues whose
    balance answer names no positions have no such hook.
    """
    if not isinstance(balance, Mapping):
        return False
    info = balance.get("info")
    if not isinstance(info, Mapping) or not isinstance(info.get("positions"), list):
        return False
    try:
        in_balance = {
            (str(r["symbol"]), str(r.get("positionSide", "BOTH"))): float(r["positionAmt"])
            for r in info["positions"]
            if isinstance(r, Mapping) and float(r.get("positionAmt") or 0.0) != 0.0
        }
        in_positions = {
            (str(r["info"]["symbol"]), str(r["info"].get("positionSide", "BOTH"))): float(
                r["info"]["positionAmt"]
            )
            for r in (positions if isinstance(positions, list) else [])
            if isinstance(r, Mapping)
            and isinstance(r.get("info"), Mapping)
            and float(r["info"].get("positionAmt") or 0.0) != 0.0
        }
    except (KeyError, TypeError, ValueError):
        return False  # the normalisers name a malformed field; this check only compares
    return in_balance != in_positions


def figures(venue: str, info: object) -> base.VenueFigures | None:
    """Account Information V3: `totalMaintMargin / totalMarginBalance` (the venue's ratio)."""
    if not isinstance(info, Mapping):
        return None
    mm = base.as_float(info["totalMaintMargin"], "totalMaintMargin")
    mb = base.as_float(info["totalMarginBalance"], "totalMarginBalance")
    return base.VenueFigures(
        venue, margin_ratio(mm, mb), mm, mb, "totalMaintMargin/totalMarginBalance"
    )


#: Binance Portfolio Margin's liquidation line: "100% < uniMMR ≤ 105%: Liquidation will take
#: place" (Binance FAQ 5e33af8e… "Portfolio Margin Pro Maintenance Margin Ratio Calculation",
#: and the PM trading rules 174861644e…: a uniMMR > 1.05 avoids liquidation).
PM_LIQUIDATION_UNI_MMR = 1.05


def rules_from_binance(
    venue: str, mode: object, asset_index: object, now: float
) -> base.CollateralRules:
    """Binance's two answers (`GET /fapi/v1/multiAssetsMargin`, `GET /fapi/v1/assetIndex`, in
    their wire format) as rules. Pure: the live reader and the sim venue (which publishes
    its rules in the same format) both go through it."""
    flag = mode.get("multiAssetsMargin") if isinstance(mode, Mapping) else None
    if flag not in (True, False, "true", "false"):
        raise base.MalformedPayload(f"binance multiAssetsMargin: {flag!r} is not true/false")
    if flag in (False, "false"):
        return base.CollateralRules(venue, "single_asset", {}, now)
    assets: dict[str, base.AssetRule] = {}
    for row in base.answer_rows(asset_index, "binance assetIndex"):
        symbol = str(row.get("symbol", ""))
        if not symbol.endswith("USD") or len(symbol) <= 3:
            continue
        where = f"binance assetIndex {symbol}"
        asset = symbol[:-3]
        index = base.fraction(row, "index", where)
        assets[asset] = base.AssetRule(
            asset,
            index=index if index > 0 else None,
            haircut=min(base.fraction(row, "bidBuffer", where), 1.0),
            liability_markup=base.fraction(row, "askBuffer", where),
        )
    return base.CollateralRules(venue, "multi_assets", assets, now)


async def _multi_assets_rules(exchange: Any, now: float) -> base.CollateralRules:
    """Multi-Assets Mode and the asset index buffers (module docstring); the index is read
    only in Multi-Assets Mode."""
    mode = await exchange.fapiPrivateGetMultiAssetsMargin()
    multi = isinstance(mode, Mapping) and mode.get("multiAssetsMargin") in (True, "true")
    index_rows = await exchange.fapiPublicGetAssetIndex() if multi else []
    return rules_from_binance(exchange.id, mode, index_rows, now)


async def collateral_rules(exchange: Any, now: float) -> base.CollateralRules:
    """A Binance Portfolio Margin account is configured in ccxt (`options.portfolioMargin`,
    which routes every call to `papi`); its uniMMR is scenario-based (Binance FAQ 4868b2f1…)."""
    if exchange.options.get("portfolioMargin"):
        return base.CollateralRules(exchange.id, "portfolio", {}, now)
    return await _multi_assets_rules(exchange, now)


async def portfolio_figures(exchange: Any) -> base.VenueFigures:
    """The figures of a Portfolio Margin account, which `fetch_balance` lacks: `GET
    /papi/v1/account` (`papiGetAccount`, portfolio-margin Account-Information).

    Binance liquidates a PM account at uniMMR ≤ 1.05, not 1 (PM trading rules, FAQ
    5e33af8e…: "100% < uniMMR ≤ 105%: Liquidation will take place"), so the ratio is
    `PM_LIQUIDATION_UNI_MMR / uniMMR`: 1.0 is the venue's liquidation line, as for every
    other account (≥ 1 liquidates). uniMMR is taken as the venue sends it (its adjusted
    equity counts the open loss of margin orders, which accountEquity does not); with no
    maintenance margin there is no risk (ratio 0) whatever uniMMR says.
    """
    answer = await exchange.papiGetAccount()
    if not isinstance(answer, Mapping):
        raise base.MalformedPayload("binance papi account: expected an object")
    where = "binance papi account"
    mm = base.fraction(answer, "accountMaintMargin", where)
    try:
        equity = float(answer["accountEquity"])
    except (KeyError, TypeError, ValueError):
        equity = math.nan
    if not math.isfinite(equity):
        raise base.MalformedPayload(f"{where}: field 'accountEquity' is not a number")
    if mm == 0:
        ratio = 0.0
    else:
        uni_mmr = base.fraction(answer, "uniMMR", where)
        ratio = PM_LIQUIDATION_UNI_MMR / uni_mmr if uni_mmr > 0 else math.inf
    return base.VenueFigures(exchange.id, ratio, mm, equity, "papi 1.05/uniMMR")


async def usdm_trade_permission(exchange: Any, balance: Mapping[str, Any]) -> str:
    # v3 account answers no longer carry canTrade; Futures Account Configuration does
    # (GET /fapi/v1/accountConfig, USDⓈ-M docs)
    config = await exchange.fapiPrivateGetAccountConfig()
    if isinstance(config, Mapping) and "canTrade" in config:
        return base.CAN_TRADE if config["canTrade"] else "read-only (canTrade is false)"
    return base.UNKNOWN


async def trade_permission(exchange: Any, balance: Mapping[str, Any]) -> str:
    info = balance.get("info")
    if isinstance(info, Mapping) and "canTrade" in info:
        return base.CAN_TRADE if info["canTrade"] else "read-only (canTrade is false)"
    return base.UNKNOWN


#: What the futures ids share: the venue's MM, and ccxt's spot currency list switched off
#: (`fetchCurrencies`: with keys, load_markets would read the spot wallet's currencies, which a
#: futures-only key may not read and the daemon never uses; docs/venues.md).
_FUTURES_OPTIONS = {"fetchCurrencies": False}
_POSITIONS = base.PositionQuirks(maintenance_margin=maintenance_margin)
_ORDERS = base.OrderQuirks(
    # hedge mode: `positionSide` explicitly, so the intent is in the request
    hedge_position_side=True,
    # stops trigger on the mark, not the last price
    stop_working_type=True,
    # -4164: "notional must be no smaller than 5 (unless you choose reduce only)"
    reduce_only_min_notional_exempt=True,
)
#: Account Information answers: raw wallets, the venue's ratio, the positions it lists
_BALANCE = base.BalanceQuirks(base.mapping_wallets(wallets), figures, torn_read)

COINM = base.Venue(
    ("binancecoinm",),
    "developers.binance.com/docs/derivatives/coin-margined-futures",
    ccxt_options=_FUTURES_OPTIONS,
    positions=_POSITIONS,
    orders=_ORDERS,
)
#: The `binance` id (ccxt's all-markets class): its account answer's `canTrade`.
SPOT = base.Venue(
    ("binance",),
    DOC,
    positions=_POSITIONS,
    balance=_BALANCE,
    account=base.AccountQuirks(trade_permission=trade_permission),
    orders=_ORDERS,
)
#: USDⓈ-M futures: the `binance` id's reads, plus collateral rules, Portfolio Margin
#: figures and Futures Account Configuration's `canTrade`.
USDM = replace(
    SPOT,
    ids=("binanceusdm",),
    ccxt_options=_FUTURES_OPTIONS,
    account=base.AccountQuirks(collateral_rules, portfolio_figures, usdm_trade_permission),
)
