"""Fake Bitget v2 mix (ccxt id `bitget`): USDT-M perpetuals of a classic account, REST only.

Shapes follow Bitget's published v2 API docs (www.bitget.com/api-doc/contract):
`GET /api/v2/mix/market/contracts`, `/api/v2/spot/public/coins`,
`/api/v2/mix/market/query-position-lever`, `/api/v2/mix/market/ticker`,
`/api/v2/mix/market/symbol-price`, `/api/v2/mix/market/discount-rate`,
`/api/v2/mix/position/all-position`, `/api/v2/mix/account/accounts`,
`/api/v2/spot/account/info` (api-doc/spot/account/Get-Account-Info: the key's
`authorities`, `coor` futures read and `coow` futures order write). Envelope
`{"code": "00000", "data": ...}`; a bad key is HTTP 400 code 40006.

Figures: position MM = notional × keepMarginRate of its tier; `crossedRiskRate` =
Σ MM / account equity, equity = wallet + unrealised PnL.

Union (multi-asset) mode (`assetMode` "union", Get Account List): the account also holds
coins other than USDT, one account row per margin coin, each coin valued at its USDT mark
with the tiered discount rates `GET /api/v2/mix/market/discount-rate` publishes
(api-doc contract/market/Get-Discount-Rate: tiers in USDT value, "-1" for no cap, applied
marginally as in Bitget's help "Introduction to USDT-M Futures in Multi-Asset Mode"); the
multi-asset margin (`unionTotalMargin`) = USDT equity + Σ discounted coin value, and
`crossedRiskRate` = Σ MM / that margin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeVenue, Handler, json_response, rewrite_urls

API_KEY = "fake-bitget-key"
SECRET = "fake-bitget-secret"
PASSWORD = "fake-bitget-passphrase"

#: symbol -> tiers (end notional, keepMarginRate, leverage).
TIERS = {
    "BTCUSDT": [(150_000, 0.004, 125), (600_000, 0.005, 100), (1_500_000, 0.01, 50)],
    "ETHUSDT": [(100_000, 0.005, 100), (500_000, 0.0065, 75)],
}


@dataclass
class BitgetAccount:
    wallet: float = 8_000.0
    #: symbol -> (holdSide, size in base coin, average open price)
    positions: dict[str, tuple[str, float, float]] = field(
        default_factory=lambda: {
            "BTCUSDT": ("long", 0.4, 58_000.0),
            "ETHUSDT": ("short", 6.0, 3_100.0),
        }
    )
    marks: dict[str, float] = field(
        default_factory=lambda: {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}
    )
    #: the key's permissions as Get-Account-Info lists them (`coow`: futures orders)
    authorities: list[str] = field(default_factory=lambda: ["coor", "coow", "stor"])
    #: "single" (USDT only) or "union" (multi-asset: `coins` count as margin)
    asset_mode: str = "single"
    #: coin -> amount held in the USDT-M account besides USDT (union mode)
    coins: dict[str, float] = field(default_factory=dict)
    #: coin -> discount tiers (min USDT value, max USDT value or -1, discountRate)
    discounts: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)

    def coin_value(self, coin: str) -> float:
        """USDT value of a coin balance at its USDT market's mark."""
        return self.coins[coin] * self.marks[f"{coin}USDT"]

    def discounted(self, coin: str) -> float:
        """The coin's value with its discount rates applied tier by tier (marginally)."""
        value = self.coin_value(coin)
        tiers = self.discounts.get(coin)
        if not tiers:
            return value
        return sum(
            rate * max(0.0, min(value, top if top >= 0 else value) - low)
            for low, top, rate in tiers
        )

    def figures(self, symbol: str) -> dict[str, float]:
        side, size, entry = self.positions[symbol]
        mark = self.marks[symbol]
        notional = size * mark
        rate = next((r for cap, r, _ in TIERS[symbol] if notional <= cap), TIERS[symbol][-1][1])
        sign = 1 if side == "long" else -1
        return {
            "notional": notional,
            "rate": rate,
            "mm": notional * rate,
            "upnl": sign * size * (mark - entry),
            "im": notional / 20,
        }

    def totals(self) -> dict[str, float]:
        rows = [self.figures(s) for s in self.positions]
        upnl = sum(r["upnl"] for r in rows)
        mm = sum(r["mm"] for r in rows)
        equity = self.wallet + upnl
        if self.asset_mode == "union":
            equity += sum(self.discounted(c) for c in self.coins)
        return {
            "upnl": upnl,
            "mm": mm,
            "equity": equity,
            "risk_rate": mm / equity,
            "im": sum(r["im"] for r in rows),
        }


def ok(data: Any) -> web.Response:
    return json_response(
        {"code": "00000", "msg": "success", "requestTime": int(time.time() * 1000), "data": data}
    )


class FakeBitget(FakeVenue):
    venue = "bitget"

    def __init__(self, account: BitgetAccount | None = None) -> None:
        self.account = account or BitgetAccount()
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/api/v2/mix/market/contracts"): self.contracts,
            ("GET", "/api/v2/spot/public/coins"): self.coins,
            ("GET", "/api/v2/mix/market/query-position-lever"): self.tiers,
            ("GET", "/api/v2/mix/market/ticker"): self.ticker,
            ("GET", "/api/v2/mix/position/all-position"): self.private(self.all_position),
            ("GET", "/api/v2/mix/account/accounts"): self.private(self.accounts),
            ("GET", "/api/v2/mix/market/discount-rate"): self.discount_rate,
            ("GET", "/api/v2/mix/market/symbol-price"): self.symbol_price,
            ("GET", "/api/v3/account/settings"): self.private(self.classic_account),
            ("GET", "/api/v2/spot/account/info"): self.private(self.account_info),
        }

    def ccxt_config(self) -> dict[str, Any]:
        import ccxt.pro

        urls = rewrite_urls(ccxt.pro.bitget().urls["api"], self.http, self.ws)
        return {
            "urls": {"api": urls},
            "options": {"fetchMarkets": {"types": ["swap"]}, "defaultType": "swap"},
            "password": PASSWORD,
            "enableRateLimit": False,
        }

    # --- what a test compares against (the venue's own view) ------------------------------

    def expected_positions(self) -> dict[str, tuple[str, float]]:
        return {
            f"{s.removesuffix('USDT')}/USDT:USDT": (side, size)
            for s, (side, size, _) in self.account.positions.items()
        }

    def wallet(self) -> float:
        return self.account.wallet

    def margin_ratio(self) -> float:
        return self.account.totals()["risk_rate"]

    def private(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("ACCESS-KEY") != API_KEY:
                return json_response(
                    {"code": "40006", "msg": "Invalid ACCESS_KEY", "requestTime": 0, "data": None},
                    status=400,
                )
            return await handler(request)

        return checked

    async def account_info(self, request: web.Request) -> web.Response:
        """Get Account Information (v2 spot account): who the key is and what it may do."""
        return ok(
            {
                "userId": "1234567890",
                "inviterId": "",
                "ips": "",
                "authorities": list(self.account.authorities),
                "parentId": 0,
                "traderType": "",
                "channelCode": "",
                "channel": "",
                "regisTime": "1700000000000",
            }
        )

    async def classic_account(self, request: web.Request) -> web.Response:
        """A classic (non-UTA) account: ccxt probes this path to pick the v2 mix API."""
        return json_response(
            {
                "code": "40084",
                "msg": "Classic account mode does not support this endpoint",
                "requestTime": 0,
                "data": None,
            },
            status=400,
        )

    async def contracts(self, request: web.Request) -> web.Response:
        if request.query.get("productType") != "USDT-FUTURES":
            return ok([])
        rows = [
            {
                "symbol": s,
                "baseCoin": s.removesuffix("USDT"),
                "quoteCoin": "USDT",
                "buyLimitPriceRatio": "0.9",
                "sellLimitPriceRatio": "0.9",
                "feeRateUpRatio": "0.1",
                "makerFeeRate": "0.0002",
                "takerFeeRate": "0.0006",
                "openCostUpRatio": "0.1",
                "supportMarginCoins": ["USDT"],
                "minTradeNum": "0.001",
                "priceEndStep": "1",
                "volumePlace": "3",
                "pricePlace": "1",
                "sizeMultiplier": "0.001",
                "symbolType": "perpetual",
                "minTradeUSDT": "5",
                "maxSymbolOrderNum": "200",
                "maxProductOrderNum": "400",
                "maxPositionNum": "150",
                "symbolStatus": "normal",
                "offTime": "-1",
                "limitOpenTime": "-1",
                "deliveryTime": "",
                "deliveryStartTime": "",
                "deliveryPeriod": "",
                "launchTime": "",
                "fundInterval": "8",
                "minLever": "1",
                "maxLever": "125",
                "posLimit": "0.05",
                "maintainTime": "",
            }
            for s in self.account.marks
        ]
        return ok(rows)

    async def coins(self, request: web.Request) -> web.Response:
        chain = {
            "chain": "ERC20",
            "needTag": "false",
            "withdrawable": "true",
            "rechargeable": "true",
            "withdrawFee": "1",
            "extraWithdrawFee": "0",
            "depositConfirm": "12",
            "withdrawConfirm": "12",
            "minDepositAmount": "1",
            "minWithdrawAmount": "10",
            "browserUrl": "",
            "contractAddress": "",
            "withdrawStep": "0",
            "withdrawMinScale": "4",
            "congestion": "normal",
        }
        return ok([{"coinId": "2", "coin": "USDT", "transfer": "true", "chains": [chain]}])

    async def tiers(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        rows, start = [], 0.0
        for level, (end, rate, lev) in enumerate(TIERS.get(symbol, []), start=1):
            rows.append(
                {
                    "symbol": symbol,
                    "level": str(level),
                    "startUnit": repr(start),
                    "endUnit": repr(float(end)),
                    "leverage": str(lev),
                    "keepMarginRate": repr(rate),
                }
            )
            start = float(end)
        return ok(rows)

    async def ticker(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        mark = self.account.marks[symbol]
        return ok(
            [
                {
                    "symbol": symbol,
                    "lastPr": repr(mark),
                    "askPr": repr(mark),
                    "bidPr": repr(mark),
                    "bidSz": "1",
                    "askSz": "1",
                    "high24h": repr(mark),
                    "low24h": repr(mark),
                    "ts": str(int(time.time() * 1000)),
                    "change24h": "0",
                    "baseVolume": "1",
                    "quoteVolume": "1",
                    "usdtVolume": "1",
                    "openUtc": repr(mark),
                    "changeUtc24h": "0",
                    "indexPrice": repr(mark),
                    "fundingRate": "0.0001",
                    "holdingAmount": "1",
                    "deliveryStartTime": None,
                    "deliveryTime": None,
                    "deliveryStatus": "",
                    "open24h": repr(mark),
                    "markPrice": repr(mark),
                }
            ]
        )

    async def symbol_price(self, request: web.Request) -> web.Response:
        """Get Symbol Price (api-doc contract/market/Get-Symbol-Price): how a collateral
        coin's USDT mark is read (ccxt `fetch_mark_price`)."""
        symbol = request.query.get("symbol", "")
        mark = repr(self.account.marks[symbol])
        return ok(
            [
                {
                    "symbol": symbol,
                    "price": mark,
                    "indexPrice": mark,
                    "markPrice": mark,
                    "ts": str(int(time.time() * 1000)),
                }
            ]
        )

    async def all_position(self, request: web.Request) -> web.Response:
        rows = []
        for symbol, (side, size, entry) in self.account.positions.items():
            f = self.account.figures(symbol)
            rows.append(
                {
                    "marginCoin": "USDT",
                    "symbol": symbol,
                    "holdSide": side,
                    "openDelegateSize": "0",
                    "marginSize": repr(f["im"]),
                    "available": repr(size),
                    "locked": "0",
                    "total": repr(size),
                    "leverage": "20",
                    "achievedProfits": "0",
                    "openPriceAvg": repr(entry),
                    "marginMode": "crossed",
                    "posMode": "one_way_mode",
                    "unrealizedPL": repr(f["upnl"]),
                    "liquidationPrice": "0",
                    "keepMarginRate": repr(f["rate"]),
                    "markPrice": repr(self.account.marks[symbol]),
                    "marginRatio": "0",
                    "cTime": str(int(time.time() * 1000)),
                }
            )
        return ok(rows)

    async def accounts(self, request: web.Request) -> web.Response:
        """Get Account List: one row per margin coin (USDT first; other coins in union
        mode), each in its own coin; the account-wide figures on every row."""
        t = self.account.totals()
        free = repr(t["equity"] - t["im"])
        usdt_equity = self.account.wallet + t["upnl"]
        coins = [("USDT", usdt_equity, usdt_equity, t["upnl"])] + [
            (c, amount, self.account.coin_value(c), 0.0) for c, amount in self.account.coins.items()
        ]
        return ok(
            [
                {
                    "marginCoin": coin,
                    "locked": "0",
                    "available": free if coin == "USDT" else repr(equity),
                    "crossedMaxAvailable": free,
                    "isolatedMaxAvailable": "0",
                    "maxTransferOut": free if coin == "USDT" else repr(equity),
                    "accountEquity": repr(equity),
                    "usdtEquity": repr(usdt),
                    "btcEquity": "0",
                    "crossedRiskRate": repr(t["risk_rate"]),
                    "unrealizedPL": repr(upnl),
                    "coupon": "0",
                    "crossedUnrealizedPL": repr(upnl),
                    "isolatedUnrealizedPL": "0",
                    "unionTotalMargin": repr(t["equity"]),
                    "unionAvailable": free,
                    "unionMm": repr(t["mm"]),
                    "assetMode": self.account.asset_mode,
                }
                for coin, equity, usdt, upnl in coins
            ]
        )

    async def discount_rate(self, request: web.Request) -> web.Response:
        """Get Discount Rate (public): per coin its limits and tiered discount rates."""
        return ok(
            [
                {
                    "coin": coin,
                    "userLimit": "1000000",
                    "totalLimit": "100000000",
                    "discountRateList": [
                        {
                            "tier": str(i),
                            "minAmount": repr(low),
                            "maxAmount": "-1" if top < 0 else repr(top),
                            "discountRate": repr(rate),
                        }
                        for i, (low, top, rate) in enumerate(tiers, start=1)
                    ],
                }
                for coin, tiers in self.account.discounts.items()
            ]
        )
