"""Fake Bybit v5 (ccxt id `bybit`), Unified Trading Account, USDT linear perpetuals.

Wire formats follow Bybit's published v5 API docs (bybit-exchange.github.io/docs/v5):
`GET /v5/market/instruments-info`, `/v5/market/time`, `/v5/market/tickers`,
`/v5/market/risk-limit`, `/v5/position/list`, `/v5/account/wallet-balance`,
`/v5/user/query-api`, `/v5/account/info`, `/v5/account/collateral-info` (v5/account/
collateral-info) and `/v5/spot-margin-trade/collateral` (v5/spot-margin-uta/
tier-collateral-ratio); websockets `/v5/public/linear` (`tickers.<SYMBOL>`)
and `/v5/private` (`auth`, `position`, `wallet`). Errors travel as `retCode` in the body
(10003 "API key is invalid", 10006 "Too many visits").

Account figures follow Bybit's glossary (docs/margin-math.md):
position MM = position value × MMR(risk tier) − MM deduction; Margin Balance = wallet balance +
perpetual UPL, after the collateral value ratio; Account MM Rate = Total Maintenance Margin /
Margin Balance (no haircut loss or order loss in this fake: no spot or open orders). A coin's
value is Σ over its tiers (in coin units, marginal) of part × USD price × collateralRatio for a
positive equity, and equity × USD price for a negative one ("The Collateral Value Ratio only
applies to assets with a positive balance", Assets-Collateral-Value-Ratio-List-UTA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import Client, FakeVenue, Handler, banded, json_response, rewrite_urls

API_KEY = "fake-bybit-key"
SECRET = "fake-bybit-secret"  # a loopback fake's key, not a credential

#: (risk limit value, MMR, MM deduction, max leverage). BTCUSDT rows from Bybit's margin
#: parameters page (margin-math.md §2.3); ETHUSDT rows are this fake's own numbers,
#: with deductions from Bybit's formula D(n) = RL(n-1) × (MMR_n − MMR_{n-1}) + D(n-1).
BTC_TIERS: list[tuple[float, float, float, float]] = [
    (2_000_000, 0.005, 0.0, 100),
    (2_600_000, 0.0056, 1_200.0, 90),
    (3_200_000, 0.0063, 3_020.0, 80),
]
ETH_TIERS: list[tuple[float, float, float, float]] = [
    (100_000, 0.01, 0.0, 50),
    (500_000, 0.015, 500.0, 33),
    (1_000_000, 0.02, 3_000.0, 25),
]


@dataclass
class BybitPosition:
    """One position; `size` ≥ 0 with `side` Buy/Sell, `idx` 0 one-way, 1/2 hedge."""

    symbol: str
    side: str
    size: float
    entry: float
    leverage: float = 10.0
    idx: int = 0


@dataclass
class BybitAccount:
    """The fake's truth for one UTA account."""

    wallet: float = 20_000.0
    positions: dict[tuple[str, int], BybitPosition] = field(default_factory=dict)
    marks: dict[str, float] = field(
        default_factory=lambda: {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}
    )
    tiers: dict[str, list[tuple[float, float, float, float]]] = field(
        default_factory=lambda: {"BTCUSDT": BTC_TIERS, "ETHUSDT": ETH_TIERS}
    )
    read_only: bool = False
    #: Other collateral coins: coin -> (wallet balance, USD price, collateral switch on);
    #: a price of None follows the coin's `<COIN>USDT` mark.
    coins: dict[str, tuple[float, float | None, bool]] = field(default_factory=dict)
    #: `/v5/account/info` marginMode: REGULAR_MARGIN (cross), PORTFOLIO_MARGIN, ISOLATED_MARGIN.
    margin_mode: str = "REGULAR_MARGIN"
    #: coin -> [(maxQty or None for "", collateralRatio)], tiers in coin units.
    collateral_tiers: dict[str, list[tuple[float | None, float]]] = field(
        default_factory=lambda: {"USDT": [(None, 1.0)]}
    )
    #: PORTFOLIO_MARGIN: the account MM from Bybit's scenario engine, which no public
    #: formula gives; the fake just states it (None: the sum of position MMs).
    portfolio_mm: float | None = None

    def coin_price(self, coin: str) -> float:
        if coin == "USDT":
            return 1.0
        price = self.coins[coin][1]
        return self.marks[f"{coin}USDT"] if price is None else price

    def coin_value(self, coin: str, equity: float) -> float:
        """USD value after the tiered collateral value ratio (positive equity only)."""
        price = self.coin_price(coin)
        if equity <= 0:
            return equity * price
        return banded(equity, self.collateral_tiers.get(coin, [(None, 1.0)])) * price

    def tier(self, symbol: str, value: float) -> tuple[float, float, float, float]:
        for row in self.tiers[symbol]:
            if value <= row[0]:
                return row
        return self.tiers[symbol][-1]

    def figures(self, pos: BybitPosition) -> dict[str, float]:
        mark = self.marks[pos.symbol]
        sign = 1.0 if pos.side == "Buy" else -1.0
        value = pos.size * mark
        _, mmr, deduction, _ = self.tier(pos.symbol, value)
        return {
            "mark": mark,
            "value": value,
            "upnl": sign * pos.size * (mark - pos.entry),
            "mm": value * mmr - deduction,
            "im": value / pos.leverage,
        }

    def totals(self) -> dict[str, float]:
        rows = [self.figures(p) for p in self.positions.values()]
        upnl = sum(r["upnl"] for r in rows)
        mm = sum(r["mm"] for r in rows)
        if self.margin_mode == "PORTFOLIO_MARGIN" and self.portfolio_mm is not None:
            mm = self.portfolio_mm
        im = sum(r["im"] for r in rows)
        margin_balance = self.coin_value("USDT", self.wallet + upnl) + sum(
            self.coin_value(c, amount) for c, (amount, _, on) in self.coins.items() if on
        )
        return {
            "upnl": upnl,
            "mm": mm,
            "im": im,
            "margin_balance": margin_balance,
            "mm_rate": mm / margin_balance,
            "im_rate": im / margin_balance,
        }


def ok(result: Any) -> web.Response:
    """Bybit's envelope: retCode 0 and the payload under `result`."""
    return json_response(
        {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": _ms()}
    )


def _ms() -> int:
    return int(time.time() * 1000)


class FakeBybit(FakeVenue):
    """Bybit v5: the routes ccxt 4.5.90 calls for a UTA account's linear perpetuals."""

    venue = "bybit"

    def __init__(self, account: BybitAccount | None = None) -> None:
        self.account = account or BybitAccount()
        self.auth_ok = True
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/v5/market/instruments-info"): self.instruments,
            ("GET", "/v5/market/time"): self.server_time,
            ("GET", "/v5/market/tickers"): self.tickers,
            ("GET", "/v5/market/risk-limit"): self.risk_limit,
            ("GET", "/v5/position/list"): self.private(self.position_list),
            ("GET", "/v5/account/wallet-balance"): self.private(self.wallet_balance),
            ("GET", "/v5/user/query-api"): self.private(self.query_api),
            ("GET", "/v5/account/info"): self.private(self.account_info),
            ("GET", "/v5/asset/coin/query-info"): self.private(self.coin_info),
            ("GET", "/v5/account/collateral-info"): self.private(self.collateral_info),
            ("GET", "/v5/spot-margin-trade/collateral"): self.tiered_collateral,
        }

    def ws_paths(self) -> list[str]:
        return ["/v5/public/{category}", "/v5/private"]

    def ccxt_config(self) -> dict[str, Any]:
        import ccxt.pro

        template = ccxt.pro.bybit()
        urls = rewrite_urls(template.urls["api"], self.http, self.ws)
        return {
            "urls": {"api": urls},
            "options": {
                "fetchMarkets": {"types": ["linear"]},
                "fetchCurrencies": False,
            },
            "enableRateLimit": False,
        }

    # --- auth ---------------------------------------------------------------------------

    def private(self, handler: Handler) -> Handler:
        """A bad key gets retCode 10003 "API key is invalid." (v5 error-code table)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("X-BAPI-API-KEY") != API_KEY:
                return json_response(
                    {
                        "retCode": 10003,
                        "retMsg": "API key is invalid.",
                        "result": {},
                        "retExtInfo": {},
                        "time": _ms(),
                    }
                )
            return await handler(request)

        return checked

    # --- REST ---------------------------------------------------------------------------

    async def server_time(self, request: web.Request) -> web.Response:
        now = time.time()
        return ok({"timeSecond": str(int(now)), "timeNano": str(int(now * 1e9))})

    async def instruments(self, request: web.Request) -> web.Response:
        if request.query.get("category") != "linear":
            return ok({"category": request.query.get("category"), "list": [], "nextPageCursor": ""})
        rows = [_instrument(symbol) for symbol in self.account.marks]
        return ok({"category": "linear", "list": rows, "nextPageCursor": ""})

    def ticker_row(self, symbol: str) -> dict[str, Any]:
        mark = self.account.marks[symbol]
        return {
            "symbol": symbol,
            "lastPrice": repr(mark),
            "indexPrice": repr(mark),
            "markPrice": repr(mark),
            "prevPrice24h": repr(mark),
            "price24hPcnt": "0",
            "highPrice24h": repr(mark),
            "lowPrice24h": repr(mark),
            "prevPrice1h": repr(mark),
            "openInterest": "1000",
            "openInterestValue": "1000000",
            "turnover24h": "1000000",
            "volume24h": "100",
            "fundingRate": "0.0001",
            "nextFundingTime": str(_ms() + 3_600_000),
            "bid1Price": repr(mark),
            "bid1Size": "1",
            "ask1Price": repr(mark),
            "ask1Size": "1",
        }

    async def tickers(self, request: web.Request) -> web.Response:
        wanted = request.query.get("symbol")
        rows = [self.ticker_row(s) for s in self.account.marks if wanted in (None, s)]
        return ok({"category": "linear", "list": rows})

    async def risk_limit(self, request: web.Request) -> web.Response:
        wanted = request.query.get("symbol")
        rows = []
        for symbol, tiers in self.account.tiers.items():
            if wanted not in (None, symbol):
                continue
            for i, (limit, mmr, deduction, lev) in enumerate(tiers, start=1):
                rows.append(
                    {
                        "id": i,
                        "symbol": symbol,
                        "riskLimitValue": repr(limit),
                        "maintenanceMargin": repr(mmr),
                        "initialMargin": repr(1 / lev),
                        "isLowestRisk": 1 if i == 1 else 0,
                        "maxLeverage": f"{lev:.2f}",
                        "mmDeduction": "" if deduction == 0 else repr(deduction),
                    }
                )
        return ok({"category": "linear", "list": rows, "nextPageCursor": ""})

    def position_row(self, pos: BybitPosition) -> dict[str, Any]:
        f = self.account.figures(pos)
        limit = self.account.tier(pos.symbol, f["value"])[0]
        return {
            "positionIdx": pos.idx,
            "riskId": 1,
            "riskLimitValue": repr(limit),
            "symbol": pos.symbol,
            "side": pos.side,
            "size": repr(pos.size),
            "avgPrice": repr(pos.entry),
            "positionValue": repr(f["value"]),
            "tradeMode": 0,
            "positionStatus": "Normal",
            "autoAddMargin": 0,
            "adlRankIndicator": 2,
            "leverage": repr(pos.leverage),
            "positionBalance": repr(f["im"]),
            "markPrice": repr(f["mark"]),
            "liqPrice": "",
            "bustPrice": "",
            "positionMM": repr(f["mm"]),
            "positionIM": repr(f["im"]),
            "tpslMode": "Full",
            "takeProfit": "0",
            "stopLoss": "0",
            "trailingStop": "0",
            "unrealisedPnl": repr(f["upnl"]),
            "curRealisedPnl": "0",
            "cumRealisedPnl": "0",
            "seq": 1,
            "isReduceOnly": False,
            "createdTime": str(_ms() - 60_000),
            "updatedTime": str(_ms()),
        }

    async def position_list(self, request: web.Request) -> web.Response:
        wanted = request.query.get("symbol")
        rows = [
            self.position_row(p)
            for p in self.account.positions.values()
            if wanted in (None, p.symbol)
        ]
        return ok({"category": "linear", "list": rows, "nextPageCursor": ""})

    async def wallet_balance(self, request: web.Request) -> web.Response:
        t = self.account.totals()
        wallet = self.account.wallet
        coin = {
            "coin": "USDT",
            "equity": repr(wallet + t["upnl"]),
            "usdValue": repr(wallet + t["upnl"]),
            "walletBalance": repr(wallet),
            "unrealisedPnl": repr(t["upnl"]),
            "totalPositionIM": repr(t["im"]),
            "totalPositionMM": repr(t["mm"]),
            "totalOrderIM": "0",
            "locked": "0",
            "borrowAmount": "0",
            "accruedInterest": "0",
            "bonus": "0",
            "cumRealisedPnl": "0",
            "availableToWithdraw": "",
            "availableToBorrow": "",
            "collateralSwitch": True,
            "marginCollateral": True,
            "spotHedgingQty": "0",
        }
        others = [
            dict(
                coin,
                coin=name,
                equity=repr(amount),
                usdValue=repr(amount * self.account.coin_price(name)),
                walletBalance=repr(amount),
                unrealisedPnl="0",
                totalPositionIM="0",
                totalPositionMM="0",
                collateralSwitch=switch,
                marginCollateral=switch,
            )
            for name, (amount, _, switch) in self.account.coins.items()
        ]
        account = {
            "accountType": "UNIFIED",
            "totalEquity": repr(
                wallet
                + t["upnl"]
                + sum(
                    amount * self.account.coin_price(c)
                    for c, (amount, _, _) in self.account.coins.items()
                )
            ),
            "totalWalletBalance": repr(
                self.account.coin_value("USDT", wallet)
                + sum(
                    self.account.coin_value(c, amount)
                    for c, (amount, _, on) in self.account.coins.items()
                    if on
                )
            ),
            "totalMarginBalance": repr(t["margin_balance"]),
            "totalAvailableBalance": repr(t["margin_balance"] - t["im"]),
            "totalPerpUPL": repr(t["upnl"]),
            "totalInitialMargin": repr(t["im"]),
            "totalMaintenanceMargin": repr(t["mm"]),
            "accountIMRate": repr(t["im_rate"]),
            "accountMMRate": repr(t["mm_rate"]),
            "accountLTV": "0",
            "coin": [coin, *others],
        }
        return ok({"list": [account]})

    async def query_api(self, request: web.Request) -> web.Response:
        return ok(
            {
                "id": "1",
                "note": "fake",
                "apiKey": API_KEY,
                "readOnly": 1 if self.account.read_only else 0,
                "secret": "",
                "permissions": {"ContractTrade": ["Order", "Position"], "Wallet": []},
                "unified": 0,
                "uta": 1,
                "isMaster": True,
            }
        )

    async def coin_info(self, request: web.Request) -> web.Response:
        chain = {
            "chainType": "ERC20",
            "confirmation": "12",
            "withdrawFee": "1",
            "depositMin": "0",
            "withdrawMin": "2",
            "chain": "ETH",
            "chainDeposit": "1",
            "chainWithdraw": "1",
            "minAccuracy": "4",
            "withdrawPercentageFee": "0",
        }
        return ok(
            {
                "rows": [
                    {"name": "USDT", "coin": "USDT", "remainAmount": "1000000", "chains": [chain]}
                ]
            }
        )

    async def account_info(self, request: web.Request) -> web.Response:
        return ok(
            {
                "marginMode": self.account.margin_mode,
                "updatedTime": str(_ms()),
                "unifiedMarginStatus": 5,
                "dcpStatus": "OFF",
                "timeWindow": 10,
                "smpGroup": 0,
                "isMasterTrader": False,
                "spotHedgingStatus": "OFF",
            }
        )

    async def collateral_info(self, request: web.Request) -> web.Response:
        """Per coin: `marginCollateral` (the platform allows it) and `collateralSwitch` (the
        user's switch), as v5/account/collateral-info sends them."""
        rows = []
        for coin in ["USDT", *self.account.coins]:
            switch = True if coin == "USDT" else self.account.coins[coin][2]
            rows.append(
                {
                    "currency": coin,
                    "hourlyBorrowRate": "0.0000015",
                    "maxBorrowingAmount": "1000",
                    "freeBorrowingLimit": "0",
                    "freeBorrowAmount": "0",
                    "borrowAmount": "0",
                    "otherBorrowAmount": "0",
                    "availableToBorrow": "1000",
                    "borrowable": True,
                    "borrowUsageRate": "0",
                    "marginCollateral": True,
                    "collateralSwitch": switch,
                    "collateralRatio": repr(
                        self.account.collateral_tiers.get(coin, [(None, 1.0)])[0][1]
                    ),
                }
            )
        wanted = request.query.get("currency")
        return ok({"list": [r for r in rows if wanted in (None, r["currency"])]})

    async def tiered_collateral(self, request: web.Request) -> web.Response:
        """v5/spot-margin-uta/tier-collateral-ratio: maxQty "" means positive infinity."""
        rows = []
        for coin, tiers in self.account.collateral_tiers.items():
            floor = 0.0
            ratios = []
            for cap, ratio in tiers:
                ratios.append(
                    {
                        "minQty": repr(floor),
                        "maxQty": "" if cap is None else repr(cap),
                        "collateralRatio": repr(ratio),
                    }
                )
                floor = cap if cap is not None else floor
            rows.append({"currency": coin, "collateralRatioList": ratios})
        wanted = request.query.get("currency")
        return ok({"list": [r for r in rows if wanted in (None, r["currency"])]})

    # --- websocket ----------------------------------------------------------------------

    async def on_ws_message(self, client: Client, message: Any) -> None:
        if not isinstance(message, dict):
            return
        op = message.get("op")
        if op == "auth":
            good = self.auth_ok and message.get("args", [None])[0] == API_KEY
            await client.socket.send_json(
                {
                    "success": good,
                    "ret_msg": "" if good else "Invalid apikey",
                    "op": "auth",
                    "conn_id": "fake",
                }
            )
        elif op == "subscribe":
            client.topics.update(message.get("args", []))
            await client.socket.send_json(
                {
                    "success": True,
                    "ret_msg": "",
                    "conn_id": "fake",
                    "req_id": message.get("req_id"),
                    "op": "subscribe",
                }
            )
        elif op == "ping":
            await client.socket.send_json(
                {
                    "success": True,
                    "ret_msg": "pong",
                    "conn_id": "fake",
                    "req_id": message.get("req_id"),
                    "op": "ping",
                }
            )

    async def push_mark(self, symbol: str, mark: float) -> int:
        """Move the mark and send a `tickers.<SYMBOL>` snapshot frame."""
        self.account.marks[symbol] = mark
        frame = {
            "topic": f"tickers.{symbol}",
            "type": "snapshot",
            "data": self.ticker_row(symbol),
            "cs": 1,
            "ts": _ms(),
        }
        return await self.push(frame, path="/v5/public", topic=f"tickers.{symbol}")

    async def set_position(
        self, symbol: str, side: str, size: float, entry: float, idx: int = 0
    ) -> int:
        """Change a position and push it on the private `position` topic."""
        key = (symbol, idx)
        pos = BybitPosition(symbol, side, size, entry, idx=idx)
        if size == 0:
            self.account.positions.pop(key, None)
        else:
            self.account.positions[key] = pos
        row = self.position_row(pos)
        row.update(entryPrice=row.pop("avgPrice"), category="linear")
        frame = {"id": "fake", "topic": "position", "creationTime": _ms(), "data": [row]}
        return await self.push(frame, path="/v5/private", topic="position")


def _instrument(symbol: str) -> dict[str, Any]:
    base = symbol.removesuffix("USDT")
    return {
        "symbol": symbol,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": base,
        "quoteCoin": "USDT",
        "settleCoin": "USDT",
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": "2",
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": "0.10", "maxPrice": "1999999.80", "tickSize": "0.10"},
        "lotSizeFilter": {
            "maxOrderQty": "100.000",
            "minOrderQty": "0.001",
            "qtyStep": "0.001",
            "postOnlyMaxOrderQty": "1000.000",
            "maxMktOrderQty": "100.000",
            "minNotionalValue": "5",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "copyTrading": "both",
        "upperFundingRate": "0.00375",
        "lowerFundingRate": "-0.00375",
    }
