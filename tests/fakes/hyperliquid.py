"""Fake Hyperliquid (ccxt id `hyperliquid`): perpetuals of a cross account, REST only.

Everything is `POST /info` with a `type` (Hyperliquid docs, "Info endpoint"):
`metaAndAssetCtxs` (markets and marks), `clearinghouseState` (positions and margin
summary), `userAbstraction`, `perpDexs`. Reads need only the user's address; no signature.

Figures follow the "Margining" docs (docs/margin-math.md): maintenance margin is
half the initial margin at max leverage, MM = position value / (2 × max leverage);
account value = raw USD + Σ unrealised PnL; `crossMaintenanceMarginUsed` = Σ MM.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeVenue, Handler, json_response, rewrite_urls

#: ccxt signs with a wallet; reads need only the address (api_key maps to walletAddress).
API_KEY = "0x" + "ab" * 20
SECRET = "0x" + "01".rjust(64, "0")
#: the address of SECRET (secp256k1 key 1), the account's approved agent by default
AGENT = "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"

MAX_LEVERAGE = {"BTC": 40, "ETH": 25}


@dataclass
class HyperliquidAccount:
    raw_usd: float = 10_000.0
    #: coin -> (signed size, entry price)
    positions: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"BTC": (0.3, 58_000.0), "ETH": (-5.0, 3_100.0)}
    )
    marks: dict[str, float] = field(default_factory=lambda: {"BTC": 60_000.0, "ETH": 3_000.0})
    #: approved agent (API wallet) address -> the user it signs for
    agents: dict[str, str] = field(default_factory=lambda: {AGENT: API_KEY})
    #: named agents: address -> (name, validUntil in ms); unnamed agents are not listed
    named_agents: dict[str, tuple[str, int]] = field(default_factory=dict)

    def figures(self, coin: str) -> dict[str, float]:
        size, entry = self.positions[coin]
        mark = self.marks[coin]
        value = abs(size) * mark
        return {
            "value": value,
            "upnl": size * (mark - entry),
            "mm": value / (2 * MAX_LEVERAGE[coin]),
            "im": value / 10,
        }

    def totals(self) -> dict[str, float]:
        rows = [self.figures(c) for c in self.positions]
        upnl = sum(r["upnl"] for r in rows)
        return {
            "upnl": upnl,
            "mm": sum(r["mm"] for r in rows),
            "im": sum(r["im"] for r in rows),
            "value": self.raw_usd + upnl,
            "ntl": sum(r["value"] for r in rows),
        }


class FakeHyperliquid(FakeVenue):
    venue = "hyperliquid"

    def __init__(self, account: HyperliquidAccount | None = None) -> None:
        self.account = account or HyperliquidAccount()
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {("POST", "/info"): self.info}

    def ccxt_config(self) -> dict[str, Any]:
        import ccxt.pro

        urls = rewrite_urls(ccxt.pro.hyperliquid().urls["api"], self.http, self.ws)
        return {
            "urls": {"api": urls},
            "options": {"fetchMarkets": {"types": ["swap"]}, "defaultType": "swap"},
            "enableRateLimit": False,
        }

    # --- what a test compares against (the venue's own view) ------------------------------

    def expected_positions(self) -> dict[str, tuple[str, float]]:
        return {
            f"{c}/USDC:USDC": ("long" if size > 0 else "short", abs(size))
            for c, (size, _) in self.account.positions.items()
        }

    def wallet(self) -> float:
        return self.account.raw_usd

    def margin_ratio(self) -> float:
        t = self.account.totals()
        return t["mm"] / t["value"]

    async def info(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text())
        kind = body.get("type")
        if kind == "metaAndAssetCtxs":
            universe = [
                {"maxLeverage": MAX_LEVERAGE[c], "name": c, "onlyIsolated": False, "szDecimals": 4}
                for c in self.account.marks
            ]
            ctxs = [
                {
                    "dayNtlVlm": "1000000",
                    "funding": "0.0000125",
                    "impactPxs": [repr(m - 0.5), repr(m + 0.5)],
                    "markPx": repr(m),
                    "midPx": repr(m),
                    "openInterest": "1000",
                    "oraclePx": repr(m),
                    "premium": "0",
                    "prevDayPx": repr(m),
                }
                for m in self.account.marks.values()
            ]
            return json_response([{"universe": universe}, ctxs])
        if kind == "spotMeta":
            return json_response(
                {
                    "universe": [],
                    "tokens": [
                        {
                            "name": "USDC",
                            "szDecimals": 8,
                            "weiDecimals": 8,
                            "index": 0,
                            "tokenId": "0x6d1e7cde53ba9467b783cb7c530ce054",
                            "isCanonical": True,
                            "evmContract": None,
                            "fullName": None,
                        }
                    ],
                }
            )
        if kind == "perpDexs":
            return json_response([None])
        if kind == "userAbstraction":
            return json_response("default")
        if kind == "clearinghouseState":
            return json_response(self.clearinghouse())
        if kind == "userRole":
            return json_response(self.user_role(str(body.get("user", "")).lower()))
        if kind == "extraAgents":
            # Info endpoint "extraAgents": the user's named API wallets, with their expiry
            user = str(body.get("user", "")).lower()
            return json_response(
                [
                    {"name": name, "address": address, "validUntil": valid_until}
                    for address, (name, valid_until) in self.account.named_agents.items()
                    if self.account.agents.get(address) == user
                ]
            )
        return json_response({"error": f"fake hyperliquid: unknown info type {kind!r}"}, status=422)

    def user_role(self, address: str) -> dict[str, Any]:
        """Info `userRole` (Hyperliquid docs, Info endpoint -> "Query a user's role"):
        `{"role": "user"}`, `{"role": "agent", "data": {"user": ...}}` or `{"role": "missing"}`
        (also "vault", "subAccount" with `data.master`, not served here)."""
        if address in self.account.agents:
            return {"role": "agent", "data": {"user": self.account.agents[address]}}
        if address == API_KEY:
            return {"role": "user"}
        return {"role": "missing"}

    def clearinghouse(self) -> dict[str, Any]:
        t = self.account.totals()
        rows = []
        for coin, (size, entry) in self.account.positions.items():
            f = self.account.figures(coin)
            rows.append(
                {
                    "type": "oneWay",
                    "position": {
                        "coin": coin,
                        "cumFunding": {"allTime": "0", "sinceChange": "0", "sinceOpen": "0"},
                        "entryPx": repr(entry),
                        "leverage": {"type": "cross", "value": 10},
                        "liquidationPx": None,
                        "marginUsed": repr(f["im"]),
                        "maxLeverage": MAX_LEVERAGE[coin],
                        "positionValue": repr(f["value"]),
                        "returnOnEquity": "0",
                        "szi": repr(size),
                        "unrealizedPnl": repr(f["upnl"]),
                    },
                }
            )
        summary = {
            "accountValue": repr(t["value"]),
            "totalMarginUsed": repr(t["im"]),
            "totalNtlPos": repr(t["ntl"]),
            "totalRawUsd": repr(self.account.raw_usd),
        }
        return {
            "assetPositions": rows,
            "crossMaintenanceMarginUsed": repr(t["mm"]),
            "crossMarginSummary": summary,
            "marginSummary": summary,
            "time": int(time.time() * 1000),
            "withdrawable": repr(t["value"] - t["im"]),
        }
