"""BingX perpetual swaps (`bingx`).

Sources: bingx-api.github.io/docs (swap v2 positions, swap v3 user/balance, Query user API
Key permissions), docs/venues.md. ccxt reports no maintenance margin: it is computed from
the tiers (`maintAmount` kept as the deduction).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monitor.venues import base


def wallets(info: base.Json) -> Iterable[tuple[str, float, float | None]]:
    """BingX swap `/openApi/swap/v3/user/balance`: `balance` is the wallet (excl. UPnL)."""
    data = info.get("data")
    entries = (
        base.rows(data)
        if isinstance(data, list)
        else base.rows([data.get("balance")])
        if isinstance(data, Mapping)
        else []
    )
    for row in entries:
        yield str(row.get("asset")), base.as_float(row.get("balance"), "balance"), None


#: BingX "Query user API Key permissions": 3 = perpetual futures trading
_FUTURES_TRADING = 3


async def trade_permission(exchange: Any, balance: Mapping[str, Any]) -> str:
    # GET /openApi/v1/account/apiPermissions (BingX docs, Account and Wallet -> Sub-account,
    # "Query user API Key permissions"): permissions 1 spot trading, 2 reading,
    # 3 perpetual futures trading, 4 universal transfer, 5 withdrawal, 7 sub-account transfer
    data = base.envelope_data(await exchange.accountV1PrivateGetAccountApiPermissions())
    rights = data.get("permissions") if isinstance(data, Mapping) else None
    if not isinstance(rights, list):
        return base.UNKNOWN
    codes = sorted(int(str(r)) for r in rights if str(r).isdigit())
    if _FUTURES_TRADING in codes:
        return base.CAN_TRADE
    return f"read-only (permissions {codes} lack 3, perpetual futures trading)"


VENUE = base.Venue(
    ("bingx",),
    "bingx-api.github.io/docs",
    balance=base.BalanceQuirks(base.mapping_wallets(wallets)),
    account=base.AccountQuirks(trade_permission=trade_permission),
)
