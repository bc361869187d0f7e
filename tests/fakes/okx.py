"""Fake OKX v5 (ccxt id `okx`): USDT-margined swaps of a cross-margin account, REST only.

Shapes follow OKX's published v5 API docs (www.okx.com/docs-v5): `GET
/api/v5/public/instruments`, `/api/v5/public/position-tiers`, `/api/v5/public/time`,
`/api/v5/asset/currencies`, `/api/v5/account/positions`, `/api/v5/account/balance`,
`/api/v5/account/config`, `/api/v5/market/ticker`,
`/api/v5/public/discount-rate-interest-free-quota` (public-data "Get discount rate and
interest-free quota"). Envelope `{"code": "0", "data": [...]}`;
a bad key is code 50111.

Figures follow OKX's documented rules (docs/margin-math.md): contracts × ctVal ×
mark is the notional, one tier rate for the whole position (no deduction), adjusted
equity = cash balance + UPL (USDT only, discount 1), `mgnRatio` = adjEq / (MM + liquidation
fees), the fees being notional × the account's taker rate (OKX: "Maintenance margin ratio =
Adjusted equity / (Maintenance margin + Liquidation fees)"); a position's `mmr` is the MM
alone. In multi-currency margin (`acctLv` 3) other coins count too: discounted equity =
Σ_ccy currency equity × discount rate × USD price (OKX help 360054690531), the rate applied
marginally per tier of the coin amount.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeVenue, Handler, banded, json_response, rewrite_urls

API_KEY = "fake-okx-key"
SECRET = "fake-okx-secret"
PASSWORD = "fake-okx-passphrase"

#: instId -> (contract value in base coin, tiers as (max contracts, mmr, max leverage)).
INSTRUMENTS: dict[str, tuple[float, list[tuple[float, float, float]]]] = {
    "BTC-USDT-SWAP": (0.01, [(1_000, 0.004, 100), (5_000, 0.006, 75), (20_000, 0.01, 50)]),
    "ETH-USDT-SWAP": (0.1, [(5_000, 0.005, 100), (20_000, 0.008, 50)]),
}


@dataclass
class OkxAccount:
    """Cash balance, signed net positions in contracts, marks."""

    cash: float = 5_000.0
    positions: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "BTC-USDT-SWAP": (50.0, 58_000.0),
            "ETH-USDT-SWAP": (-120.0, 3_100.0),
        }
    )
    marks: dict[str, float] = field(
        default_factory=lambda: {"BTC-USDT-SWAP": 60_000.0, "ETH-USDT-SWAP": 3_000.0}
    )
    perm: str = "read_only,trade"
    #: the account's swap taker fee rate, charged at liquidation (base tier: 0.05 %)
    taker_fee: float = 0.0005
    #: `acctLv`: 2 single-currency, 3 multi-currency, 4 portfolio margin
    acct_lv: str = "2"
    #: other currencies' cash balances (multi-currency margin), priced by `<CCY>-USDT-SWAP`
    coins: dict[str, float] = field(default_factory=dict)
    #: ccy -> [(maxAmt or None for "", discountRate)], tiers in coin units
    discount: dict[str, list[tuple[float | None, float]]] = field(
        default_factory=lambda: {"USDT": [(None, 1.0)]}
    )

    def price(self, ccy: str) -> float:
        return 1.0 if ccy == "USDT" else self.marks[f"{ccy}-USDT-SWAP"]

    def discounted(self, ccy: str, eq: float) -> float:
        """USD value after the tiered discount rate (a negative equity counts in full)."""
        if eq <= 0:
            return eq * self.price(ccy)
        return banded(eq, self.discount.get(ccy, [(None, 1.0)])) * self.price(ccy)

    def figures(self, inst: str) -> dict[str, float]:
        ct_val, tiers = INSTRUMENTS[inst]
        pos, entry = self.positions[inst]
        mark = self.marks[inst]
        mmr = next((r for cap, r, _ in tiers if abs(pos) <= cap), tiers[-1][1])
        notional = abs(pos) * ct_val * mark
        return {
            "notional": notional,
            "upl": pos * ct_val * (mark - entry),
            "mmr": notional * mmr,
            "imr": notional / 10,
            "liquidation_fee": notional * self.taker_fee,
        }

    def totals(self) -> dict[str, float]:
        rows = [self.figures(i) for i in self.positions]
        upl = sum(r["upl"] for r in rows)
        mm = sum(r["mmr"] for r in rows)
        adj = self.discounted("USDT", self.cash + upl)
        if self.acct_lv in ("3", "4"):
            adj += sum(self.discounted(c, amount) for c, amount in self.coins.items())
        return {
            "upl": upl,
            "mm": mm,
            "imr": sum(r["imr"] for r in rows),
            "adj_eq": adj,
            "mgn_ratio": adj / (mm + sum(r["liquidation_fee"] for r in rows)),
        }


def ok(data: list[Any]) -> web.Response:
    return json_response({"code": "0", "msg": "", "data": data})


def _ms() -> str:
    return str(int(time.time() * 1000))


class FakeOkx(FakeVenue):
    """OKX: markets, tiers, positions, balance, account config."""

    venue = "okx"

    def __init__(self, account: OkxAccount | None = None) -> None:
        self.account = account or OkxAccount()
        super().__init__()

    def rest_routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/api/v5/public/instruments"): self.instruments,
            ("GET", "/api/v5/public/position-tiers"): self.position_tiers,
            ("GET", "/api/v5/public/time"): self.server_time,
            ("GET", "/api/v5/market/ticker"): self.ticker,
            ("GET", "/api/v5/asset/currencies"): self.private(self.currencies),
            ("GET", "/api/v5/account/positions"): self.private(self.positions),
            ("GET", "/api/v5/account/balance"): self.private(self.balance),
            ("GET", "/api/v5/account/config"): self.private(self.config),
            ("GET", "/api/v5/public/discount-rate-interest-free-quota"): self.discount_rates,
        }

    def ccxt_config(self) -> dict[str, Any]:
        import ccxt.pro

        urls = rewrite_urls(ccxt.pro.okx().urls["api"], self.http, self.ws)
        return {
            "urls": {"api": urls},
            "options": {"fetchMarkets": {"types": ["swap"]}},
            "password": PASSWORD,
            "enableRateLimit": False,
        }

    # --- what a test compares against (the venue's own view) ------------------------------

    def expected_positions(self) -> dict[str, tuple[str, float]]:
        """Unified symbol -> (side, size in base coin)."""
        return {
            f"{inst.split('-')[0]}/USDT:USDT": (
                "long" if pos > 0 else "short",
                abs(pos) * INSTRUMENTS[inst][0],
            )
            for inst, (pos, _) in self.account.positions.items()
        }

    def wallet(self) -> float:
        return self.account.cash

    def margin_ratio(self) -> float:
        """OKX reports equity / MM (`mgnRatio`); ours is its inverse (margin-math §0)."""
        return 1 / self.account.totals()["mgn_ratio"]

    def private(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("OK-ACCESS-KEY") != API_KEY:
                return json_response(
                    {"code": "50111", "msg": "Invalid OK-ACCESS-KEY", "data": []}, status=401
                )
            return await handler(request)

        return checked

    async def server_time(self, request: web.Request) -> web.Response:
        return ok([{"ts": _ms()}])

    async def instruments(self, request: web.Request) -> web.Response:
        if request.query.get("instType") != "SWAP":
            return ok([])
        rows = []
        for inst, (ct_val, tiers) in INSTRUMENTS.items():
            base = inst.split("-")[0]
            rows.append(
                {
                    "alias": "",
                    "baseCcy": "",
                    "category": "1",
                    "ctMult": "1",
                    "ctType": "linear",
                    "ctVal": repr(ct_val),
                    "ctValCcy": base,
                    "expTime": "",
                    "instFamily": f"{base}-USDT",
                    "instId": inst,
                    "instType": "SWAP",
                    "lever": repr(tiers[0][2]),
                    "listTime": "1611916828000",
                    "lotSz": "1",
                    "maxLmtSz": "100000000",
                    "maxMktSz": "10000",
                    "minSz": "1",
                    "optType": "",
                    "quoteCcy": "",
                    "settleCcy": "USDT",
                    "state": "live",
                    "stk": "",
                    "tickSz": "0.1",
                    "uly": f"{base}-USDT",
                }
            )
        return ok(rows)

    async def position_tiers(self, request: web.Request) -> web.Response:
        family = request.query.get("instFamily") or request.query.get("uly") or ""
        rows = []
        for inst, (_, tiers) in INSTRUMENTS.items():
            if family and not inst.startswith(family):
                continue
            floor = 0.0
            for i, (cap, mmr, lev) in enumerate(tiers, start=1):
                rows.append(
                    {
                        "baseMaxLoan": "",
                        "imr": repr(1 / lev),
                        "instId": inst,
                        "instFamily": inst.removesuffix("-SWAP"),
                        "maxLever": repr(lev),
                        "maxSz": repr(cap),
                        "minSz": repr(floor),
                        "mmr": repr(mmr),
                        "optMgnFactor": "0",
                        "quoteMaxLoan": "",
                        "tier": str(i),
                        "uly": inst.removesuffix("-SWAP"),
                    }
                )
                floor = cap
        return ok(rows)

    async def ticker(self, request: web.Request) -> web.Response:
        inst = request.query.get("instId", "")
        mark = self.account.marks[inst]
        return ok(
            [
                {
                    "instType": "SWAP",
                    "instId": inst,
                    "last": repr(mark),
                    "lastSz": "1",
                    "askPx": repr(mark),
                    "askSz": "1",
                    "bidPx": repr(mark),
                    "bidSz": "1",
                    "open24h": repr(mark),
                    "high24h": repr(mark),
                    "low24h": repr(mark),
                    "volCcy24h": "1",
                    "vol24h": "1",
                    "ts": _ms(),
                    "sodUtc0": repr(mark),
                    "sodUtc8": repr(mark),
                }
            ]
        )

    async def currencies(self, request: web.Request) -> web.Response:
        return ok(
            [
                {
                    "canDep": True,
                    "canInternal": True,
                    "canWd": True,
                    "ccy": "USDT",
                    "chain": "USDT-ERC20",
                    "depQuotaFixed": "",
                    "logoLink": "",
                    "mainNet": False,
                    "maxFee": "10",
                    "maxWd": "1000000",
                    "minDep": "1",
                    "minFee": "1",
                    "minWd": "2",
                    "name": "Tether",
                    "usedWdQuota": "0",
                    "wdQuota": "5000000",
                    "wdTickSz": "4",
                }
            ]
        )

    async def positions(self, request: web.Request) -> web.Response:
        rows = []
        for inst, (pos, entry) in self.account.positions.items():
            f = self.account.figures(inst)
            rows.append(
                {
                    "adl": "1",
                    "availPos": "",
                    "avgPx": repr(entry),
                    "cTime": _ms(),
                    "ccy": "USDT",
                    "imr": repr(f["imr"]),
                    "instId": inst,
                    "instType": "SWAP",
                    "interest": "0",
                    "last": repr(self.account.marks[inst]),
                    "lever": "10",
                    "liab": "",
                    "liabCcy": "",
                    "liqPx": "",
                    "markPx": repr(self.account.marks[inst]),
                    "margin": "",
                    "mgnMode": "cross",
                    "mgnRatio": "",
                    "mmr": repr(f["mmr"]),
                    "notionalUsd": repr(f["notional"]),
                    "optVal": "",
                    "pos": repr(pos),
                    "posCcy": "",
                    "posId": str(abs(hash(inst)) % 10**9),
                    "posSide": "net",
                    "tradeId": "1",
                    "uTime": _ms(),
                    "upl": repr(f["upl"]),
                    "uplRatio": "0",
                }
            )
        return ok(rows)

    async def balance(self, request: web.Request) -> web.Response:
        t = self.account.totals()
        eq = self.account.cash + t["upl"]
        detail = {
            "availBal": repr(eq - t["imr"]),
            "availEq": repr(eq - t["imr"]),
            "cashBal": repr(self.account.cash),
            "ccy": "USDT",
            "crossLiab": "0",
            "disEq": repr(eq),
            "eq": repr(eq),
            "eqUsd": repr(eq),
            "frozenBal": repr(t["imr"]),
            "interest": "0",
            "isoEq": "0",
            "isoLiab": "0",
            "liab": "0",
            "maxLoan": "",
            "mgnRatio": "",
            "notionalLever": "",
            "ordFrozen": "0",
            "twap": "0",
            "uTime": _ms(),
            "upl": repr(t["upl"]),
            "uplLiab": "0",
        }
        details = [detail]
        for ccy, amount in self.account.coins.items():
            price = self.account.price(ccy)
            details.append(
                dict(
                    detail,
                    ccy=ccy,
                    cashBal=repr(amount),
                    eq=repr(amount),
                    availBal=repr(amount),
                    availEq=repr(amount),
                    eqUsd=repr(amount * price),
                    frozenBal="0",
                    upl="0",
                    disEq=repr(self.account.discounted(ccy, amount)),
                )
            )
        return ok(
            [
                {
                    "adjEq": repr(t["adj_eq"]),
                    "imr": repr(t["imr"]),
                    "isoEq": "0",
                    "mgnRatio": repr(t["mgn_ratio"]),
                    "mmr": repr(t["mm"]),
                    "notionalUsd": repr(
                        sum(self.account.figures(i)["notional"] for i in self.account.positions)
                    ),
                    "ordFroz": "0",
                    "totalEq": repr(eq),
                    "uTime": _ms(),
                    "details": details,
                }
            ]
        )

    async def discount_rates(self, request: web.Request) -> web.Response:
        """Per ccy its discount tiers (`details`: minAmt, maxAmt "" = no cap, discountRate)."""
        rows = []
        for ccy, tiers in self.account.discount.items():
            floor, details = 0.0, []
            for i, (cap, rate) in enumerate(tiers, start=1):
                details.append(
                    {
                        "discountRate": repr(rate),
                        "maxAmt": "" if cap is None else repr(cap),
                        "minAmt": repr(floor),
                        "tier": str(i),
                        "liqPenaltyRate": "0.02",
                        "disCcyEq": "",
                    }
                )
                floor = cap if cap is not None else floor
            rows.append(
                {
                    "ccy": ccy,
                    "amt": "0",
                    "discountLv": "1",
                    "minDiscountRate": "0",
                    "colRes": "0",
                    "details": details,
                }
            )
        wanted = request.query.get("ccy")
        return ok([r for r in rows if wanted in (None, r["ccy"])])

    async def config(self, request: web.Request) -> web.Response:
        return ok(
            [
                {
                    "acctLv": self.account.acct_lv,
                    "autoLoan": False,
                    "ctIsoMode": "automatic",
                    "greeksType": "PA",
                    "level": "Lv1",
                    "levelTmp": "",
                    "mgnIsoMode": "automatic",
                    "posMode": "net_mode",
                    "uid": "1",
                    "perm": self.account.perm,
                }
            ]
        )
