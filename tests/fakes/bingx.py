"""Fake BingX (ccxt id `bingx`): USDT-M perpetual swaps, REST only.

Shapes follow BingX's published API docs (bingx-api.github.io/docs): `GET
/openApi/swap/v2/quote/contracts`, `/openApi/swap/v2/user/positions`,
`/openApi/swap/v3/user/balance`, `/openApi/swap/v1/maintMarginRatio` (tiers with
`maintAmount`), `/openApi/wallets/v1/capital/config/getall`; the spot and coin-M market
lists are served empty. Envelope `{"code": 0, "msg": "", "data": ...}`; a bad key is code
100413. BingX reports no account-level maintenance figure, so only positions, balance and
tiers are compared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeVenue, Handler, json_response, rewrite_urls

API_KEY = "fake-bingx-key"
SECRET = "fake-bingx-secret"

#: symbol -> tiers (max position value, maintMarginRatio, maintAmount, max leverage)
TIERS = {
    "BTC-USDT": [(300_000, 0.0033, 0.0, 150), (800_000, 0.005, 510.0, 100)],
    "ETH-USDT": [(100_000, 0.005, 0.0, 100), (500_000, 0.0075, 250.0, 75)],
}


@dataclass
class BingxAccount:
    balance: float = 6_000.0
    #: symbol -> (positionSide LONG/SHORT, amount, avgPrice)
    positions: dict[str, tuple[str, float, float]] = field(
        default_factory=lambda: {
            "BTC-USDT": ("LONG", 0.2, 58_000.0),
            "ETH-USDT": ("SHORT", 3.0, 3_100.0),
        }
    )
    marks: dict[str, float] = field(
        default_factory=lambda: {"BTC-USDT": 60_000.0, "ETH-USDT": 3_000.0}
    )
    #: the key's permission codes: 1 spot trading, 2 reading, 3 perpetual futures trading
    permissions: list[int] = field(default_factory=lambda: [2, 3])


def ok(data: Any) -> web.Response:
    return json_response({"code": 0, "msg": "", "timestamp": int(time.time() * 1000), "data": data})


class FakeBingx(FakeVenue):
    venue = "bingx"

    def __init__(self, account: BingxAccount | None = None) -> None:
        self.account = account or BingxAccount()
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/openApi/swap/v2/quote/contracts"): self.contracts,
            ("GET", "/openApi/cswap/v1/market/contracts"): self.empty,
            ("GET", "/openApi/spot/v1/common/symbols"): self.spot_symbols,
            ("GET", "/openApi/wallets/v1/capital/config/getall"): self.private(self.coins),
            ("GET", "/openApi/swap/v2/user/positions"): self.private(self.user_positions),
            ("GET", "/openApi/swap/v3/user/balance"): self.private(self.user_balance),
            ("GET", "/openApi/swap/v1/maintMarginRatio"): self.private(self.tiers),
            ("GET", "/openApi/v1/account/apiPermissions"): self.private(self.api_permissions),
        }

    def ccxt_config(self) -> dict[str, Any]:
        import ccxt.pro

        urls = rewrite_urls(ccxt.pro.bingx().urls["api"], self.http, self.ws)
        return {"urls": {"api": urls}, "options": {"defaultType": "swap"}, "enableRateLimit": False}

    # --- what a test compares against (the venue's own view) ------------------------------

    def expected_positions(self) -> dict[str, tuple[str, float]]:
        return {
            f"{s.split('-')[0]}/USDT:USDT": (side.lower(), amount)
            for s, (side, amount, _) in self.account.positions.items()
        }

    def wallet(self) -> float:
        return self.account.balance

    def margin_ratio(self) -> float:
        """BingX publishes no account ratio: MM from its own tier table (value × rate −
        maintAmount) over balance + UPnL, the Binance-style rule its tiers describe."""
        mm = 0.0
        for symbol in self.account.positions:
            value = self.figures(symbol)["value"]
            tiers = TIERS[symbol]
            _, rate, amount, _ = next((t for t in tiers if value <= t[0]), tiers[-1])
            mm += value * rate - amount
        upnl = sum(self.figures(s)["upnl"] for s in self.account.positions)
        return mm / (self.account.balance + upnl)

    def private(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("X-BX-APIKEY") != API_KEY:
                return json_response(
                    {"code": 100413, "msg": "Incorrect apiKey", "timestamp": 0, "data": {}}
                )
            return await handler(request)

        return checked

    async def api_permissions(self, request: web.Request) -> web.Response:
        """ "Query user API Key permissions" (BingX docs, Account and Wallet -> Sub-account):
        apiKey, permissions, ipAddresses, note at the top level, as clients of the live
        endpoint read it (no code/data envelope)."""
        return json_response(
            {
                "apiKey": API_KEY,
                "permissions": self.account.permissions,
                "ipAddresses": ["127.0.0.1"],
                "note": "margin-monitor",
            }
        )

    async def empty(self, request: web.Request) -> web.Response:
        return ok([])

    async def spot_symbols(self, request: web.Request) -> web.Response:
        return ok({"symbols": []})

    async def coins(self, request: web.Request) -> web.Response:
        return ok(
            [
                {
                    "coin": "USDT",
                    "name": "USDT",
                    "networkList": [
                        {
                            "name": "Tether",
                            "network": "ERC20",
                            "isDefault": True,
                            "minConfirm": 12,
                            "withdrawEnable": True,
                            "depositEnable": True,
                            "withdrawFee": "1",
                            "withdrawMax": "1000000",
                            "withdrawMin": "10",
                            "depositMin": "1",
                        }
                    ],
                }
            ]
        )

    async def contracts(self, request: web.Request) -> web.Response:
        return ok(
            [
                {
                    "contractId": str(i),
                    "symbol": s,
                    "size": "0.0001",
                    "quantityPrecision": 4,
                    "pricePrecision": 1,
                    "feeRate": 0.0005,
                    "makerFeeRate": 0.0002,
                    "takerFeeRate": 0.0005,
                    "tradeMinLimit": 0,
                    "tradeMinQuantity": 0.0001,
                    "tradeMinUSDT": 2,
                    "maxLongLeverage": 150,
                    "maxShortLeverage": 150,
                    "currency": "USDT",
                    "asset": s.split("-")[0],
                    "status": 1,
                    "apiStateOpen": "true",
                    "apiStateClose": "true",
                    "ensureTrigger": True,
                    "triggerFeeRate": "0.0002",
                    "brokerState": True,
                    "launchTime": 1586275200000,
                    "maintainTime": 0,
                    "offTime": 0,
                }
                for i, s in enumerate(self.account.marks, start=1)
            ]
        )

    def figures(self, symbol: str) -> dict[str, float]:
        side, amount, entry = self.account.positions[symbol]
        mark = self.account.marks[symbol]
        value = amount * mark
        sign = 1 if side == "LONG" else -1
        return {"value": value, "upnl": sign * amount * (mark - entry), "im": value / 10}

    async def user_positions(self, request: web.Request) -> web.Response:
        rows = []
        for symbol, (side, amount, entry) in self.account.positions.items():
            f = self.figures(symbol)
            rows.append(
                {
                    "positionId": str(abs(hash(symbol)) % 10**12),
                    "symbol": symbol,
                    "currency": "USDT",
                    "positionAmt": repr(amount),
                    "availableAmt": repr(amount),
                    "positionSide": side,
                    "isolated": False,
                    "avgPrice": repr(entry),
                    "initialMargin": repr(f["im"]),
                    "margin": repr(f["im"]),
                    "leverage": 10,
                    "unrealizedProfit": repr(f["upnl"]),
                    "realisedProfit": "0",
                    "liquidationPrice": 0,
                    "pnlRatio": "0",
                    "maxMarginReduction": "0",
                    "riskRate": "0",
                    "markPrice": repr(self.account.marks[symbol]),
                    "positionValue": repr(f["value"]),
                    "onlyOnePosition": True,
                    "updateTime": int(time.time() * 1000),
                }
            )
        return ok(rows)

    async def user_balance(self, request: web.Request) -> web.Response:
        upnl = sum(self.figures(s)["upnl"] for s in self.account.positions)
        im = sum(self.figures(s)["im"] for s in self.account.positions)
        equity = self.account.balance + upnl
        return ok(
            [
                {
                    "userId": "1",
                    "asset": "USDT",
                    "balance": repr(self.account.balance),
                    "equity": repr(equity),
                    "unrealizedProfit": repr(upnl),
                    "realisedProfit": "0",
                    "availableMargin": repr(equity - im),
                    "usedMargin": repr(im),
                    "freezedMargin": "0",
                    "shortUid": "1",
                }
            ]
        )

    async def tiers(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        rows, floor = [], 0.0
        for i, (cap, rate, amount, lev) in enumerate(TIERS.get(symbol, []), start=1):
            rows.append(
                {
                    "tier": f"Tier {i}",
                    "symbol": symbol,
                    "minPositionVal": repr(floor),
                    "maxPositionVal": repr(float(cap)),
                    "maxLeverage": str(lev),
                    "maintMarginRatio": f"{rate:.6f}",
                    "maintAmount": f"{amount:.6f}",
                }
            )
            floor = float(cap)
        return ok(rows)
