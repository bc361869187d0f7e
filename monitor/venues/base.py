"""What every venue module shares: the payload error, the venue's own figures, the readers.

A venue module (monitor/venues/<venue>.py) reads the venue's raw answers (ccxt's `info`, or
an implicit-API answer) with these validated readers, so that a bad field anywhere becomes
one `MalformedPayload` line naming it (normalisation policy: sources/normalize.py).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from monitor.core.model import CollateralTier, MarginMode

__all__ = [
    "CAN_TRADE",
    "UNKNOWN",
    "AccountQuirks",
    "AssetRule",
    "BalanceQuirks",
    "CollateralRules",
    "Json",
    "MalformedPayload",
    "Mode",
    "OrderQuirks",
    "PositionQuirks",
    "Reader",
    "Venue",
    "VenueFigures",
    "Wallet",
    "answer_rows",
    "as_float",
    "envelope_data",
    "fraction",
    "haircut_bands",
    "half_initial_rate",
    "info_number",
    "mapping_wallets",
    "max_leverage",
    "number",
    "rows",
    "unpublished",
]

Json = Mapping[str, Any]
#: (asset, wallet amount without unrealised PnL, price the venue implies or None)
Wallet = tuple[str, float, float | None]


class MalformedPayload(ValueError):
    """A venue payload that cannot be trusted; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class VenueFigures:
    """The venue's own account figures, kept beside ours to measure drift.

    `margin_ratio` is always in the Binance/Bybit direction (MM / margin balance, ≥ 1 is
    liquidation), converted where the venue uses the inverse (OKX `mgnRatio`) or another
    liquidation line (Binance PM: 1.05 / uniMMR, venues/binance.py portfolio_figures).
    """

    venue: str
    margin_ratio: float | None
    maintenance_margin: float | None = None
    margin_balance: float | None = None
    source_fields: str = ""


# --- small validated readers ----------------------------------------------------------------


def number(row: Json, key: str, where: str, *, required: bool = True) -> float | None:
    """A finite float from a ccxt field (ccxt already turned strings into floats)."""
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise MalformedPayload(f"{where}: field {key!r} is missing")
        return None
    try:
        parsed = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MalformedPayload(f"{where}: field {key!r} = {value!r} is not a number") from None
    if not math.isfinite(parsed):
        raise MalformedPayload(f"{where}: field {key!r} = {value!r} is not finite")
    return parsed


def info_number(row: Json, key: str, where: str) -> float | None:
    info = row.get("info")
    if not isinstance(info, Mapping):
        return None
    return number(info, key, f"{where} info", required=False)


def max_leverage(market: Json) -> object:
    """ccxt's `limits.leverage.max` of a market structure (None where it has none)."""
    limits = market.get("limits")
    if isinstance(limits, Mapping) and isinstance(limits.get("leverage"), Mapping):
        return limits["leverage"].get("max")
    return None


def half_initial_rate(leverage: object) -> float | None:
    """1 / (2 × max leverage): half the initial margin rate at max leverage, Hyperliquid's
    maintenance rate ("margining" docs; margin-math §4.1); None without a usable leverage."""
    try:
        lev = float(leverage) if leverage is not None else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return 1.0 / (2.0 * lev) if lev > 0 else None


def rows(value: object) -> list[Json]:
    return [r for r in value if isinstance(r, Mapping)] if isinstance(value, list) else []


def as_float(value: object, key: str) -> float:
    try:
        parsed = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise MalformedPayload(f"balance field {key!r} = {value!r} is not a number") from None
    if not math.isfinite(parsed):
        raise MalformedPayload(f"balance field {key!r} = {value!r} is not finite")
    return parsed


# --- collateral rules (the venue modules' `collateral_rules` readers) ------------------------

#: How a venue margins the account, as far as collateral is concerned.
#: `single_asset`: only the settle asset is margin (Binance Single-Asset Mode);
#: `multi_assets`: haircut cross-collateral (Binance Multi-Assets, Bybit UTA cross, OKX
#: multi-currency); `portfolio`: scenario-based risk no public formula reproduces.
Mode = Literal["single_asset", "multi_assets", "portfolio"]


@dataclass(frozen=True, slots=True)
class AssetRule:
    """How one asset counts as margin: the venue's USD index (None: keep our price), the
    haircut of a positive balance, the markup of a negative one, or haircut bands."""

    asset: str
    index: float | None = None
    haircut: float = 0.0
    liability_markup: float = 0.0
    haircut_tiers: tuple[CollateralTier, ...] = ()
    tier_basis: Literal["amount", "value"] = "amount"
    collateral: bool = True


@dataclass(frozen=True, slots=True)
class CollateralRules:
    """One venue read: the account's margin mode and every asset's rule, and when (wall
    clock, so a cached read keeps its age across restarts)."""

    venue: str
    mode: Mode
    assets: Mapping[str, AssetRule]
    read_at: float


def fraction(row: Mapping[str, Any], key: str, where: str) -> float:
    try:
        value = float(row[key])
    except (KeyError, TypeError, ValueError):
        raise MalformedPayload(f"{where}: field {key!r} is missing or not a number") from None
    if not math.isfinite(value) or value < 0:
        raise MalformedPayload(f"{where}: field {key!r} = {row[key]!r} is not a rate ≥ 0")
    return value


def answer_rows(answer: object, where: str) -> list[Mapping[str, Any]]:
    if isinstance(answer, Mapping):
        answer = [answer]
    if not isinstance(answer, list) or not all(isinstance(r, Mapping) for r in answer):
        raise MalformedPayload(f"{where}: expected a list of objects")
    return list(answer)


def haircut_bands(rows: object, cap: str, ratio: str, where: str) -> tuple[CollateralTier, ...]:
    """A venue's tier list as marginal bands: `cap` is the tier's upper amount ("",
    absent or Bitget's "-1": no cap), `ratio` the share of value that counts; sorted by cap."""
    out = []
    for row in answer_rows(rows, where):
        top = row.get(cap)
        out.append(
            CollateralTier(
                math.inf if top in ("", None, "-1") else fraction(row, cap, where),
                min(fraction(row, ratio, where), 1.0),
            )
        )
    return tuple(sorted(out, key=lambda b: b.up_to))


# --- what a venue says about a key's right to trade (registry.trade_permission) ------------------

#: A venue's answer to "may this key trade?", in words, from its own endpoint.
Reader = Callable[[Any, Mapping[str, Any]], Awaitable[str]]

CAN_TRADE = "can trade"


UNKNOWN = "trade permission unknown (the venue's answer did not state it)"


def envelope_data(answer: Any) -> Any:
    """The payload of a `{"code": 0, "data": ...}` envelope, or the answer if it has none."""
    if isinstance(answer, Mapping) and "data" in answer:
        return answer["data"]
    return answer


def unpublished(venue: str) -> Reader:
    """A venue with no endpoint for a key's futures rights: say so, ask nothing."""
    sentence = (
        f"trade permission not published by {venue} (a read-only key is refused at order time)"
    )

    async def reader(exchange: Any, balance: Mapping[str, Any]) -> str:
        return sentence

    return reader


# --- the venue: every quirk as a hook of the generic path -----------------------------------


@dataclass(frozen=True, slots=True)
class PositionQuirks:
    """How a venue's position rows differ from ccxt's unified ones (sources/normalize.py)."""

    #: (contracts, side) as ccxt gives them -> unsigned contracts and side
    contracts: Callable[[float, str | None], tuple[float, str | None]] | None = None
    #: (contracts, contract size, market) -> the count and size the core values
    units: Callable[[float, float, Json], tuple[float, float]] | None = None
    margin_mode: Callable[[Json], MarginMode] | None = None
    #: the venue's own MM of a position (row, where) instead of ccxt's `maintenanceMargin`
    maintenance_margin: Callable[[Json, str], float | None] | None = None
    #: a maintenance rate (row, market, the MM read, where) where the venue gives no tiers
    mmr: Callable[[Json, Json, float | None, str], float | None] | None = None


@dataclass(frozen=True, slots=True)
class BalanceQuirks:
    """How a venue's `fetch_balance()` is read (sources/normalize.py)."""

    #: wallets of `fetch_balance()['info']`; None: ccxt's unified `total` is right
    wallets: Callable[[object], list[Wallet] | None] | None = None
    #: the venue's own account figures (venue id, `fetch_balance()['info']`)
    figures: Callable[[str, object], VenueFigures | None] | None = None
    #: positions and balance answers of one read saw different books (raw answers)
    torn_read: Callable[[object, object], bool] | None = None


@dataclass(frozen=True, slots=True)
class AccountQuirks:
    """What a venue says about the account beyond the balance: collateral rules
    (sources/collateral_rules.py) and the key's rights (registry.trade_permission)."""

    collateral_rules: Callable[[Any, float], Awaitable[CollateralRules]] | None = None
    #: a portfolio-margin account's own figures where `fetch_balance` has none
    portfolio_figures: Callable[[Any], Awaitable[VenueFigures]] | None = None
    trade_permission: Reader | None = None


@dataclass(frozen=True, slots=True)
class OrderQuirks:
    """The venue's order parameters beyond ccxt's unified ones (venues/orders.py)."""

    #: hedge mode sends `positionSide` explicitly (ccxt's `hedged` alone derives it)
    hedge_position_side: bool = False
    #: stops carry `workingType` (trigger on mark, not last)
    stop_working_type: bool = False
    #: reduce-only orders are exempt from the market's minimum notional
    reduce_only_min_notional_exempt: bool = False
    #: our deterministic client id's digest (hex) -> the venue's client id format
    client_id: Callable[[str], str] | None = None
    #: extra params of an order query (fetch_order)
    query: Mapping[str, Any] = field(default_factory=dict)
    #: the ccxt param that finds an order by client id
    client_id_param: str = "clientOrderId"


@dataclass(frozen=True, slots=True)
class Venue:
    """What is particular to one venue, as hooks the generic path in sources/ calls.

    One instance per venue module (monitor/venues/<venue>.py), found by ccxt id through
    `registry.venue_for`; a venue not in the registry gets `GENERIC`, where every hook is
    None and every flag off: ccxt's unified structures are taken as they are. Each hook
    holds exactly one venue's rule, with the venue's doc cited where it is defined; hooks
    are grouped by the module that calls them.
    """

    #: ccxt ids this venue answers for (one module can hold several: the Binance family).
    ids: tuple[str, ...]
    #: the venue's API documentation, the source of every quirk in its module
    doc: str = ""
    #: what the report is valued in when the account does not say (Hyperliquid: USDC)
    currency: str = "USDT"
    #: ccxt `options` merged under the user's own (sources/ccxt_client.py build_exchange)
    ccxt_options: Mapping[str, Any] = field(default_factory=dict)
    #: leverage tiers in contracts, not notional: not fetched (the venue's MM or rate is used)
    tiers_in_contracts: bool = False
    positions: PositionQuirks = PositionQuirks()
    balance: BalanceQuirks = BalanceQuirks()
    account: AccountQuirks = AccountQuirks()
    orders: OrderQuirks = OrderQuirks()


def mapping_wallets(
    read: Callable[[Json], Iterable[Wallet]],
) -> Callable[[object], list[Wallet] | None]:
    """A wallet reader of a dict `info`; any other `info` falls back to ccxt's `total`."""

    def wallets(info: object) -> list[Wallet] | None:
        return list(read(info)) if isinstance(info, Mapping) else None

    return wallets
