"""ccxt structures -> monitor.core.model, with every venue quirk in one named function.

ccxt's unified structures are close to what the margin core needs, but not close enough
to trust blindly (docs/venues.md, docs/margin-math.md):

- ccxt's `maintenanceMargin` for Binance is bracket MMR × notional *without* the `cum`
  deduction, so the venue's own `maintMargin` is read from `info` instead;
- the unified balance `total` includes unrealised PnL on Binance (`marginBalance`), which
  the core adds again from the positions, so wallet balances are read from `info`;
- sides, signs and units differ by venue (dYdX negative contracts, Deribit percent
  units, Binance websocket `side='both'`).

Policy for bad data: a malformed position or balance raises `MalformedPayload` with a
one-line reason, and the caller rejects the *whole* update and keeps the previous good
state. Skipping only the bad row would silently drop that position's margin from the
account and understate the risk, which is worse than a stale-but-whole picture (the
freshness clock then raises `stale` if the venue keeps sending garbage).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monitor.core.margin.valuation import margin_ratio
from monitor.core.model import STABLE_ASSETS, Collateral, MarginMode, Position, Side, Tier

__all__ = [
    "MalformedPayload",
    "VenueFigures",
    "collateral_from_ccxt",
    "mark_from_ticker",
    "positions_from_ccxt",
    "tiers_from_ccxt",
    "torn_read",
    "unpriced_assets",
    "venue_figures",
]

Json = Mapping[str, Any]


class MalformedPayload(ValueError):
    """A venue payload that cannot be trusted; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class VenueFigures:
    """The venue's own account figures, kept beside ours to measure drift.

    `margin_ratio` is always in the Binance/Bybit direction (MM / margin balance, ≥ 1 is
    liquidation), converted where the venue uses the inverse (OKX `mgnRatio`) or another
    liquidation line (Binance PM: 1.05 / uniMMR, collateral_rules.portfolio_figures).
    """

    venue: str
    margin_ratio: float | None
    maintenance_margin: float | None = None
    margin_balance: float | None = None
    source_fields: str = ""


# --- small validated readers ----------------------------------------------------------------


def _number(row: Json, key: str, where: str, *, required: bool = True) -> float | None:
    """A finite float from a ccxt field (ccxt already turned strings into floats)."""
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise MalformedPayload(f"{where}: field {key!r} is missing")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MalformedPayload(f"{where}: field {key!r} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise MalformedPayload(f"{where}: field {key!r} = {value!r} is not finite")
    return number


def _info_number(row: Json, key: str, where: str) -> float | None:
    info = row.get("info")
    if not isinstance(info, Mapping):
        return None
    return _number(info, key, f"{where} info", required=False)


# --- positions ------------------------------------------------------------------------------


def _dydx_signed_contracts(contracts: float, side: str | None) -> tuple[float, str | None]:
    """dYdX v4: ccxt's `contracts` is negative for shorts, unlike every other venue
    (docs/margin-math.md; dydx indexer `size` is signed)."""
    if contracts < 0:
        return -contracts, "short"
    return contracts, side


def _hedge_side_both(row: Json, where: str) -> str:
    """Binance one-way mode: the user stream (and ccxt's watch cache) reports side 'both'
    (docs/venues.md); the direction is the sign of `positionAmt` / `pa`."""
    info = row.get("info")
    amount = None
    if isinstance(info, Mapping):
        amount = _number(info, "positionAmt", where, required=False)
        if amount is None:
            amount = _number(info, "pa", where, required=False)
    if amount is None:
        notional = _number(row, "notional", where, required=False)
        amount = notional
    if amount is None or amount == 0:
        raise MalformedPayload(f"{where}: side 'both' with no signed amount to tell its direction")
    return "long" if amount > 0 else "short"


def _deribit_usd_size(contracts: float, contract_size: float) -> float:
    """Deribit futures: `size` (ccxt `contracts`) is in USD, signed ("Position size for
    futures size in quote currency", get_positions docs), while the market's contract size
    is 10 USD (BTC) or 1 USD (ETH); the count of contracts is |size| / contract size."""
    return abs(contracts) / contract_size


def _deribit_percent_units(rate: float | None) -> float | None:
    """Deribit: ccxt's margin percentages are × 100 (percent units), unlike the fractions
    of Binance/OKX/Bybit (docs/margin-math.md)."""
    return None if rate is None else rate / 100.0


def _bybit_margin_mode(row: Json) -> MarginMode:
    """Bybit v5: ccxt leaves marginMode None ("tradeMode was deprecated"); UTA reports
    `tradeMode` 1 only for isolated positions (v5 position/list docs)."""
    info = row.get("info")
    if isinstance(info, Mapping) and str(info.get("tradeMode")) == "1":
        return "isolated"
    return "cross"


def _venue_maintenance_margin(venue: str, row: Json, where: str) -> float | None:
    """The venue's own per-position MM where ccxt's unified figure is not the venue's."""
    if venue in {"binanceusdm", "binance", "binancecoinm"}:
        # ccxt: mmr × notional ignoring `cum` (docs/venues.md); positionRisk has the truth.
        return _info_number(row, "maintMargin", where)
    if venue == "hyperliquid":
        return None  # ccxt sets None; computed from the market's max leverage (below)
    if venue == "bitget":
        return _bitget_keep_margin(row, where)
    return _number(row, "maintenanceMargin", where, required=False)


def _bitget_keep_margin(row: Json, where: str) -> float | None:
    """Bitget: MM = position value × `keepMarginRate` (v2 all-position docs); ccxt's
    `maintenanceMargin` adds the taker fee to the rate (closing cost), which Bitget's
    account risk rate does not count."""
    rate = _info_number(row, "keepMarginRate", where)
    contracts = _number(row, "contracts", where, required=False)
    size = _number(row, "contractSize", where, required=False) or 1.0
    mark = _number(row, "markPrice", where, required=False)
    if rate is None or contracts is None or mark is None:
        return None
    return abs(contracts) * size * mark * rate


def _mexc_base_mmr(market: Json) -> float | None:
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


def _weex_size_in_base(contract_size: float) -> float:
    """WEEX: position `size` is already in the base coin (ccxt derives the entry price as
    openValue / size, which only holds in base units), yet ccxt attaches the market's
    `contractVal` as contractSize; the size of one unit is therefore 1."""
    del contract_size
    return 1.0


def _max_leverage_mmr(market: Json) -> float | None:
    """A venue that reports no maintenance figure, rate or tiers (WEEX through ccxt):
    estimate MMR as half the initial margin rate at max leverage, 1 / (2 × max leverage).
    This is Hyperliquid's documented rule and matches the first tier of Binance (125x,
    0.4 %), Bybit (100x, 0.5 %) and Bitget (125x, 0.4 %); without it the ratio would read
    0, a false all-clear."""
    limits = market.get("limits")
    lev = None
    if isinstance(limits, Mapping) and isinstance(limits.get("leverage"), Mapping):
        lev = limits["leverage"].get("max")
    try:
        lev_f = float(lev) if lev is not None else 0.0
    except (TypeError, ValueError, OverflowError):
        return None
    return 1.0 / (2.0 * lev_f) if lev_f > 0 else None


def _hyperliquid_mmr(market: Json) -> float | None:
    """Hyperliquid: MM rate = 1 / (2 × max leverage) ("margining" docs; margin-math §4.1)."""
    limits = market.get("limits")
    lev = None
    if isinstance(limits, Mapping) and isinstance(limits.get("leverage"), Mapping):
        lev = limits["leverage"].get("max")
    info = market.get("info")
    if lev is None and isinstance(info, Mapping):
        lev = info.get("maxLeverage")
    try:
        lev_f = float(lev) if lev is not None else 0.0
    except (TypeError, ValueError, OverflowError):
        return None
    return 1.0 / (2.0 * lev_f) if lev_f > 0 else None


def _margin_mode(venue: str, row: Json, where: str) -> MarginMode:
    if venue == "bybit":
        return _bybit_margin_mode(row)
    mode = row.get("marginMode")
    if mode is None:
        return "cross"
    if mode not in ("cross", "isolated"):
        raise MalformedPayload(f"{where}: marginMode {mode!r} is neither 'cross' nor 'isolated'")
    return "isolated" if mode == "isolated" else "cross"


def _position(
    venue: str,
    row: Json,
    markets: Mapping[str, Json],
    tiers: Mapping[str, tuple[Tier, ...]],
    marks: Mapping[str, float],
) -> Position | None:
    symbol = row.get("symbol")
    where = f"{venue} position {symbol!r}"
    if not isinstance(symbol, str) or not symbol:
        raise MalformedPayload(f"{venue} position: field 'symbol' is missing")
    market = markets.get(symbol)
    if market is None:
        raise MalformedPayload(f"{where}: symbol is not in the venue's markets")
    contracts = _number(row, "contracts", where)
    assert contracts is not None
    side = row.get("side")
    if venue == "dydx":
        contracts, side = _dydx_signed_contracts(contracts, side)
    if venue == "deribit":
        contracts = abs(contracts)  # signed USD size; the side is ccxt's `direction`
    if contracts == 0:
        return None  # a closed position (Binance reports them with positionAmt 0)
    if contracts < 0:
        raise MalformedPayload(f"{where}: contracts {contracts} is negative")
    if side == "both":
        side = _hedge_side_both(row, where)
    if side not in ("long", "short"):
        raise MalformedPayload(f"{where}: side {side!r} is neither 'long' nor 'short'")
    final_side: Side = "long" if side == "long" else "short"
    entry = _number(row, "entryPrice", where)
    assert entry is not None
    mark = _number(row, "markPrice", where, required=False)
    if mark is None:
        mark = marks.get(symbol)
    if mark is None or mark <= 0 or entry < 0:
        raise MalformedPayload(f"{where}: no positive mark price (markPrice={mark}, entry={entry})")
    size = _number(row, "contractSize", where, required=False)
    if size is None:
        try:
            size = float(market.get("contractSize") or 1.0)
        except (TypeError, ValueError, OverflowError):
            raise MalformedPayload(f"{where}: market contractSize is not a number") from None
    if size <= 0:
        raise MalformedPayload(f"{where}: contractSize {size} is not positive")
    if venue == "deribit" and market.get("inverse"):
        contracts = _deribit_usd_size(contracts, size)
    if venue == "weex":
        size = _weex_size_in_base(size)
    mode = _margin_mode(venue, row, where)
    inverse = bool(market.get("inverse"))
    settle = market.get("settle") or (market.get("base") if inverse else market.get("quote"))
    mm = _venue_maintenance_margin(venue, row, where)
    mmr = None
    if venue == "deribit":
        mmr = _deribit_percent_units(
            _number(row, "maintenanceMarginPercentage", where, required=False)
        )
    elif venue == "hyperliquid":
        mmr = _hyperliquid_mmr(market)
    elif venue == "mexc" and mm is None:
        mmr = _mexc_base_mmr(market)
    if mm is None and mmr is None and not tiers.get(symbol):
        mmr = _max_leverage_mmr(market)
    isolated_margin = None
    if mode == "isolated":
        isolated_margin = _number(row, "positionMargin", where, required=False)
        if isolated_margin is None:
            collateral = _number(row, "collateral", where, required=False)
            pnl = _number(row, "unrealizedPnl", where, required=False) or 0.0
            isolated_margin = None if collateral is None else collateral - pnl
    leverage = _number(row, "leverage", where, required=False)
    return Position(
        symbol=symbol,
        side=final_side,
        contracts=contracts,
        entry_price=entry,
        mark_price=mark,
        contract_size=size,
        margin_mode=mode,
        leverage=leverage if leverage and leverage > 0 else None,
        settle=str(settle) if settle else None,
        inverse=inverse,
        hedged=bool(row.get("hedged")),
        unrealized_pnl=_number(row, "unrealizedPnl", where, required=False),
        initial_margin=_number(row, "initialMargin", where, required=False),
        maintenance_margin=mm,
        mmr=mmr,
        tiers=tiers.get(symbol, ()),
        isolated_margin=isolated_margin,
    )


def positions_from_ccxt(
    venue: str,
    rows: object,
    markets: Mapping[str, Json],
    tiers: Mapping[str, tuple[Tier, ...]] | None = None,
    marks: Mapping[str, float] | None = None,
) -> tuple[Position, ...]:
    """All open positions of a `fetch_positions()` result; raises MalformedPayload.

    `marks` fills a missing `markPrice` from the latest streamed mark (Binance user-stream
    rows and some venues' REST rows carry none).
    """
    if not isinstance(rows, list):
        raise MalformedPayload(f"{venue} positions: expected a list, got {type(rows).__name__}")
    out: dict[tuple[str, str], Position] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            raise MalformedPayload(f"{venue} positions: a row is {type(row).__name__}, not a dict")
        position = _position(venue, row, markets, tiers or {}, marks or {})
        if position is None:
            continue
        if position.key in out:
            raise MalformedPayload(
                f"{venue} position {position.symbol!r}: listed twice on side {position.side!r}"
            )
        out[position.key] = position
    return tuple(out.values())


# --- leverage tiers -------------------------------------------------------------------------


def _cumulative_deduction(rows: Sequence[tuple[float, float]]) -> list[float]:
    """D(n) = D(n−1) + floor(n) × (MMR(n) − MMR(n−1)): Binance's "maintenance amount" and
    Bybit's "MM deduction" rule (margin-math.md §1.2, §2.3), for venues that omit it."""
    out = [0.0]
    for i in range(1, len(rows)):
        floor, mmr = rows[i]
        out.append(out[-1] + floor * (mmr - rows[i - 1][1]))
    return out


def tiers_from_ccxt(venue: str, rows: object) -> tuple[Tier, ...]:
    """ccxt LeverageTier list -> model tiers, keeping the venue's raw deduction.

    Binance's `cum` and Bybit's `mmDeduction` exist only in `info` (docs/venues.md); where
    a venue sends none, the cumulative rule above reproduces it.
    """
    if not isinstance(rows, list) or not rows:
        raise MalformedPayload(f"{venue} leverage tiers: expected a non-empty list")
    parsed: list[tuple[float, float, float, float | None, float | None]] = []
    for i, row in enumerate(rows):
        where = f"{venue} leverage tier {i + 1}"
        if not isinstance(row, Mapping):
            raise MalformedPayload(f"{where}: not a dict")
        floor = _number(row, "minNotional", where, required=False) or 0.0
        cap = _number(row, "maxNotional", where, required=False)
        mmr = _number(row, "maintenanceMarginRate", where)
        lev = _number(row, "maxLeverage", where, required=False)
        assert mmr is not None
        if mmr < 0 or mmr >= 1:
            raise MalformedPayload(f"{where}: maintenanceMarginRate {mmr} is not a fraction")
        raw_info = row.get("info")
        info: Json = raw_info if isinstance(raw_info, Mapping) else {}
        raw = None
        for key in ("cum", "mmDeduction", "maintenanceDeduction", "maintAmount"):
            raw = _number(info, key, where, required=False)
            if raw is not None:
                break
        parsed.append((floor, cap if cap is not None else math.inf, mmr, lev, raw))
    parsed.sort(key=lambda t: t[1])
    computed = _cumulative_deduction([(p[0], p[2]) for p in parsed])
    return tuple(
        Tier(
            max_notional=cap,
            mmr=mmr,
            maintenance_amount=raw if raw is not None else computed[i],
            imr=(1.0 / lev) if lev else None,
        )
        for i, (_, cap, mmr, lev, raw) in enumerate(parsed)
    )


# --- balances -------------------------------------------------------------------------------


def _rows(value: object) -> list[Json]:
    return [r for r in value if isinstance(r, Mapping)] if isinstance(value, list) else []


def _binance_wallets(info: Json) -> Iterable[tuple[str, float, float | None]]:
    """Binance USDⓈ-M `/fapi/v3/account` `assets[].walletBalance` (excludes UPnL).

    ccxt skips assets whose `updateTime == 0` (issue #27997, docs/venues.md); reading
    `info` directly keeps a non-zero wallet even then, and zero ones are dropped anyway.
    """
    for row in _rows(info.get("assets")):
        yield str(row.get("asset")), _float(row.get("walletBalance"), "walletBalance"), None


def _bybit_wallets(info: Json) -> Iterable[tuple[str, float, float | None]]:
    """Bybit UTA `/v5/account/wallet-balance` coins: `walletBalance` with the USD price
    implied by `usdValue / equity`; coins switched off as collateral are not margin."""
    result = info.get("result")
    accounts = _rows(result.get("list")) if isinstance(result, Mapping) else []
    for account in accounts:
        for row in _rows(account.get("coin")):
            if row.get("marginCollateral") is False or row.get("collateralSwitch") is False:
                continue
            equity = _float(row.get("equity") or 0, "equity")
            usd = _float(row.get("usdValue") or 0, "usdValue")
            price = usd / equity if equity else None
            yield str(row.get("coin")), _float(row.get("walletBalance"), "walletBalance"), price


def _okx_wallets(info: Json) -> Iterable[tuple[str, float, float | None]]:
    """OKX `/api/v5/account/balance` details: `cashBal` (excludes UPL), price `eqUsd / eq`."""
    for account in _rows(info.get("data")):
        for row in _rows(account.get("details")):
            eq = _float(row.get("eq") or 0, "eq")
            eq_usd = _float(row.get("eqUsd") or 0, "eqUsd")
            yield (
                str(row.get("ccy")),
                _float(row.get("cashBal"), "cashBal"),
                (eq_usd / eq if eq else None),
            )


def _hyperliquid_wallets(info: Json) -> Iterable[tuple[str, float, float | None]]:
    """Hyperliquid clearinghouseState: cross account value minus the positions' UPnL
    (accountValue includes it; "margining" docs)."""
    summary = info.get("crossMarginSummary") or info.get("marginSummary")
    if not isinstance(summary, Mapping):
        return
    value = _float(summary.get("accountValue"), "accountValue")
    upnl = 0.0
    for row in _rows(info.get("assetPositions")):
        pos = row.get("position")
        if isinstance(pos, Mapping):
            lev = pos.get("leverage")
            if isinstance(lev, Mapping) and lev.get("type") == "isolated":
                continue
            upnl += _float(pos.get("unrealizedPnl") or 0, "unrealizedPnl")
    yield "USDC", value - upnl, 1.0


def _bitget_wallets(info: object) -> Iterable[tuple[str, float, float | None]]:
    """Bitget mix `/api/v2/mix/account/accounts`: `accountEquity − unrealizedPL`."""
    for row in _rows(info):
        equity = _float(row.get("accountEquity"), "accountEquity")
        upnl = _float(row.get("unrealizedPL") or 0, "unrealizedPL")
        yield str(row.get("marginCoin")), equity - upnl, None


def _bingx_wallets(info: Json) -> Iterable[tuple[str, float, float | None]]:
    """BingX swap `/openApi/swap/v3/user/balance`: `balance` is the wallet (excl. UPnL)."""
    data = info.get("data")
    rows = (
        _rows(data)
        if isinstance(data, list)
        else _rows([data.get("balance")])
        if isinstance(data, Mapping)
        else []
    )
    for row in rows:
        yield str(row.get("asset")), _float(row.get("balance"), "balance"), None


def _mexc_wallets(info: Json) -> Iterable[tuple[str, float, float | None]]:
    """MEXC contract `/api/v1/private/account/assets`: `cashBalance` (excl. unrealized)."""
    for row in _rows(info.get("data")):
        yield str(row.get("currency")), _float(row.get("cashBalance"), "cashBalance"), None


_WALLETS = {
    "binanceusdm": _binance_wallets,
    "binance": _binance_wallets,
    "bybit": _bybit_wallets,
    "okx": _okx_wallets,
    "hyperliquid": _hyperliquid_wallets,
    "bingx": _bingx_wallets,
    "mexc": _mexc_wallets,
}


def _float(value: object, key: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise MalformedPayload(f"balance field {key!r} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise MalformedPayload(f"balance field {key!r} = {value!r} is not finite")
    return number


def _wallets(venue: str, balance: object) -> list[tuple[str, float, float | None]]:
    """(asset, wallet amount, price the venue implies or None) of a fetch_balance() result."""
    if not isinstance(balance, Mapping):
        raise MalformedPayload(f"{venue} balance: expected a dict, got {type(balance).__name__}")
    info = balance.get("info")
    reader = _WALLETS.get(venue)
    if venue == "bitget":
        return list(_bitget_wallets(info))
    if reader is not None and isinstance(info, Mapping):
        return list(reader(info))
    total = balance.get("total")
    if not isinstance(total, Mapping):
        raise MalformedPayload(f"{venue} balance: field 'total' is missing")
    return [(str(k), _float(v, f"total.{k}"), None) for k, v in total.items() if v is not None]


def unpriced_assets(
    venue: str, balance: object, currency: str, prices: Mapping[str, float] | None = None
) -> list[str]:
    """Volatile collateral assets that neither the venue nor `prices` values yet (Binance
    multi-assets BTC, say): the source must read a price for them before valuing."""
    return sorted(
        {
            asset
            for asset, amount, venue_price in _wallets(venue, balance)
            if amount != 0 and _asset_price(asset, currency, venue_price, prices or {}) is None
        }
    )


def collateral_from_ccxt(
    venue: str,
    balance: object,
    currency: str,
    prices: Mapping[str, float] | None = None,
) -> tuple[Collateral, ...]:
    """Wallet balances (without unrealised PnL) valued in `currency`; raises MalformedPayload.

    Venues without a reader here fall back to ccxt's unified `total`, which is right where
    the venue's total excludes PnL; the venue table in docs/venues.md says which.
    A volatile asset with no price from the venue or from `prices` is rejected rather than
    valued at a guess.
    """
    out: dict[str, Collateral] = {}
    for asset, amount, venue_price in _wallets(venue, balance):
        if amount == 0:
            continue
        price = _asset_price(asset, currency, venue_price, prices or {})
        if price is None:
            raise MalformedPayload(
                f"{venue} balance: no price for {asset} in {currency}; "
                f"it needs a {asset}/{currency}:{currency} or "
                f"{asset}/{currency} market"
            )
        prev = out.get(asset)
        out[asset] = Collateral(asset, amount + (prev.amount if prev else 0.0), price)
    return tuple(out.values())


def _asset_price(
    asset: str, currency: str, venue_price: float | None, prices: Mapping[str, float]
) -> float | None:
    if asset == currency or (asset in STABLE_ASSETS and currency in STABLE_ASSETS):
        return 1.0
    if asset in prices:
        return prices[asset]
    return venue_price


# --- venue-reported account figures ---------------------------------------------------------


def venue_figures(venue: str, balance: object) -> VenueFigures | None:
    """The venue's own margin figures from a `fetch_balance()` result, where it has any."""
    if not isinstance(balance, Mapping):
        return None
    info = balance.get("info")
    try:
        if venue in {"binanceusdm", "binance"} and isinstance(info, Mapping):
            mm = _float(info["totalMaintMargin"], "totalMaintMargin")
            mb = _float(info["totalMarginBalance"], "totalMarginBalance")
            return VenueFigures(
                venue, margin_ratio(mm, mb), mm, mb, "totalMaintMargin/totalMarginBalance"
            )
        if venue == "bybit" and isinstance(info, Mapping):
            account = _rows(info["result"]["list"])[0]
            return VenueFigures(
                venue,
                _float(account["accountMMRate"], "accountMMRate"),
                _float(account["totalMaintenanceMargin"], "totalMaintenanceMargin"),
                _float(account["totalMarginBalance"], "totalMarginBalance"),
                "accountMMRate",
            )
        if venue == "okx" and isinstance(info, Mapping):
            account = _rows(info["data"])[0]
            level = _float(account["mgnRatio"], "mgnRatio") if account.get("mgnRatio") else None
            # OKX mgnRatio = adjEq / (MM + fees): the inverse direction (margin-math §0).
            return VenueFigures(
                venue,
                (1.0 / level) if level else None,
                _float(account["mmr"], "mmr") if account.get("mmr") else None,
                _float(account["adjEq"], "adjEq") if account.get("adjEq") else None,
                "1/mgnRatio",
            )
        if venue == "hyperliquid" and isinstance(info, Mapping):
            mm = _float(info["crossMaintenanceMarginUsed"], "crossMaintenanceMarginUsed")
            value = _float(info["crossMarginSummary"]["accountValue"], "accountValue")
            return VenueFigures(
                venue, margin_ratio(mm, value), mm, value, "crossMaintenanceMarginUsed/accountValue"
            )
        if venue == "bitget" and isinstance(info, list) and info:
            rate = info[0].get("crossedRiskRate")
            if rate not in (None, ""):
                return VenueFigures(
                    venue, _float(rate, "crossedRiskRate"), source_fields="crossedRiskRate"
                )
    except (KeyError, IndexError, TypeError, MalformedPayload):
        return None
    return None


def torn_read(venue: str, positions: object, balance: object) -> bool:
    """True when a positions answer and a balance answer of one read saw different books.

    The two are separate requests; a fill landing between them pairs new positions with the
    old wallet (or the reverse): a state the venue never had (docs/account-view.md). Binance's
    `GET /fapi/v3/account` lists every open position's `positionAmt` too (Account
    Information V3, USDⓈ-M docs), so the two answers must agree on them. Venues whose
    balance answer names no positions cannot be checked here (False).
    """
    if venue not in {"binanceusdm", "binance"} or not isinstance(balance, Mapping):
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


# --- prices ---------------------------------------------------------------------------------


def mark_from_ticker(venue: str, ticker: object) -> float | None:
    """The mark price of a ccxt ticker or mark-price structure, or None if it has none.

    Hyperliquid's `parse_ticker` leaves `markPrice` unset (close = midPx, last = price);
    the mark is `info.markPx` (docs/venues.md). MEXC's contract ticker calls the mark
    `fairPrice` ("fair price", contract ticker docs), which ccxt does not map either.
    """
    if not isinstance(ticker, Mapping):
        return None
    value = ticker.get("markPrice")
    if value is None and isinstance(ticker.get("info"), Mapping):
        info = ticker["info"]
        for key in ("markPx", "markPrice", "fairPrice"):
            if info.get(key) is not None:
                value = info[key]
                break
    try:
        mark = float(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    if mark is None or not math.isfinite(mark) or mark <= 0:
        return None
    return mark
