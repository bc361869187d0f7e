"""The venue registry: every venue module is found by its ccxt ids, and a venue without a
module takes the generic path (ccxt's unified structures as they are), through ccxt's own
parsers offline (Binance USDⓈ-M rows, docs: Position Information V3, Account Information V3).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import ccxt
import pytest

import monitor
import monitor.venues
from monitor.core.plan import PlannedOrder
from monitor.sources.normalize import (
    collateral_from_ccxt,
    positions_from_ccxt,
    torn_read,
    venue_figures,
)
from monitor.venues.base import Venue
from monitor.venues.orders import client_id_query, client_order_id, order_params, stop_params
from monitor.venues.registry import GENERIC, VENUES, venue_for
from tests.fakes.binance import _symbol_info
from tests.test_normalize import risk_row

#: Modules of monitor/venues that are not a venue's own.
SHARED = {"base", "errors", "orders", "registry"}
#: A ccxt id with no module here: its answers are taken as ccxt unifies them.
UNLISTED = "krakenfutures"


def venue_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(monitor.venues.__path__)]
    return sorted(n for n in names if n not in SHARED)


@pytest.fixture(scope="module")
def binance() -> Any:
    exchange = ccxt.binanceusdm()
    market = exchange.parse_market(_symbol_info("BTCUSDT"))
    exchange.markets = {market["symbol"]: market}
    exchange.markets_by_id = {market["id"]: [market]}
    return exchange


class TestRegistry:
    @pytest.mark.parametrize("name", venue_modules())
    def test_every_venue_module_is_registered(self, name: str) -> None:
        """Test that each venue module's Venue objects are in the registry under their ids,
        with the venue's documentation named."""
        module = importlib.import_module(f"monitor.venues.{name}")
        venues = [v for v in vars(module).values() if isinstance(v, Venue)]
        assert venues, f"monitor/venues/{name}.py defines no Venue"
        for venue in venues:
            assert venue.ids
            assert venue.doc, f"{venue.ids}: no venue doc cited"
            for venue_id in venue.ids:
                assert venue_for(venue_id) is venue

    def test_registered_ids_are_ccxt_ids(self) -> None:
        """Test that every registered id is a ccxt exchange id (a typo would never match)."""
        assert set(VENUES) <= set(ccxt.exchanges)

    def test_unknown_venue_is_generic(self) -> None:
        """Test that a venue with no module, and no venue at all, get the generic quirks."""
        assert venue_for(UNLISTED) is GENERIC
        assert venue_for(None) is GENERIC
        assert GENERIC.currency == "USDT"
        assert not GENERIC.ccxt_options

    def test_no_module_compares_venue_names(self) -> None:
        """Test that sources/, protect/ and venues/orders.py ask the registry instead of
        comparing a venue id (`venue == "bybit"`, `venue.startswith("binance")`)."""
        root = Path(monitor.__file__).parent
        files = [*(root / "sources").glob("*.py"), *(root / "protect").glob("*.py")]
        files.append(root / "venues" / "orders.py")
        ids = set(VENUES) | {"binance"}
        found = []
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                literals: list[ast.expr] = []
                if isinstance(node, ast.Compare):
                    literals = [node.left, *node.comparators]
                    literals += [
                        e
                        for c in node.comparators
                        if isinstance(c, ast.Set | ast.Tuple | ast.List)
                        for e in c.elts
                    ]
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "startswith"
                ):
                    literals = list(node.args)
                found += [
                    f"{path.name}:{node.lineno} {lit.value!r}"
                    for lit in literals
                    if isinstance(lit, ast.Constant) and lit.value in ids
                ]
        assert not found


class TestGenericPath:
    def test_positions_take_ccxt_maintenance_margin(self, binance: Any) -> None:
        """Test that an unlisted venue's position keeps ccxt's unified maintenanceMargin,
        where Binance's module replaces it with the venue's own `maintMargin`."""
        binance.options["leverageBrackets"] = {"BTC/USDT:USDT": [["0", "0.004"]]}
        parsed = binance.parse_position_risk(risk_row("0.5"))
        (generic,) = positions_from_ccxt(UNLISTED, [parsed], binance.markets)
        (venue,) = positions_from_ccxt("binanceusdm", [parsed], binance.markets)
        assert generic.maintenance_margin == pytest.approx(0.5 * 61_000 * 0.004)
        assert venue.maintenance_margin == 1.5

    def test_balance_takes_ccxt_total(self, binance: Any) -> None:
        """Test that an unlisted venue's wallet is ccxt's unified `total` with no venue
        figures and no torn-read check, where Binance's module reads its raw wallet."""
        account = {
            "totalMaintMargin": "12.5",
            "totalMarginBalance": "1100",
            "assets": [
                {
                    "asset": "USDT",
                    "walletBalance": "1000",
                    "marginBalance": "1100",
                    "unrealizedProfit": "100",
                    "availableBalance": "900",
                    "initialMargin": "50",
                    "updateTime": 1722161166529,
                }
            ],
            "positions": [{"symbol": "BTCUSDT", "positionSide": "BOTH", "positionAmt": "0.5"}],
        }
        balance = binance.parse_balance_custom(account, "linear")
        balance["info"] = account
        ((_, generic, _),) = [
            (c.asset, c.amount, c.price) for c in collateral_from_ccxt(UNLISTED, balance, "USDT")
        ]
        ((_, venue, _),) = [
            (c.asset, c.amount, c.price)
            for c in collateral_from_ccxt("binanceusdm", balance, "USDT")
        ]
        assert (generic, venue) == (1100.0, 1000.0)
        assert venue_figures(UNLISTED, balance) is None
        assert venue_figures("binanceusdm", balance) is not None
        assert torn_read("binanceusdm", [], balance)  # its positions are not in the answer
        assert not torn_read(UNLISTED, [], balance)

    def test_orders_take_ccxt_params_only(self) -> None:
        """Test that an unlisted venue's orders carry ccxt's unified params only: no
        positionSide, no workingType, our `mm` client id, ccxt's clientOrderId lookup."""
        order = PlannedOrder("BTC/USDT:USDT", "long", 0.1, 6_000.0, hedged=True)
        assert "positionSide" not in order_params(order, UNLISTED, "cid")
        assert order_params(order, "binanceusdm", "cid")["positionSide"] == "LONG"
        stop = stop_params(
            UNLISTED, "long", hedged=False, client_id="c", trigger=1.0, working_type="MARK_PRICE"
        )
        assert "workingType" not in stop
        assert client_order_id("a", "e", 1, 0, UNLISTED).startswith("mm")
        assert client_order_id("a", "e", 1, 0, "hyperliquid").startswith("0x")
        assert client_id_query(UNLISTED, "c") == {"clientOrderId": "c"}
        assert client_id_query("bybit", "c") == {"orderLinkId": "c", "acknowledged": True}
