"""The JSON forms of a snapshot and a report (docs/margin-math.md), written faithfully.

The snapshot form is the file `parse_snapshot` reads back (`monitor/snapshot.py`), so a
written snapshot round-trips; the report form is what `report --json`, the MQTT state topic
and the status page carry. JSON has no infinity, so an infinite figure is the string "inf".
Field names are a public interface.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from monitor.core.model import (
    AccountSnapshot,
    Collateral,
    CollateralRisk,
    MarginReport,
    Position,
    PositionRisk,
    ShockToLiquidation,
)

__all__ = ["collateral_risk_to_dict", "report_to_dict", "shock_to_dict", "snapshot_to_dict"]


def _num(value: float | None) -> float | str | None:
    """JSON has no infinity: write it as the string "inf" (docs/margin-math.md, report JSON)."""
    if value is None:
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def snapshot_to_dict(s: AccountSnapshot) -> dict[str, Any]:
    """The snapshot file form; `parse_snapshot(snapshot_to_dict(s))` gives `s` back."""
    out: dict[str, Any] = {"account": s.account, "currency": s.currency}
    if s.venue:
        out["venue"] = s.venue
    out["collateral"] = [
        _drop_defaults(_collateral_dict(c), _COLLATERAL_DEFAULTS) for c in s.collateral
    ]
    out["positions"] = [_drop_defaults(_position_dict(p), _POSITION_DEFAULTS) for p in s.positions]
    if s.venue_margin is not None:
        vm = s.venue_margin
        out["venue_margin"] = {
            "margin_ratio": _num(vm.margin_ratio),
            "maintenance_margin": vm.maintenance_margin,
            "margin_balance": vm.margin_balance,
        }
        if vm.source:
            out["venue_margin"]["source"] = vm.source
    return out


_COLLATERAL_DEFAULTS: Mapping[str, object] = {
    "haircut": 0.0,
    "liability_markup": 0.0,
    "haircut_tiers": [],
    "tier_basis": "amount",
    "beta": None,
}
_POSITION_DEFAULTS: Mapping[str, object] = {
    "settle": None,
    "inverse": False,
    "hedged": False,
    "unrealized_pnl": None,
    "initial_margin": None,
    "maintenance_margin": None,
    "mmr": None,
    "tiers": [],
    "isolated_margin": None,
    "beta": 1.0,
    "leverage": None,
    "liquidation_fee": None,
}


def _drop_defaults(d: dict[str, Any], defaults: Mapping[str, object]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not (k in defaults and defaults[k] == v)}


def _collateral_dict(c: Collateral) -> dict[str, Any]:
    return {
        "asset": c.asset,
        "amount": c.amount,
        "price": c.price,
        "haircut": c.haircut,
        "liability_markup": c.liability_markup,
        "haircut_tiers": [{"up_to": _num(b.up_to), "ratio": b.ratio} for b in c.haircut_tiers],
        "tier_basis": c.tier_basis,
        "beta": c.beta,
    }


def _position_dict(p: Position) -> dict[str, Any]:
    return {
        "symbol": p.symbol,
        "side": p.side,
        "contracts": p.contracts,
        "contract_size": p.contract_size,
        "entry_price": p.entry_price,
        "mark_price": p.mark_price,
        "margin_mode": p.margin_mode,
        "leverage": p.leverage,
        "settle": p.settle,
        "inverse": p.inverse,
        "hedged": p.hedged,
        "unrealized_pnl": p.unrealized_pnl,
        "initial_margin": p.initial_margin,
        "maintenance_margin": p.maintenance_margin,
        "mmr": p.mmr,
        "tiers": [
            {
                "max_notional": _num(t.max_notional),
                "mmr": t.mmr,
                "maintenance_amount": t.maintenance_amount,
            }
            | ({"imr": t.imr} if t.imr is not None else {})
            for t in p.tiers
        ],
        "isolated_margin": p.isolated_margin,
        "beta": p.beta,
        "liquidation_fee": p.liquidation_fee,
    }


def shock_to_dict(shock: ShockToLiquidation | None) -> dict[str, Any] | None:
    """`{"down": -0.12, "up": 0.31}`; None (JSON null) when it was not computed."""
    if shock is None:
        return None
    return {"down": shock.down, "up": shock.up}


def _risk_dict(p: PositionRisk) -> dict[str, Any]:
    return {
        "symbol": p.symbol,
        "side": p.side,
        "margin_mode": p.margin_mode,
        "contracts": p.contracts,
        "mark_price": p.mark_price,
        "hedged": p.hedged,
        "notional": p.notional,
        "unrealized_pnl": p.unrealized_pnl,
        "initial_margin": p.initial_margin,
        "maintenance_margin": p.maintenance_margin,
        "margin_ratio": _num(p.margin_ratio),
        "liquidation_price": _num(p.liquidation_price),
    }


def report_to_dict(r: MarginReport) -> dict[str, Any]:
    """The JSON report (docs/margin-math.md); infinite ratios become the string "inf"."""
    return {
        "account": r.account,
        "currency": r.currency,
        "wallet_balance": r.wallet_balance,
        "unrealized_pnl": r.unrealized_pnl,
        "margin_balance": r.margin_balance,
        "initial_margin": r.initial_margin,
        "maintenance_margin": r.maintenance_margin,
        "margin_ratio": _num(r.margin_ratio),
        # both figures behind margin_ratio (docs/account-view.md): ours, and the venue's
        # own carried forward from its last read (null where the venue reports none)
        "model_ratio": _num(r.margin_ratio if r.model_ratio is None else r.model_ratio),
        "venue_ratio": _num(r.venue_ratio),
        "margin_level": _num(r.margin_level),
        "free_collateral": r.free_collateral,
        "liquidated": r.liquidated,
        "shock_to_liquidation": shock_to_dict(r.shock_to_liquidation),
        "positions": [_risk_dict(p) for p in r.positions],
        "model": r.model,
        "collateral_risk": collateral_risk_to_dict(r.collateral_risk),
    }


def collateral_risk_to_dict(risk: CollateralRisk | None) -> dict[str, Any] | None:
    """`{"non_stable_share": 0.6, "assets": [{"asset": "BTC", "value": …, "share": …,
    "fall_to_liquidation": -0.41}]}`; None (null) when it was not computed this report."""
    if risk is None:
        return None
    return {
        "non_stable_share": risk.non_stable_share,
        "assets": [
            {"asset": a.asset, "value": a.value, "share": a.share, "fall_to_liquidation": a.fall}
            for a in risk.assets
        ],
    }
