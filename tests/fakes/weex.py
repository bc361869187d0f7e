"""Fake WEEX contract API (ccxt id `weex`, new in ccxt 4.5.x): USDT-M perpetuals, REST only.

Shapes follow WEEX's published API docs (www.weex.com/api-doc/contract): `GET
/capi/v3/market/exchangeInfo` (contracts), `/capi/v3/market/symbolPrice?priceType=MARK`
(mark), `/capi/v3/account/position/allPosition` (no mark price, entry = openValue / size),
`/capi/v3/account/balance`; the spot `GET /api/v3/exchangeInfo` and `/api/v3/coins` are
served for ccxt's market and currency load. Position `size` is in the base coin (ccxt
derives the entry price as openValue / size). A bad key is code -1044 (Invalid ACCESS_KEY).
WEEX reports neither a maintenance figure nor tiers through ccxt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeVenue, Handler, json_response, rewrite_urls

API_KEY = "fake-weex-key"
SECRET = "fake-weex-secret"
PASSWORD = "fake-weex-passphrase"

MAX_LEVERAGE = {"BTCUSDT": 125, "ETHUSDT": 100}


@dataclass
class WeexAccount:
    balance: float = 3_000.0
    #: symbol -> (side LONG/SHORT, size in base coin, entry price)
    positions: dict[str, tuple[str, float, float]] = field(
        default_factory=lambda: {
            "BTCUSDT": ("LONG", 0.1, 58_000.0),
            "ETHUSDT": ("SHORT", 2.0, 3_100.0),
        }
    )
    marks: dict[str, float] = field(
        default_factory=lambda: {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}
    )

    def upnl(self, symbol: str) -> float:
        side, size, entry = self.positions[symbol]
        sign = 1 if side == "LONG" else -1
        return sign * size * (self.marks[symbol] - entry)


class FakeWeex(FakeVenue):
    venue = "weex"

    def __init__(self, account: WeexAccount | None = None) -> None:
        self.account = account or WeexAccount()
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/api/v3/exchangeInfo"): self.spot_info,
            ("GET", "/api/v3/coins"): self.coins,
            ("GET", "/capi/v3/market/exchangeInfo"): self.contracts,
            ("GET", "/capi/v3/market/symbolPrice"): self.symbol_price,
            ("GET", "/capi/v3/account/position/allPosition"): self.private(self.all_position),
            ("GET", "/capi/v3/account/balance"): self.private(self.balance),
        }

    def ccxt_config(self) -> dict[str, Any]:
        import ccxt.pro

        urls = rewrite_urls(ccxt.pro.weex().urls["api"], self.http, self.ws)
        return {
            "urls": {"api": urls},
            "options": {"defaultType": "swap"},
            "password": PASSWORD,
            "enableRateLimit": False,
        }

    # --- what a test compares against (the venue's own view) ------------------------------

    def expected_positions(self) -> dict[str, tuple[str, float]]:
        return {
            f"{s.removesuffix('USDT')}/USDT:USDT": (side.lower(), size)
            for s, (side, size, _) in self.account.positions.items()
        }

    def wallet(self) -> float:
        return self.account.balance

    def margin_ratio(self) -> float:
        """WEEX reports no MM: the estimate 1 / (2 × max leverage) our normaliser uses."""
        mm = sum(
            size * self.account.marks[s] / (2 * MAX_LEVERAGE[s])
            for s, (_, size, _) in self.account.positions.items()
        )
        upnl = sum(self.account.upnl(s) for s in self.account.positions)
        return mm / (self.account.balance + upnl)

    def private(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("ACCESS-KEY") != API_KEY:
                return json_response({"code": -1044, "msg": "Invalid ACCESS_KEY."}, status=401)
            return await handler(request)

        return checked

    async def spot_info(self, request: web.Request) -> web.Response:
        return json_response(
            {"timezone": "UTC", "serverTime": int(time.time() * 1000), "symbols": []}
        )

    async def coins(self, request: web.Request) -> web.Response:
        return json_response([])

    async def contracts(self, request: web.Request) -> web.Response:
        rows = [
            {
                "symbol": s,
                "baseAsset": s.removesuffix("USDT"),
                "quoteAsset": "USDT",
                "marginAsset": "USDT",
                "contractVal": "0.0001",
                "tickSize": "0.1",
                "stepSize": "0.0001",
                "minLeverage": "1",
                "maxLeverage": str(MAX_LEVERAGE[s]),
                "takerFeeRate": "0.0006",
                "makerFeeRate": "0.0002",
                "minOrderSize": "0.0001",
                "maxOrderSize": "1000",
            }
            for s in self.account.marks
        ]
        return json_response({"symbols": rows})

    async def symbol_price(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        return json_response(
            {
                "symbol": symbol,
                "price": repr(self.account.marks[symbol]),
                "time": int(time.time() * 1000),
            }
        )

    async def all_position(self, request: web.Request) -> web.Response:
        rows = []
        for i, (symbol, (side, size, entry)) in enumerate(self.account.positions.items(), 1):
            rows.append(
                {
                    "id": str(i),
                    "coin": "USDT",
                    "symbol": symbol,
                    "side": side,
                    "marginMode": "CROSSED",
                    "separatedMode": "COMBINED",
                    "separatedOpenOrderId": "0",
                    "leverage": "10",
                    "size": repr(size),
                    "openValue": repr(size * entry),
                    "openFee": "0",
                    "fundingFee": "0",
                    "isolatedMargin": "0",
                    "autoAppendIsolatedMargin": False,
                    "unrealizePnl": repr(self.account.upnl(symbol)),
                    "createdTime": str(int(time.time() * 1000)),
                    "updatedTime": str(int(time.time() * 1000)),
                }
            )
        return json_response(rows)

    async def balance(self, request: web.Request) -> web.Response:
        upnl = sum(self.account.upnl(s) for s in self.account.positions)
        return json_response(
            [
                {
                    "asset": "USDT",
                    "balance": repr(self.account.balance),
                    "availableBalance": repr(self.account.balance + upnl),
                    "frozen": "0",
                    "unrealizePnl": repr(upnl),
                }
            ]
        )
