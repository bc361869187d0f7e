"""ccxt structures -> monitor.core.model: the generic path, with each venue's quirks as
hooks of its module (monitor/venues/<venue>.py, found by `registry.venue_for`).

ccxt's unified structures are close to what the margin core needs, but not close enough
to trust blindly (docs/venues.md, docs/margin-math.md), e.g.:

- ccxt's `maintenanceMargin` for Binance is bracket MMR × notional *without* the `cum`
  deduction, so the venue's own `maintMargin` is read from `info` instead;
- the unified balance `total` includes unrealised PnL on Binance (`marginBalance`), which
  the core adds again from the positions, so wallet balances are read from `info`;
- sides, signs and units differ by venue (dYdX negative contracts, Deribit percent
  units, Binance websocket `side='both'`).

A venue with no module takes ccxt's unified fields as they are.

Policy for bad data: a malformed position or balance raises `MalformedPayload` with a
one-line reason, and the caller rejects the *whole* update and keeps the previous good
state. Skipping only the bad row would silently drop that position's margin from the
account and understate the risk, which is worse than a stale-but-whole picture (the
freshness clock then raises `stale` if the venue keeps sending garbage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from monitor.core.model import STABLE_ASSETS, Collateral, MarginMode, Position, Side, Tier
from monitor.venues import binance
from monitor.venues.base import (
    Json,
    MalformedPayload,
    PositionQuirks,
    VenueFigures,
    Wallet,
    as_float,
    half_initial_rate,
    max_leverage,
    number,
)
from monitor.venues.registry import venue_for

__all__ = [
    "collateral_from_ccxt",
    "mark_from_ticker",
    "positions_from_ccxt",
    "tiers_from_ccxt",
    "torn_read",
    "unpriced_assets",
    "venue_figures",
]


# --- positions ------------------------------------------------------------------------------


def _maintenance_margin(quirks: PositionQuirks, row: Json, where: str) -> float | None:
    """The venue's own per-position MM where ccxt's unified figure is not the venue's."""
    if quirks.maintenance_margin is not None:
        return quirks.maintenance_margin(row, where)
    return number(row, "maintenanceMargin", where, required=False)


def _max_leverage_mmr(market: Json) -> float | None:
    """A venue that reports no maintenance figure, rate or tiers (WEEX through ccxt):
    estimate MMR as half the initial margin rate at max leverage, 1 / (2 × max leverage).
    This is Hyperliquid's documented rule and matches the first tier of Binance (125x,
    0.4 %), Bybit (100x, 0.5 %) and Bitget (125x, 0.4 %); without it the ratio would read
    0, a false all-clear."""
    return half_initial_rate(max_leverage(market))


def _margin_mode(quirks: PositionQuirks, row: Json, where: str) -> MarginMode:
    if quirks.margin_mode is not None:
        return quirks.margin_mode(row)
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
    quirks = venue_for(venue).positions
    symbol = row.get("symbol")
    where = f"{venue} position {symbol!r}"
    if not isinstance(symbol, str) or not symbol:
        raise MalformedPayload(f"{venue} position: field 'symbol' is missing")
    market = markets.get(symbol)
    if market is None:
        raise MalformedPayload(f"{where}: symbol is not in the venue's markets")
    contracts = number(row, "contracts", where)
    assert contracts is not None
    side = row.get("side")
    if quirks.contracts is not None:
        contracts, side = quirks.contracts(contracts, side)
    if contracts == 0:
        return None  # a closed position (Binance reports them with positionAmt 0)
    if contracts < 0:
        raise MalformedPayload(f"{where}: contracts {contracts} is negative")
    if side == "both":  # only Binance sends it (one-way mode); its rule reads the sign
        side = binance.side_of_both(row, where)
    if side not in ("long", "short"):
        raise MalformedPayload(f"{where}: side {side!r} is neither 'long' nor 'short'")
    final_side: Side = "long" if side == "long" else "short"
    entry = number(row, "entryPrice", where)
    assert entry is not None
    mark = number(row, "markPrice", where, required=False)
    if mark is None:
        mark = marks.get(symbol)
    if mark is None or mark <= 0 or entry < 0:
        raise MalformedPayload(f"{where}: no positive mark price (markPrice={mark}, entry={entry})")
    size = number(row, "contractSize", where, required=False)
    if size is None:
        try:
            size = float(market.get("contractSize") or 1.0)
        except (TypeError, ValueError, OverflowError):
            raise MalformedPayload(f"{where}: market contractSize is not a number") from None
    if size <= 0:
        raise MalformedPayload(f"{where}: contractSize {size} is not positive")
    if quirks.units is not None:
        contracts, size = quirks.units(contracts, size, market)
    mode = _margin_mode(quirks, row, where)
    inverse = bool(market.get("inverse"))
    settle = market.get("settle") or (market.get("base") if inverse else market.get("quote"))
    mm = _maintenance_margin(quirks, row, where)
    mmr = None if quirks.mmr is None else quirks.mmr(row, market, mm, where)
    if mm is None and mmr is None and not tiers.get(symbol):
        mmr = _max_leverage_mmr(market)
    isolated_margin = None
    if mode == "isolated":
        isolated_margin = number(row, "positionMargin", where, required=False)
        if isolated_margin is None:
            collateral = number(row, "collateral", where, required=False)
            pnl = number(row, "unrealizedPnl", where, required=False) or 0.0
            isolated_margin = None if collateral is None else collateral - pnl
    leverage = number(row, "leverage", where, required=False)
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
        unrealized_pnl=number(row, "unrealizedPnl", where, required=False),
        initial_margin=number(row, "initialMargin", where, required=False),
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
        floor = number(row, "minNotional", where, required=False) or 0.0
        cap = number(row, "maxNotional", where, required=False)
        mmr = number(row, "maintenanceMarginRate", where)
        lev = number(row, "maxLeverage", where, required=False)
        assert mmr is not None
        if mmr < 0 or mmr >= 1:
            raise MalformedPayload(f"{where}: maintenanceMarginRate {mmr} is not a fraction")
        raw_info = row.get("info")
        info: Json = raw_info if isinstance(raw_info, Mapping) else {}
        raw = None
        for key in ("cum", "mmDeduction", "maintenanceDeduction", "maintAmount"):
            raw = number(info, key, where, required=False)
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


def _wallets(venue: str, balance: object) -> list[Wallet]:
    """(asset, wallet amount, price the venue implies or None) of a fetch_balance() result."""
    if not isinstance(balance, Mapping):
        raise MalformedPayload(f"{venue} balance: expected a dict, got {type(balance).__name__}")
    read = venue_for(venue).balance.wallets
    wallets = None if read is None else read(balance.get("info"))
    if wallets is not None:
        return wallets
    total = balance.get("total")
    if not isinstance(total, Mapping):
        raise MalformedPayload(f"{venue} balance: field 'total' is missing")
    return [(str(k), as_float(v, f"total.{k}"), None) for k, v in total.items() if v is not None]


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
    read = venue_for(venue).balance.figures
    if read is None:
        return None
    try:
        return read(venue, balance.get("info"))
    except (KeyError, IndexError, TypeError, MalformedPayload):
        return None  # a figure missing or malformed: ours stand alone


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


def torn_read(venue: str, positions: object, balance: object) -> bool:
    """True when a positions answer and a balance answer of one read saw different books
    (a fill between the two requests: a state the venue never had, docs/account-view.md).
    Only a venue whose balance answer lists positions can tell (Binance); others: False."""
    check = venue_for(venue).balance.torn_read
    return check is not None and check(positions, balance)
