"""What every venue module shares: the payload error, the venue's own figures, the readers.

A venue module (monitor/venues/<venue>.py) reads the venue's raw answers (ccxt's `info`, or
an implicit-API answer) with these validated readers, so that a bad field anywhere becomes
one `MalformedPayload` line naming it (normalisation policy: sources/normalize.py).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from monitor.core.model import CollateralTier

__all__ = [
    "CAN_TRADE",
    "UNKNOWN",
    "AssetRule",
    "CollateralRules",
    "Json",
    "MalformedPayload",
    "Mode",
    "Reader",
    "VenueFigures",
    "answer_rows",
    "as_float",
    "envelope_data",
    "fraction",
    "haircut_bands",
    "info_number",
    "number",
    "rows",
    "unpublished",
]

Json = Mapping[str, Any]


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


# --- what a venue says about a key's right to trade (venues/permission.py) ------------------

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
