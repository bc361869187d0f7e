"""Which module holds a venue's quirks: ccxt id -> its `Venue` (monitor/venues/<venue>.py).

The generic path in sources/ (normalize, collateral_rules, exchange) and venues/orders.py ask
`venue_for(id)` and call the hooks it has; an id not listed here gets `GENERIC`, whose hooks
are all None: ccxt's unified structures are taken as they are (docs/venues.md says which
venues are read how). No module chooses by comparing venue names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monitor.venues import (
    binance,
    bingx,
    bitget,
    bybit,
    deribit,
    dydx,
    hyperliquid,
    mexc,
    okx,
    weex,
)
from monitor.venues.base import Venue

__all__ = ["GENERIC", "VENUES", "trade_permission", "venue_for"]

#: A venue with no module: no quirk known, ccxt's unified answers as they are.
GENERIC = Venue(ids=())

VENUES: Mapping[str, Venue] = {
    venue_id: venue
    for venue in (
        binance.USDM,
        binance.COINM,
        binance.SPOT,
        bybit.VENUE,
        okx.VENUE,
        bitget.VENUE,
        hyperliquid.VENUE,
        bingx.VENUE,
        mexc.VENUE,
        weex.VENUE,
        dydx.VENUE,
        deribit.VENUE,
    )
    for venue_id in venue.ids
}


def venue_for(venue_id: str | None) -> Venue:
    """The quirks of a ccxt venue id; `GENERIC` for one with no module (or none at all)."""
    return VENUES.get(venue_id or "", GENERIC)


async def trade_permission(exchange: Any, venue_id: str, balance: Mapping[str, Any]) -> str:
    """What the venue says about the key's right to trade, in words (`margin-monitor
    check`): each venue asks the endpoint where it states the key's rights (docs/venues.md,
    "What check says about the key"); a venue that publishes none says so, never a guess."""
    read = venue_for(venue_id).account.trade_permission
    if read is None:
        return "trade permission unknown (margin-monitor does not read it on this venue)"
    return await read(exchange, balance)
