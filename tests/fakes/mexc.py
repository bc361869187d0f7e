"""Fake MEXC futures (ccxt id `mexc`): USDT-M perpetual contracts, REST only.

Shapes follow MEXC's published contract API docs (mexcdevelop.github.io/apidocs/
contract_v1_en): `GET /api/v1/contract/detail` (markets and the risk-limit fields ccxt
turns into tiers), `/api/v1/contract/ticker` (`fairPrice` is the mark),
`/api/v1/private/position/open_positions` (sizes in contracts, no mark price),
`/api/v1/private/account/assets`; `/api/v3/capital/config/getall` (spot wallet) for
ccxt's currencies. Envelope `{"success": true, "code": 0, "data": ...}`; a bad key is
code 402. MEXC reports no maintenance figure and has no private position stream in ccxt
(`has['watchPositions']` is None), so positions are polled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeVenue, Handler, json_response, rewrite_urls

API_KEY = "fake-mexc-key"
SECRET = "fake-mexc-secret"

#: symbol -> (contract size in base coin, base maintenance margin rate)
CONTRACTS = {"BTC_USDT": (0.0001, 0.004), "ETH_USDT": (0.01, 0.005)}


@dataclass
class MexcAccount:
    cash: float = 4_000.0
    #: symbol -> (positionType 1 long / 2 short, holdVol in contracts, openAvgPrice)
    positions: dict[str, tuple[int, float, float]] = field(
        default_factory=lambda: {
            "BTC_USDT": (1, 3_000.0, 58_000.0),
            "ETH_USDT": (2, 400.0, 3_100.0),
        }
    )
    marks: dict[str, float] = field(
        default_factory=lambda: {"BTC_USDT": 60_000.0, "ETH_USDT": 3_000.0}
    )

    def figures(self, symbol: str) -> dict[str, float]:
        kind, vol, entry = self.positions[symbol]
        size, mmr = CONTRACTS[symbol]
        mark = self.marks[symbol]
        sign = 1 if kind == 1 else -1
        value = vol * size * mark
        return {
            "value": value,
            "upnl": sign * vol * size * (mark - entry),
            "im": value / 10,
            "mm": value * mmr,
        }


def ok(data: Any) -> web.Response:
    return json_response({"success": True, "code": 0, "data": data})


class FakeMexc(FakeVenue):
    venue = "mexc"

    def __init__(self, account: MexcAccount | None = None) -> None:
        self.account = account or MexcAccount()
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/api/v1/contract/detail"): self.detail,
            ("GET", "/api/v1/contract/ticker"): self.ticker,
            ("GET", "/api/v3/capital/config/getall"): self.coins,
            ("GET", "/api/v3/exchangeInfo"): self.spot_info,
            ("GET", "/api/v1/private/position/open_positions"): self.private(self.open_positions),
            ("GET", "/api/v1/private/account/assets"): self.private(self.assets),
        }

    def ccxt_config(self) -> dict[str, Any]:
        import ccxt.pro

        urls = rewrite_urls(ccxt.pro.mexc().urls["api"], self.http, self.ws)
        return {
            "urls": {"api": urls},
            "options": {
                "fetchMarkets": {
                    "types": {"spot": False, "swap": {"linear": True, "inverse": False}}
                },
                "defaultType": "swap",
            },
            "enableRateLimit": False,
        }

    # --- what a test compares against (the venue's own view) ------------------------------

    def expected_positions(self) -> dict[str, tuple[str, float]]:
        return {
            f"{s.split('_')[0]}/USDT:USDT": (
                "long" if kind == 1 else "short",
                vol * CONTRACTS[s][0],
            )
            for s, (kind, vol, _) in self.account.positions.items()
        }

    def wallet(self) -> float:
        return self.account.cash

    def margin_ratio(self) -> float:
        rows = [self.account.figures(s) for s in self.account.positions]
        return sum(r["mm"] for r in rows) / (self.account.cash + sum(r["upnl"] for r in rows))

    def private(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("ApiKey") != API_KEY:
                return json_response(
                    {"success": False, "code": 402, "message": "Api key info invalid"}
                )
            return await handler(request)

        return checked

    async def spot_info(self, request: web.Request) -> web.Response:
        """Spot markets: none on this futures-only fake (ccxt always asks)."""
        return json_response(
            {
                "timezone": "CST",
                "serverTime": int(time.time() * 1000),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [],
            }
        )

    async def coins(self, request: web.Request) -> web.Response:
        return json_response([{"coin": "USDT", "name": "Tether", "networkList": []}])

    async def detail(self, request: web.Request) -> web.Response:
        rows = []
        for symbol, (size, mmr) in CONTRACTS.items():
            base = symbol.split("_")[0]
            rows.append(
                {
                    "symbol": symbol,
                    "displayName": f"{symbol} PERPETUAL",
                    "displayNameEn": f"{symbol} PERPETUAL",
                    "positionOpenType": 3,
                    "baseCoin": base,
                    "quoteCoin": "USDT",
                    "settleCoin": "USDT",
                    "contractSize": size,
                    "minLeverage": 1,
                    "maxLeverage": 200,
                    "priceScale": 1,
                    "volScale": 0,
                    "amountScale": 4,
                    "priceUnit": 0.1,
                    "volUnit": 1,
                    "minVol": 1,
                    "maxVol": 1_000_000,
                    "bidLimitPriceRate": 0.1,
                    "askLimitPriceRate": 0.1,
                    "takerFeeRate": 0.0002,
                    "makerFeeRate": 0,
                    "maintenanceMarginRate": mmr,
                    "initialMarginRate": 0.005,
                    "riskBaseVol": 100_000,
                    "riskIncrVol": 200_000,
                    "riskIncrMmr": 0.004,
                    "riskIncrImr": 0.004,
                    "riskLevelLimit": 5,
                    "priceCoefficientVariation": 0.1,
                    "indexOrigin": ["BINANCE"],
                    "state": 0,
                    "isNew": False,
                    "isHot": True,
                    "isHidden": False,
                }
            )
        return ok(rows)

    async def ticker(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        mark = self.account.marks[symbol]
        return ok(
            {
                "symbol": symbol,
                "lastPrice": mark,
                "bid1": mark,
                "ask1": mark,
                "volume24": 1,
                "amount24": 1,
                "holdVol": 1,
                "lower24Price": mark,
                "high24Price": mark,
                "riseFallRate": 0,
                "riseFallValue": 0,
                "indexPrice": mark,
                "fairPrice": mark,
                "fundingRate": 0.0001,
                "maxBidPrice": mark * 1.1,
                "minAskPrice": mark * 0.9,
                "timestamp": int(time.time() * 1000),
            }
        )

    async def open_positions(self, request: web.Request) -> web.Response:
        rows = []
        for i, (symbol, (kind, vol, entry)) in enumerate(self.account.positions.items(), 1):
            f = self.account.figures(symbol)
            rows.append(
                {
                    "positionId": i,
                    "symbol": symbol,
                    "positionType": kind,
                    "openType": 2,
                    "state": 1,
                    "holdVol": vol,
                    "frozenVol": 0,
                    "closeVol": 0,
                    "holdAvgPrice": entry,
                    "openAvgPrice": entry,
                    "closeAvgPrice": 0,
                    "liquidatePrice": 0,
                    "oim": f["im"],
                    "im": f["im"],
                    "holdFee": 0,
                    "realised": 0,
                    "leverage": 10,
                    "createTime": int(time.time() * 1000),
                    "updateTime": int(time.time() * 1000),
                    "autoAddIm": False,
                }
            )
        return ok(rows)

    async def assets(self, request: web.Request) -> web.Response:
        upnl = sum(self.account.figures(s)["upnl"] for s in self.account.positions)
        im = sum(self.account.figures(s)["im"] for s in self.account.positions)
        equity = self.account.cash + upnl
        return ok(
            [
                {
                    "currency": "USDT",
                    "positionMargin": im,
                    "availableBalance": equity - im,
                    "cashBalance": self.account.cash,
                    "frozenBalance": 0,
                    "equity": equity,
                    "unrealized": upnl,
                    "bonus": 0,
                }
            ]
        )
