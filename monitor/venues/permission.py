"""What each venue says about an API key's right to trade, for `margin-monitor check`.

One reader per venue, each asking the endpoint where that venue states the key's rights
(docs/venues.md, "What check says about the key"). A venue that publishes no such endpoint
gets a fixed sentence saying so, never a guess: the order itself is then the only test.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ccxt.base import errors as ccxt_errors

__all__ = ["trade_permission"]

Reader = Callable[[Any, Mapping[str, Any]], Awaitable[str]]

CAN_TRADE = "can trade"


def _data(answer: Any) -> Any:
    """The payload of a `{"code": 0, "data": ...}` envelope, or the answer if it has none."""
    if isinstance(answer, Mapping) and "data" in answer:
        return answer["data"]
    return answer


async def _binanceusdm(exchange: Any, balance: Mapping[str, Any]) -> str:
    # v3 account answers no longer carry canTrade; Futures Account Configuration does
    # (GET /fapi/v1/accountConfig, USDⓈ-M docs)
    config = await exchange.fapiPrivateGetAccountConfig()
    if isinstance(config, Mapping) and "canTrade" in config:
        return CAN_TRADE if config["canTrade"] else "read-only (canTrade is false)"
    return _UNKNOWN


async def _binance(exchange: Any, balance: Mapping[str, Any]) -> str:
    info = balance.get("info")
    if isinstance(info, Mapping) and "canTrade" in info:
        return CAN_TRADE if info["canTrade"] else "read-only (canTrade is false)"
    return _UNKNOWN


async def _bybit(exchange: Any, balance: Mapping[str, Any]) -> str:
    answer = await exchange.privateGetV5UserQueryApi()
    read_only = str(answer.get("result", {}).get("readOnly"))
    return "read-only (readOnly=1)" if read_only == "1" else CAN_TRADE


async def _bitget(exchange: Any, balance: Mapping[str, Any]) -> str:
    # Get Account Information (v2): `coow` is the futures order-write authority
    data = _data(await exchange.privateSpotGetV2SpotAccountInfo())
    rights = data.get("authorities") if isinstance(data, Mapping) else None
    if isinstance(rights, list):
        return (
            CAN_TRADE
            if "coow" in rights
            else f"read-only (authorities {sorted(map(str, rights))} lack coow)"
        )
    return _UNKNOWN


async def _okx(exchange: Any, balance: Mapping[str, Any]) -> str:
    answer = await exchange.privateGetAccountConfig()
    perm = str((answer.get("data") or [{}])[0].get("perm", ""))
    return CAN_TRADE if "trade" in perm else f"read-only (perm={perm!r})"


#: BingX "Query user API Key permissions": 3 = perpetual futures trading
_BINGX_FUTURES_TRADING = 3


async def _bingx(exchange: Any, balance: Mapping[str, Any]) -> str:
    # GET /openApi/v1/account/apiPermissions (BingX docs, Account and Wallet -> Sub-account,
    # "Query user API Key permissions"): permissions 1 spot trading, 2 reading,
    # 3 perpetual futures trading, 4 universal transfer, 5 withdrawal, 7 sub-account transfer
    data = _data(await exchange.accountV1PrivateGetAccountApiPermissions())
    rights = data.get("permissions") if isinstance(data, Mapping) else None
    if not isinstance(rights, list):
        return _UNKNOWN
    codes = sorted(int(str(r)) for r in rights if str(r).isdigit())
    if _BINGX_FUTURES_TRADING in codes:
        return CAN_TRADE
    return f"read-only (permissions {codes} lack 3, perpetual futures trading)"


async def _hyperliquid(exchange: Any, balance: Mapping[str, Any]) -> str:
    """An order is signed by the private key; it acts for the wallet only if the key is the
    wallet's own or an agent (API wallet) the wallet approved (info `userRole`)."""
    wallet = str(getattr(exchange, "walletAddress", "") or "").lower()
    private_key = getattr(exchange, "privateKey", None)
    if not private_key:
        return "read-only (no private key: the wallet address alone can only read)"
    try:
        signer = str(exchange.eth_get_address_from_private_key(private_key)).lower()
    except ValueError:
        # surfaces through check's one-line "rejected the keys" path, naming `secret`
        raise ccxt_errors.AuthenticationError(
            "hyperliquid: secret is not a 0x-prefixed 32-byte hex private key"
        ) from None
    if signer == wallet:
        return f"{CAN_TRADE} (the private key is the wallet's own)"
    answer = await exchange.publicPostInfo({"type": "userRole", "user": signer})
    role = str(answer.get("role")) if isinstance(answer, Mapping) else "?"
    data = answer.get("data") if isinstance(answer, Mapping) else None
    principal = str(data.get("user", "")).lower() if isinstance(data, Mapping) else ""
    if role == "agent" and principal == wallet:
        return await _hyperliquid_agent_validity(exchange, wallet, signer)
    return (
        f"read-only (the private key's address {signer} is not an approved API wallet "
        f"of {wallet}: userRole {role!r})"
    )


async def _hyperliquid_agent_validity(exchange: Any, wallet: str, signer: str) -> str:
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
    return f"{CAN_TRADE} (approved API wallet {signer})"


def _unpublished(venue: str) -> Reader:
    """A venue with no endpoint for a key's futures rights: say so, ask nothing."""
    sentence = (
        f"trade permission not published by {venue} (a read-only key is refused at order time)"
    )

    async def reader(exchange: Any, balance: Mapping[str, Any]) -> str:
        return sentence

    return reader


_UNKNOWN = "trade permission unknown (the venue's answer did not state it)"

_READERS: dict[str, Reader] = {
    "binanceusdm": _binanceusdm,
    "binance": _binance,
    "bybit": _bybit,
    "bitget": _bitget,
    "okx": _okx,
    "bingx": _bingx,
    "hyperliquid": _hyperliquid,
    # MEXC: contract API v1 (account/assets, position endpoints) carries no key rights;
    # spot GET /api/v3/account's canTrade/permissions ["SPOT"] describe the spot account only
    "mexc": _unpublished("MEXC"),
    # WEEX: the API FAQ names Readonly/Spot/Futures key permissions but no endpoint returns
    # them; spot GET /api/v3/account/ lists spot rights (e.g. SPOT_TRADING) only; a key
    # without Futures gets -1052 "Insufficient permissions" when it places an order
    "weex": _unpublished("WEEX"),
}


async def trade_permission(exchange: Any, venue: str, balance: Mapping[str, Any]) -> str:
    """What the venue says about the key's rights, in words."""
    reader = _READERS.get(venue)
    if reader is None:
        return "trade permission unknown (margin-monitor does not read it on this venue)"
    return await reader(exchange, balance)
