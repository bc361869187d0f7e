"""Hyperliquid perps (`hyperliquid`).

Sources: hyperliquid.gitbook.io/hyperliquid-docs (trading/margining, for-developers/api/
info-endpoint: clearinghouseState, userRole, extraAgents), docs/venues.md.

- `api_key` is the wallet address, `secret` the agent's private key (config/settings.py
  `ccxt_credentials`); the report currency is USDC.
- ccxt 4.5.90 would sign `approveBuilderFee` and `setReferrer` on first use: switched off.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from monitor.core.margin.valuation import margin_ratio
from monitor.venues import base


def mmr(market: base.Json) -> float | None:
    """Hyperliquid: MM rate = 1 / (2 × max leverage) ("margining" docs; margin-math §4.1)."""
    lev = base.max_leverage(market)
    info = market.get("info")
    if lev is None and isinstance(info, Mapping):
        lev = info.get("maxLeverage")  # the venue's meta, where ccxt's limits have none
    return base.half_initial_rate(lev)


def wallets(info: base.Json) -> Iterable[tuple[str, float, float | None]]:
    """Hyperliquid clearinghouseState: cross account value minus the positions' UPnL
    (accountValue includes it; "margining" docs)."""
    summary = info.get("crossMarginSummary") or info.get("marginSummary")
    if not isinstance(summary, Mapping):
        return
    value = base.as_float(summary.get("accountValue"), "accountValue")
    upnl = 0.0
    for row in base.rows(info.get("assetPositions")):
        pos = row.get("position")
        if isinstance(pos, Mapping):
            lev = pos.get("leverage")
            if isinstance(lev, Mapping) and lev.get("type") == "isolated":
                continue
            upnl += base.as_float(pos.get("unrealizedPnl") or 0, "unrealizedPnl")
    yield "USDC", value - upnl, 1.0


async def trade_permission(exchange: Any, balance: Mapping[str, Any]) -> str:
    """An order is signed by the private key; it acts for the wallet only if the key is the
    wallet's own or an agent (API wallet) the wallet approved (info `userRole`)."""
    wallet = str(getattr(exchange, "walletAddress", "") or "").lower()
    private_key = getattr(exchange, "privateKey", None)
    if not private_key:
        return "read-only (no private key: the wallet address alone can only read)"
    try:
        signer = str(exchange.eth_get_address_from_private_key(private_key)).lower()
    except ValueError:
        # here, not at import: a sim-only daemon never loads ccxt (venues/errors.py)
        from ccxt.base import errors as ccxt_errors  # noqa: PLC0415

        # surfaces through check's one-line "rejected the keys" path, naming `secret`
        raise ccxt_errors.AuthenticationError(
            "hyperliquid: secret is not a 0x-prefixed 32-byte hex private key"
        ) from None
    if signer == wallet:
        return f"{base.CAN_TRADE} (the private key is the wallet's own)"
    answer = await exchange.publicPostInfo({"type": "userRole", "user": signer})
    role = str(answer.get("role")) if isinstance(answer, Mapping) else "?"
    data = answer.get("data") if isinstance(answer, Mapping) else None
    principal = str(data.get("user", "")).lower() if isinstance(data, Mapping) else ""
    if role == "agent" and principal == wallet:
        return await _agent_validity(exchange, wallet, signer)
    return (
        f"read-only (the private key's address {signer} is not an approved API wallet "
        f"of {wallet}: userRole {role!r})"
    )


async def _agent_validity(exchange: Any, wallet: str, signer: str) -> str:
    """A named agent has an expiry (info `extraAgents`: name, address, validUntil in ms);
    an unnamed one is not listed there and its `userRole` answer is all there is."""
    listed = await exchange.publicPostInfo({"type": "extraAgents", "user": wallet})
    for agent in listed if isinstance(listed, list) else []:
        if not isinstance(agent, Mapping) or str(agent.get("address", "")).lower() != signer:
            continue
        valid_until = agent.get("validUntil")
        if isinstance(valid_until, int) and valid_until <= time.time() * 1000:
            expired = datetime.fromtimestamp(valid_until / 1000, UTC).isoformat(timespec="seconds")
            return f"read-only (API wallet {signer} {agent.get('name')!r} expired {expired})"
    return f"{base.CAN_TRADE} (approved API wallet {signer})"


def maintenance_margin(row: base.Json, where: str) -> None:
    """ccxt sets no MM on a Hyperliquid position: computed from the market's max leverage
    (`mmr`), as the venue does."""
    del row, where


def position_mmr(row: base.Json, market: base.Json, mm: float | None, where: str) -> float | None:
    del row, mm, where
    return mmr(market)


def figures(venue: str, info: object) -> base.VenueFigures | None:
    """clearinghouseState `crossMaintenanceMarginUsed / crossMarginSummary.accountValue`."""
    if not isinstance(info, Mapping):
        return None
    mm = base.as_float(info["crossMaintenanceMarginUsed"], "crossMaintenanceMarginUsed")
    value = base.as_float(info["crossMarginSummary"]["accountValue"], "accountValue")
    return base.VenueFigures(
        venue, margin_ratio(mm, value), mm, value, "crossMaintenanceMarginUsed/accountValue"
    )


def client_id(digest: str) -> str:
    """A client order id is a 128-bit hex `cloid`: `0x` + 32 hex digits (Hyperliquid docs,
    for-developers/api/exchange-endpoint, "Place an order" and "Cancel order(s) by cloid";
    docs/venues.md)."""
    return "0x" + digest[:32]


VENUE = base.Venue(
    ("hyperliquid",),
    "hyperliquid.gitbook.io/hyperliquid-docs",
    currency="USDC",
    # ccxt 4.5.90 hyperliquid.initialize_client() signs and sends `approveBuilderFee`
    # (0.01 % to ccxt's builder) and `setReferrer` on first use when a private key is
    # set. A monitor must not change the user's account: mark both as done.
    ccxt_options={"builderFee": False, "approvedBuilderFee": True, "refSet": True},
    positions=base.PositionQuirks(maintenance_margin=maintenance_margin, mmr=position_mmr),
    balance=base.BalanceQuirks(base.mapping_wallets(wallets), figures),
    account=base.AccountQuirks(trade_permission=trade_permission),
    orders=base.OrderQuirks(client_id=client_id),
)
