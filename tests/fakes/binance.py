"""Fake Binance USDⓈ-M futures (ccxt id `binanceusdm`): REST + market and user-data websockets.

Wire formats follow Binance's published USDⓈ-M API docs (developers.binance.com
/docs/derivatives/usds-margined-futures): `GET /fapi/v1/exchangeInfo`, `GET /fapi/v1/time`,
`GET /fapi/v1/leverageBracket`, `GET /fapi/v3/positionRisk`, `GET /fapi/v3/account`,
`GET /fapi/v1/premiumIndex`, `POST|PUT /fapi/v1/listenKey`; multi-assets mode:
`GET /fapi/v1/multiAssetsMargin` (account/rest-api/Get-Current-Multi-Assets-Mode) and
`GET /fapi/v1/assetIndex` (market-data/rest-api/Multi-Assets-Mode-Asset-Index); Portfolio
Margin (derivatives/portfolio-margin/...): `GET /papi/v1/account` (account/Account-Information),
`/papi/v1/balance` (account/Account-Balance), `/papi/v1/um/positionRisk`
(account/Query-UM-Position-Information), `/papi/v1/um/leverageBracket`; websocket
`<symbol>@markPrice@1s` (`markPriceUpdate`) on `/market/ws/<n>` and the user stream
(`ACCOUNT_UPDATE`) on `/private/ws?listenKey=` (ccxt 4.5.90 rewrites `.../ws` to those,
docs/development.md).

The account figures come from the fake's own state with Binance's formulas
(docs/margin-math.md): MM = |notional| × MMR(bracket) − cum, margin balance =
wallet balance + Σ unrealised PnL, and the venue's margin ratio is
totalMaintMargin / totalMarginBalance.

In multi-assets mode (margin-math §1.5, FAQ c983a926...) every total is in USD: Account Equity
= Σ min(assetEquity × bidRate, assetEquity × askRate) with bidRate = index × (1 − bidBuffer)
and askRate = index × (1 + askBuffer); margin owed in an asset counts at its ask rate
(example M1: MM in USDT × 0.99495). An asset with a `<ASSET>USDT` market has index
mark × USDTUSD index; the others (USDT, USDC) take theirs from `usd_index`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import Client, FakeVenue, Handler, json_response, rewrite_urls

API_KEY = "fake-binance-key"
SECRET = "fake-binance-secret"  # a loopback fake's key, not a credential

#: BTCUSDT brackets from Binance's 2021-03-18 announcement (margin-math.md §1.2), cum reproduced.
BTC_BRACKETS: list[tuple[float, float, float, int]] = [
    # (notionalCap, maintMarginRatio, cum, initialLeverage)
    (50_000, 0.004, 0.0, 125),
    (250_000, 0.005, 50.0, 100),
    (1_000_000, 0.01, 1_300.0, 50),
    (10_000_000, 0.025, 16_300.0, 20),
    (20_000_000, 0.05, 266_300.0, 10),
]
ETH_BRACKETS: list[tuple[float, float, float, int]] = [
    (10_000, 0.005, 0.0, 100),
    (100_000, 0.0065, 15.0, 75),
    (500_000, 0.01, 365.0, 50),
    (1_000_000, 0.02, 5_365.0, 25),
]


@dataclass
class BinancePosition:
    """One-way (`BOTH`) or hedge-mode position as the fake holds it; `amount` is signed."""

    symbol: str
    amount: float
    entry: float
    side: str = "BOTH"
    leverage: int = 20


@dataclass
class BinanceAccount:
    """The fake's truth: wallet, positions, marks and brackets per symbol."""

    wallet: float = 10_000.0
    positions: dict[tuple[str, str], BinancePosition] = field(default_factory=dict)
    marks: dict[str, float] = field(
        default_factory=lambda: {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}
    )
    brackets: dict[str, list[tuple[float, float, float, int]]] = field(
        default_factory=lambda: {"BTCUSDT": BTC_BRACKETS, "ETHUSDT": ETH_BRACKETS}
    )
    can_trade: bool = True
    #: Scenario control: maintenance margin the venue's account totals charge beyond its
    #: position rows (a rule our model has not caught up with), so the venue's own ratio
    #: drifts from ours (issue 11: model_drift).
    unmodelled_mm: float = 0.0
    #: Other wallet assets (multi-assets mode collateral), asset -> wallet balance.
    assets: dict[str, float] = field(default_factory=dict)
    #: `GET /fapi/v1/multiAssetsMargin`: True is Multi-Assets Mode.
    multi_assets: bool = False
    #: USD index of assets without a `<ASSET>USDT` market (asset index `index`).
    usd_index: dict[str, float] = field(default_factory=lambda: {"USDT": 1.0, "USDC": 1.0})
    #: asset -> (bidBuffer, askBuffer) as `GET /fapi/v1/assetIndex` publishes them.
    buffers: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "USDT": (0.0, 0.0),
            "USDC": (0.0, 0.0),
            "BTC": (0.05, 0.05),
            "ETH": (0.05, 0.05),
        }
    )

    #: A Portfolio Margin account: the account maintenance margin Binance's PM engine states
    #: (scenario-based, no public formula; margin-math §1.6). None: not a PM account.
    portfolio_mm: float | None = None

    def pm_figures(self) -> dict[str, float]:
        """uniMMR = accountEquity / accountMaintMargin; equity = Σ min(equity × index ×
        collateral rate, equity × index), the collateral rate being 1 − bidBuffer here."""
        equity = actual = 0.0
        for asset, row in self.per_asset().items():
            eq = (row["wallet"] + row["upnl"]) * self.index(asset)
            actual += eq
            equity += min(eq * (1.0 - self.buffers.get(asset, (0.0, 0.0))[0]), eq)
        mm = self.portfolio_mm or 0.0
        return {
            "equity": equity,
            "actual": actual,
            "mm": mm,
            "uni_mmr": equity / mm if mm > 0 else 0.0,
        }

    def index(self, asset: str) -> float:
        """USD index of an asset: its USDT market's mark × USDTUSD, else `usd_index`."""
        mark = self.marks.get(f"{asset}USDT")
        if mark is not None and asset not in self.usd_index:
            return mark * self.usd_index["USDT"]
        return self.usd_index[asset]

    def rates(self, asset: str) -> tuple[float, float]:
        """(bidRate, askRate) = index × (1 − bidBuffer), index × (1 + askBuffer)."""
        bid, ask = self.buffers[asset]
        index = self.index(asset)
        return index * (1.0 - bid), index * (1.0 + ask)

    def wallets(self) -> dict[str, float]:
        """Wallet balance per asset: USDT is `wallet`, the others `assets`."""
        return {"USDT": self.wallet, **self.assets}

    def bracket(self, symbol: str, notional: float) -> tuple[float, float, float, int]:
        for row in self.brackets[symbol]:
            if abs(notional) <= row[0]:
                return row
        return self.brackets[symbol][-1]

    def figures(self, pos: BinancePosition) -> dict[str, float]:
        mark = self.marks[pos.symbol]
        notional = pos.amount * mark
        _, mmr, cum, _ = self.bracket(pos.symbol, notional)
        return {
            "mark": mark,
            "notional": notional,
            "upnl": pos.amount * (mark - pos.entry),
            "mm": abs(notional) * mmr - cum,
            "im": abs(notional) / pos.leverage,
        }

    def totals(self) -> dict[str, float]:
        if self.multi_assets:
            return self.usd_totals()
        rows = [self.figures(p) for p in self.positions.values()]
        upnl = sum(r["upnl"] for r in rows)
        return {
            "upnl": upnl,
            "mm": sum(r["mm"] for r in rows) + self.unmodelled_mm,
            "im": sum(r["im"] for r in rows),
            "margin_balance": self.wallet + upnl,
            "wallet": self.wallet,
        }

    def per_asset(self) -> dict[str, dict[str, float]]:
        """Wallet, PnL, MM and IM per margin asset, in that asset's units."""
        out = {
            a: {"wallet": w, "upnl": 0.0, "mm": 0.0, "im": 0.0} for a, w in self.wallets().items()
        }
        for pos in self.positions.values():
            f = self.figures(pos)
            row = out.setdefault(
                settle_of(pos.symbol), {"wallet": 0.0, "upnl": 0.0, "mm": 0.0, "im": 0.0}
            )
            for key in ("upnl", "mm", "im"):
                row[key] += f[key]
        return out

    def usd_totals(self) -> dict[str, float]:
        """Multi-assets mode totals in USD (FAQ c983a926...: Account Equity = Σ min(equity ×
        bidRate, equity × askRate); Account MM = Σ MM × askRate)."""
        equity = mm = im = upnl = wallet = 0.0
        for asset, row in self.per_asset().items():
            bid, ask = self.rates(asset)
            eq = row["wallet"] + row["upnl"]
            equity += min(eq * bid, eq * ask)
            wallet += min(row["wallet"] * bid, row["wallet"] * ask)
            upnl += row["upnl"] * self.index(asset)
            mm += row["mm"] * ask
            im += row["im"] * ask
        return {"upnl": upnl, "mm": mm, "im": im, "margin_balance": equity, "wallet": wallet}

    def venue_margin_ratio(self) -> float:
        """Binance's own figure: totalMaintMargin / totalMarginBalance (FAQ 25edcd7f...)."""
        t = self.totals()
        return t["mm"] / t["margin_balance"]


class FakeBinanceUsdm(FakeVenue):
    """Binance USDⓈ-M: the routes ccxt 4.5.90 calls for markets, positions, balance, tiers."""

    venue = "binanceusdm"

    def __init__(self, account: BinanceAccount | None = None) -> None:
        self.account = account or BinanceAccount()
        self.listen_key = "fake-listen-key-1"
        self.time_offset_ms = 0
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/fapi/v1/exchangeInfo"): self.exchange_info,
            ("GET", "/fapi/v1/time"): self.server_time,
            ("GET", "/fapi/v1/leverageBracket"): self.private(self.leverage_bracket),
            ("GET", "/fapi/v3/positionRisk"): self.private(self.position_risk),
            ("GET", "/fapi/v3/account"): self.private(self.account_info),
            ("GET", "/fapi/v1/accountConfig"): self.private(self.account_config),
            ("GET", "/fapi/v1/premiumIndex"): self.premium_index,
            ("GET", "/fapi/v1/multiAssetsMargin"): self.private(self.multi_assets_margin),
            ("GET", "/fapi/v1/assetIndex"): self.asset_index,
            ("GET", "/papi/v1/account"): self.private(self.pm_account),
            ("GET", "/papi/v1/balance"): self.private(self.pm_balance),
            ("GET", "/papi/v1/um/positionRisk"): self.private(self.pm_position_risk),
            ("GET", "/papi/v1/um/leverageBracket"): self.private(self.leverage_bracket),
            ("POST", "/fapi/v1/listenKey"): self.private(self.new_listen_key),
            ("PUT", "/fapi/v1/listenKey"): self.private(self.new_listen_key),
        }

    def ws_paths(self) -> list[str]:
        return ["/market/ws/{n}", "/public/ws/{n}", "/market/ws", "/private/ws"]

    def ccxt_config(self) -> dict[str, Any]:
        urls = rewrite_urls(_template_urls(), self.http, self.ws)
        return {
            "urls": {"api": urls},
            # docs/venues.md: futures-only keys have no spot wallet endpoint.
            "options": {"fetchCurrencies": False},
            "enableRateLimit": False,
        }

    def urls_config(self) -> dict[str, Any]:
        """Only the URLs: everything else (rate limiting included) stays the product's own
        configuration, as benchmarks and as-shipped tests need (issue 16)."""
        return {"urls": {"api": rewrite_urls(_template_urls(), self.http, self.ws)}}

    # --- auth ---------------------------------------------------------------------------

    def private(self, handler: Handler) -> Handler:
        """Binance rejects a bad key with HTTP 401 and code -2015 (error-code docs)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("X-MBX-APIKEY") != API_KEY:
                return json_response(
                    {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
                    status=401,
                )
            return await handler(request)

        return checked

    # --- REST ---------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.time_offset_ms

    async def server_time(self, request: web.Request) -> web.Response:
        return json_response({"serverTime": self.now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        symbols = [_symbol_info(s) for s in self.account.marks]
        return json_response(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "futuresType": "U_MARGINED",
                "rateLimits": [],
                "exchangeFilters": [],
                "assets": [
                    {"asset": a, "marginAvailable": True, "autoAssetExchange": "0"}
                    for a in self.account.buffers
                ],
                "symbols": symbols,
            }
        )

    async def leverage_bracket(self, request: web.Request) -> web.Response:
        rows = []
        for symbol, brackets in self.account.brackets.items():
            floor = 0.0
            out = []
            for i, (cap, mmr, cum, lev) in enumerate(brackets, start=1):
                out.append(
                    {
                        "bracket": i,
                        "initialLeverage": lev,
                        "notionalCap": cap,
                        "notionalFloor": floor,
                        "maintMarginRatio": mmr,
                        "cum": cum,
                    }
                )
                floor = cap
            rows.append({"symbol": symbol, "notionalCoef": 1.0, "brackets": out})
        wanted = request.query.get("symbol")
        if wanted:
            rows = [r for r in rows if r["symbol"] == wanted]
        return json_response(rows)

    def position_rows(self) -> list[dict[str, Any]]:
        rows = []
        for pos in self.account.positions.values():
            f = self.account.figures(pos)
            rows.append(
                {
                    "symbol": pos.symbol,
                    "positionSide": pos.side,
                    "positionAmt": repr(pos.amount),
                    "entryPrice": repr(pos.entry),
                    "breakEvenPrice": repr(pos.entry),
                    "markPrice": repr(f["mark"]),
                    "unRealizedProfit": repr(f["upnl"]),
                    "liquidationPrice": "0",
                    "isolatedMargin": "0",
                    "notional": repr(f["notional"]),
                    "marginAsset": settle_of(pos.symbol),
                    "isolatedWallet": "0",
                    "initialMargin": repr(f["im"]),
                    "maintMargin": repr(f["mm"]),
                    "positionInitialMargin": repr(f["im"]),
                    "openOrderInitialMargin": "0",
                    "adl": 1,
                    "bidNotional": "0",
                    "askNotional": "0",
                    "updateTime": self.now_ms(),
                }
            )
        return rows

    async def position_risk(self, request: web.Request) -> web.Response:
        return json_response(self.position_rows())

    async def account_info(self, request: web.Request) -> web.Response:
        """Account Information V3 (USDⓈ-M docs, GET /fapi/v3/account): totals, assets and
        every open position's amount and margins; no `canTrade` (that is accountConfig's)."""
        t = self.account.totals()
        available = t["margin_balance"] - t["im"]
        rows = self.account.per_asset()
        assets = []
        for name, row in rows.items():
            margin_balance = row["wallet"] + row["upnl"]
            asset = {
                "asset": name,
                "walletBalance": repr(row["wallet"]),
                "unrealizedProfit": repr(row["upnl"]),
                "marginBalance": repr(margin_balance),
                "maintMargin": repr(row["mm"]),
                "initialMargin": repr(row["im"]),
                "positionInitialMargin": repr(row["im"]),
                "openOrderInitialMargin": "0",
                "crossWalletBalance": repr(row["wallet"]),
                "crossUnPnl": repr(row["upnl"]),
                "availableBalance": repr(margin_balance - row["im"]),
                "maxWithdrawAmount": repr(max(0.0, margin_balance - row["im"])),
                # ccxt skips assets with updateTime == 0 (docs/venues.md, ccxt issue #27997).
                "updateTime": self.now_ms(),
            }
            if self.account.multi_assets:
                # Account Information V3, Multi-Assets Mode sample: "whether the asset can
                # be used as margin in Multi-Assets mode"
                asset["marginAvailable"] = True
            assets.append(asset)
        idle = dict(assets[0], asset="BNB", walletBalance="0", marginBalance="0", updateTime=0)
        # Single-Asset Mode: totals are "only for USDT asset"; Multi-Assets Mode: "in USD"
        # (Account Information V3 response notes).
        return json_response(
            {
                "totalInitialMargin": repr(t["im"]),
                "totalMaintMargin": repr(t["mm"]),
                "totalWalletBalance": repr(t["wallet"]),
                "totalUnrealizedProfit": repr(t["upnl"]),
                "totalMarginBalance": repr(t["margin_balance"]),
                "totalPositionInitialMargin": repr(t["im"]),
                "totalOpenOrderInitialMargin": "0",
                "totalCrossWalletBalance": repr(t["wallet"]),
                "totalCrossUnPnl": repr(t["upnl"]),
                "availableBalance": repr(available),
                "maxWithdrawAmount": repr(available),
                "assets": [*assets, idle],
                "positions": [
                    {
                        "symbol": pos.symbol,
                        "positionSide": pos.side,
                        "positionAmt": repr(pos.amount),
                        "unrealizedProfit": repr(f["upnl"]),
                        "isolatedMargin": "0",
                        "notional": repr(f["notional"]),
                        "isolatedWallet": "0",
                        "initialMargin": repr(f["im"]),
                        "maintMargin": repr(f["mm"]),
                        "updateTime": self.now_ms(),
                    }
                    for pos in self.account.positions.values()
                    for f in (self.account.figures(pos),)
                ],
            }
        )

    async def account_config(self, request: web.Request) -> web.Response:
        """Futures Account Configuration (USDⓈ-M docs, GET /fapi/v1/accountConfig): where
        the v3 API states whether the key's account can trade."""
        return json_response(
            {
                "feeTier": 0,
                "canTrade": self.account.can_trade,
                "canDeposit": True,
                "canWithdraw": True,
                "dualSidePosition": any(side != "BOTH" for _, side in self.account.positions),
                "updateTime": 0,
                "multiAssetsMargin": self.account.multi_assets,
                "tradeGroupId": -1,
            }
        )

    async def pm_account(self, request: web.Request) -> web.Response:
        """Portfolio Margin Account-Information: uniMMR and the USD figures behind it, with
        8 decimals as in the doc's example ("uniMMR": "5167.92171923")."""
        f = self.account.pm_figures()
        free = max(0.0, f["equity"] - f["mm"] * 1.5)
        return json_response(
            {
                "uniMMR": f"{f['uni_mmr']:.8f}",
                "accountEquity": f"{f['equity']:.8f}",
                "actualEquity": f"{f['actual']:.8f}",
                "accountInitialMargin": f"{f['mm'] * 1.5:.8f}",
                "accountMaintMargin": f"{f['mm']:.8f}",
                "accountStatus": "NORMAL",
                "virtualMaxWithdrawAmount": f"{free:.8f}",
                "totalAvailableBalance": f"{free:.8f}",
                "totalMarginOpenLoss": "0.00000000",
                "updateTime": self.now_ms(),
            }
        )

    async def pm_balance(self, request: web.Request) -> web.Response:
        """Portfolio Margin Account-Balance: one row per asset (UM wallet and PnL)."""
        rows = []
        for asset, row in self.account.per_asset().items():
            total = row["wallet"]
            rows.append(
                {
                    "asset": asset,
                    "totalWalletBalance": repr(total),
                    "crossMarginAsset": "0",
                    "crossMarginBorrowed": "0",
                    "crossMarginFree": "0",
                    "crossMarginInterest": "0",
                    "crossMarginLocked": "0",
                    "umWalletBalance": repr(row["wallet"]),
                    "umUnrealizedPNL": repr(row["upnl"]),
                    "cmWalletBalance": "0",
                    "cmUnrealizedPNL": "0",
                    "updateTime": self.now_ms(),
                    "negativeBalance": "0",
                }
            )
        return json_response(rows)

    async def pm_position_risk(self, request: web.Request) -> web.Response:
        """Query-UM-Position-Information rows (no margin fields: PM margins the account)."""
        rows = []
        for pos in self.account.positions.values():
            f = self.account.figures(pos)
            rows.append(
                {
                    "entryPrice": repr(pos.entry),
                    "leverage": str(pos.leverage),
                    "markPrice": repr(f["mark"]),
                    "maxNotionalValue": "20000000",
                    "positionAmt": repr(pos.amount),
                    "notional": repr(f["notional"]),
                    "symbol": pos.symbol,
                    "unRealizedProfit": repr(f["upnl"]),
                    "liquidationPrice": "0",
                    "positionSide": pos.side,
                    "updateTime": self.now_ms(),
                }
            )
        return json_response(rows)

    async def multi_assets_margin(self, request: web.Request) -> web.Response:
        """`{"multiAssetsMargin": true}` is Multi-Assets Mode (Get-Current-Multi-Assets-Mode)."""
        return json_response({"multiAssetsMargin": self.account.multi_assets})

    async def asset_index(self, request: web.Request) -> web.Response:
        """Multi-Assets-Mode-Asset-Index: one row per `<ASSET>USD`, or one row for `symbol`.
        The auto-exchange buffers are sent as Binance sends them; nothing here reads them."""
        rows = []
        for asset, (bid_buffer, ask_buffer) in self.account.buffers.items():
            index = self.account.index(asset)
            bid, ask = self.account.rates(asset)
            rows.append(
                {
                    "symbol": f"{asset}USD",
                    "time": self.now_ms(),
                    "index": f"{index:.8f}",
                    "bidBuffer": f"{bid_buffer:.8f}",
                    "askBuffer": f"{ask_buffer:.8f}",
                    "bidRate": f"{bid:.8f}",
                    "askRate": f"{ask:.8f}",
                    "autoExchangeBidBuffer": f"{bid_buffer / 2:.8f}",
                    "autoExchangeAskBuffer": f"{ask_buffer / 2:.8f}",
                    "autoExchangeBidRate": f"{index * (1 - bid_buffer / 2):.8f}",
                    "autoExchangeAskRate": f"{index * (1 + ask_buffer / 2):.8f}",
                }
            )
        wanted = request.query.get("symbol")
        if wanted:
            return json_response(next(r for r in rows if r["symbol"] == wanted))
        return json_response(rows)

    async def premium_index(self, request: web.Request) -> web.Response:
        rows = [
            {
                "symbol": s,
                "markPrice": repr(m),
                "indexPrice": repr(m),
                "estimatedSettlePrice": repr(m),
                "lastFundingRate": "0.0001",
                "interestRate": "0.0001",
                "nextFundingTime": self.now_ms() + 3_600_000,
                "time": self.now_ms(),
            }
            for s, m in self.account.marks.items()
        ]
        wanted = request.query.get("symbol")
        if wanted:
            return json_response(next(r for r in rows if r["symbol"] == wanted))
        return json_response(rows)

    async def new_listen_key(self, request: web.Request) -> web.Response:
        return json_response({"listenKey": self.listen_key})

    # --- websocket ----------------------------------------------------------------------

    async def on_ws_message(self, client: Client, message: Any) -> None:
        if isinstance(message, dict) and message.get("method") == "SUBSCRIBE":
            client.topics.update(message.get("params", []))
            await client.socket.send_json({"result": None, "id": message.get("id")})

    async def push_mark(self, symbol: str, mark: float) -> int:
        """Move the mark and send `markPriceUpdate` to subscribers of `<symbol>@markPrice@1s`."""
        self.account.marks[symbol] = mark
        now = self.now_ms()
        frame = {
            "e": "markPriceUpdate",
            "E": now,
            "s": symbol,
            "p": repr(mark),
            "ap": repr(mark),
            "P": repr(mark),
            "i": repr(mark),
            "r": "0.00010000",
            "T": now + 3_600_000,
        }
        return await self.push(frame, path="/market/ws", topic=f"{symbol.lower()}@markPrice@1s")

    async def set_position(
        self, symbol: str, amount: float, entry: float, side: str = "BOTH"
    ) -> int:
        """Change a position and send `ACCOUNT_UPDATE` on the user stream (as a fill would)."""
        key = (symbol, side)
        if amount == 0:
            self.account.positions.pop(key, None)
        else:
            self.account.positions[key] = BinancePosition(symbol, amount, entry, side)
        f_upnl = 0.0 if amount == 0 else amount * (self.account.marks[symbol] - entry)
        now = self.now_ms()
        frame = {
            "e": "ACCOUNT_UPDATE",
            "E": now,
            "T": now,
            "a": {
                "m": "ORDER",
                "B": [
                    {
                        "a": "USDT",
                        "wb": repr(self.account.wallet),
                        "cw": repr(self.account.wallet),
                        "bc": "0",
                    }
                ],
                "P": [
                    {
                        "s": symbol,
                        "pa": repr(amount),
                        "ep": repr(entry),
                        "bep": repr(entry),
                        "cr": "0",
                        "up": repr(f_upnl),
                        "mt": "cross",
                        "iw": "0",
                        "ps": side,
                    }
                ],
            },
        }
        return await self.push(frame, path="/private/ws")


def settle_of(symbol: str) -> str:
    """The margin asset of a perpetual: `ETHUSDC` settles in USDC, `BTCUSDT` in USDT."""
    return "USDC" if symbol.endswith("USDC") else "USDT"


def _symbol_info(symbol: str) -> dict[str, Any]:
    quote = settle_of(symbol)
    base = symbol.removesuffix(quote)
    return {
        "symbol": symbol,
        "pair": symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": base,
        "quoteAsset": quote,
        "marginAsset": quote,
        "pricePrecision": 2,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.10",
                "maxPrice": "4529764",
                "tickSize": "0.10",
            },
            {"filterType": "LOT_SIZE", "stepSize": "0.001", "maxQty": "1000", "minQty": "0.001"},
            {
                "filterType": "MARKET_LOT_SIZE",
                "stepSize": "0.001",
                "maxQty": "120",
                "minQty": "0.001",
            },
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ],
        "orderTypes": [
            "LIMIT",
            "MARKET",
            "STOP",
            "STOP_MARKET",
            "TAKE_PROFIT",
            "TAKE_PROFIT_MARKET",
            "TRAILING_STOP_MARKET",
        ],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def _template_urls() -> dict[str, Any]:
    import ccxt.pro

    exchange = ccxt.pro.binanceusdm()
    urls: dict[str, Any] = exchange.urls["api"]
    return urls


def use_production_errors(exchange: Any) -> None:
    """Map Binance error codes as on fapi.binance.com (docs/development.md).

    ccxt picks the code table by URL prefix, so on 127.0.0.1 `-2019` would arrive as a
    plain ExchangeError; order tests (engineer D) and the clock-skew test need the real map.
    """
    exchange.get_exceptions_by_url = lambda url, kind: exchange.exceptions["linear"].get(kind, {})
