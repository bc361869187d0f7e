"""What each venue says about an API key's right to trade, for `margin-monitor check`.

One reader per venue, each asking the endpoint where that venue states the key's rights
(docs/venues.md, "What check says about the key"). A venue that publishes no such endpoint
gets a fixed sentence saying so, never a guess: the order itself is then the only test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monitor.venues import binance, bingx, bitget, bybit, hyperliquid, mexc, okx, weex
from monitor.venues.base import Reader

__all__ = ["trade_permission"]

_READERS: dict[str, Reader] = {
    "binanceusdm": binance.usdm_trade_permission,
    "binance": binance.trade_permission,
    "bybit": bybit.trade_permission,
    "bitget": bitget.trade_permission,
    "okx": okx.trade_permission,
    "bingx": bingx.trade_permission,
    "hyperliquid": hyperliquid.trade_permission,
    "mexc": mexc.trade_permission,
    "weex": weex.trade_permission,
}


async def trade_permission(exchange: Any, venue: str, balance: Mapping[str, Any]) -> str:
    """What the venue says about the key's rights, in words."""
    reader = _READERS.get(venue)
    if reader is None:
        return "trade permission unknown (margin-monitor does not read it on this venue)"
    return await reader(exchange, balance)
