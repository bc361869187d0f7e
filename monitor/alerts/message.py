"""What a sink receives: an alert event plus the account figures a person needs to act on it.

An `AlertEvent` (rules.py) says *what changed*; an `AlertMessage` adds *the situation* taken
from the report it was evaluated on (margin balance, free collateral, shock to liquidation,
the positions carrying the most maintenance margin) and what the protective action did or
would do. It is built once, serialised into the outbox, and after a restart rebuilt from the
outbox alone, so every sink renders the same facts whether the daemon restarted or not.

JSON here is strict (RFC 8259): infinite ratios are the string "inf" as in the report
contract (docs/margin-math.md), never the non-standard `Infinity` a phone app would choke on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from monitor.core.alert_state import AlertEvent
from monitor.core.collateral_risk import describe
from monitor.core.model import MarginReport

__all__ = ["AlertMessage", "PositionLine", "build_message", "finite_or_str"]

#: How many positions a message names: a lock screen has room for about three lines.
TOP_POSITIONS = 3


def finite_or_str(value: float | None) -> float | str | None:
    """A float for JSON: "inf"/"-inf"/"nan" as strings, per the report contract."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def _float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return float(str(value))


@dataclass(frozen=True, slots=True)
class PositionLine:
    """One position as a message names it: the biggest maintenance-margin contributors."""

    symbol: str
    side: str
    notional: float
    unrealized_pnl: float
    maintenance_margin: float
    liquidation_price: float | None


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One alert as delivered. `id` is the event id (stable; receivers may deduplicate)."""

    id: str
    fingerprint: str
    account: str
    rule: str
    kind: str
    level: str
    previous_level: str
    episode: str
    started_at: float
    at: float
    duration: float
    value: float | None
    previous_value: float | None
    worst_value: float | None
    worst_level: str
    threshold: float | None = None
    detail: str = ""
    currency: str = ""
    margin_ratio: float | None = None
    margin_balance: float | None = None
    free_collateral: float | None = None
    shock_down: float | None = None
    shock_up: float | None = None
    positions: tuple[PositionLine, ...] = ()
    action: str | None = None
    #: where the ratio comes from (MarginReport.model) and the collateral risk in words
    #: (collateral_risk.describe), docs/collateral.md
    model: str = "cross"
    collateral: str = ""
    #: the wire form, made once (`to_json`): the outbox row and the MQTT publish of an alert
    #: are the same text, serialised once on the tick -> alert path (issue 16)
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready dict (infinite values as strings).

        Field by field rather than `dataclasses.asdict`, whose deep copy of every value was
        a third of an alert's cost on the tick -> alert path (p99 <= 10 ms, docs/benchmarks.md);
        every field is a plain value or a tuple of flat `PositionLine`s.
        """
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            out[name] = finite_or_str(value) if isinstance(value, float) else value
        out["positions"] = [
            {
                name: finite_or_str(v) if isinstance(v := getattr(p, name), float) else v
                for name in _LINE_FIELDS
            }
            for p in self.positions
        ]
        return out

    def to_json(self) -> str:
        """The outbox and wire form (made on the first call; the message is immutable)."""
        text = self._json
        if text is None:
            text = json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))
            object.__setattr__(self, "_json", text)  # a cache, not a change: frozen holds
        return text

    @classmethod
    def from_json(cls, text: str) -> AlertMessage:
        """Rebuild from `to_json` output (the outbox after a restart)."""
        data: dict[str, Any] = json.loads(text)
        for name in _FLOAT_FIELDS:
            data[name] = _float(data.get(name))
        data["positions"] = tuple(
            PositionLine(
                symbol=p["symbol"],
                side=p["side"],
                notional=float(p["notional"]),
                unrealized_pnl=float(p["unrealized_pnl"]),
                maintenance_margin=float(p["maintenance_margin"]),
                liquidation_price=_float(p.get("liquidation_price")),
            )
            for p in data.get("positions", ())
        )
        return cls(**data)


_FLOAT_FIELDS = (
    "started_at",
    "at",
    "duration",
    "value",
    "previous_value",
    "worst_value",
    "threshold",
    "margin_ratio",
    "margin_balance",
    "free_collateral",
    "shock_down",
    "shock_up",
)


_FIELDS = tuple(f.name for f in fields(AlertMessage) if f.init)  # not the `_json` cache
_LINE_FIELDS = tuple(f.name for f in fields(PositionLine))


def build_message(
    event: AlertEvent, report: MarginReport | None, action: str | None = None
) -> AlertMessage:
    """Combine an event with the report it was evaluated on (None for source alerts)."""
    extra: dict[str, Any] = {}
    if report is not None:
        top = sorted(report.positions, key=lambda p: p.maintenance_margin, reverse=True)
        shock = report.shock_to_liquidation
        extra = {
            "model": report.model,
            "collateral": " ".join(describe(report.collateral_risk))
            if report.collateral_risk is not None
            else "",
            "currency": report.currency,
            "margin_ratio": report.margin_ratio,
            "margin_balance": report.margin_balance,
            "free_collateral": report.free_collateral,
            "shock_down": None if shock is None else shock.down,
            "shock_up": None if shock is None else shock.up,
            "positions": tuple(
                PositionLine(
                    symbol=p.symbol,
                    side=p.side,
                    notional=p.notional,
                    unrealized_pnl=p.unrealized_pnl,
                    maintenance_margin=p.maintenance_margin,
                    liquidation_price=p.liquidation_price,
                )
                for p in top[:TOP_POSITIONS]
            ),
        }
    return AlertMessage(
        id=event.id,
        fingerprint=event.fingerprint,
        account=event.account,
        rule=event.rule,
        kind=event.kind,
        level=event.level,
        previous_level=event.previous_level,
        episode=event.episode,
        started_at=event.started_at,
        at=event.at,
        duration=event.duration,
        value=event.value,
        previous_value=event.previous_value,
        worst_value=event.worst_value,
        worst_level=event.worst_level,
        threshold=event.threshold,
        detail=event.detail,
        action=action,
        **extra,
    )
