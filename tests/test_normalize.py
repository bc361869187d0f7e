"""Normalisation of ccxt structures, each venue quirk through the real ccxt parser (offline).

Raw rows follow each venue's published API docs; ccxt's own `parse_*` turns them into the
unified structures (no network), and `monitor.sources.normalize` must turn those into the
model. Markets are built by ccxt's `parse_market` where the raw shape is short, otherwise
as the minimal ccxt market dict the parser reads (symbol, settle, inverse, contractSize).
"""

from __future__ import annotations

import math
from typing import Any

import ccxt
import pytest

from monitor.core.model import Tier
from monitor.sources.normalize import (
    collateral_from_ccxt,
    mark_from_ticker,
    positions_from_ccxt,
    tiers_from_ccxt,
    venue_figures,
)
from monitor.venues.base import MalformedPayload
from tests.fakes.binance import _symbol_info


@pytest.fixture(scope="module")
def binance() -> Any:
    exchange = ccxt.binanceusdm()
    market = exchange.parse_market(_symbol_info("BTCUSDT"))
    exchange.markets = {market["symbol"]: market}
    exchange.markets_by_id = {market["id"]: [market]}
    return exchange


def risk_row(
    amount: str, entry: str = "60000", mark: str = "61000", **extra: str
) -> dict[str, Any]:
    """One `/fapi/v3/positionRisk` row (Binance USDⓈ-M docs), numbers ours."""
    notional = str(float(amount) * float(mark))
    row = {
        "symbol": "BTCUSDT",
        "positionSide": "BOTH",
        "positionAmt": amount,
        "entryPrice": entry,
        "markPrice": mark,
        "unRealizedProfit": "0",
        "liquidationPrice": "0",
        "isolatedMargin": "0",
        "notional": notional,
        "marginAsset": "USDT",
        "isolatedWallet": "0",
        "initialMargin": "10",
        "maintMargin": "1.5",
        "updateTime": 1722161166529,
    }
    row.update(extra)
    return row


class TestBinancePositions:
    def test_venue_maint_margin_wins_over_ccxt_estimate(self, binance: Any) -> None:
        """Test that the raw maintMargin (with cum) replaces ccxt's mmr × notional."""
        binance.options["leverageBrackets"] = {"BTC/USDT:USDT": [["0", "0.004"]]}
        parsed = binance.parse_position_risk(row := risk_row("0.5"))
        assert parsed["maintenanceMargin"] == pytest.approx(0.5 * 61_000 * 0.004)
        (position,) = positions_from_ccxt("binanceusdm", [parsed], binance.markets)
        assert position.maintenance_margin == float(row["maintMargin"])
        assert position.side == "long"

    def test_user_stream_rows(self, binance: Any) -> None:
        """Test that user-stream rows (no mark) take the last tick, and a close-out
        (side 'both', size 0) leaves no ghost position (docs/venues.md)."""
        import ccxt.pro

        pro = ccxt.pro.binanceusdm()
        pro.markets, pro.markets_by_id = binance.markets, binance.markets_by_id
        row = {
            "s": "BTCUSDT",
            "ep": "60000",
            "cr": "0",
            "up": "-5",
            "mt": "cross",
            "iw": "0",
            "ps": "BOTH",
        }
        short = pro.parse_ws_position(dict(row, pa="-0.25"))
        closed = pro.parse_ws_position(dict(row, pa="0"))
        assert closed["side"] == "both"
        (position,) = positions_from_ccxt(
            "binanceusdm", [short, closed], binance.markets, marks={"BTC/USDT:USDT": 60_020.0}
        )
        assert position.side == "short"
        assert position.contracts == 0.25
        assert position.mark_price == 60_020.0

    def test_side_both_with_size_takes_the_sign(self, binance: Any) -> None:
        """Test that a cached 'both' entry that still has a size reads its sign from `pa`."""
        row = {
            "symbol": "BTC/USDT:USDT",
            "contracts": 0.3,
            "side": "both",
            "entryPrice": 60_000.0,
            "markPrice": 60_100.0,
            "info": {"pa": "-0.3"},
        }
        (position,) = positions_from_ccxt("binanceusdm", [row], binance.markets)
        assert position.side == "short"

    def test_hedge_mode_keeps_both_legs(self, binance: Any) -> None:
        """Test that hedge mode's LONG and SHORT legs of one symbol stay two positions."""
        binance.options["leverageBrackets"] = {"BTC/USDT:USDT": [["0", "0.004"]]}
        rows = [
            binance.parse_position_risk(risk_row("0.5", positionSide="LONG")),
            binance.parse_position_risk(risk_row("-0.2", positionSide="SHORT")),
        ]
        legs = positions_from_ccxt("binanceusdm", rows, binance.markets)
        assert [(p.side, p.contracts, p.hedged) for p in legs] == [
            ("long", 0.5, True),
            ("short", 0.2, True),
        ]

    def test_isolated_margin_is_the_isolated_wallet(self, binance: Any) -> None:
        """Test that an isolated position carries its own margin (isolatedWallet, no PnL)."""
        binance.options["leverageBrackets"] = {"BTC/USDT:USDT": [["0", "0.004"]]}
        row = risk_row(
            "0.5",
            isolatedMargin="520",
            isolatedWallet="480",
            unRealizedProfit="40",
            marginType="isolated",
        )
        (position,) = positions_from_ccxt(
            "binanceusdm", [binance.parse_position_risk(row)], binance.markets
        )
        assert position.margin_mode == "isolated"
        assert position.isolated_margin == 480.0

    @pytest.mark.parametrize(
        ("change", "field"),
        [({"entryPrice": "abc"}, "entryPrice"), ({"markPrice": "0"}, "mark")],
    )
    def test_malformed_row_rejects_the_update(
        self, binance: Any, change: dict[str, str], field: str
    ) -> None:
        """Test that a bad number rejects the whole update with a reason naming the field."""
        good = binance.parse_position_risk(risk_row("0.5"))
        bad = binance.parse_position_risk(risk_row("0.1", **change))
        with pytest.raises(MalformedPayload, match=field):
            positions_from_ccxt("binanceusdm", [good, bad], binance.markets)

    def test_unknown_symbol_and_duplicates_are_rejected(self, binance: Any) -> None:
        """Test that a symbol outside the markets, or one listed twice, is refused."""
        good = binance.parse_position_risk(risk_row("0.5"))
        with pytest.raises(MalformedPayload, match="listed twice"):
            positions_from_ccxt("binanceusdm", [good, good], binance.markets)
        with pytest.raises(MalformedPayload, match="not in the venue's markets"):
            positions_from_ccxt(
                "binanceusdm", [dict(good, symbol="DOGE/USDT:USDT")], binance.markets
            )
        with pytest.raises(MalformedPayload, match="expected a list"):
            positions_from_ccxt("binanceusdm", "garbage", binance.markets)


class TestBinanceBalance:
    def test_wallet_excludes_pnl_and_keeps_update_time_zero(self, binance: Any) -> None:
        """Test that the wallet is walletBalance, and an asset with updateTime 0 is kept."""
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
                },
                {
                    "asset": "USDC",
                    "walletBalance": "250",
                    "marginBalance": "250",
                    "unrealizedProfit": "0",
                    "availableBalance": "250",
                    "initialMargin": "0",
                    "updateTime": 0,
                },
            ],
        }
        balance = binance.parse_balance_custom(account, "linear")
        assert balance["USDT"]["total"] == 1100.0  # ccxt: marginBalance, PnL included
        assert "USDC" not in balance  # ccxt drops updateTime == 0 (issue #27997)
        collateral = collateral_from_ccxt("binanceusdm", balance, "USDT")
        assert [(c.asset, c.amount, c.price) for c in collateral] == [
            ("USDT", 1000.0, 1.0),
            ("USDC", 250.0, 1.0),
        ]
        figures = venue_figures("binanceusdm", balance)
        assert figures is not None
        assert figures.margin_ratio == pytest.approx(12.5 / 1100)

    def test_volatile_asset_without_price_is_rejected(self) -> None:
        """Test that a BTC wallet with no BTC price is refused rather than valued at a guess."""
        balance = {"info": {"assets": [{"asset": "BTC", "walletBalance": "0.1"}]}}
        with pytest.raises(MalformedPayload, match="no price for BTC"):
            collateral_from_ccxt("binanceusdm", balance, "USDT")
        (btc,) = collateral_from_ccxt("binanceusdm", balance, "USDT", {"BTC": 60_000.0})
        assert btc.price == 60_000.0


class TestDydx:
    def test_signed_contracts(self) -> None:
        """Test that dYdX's negative `contracts` for a short becomes a positive short."""
        exchange = ccxt.dydx()
        market = {
            "symbol": "BTC/USD:USDC",
            "id": "BTC-USD",
            "settle": "USDC",
            "quote": "USD",
            "inverse": False,
            "contractSize": 1.0,
        }
        raw = {
            "market": "BTC-USD",
            "status": "OPEN",
            "side": "SHORT",
            "size": "0.407",
            "entryPrice": "118692.0",
            "unrealizedPnl": "-57.2",
            "createdAt": "2025-07-14T07:53:55.631Z",
        }
        parsed = exchange.parse_position(raw, market)
        assert parsed["contracts"] == pytest.approx(-0.407)  # the quirk, as ccxt returns it
        (position,) = positions_from_ccxt(
            "dydx", [parsed], {market["symbol"]: market}, marks={"BTC/USD:USDC": 118_800.0}
        )
        assert position.side == "short"
        assert position.contracts == pytest.approx(0.407)


class TestDeribit:
    def test_percent_units_and_inverse(self) -> None:
        """Test that Deribit's percent-unit MM rate becomes a fraction on an inverse position."""
        exchange = ccxt.deribit()
        market = {
            "symbol": "BTC/USD:BTC",
            "id": "BTC-PERPETUAL",
            "settle": "BTC",
            "base": "BTC",
            "quote": "USD",
            "inverse": True,
            "contractSize": 10.0,
        }
        raw = {
            "instrument_name": "BTC-PERPETUAL",
            "direction": "buy",
            "size": 10000,
            "size_currency": 0.2,
            "average_price": 50_000.0,
            "mark_price": 50_500.0,
            "initial_margin": 0.004,
            "maintenance_margin": 0.002,
            "floating_profit_loss": 0.00198,
            "leverage": 50,
            "kind": "future",
        }
        parsed = exchange.parse_position(raw, market)
        assert parsed["maintenanceMarginPercentage"] == pytest.approx(1.0)  # percent units
        (position,) = positions_from_ccxt("deribit", [parsed], {market["symbol"]: market})
        assert position.mmr == pytest.approx(0.01)
        assert position.inverse
        assert position.settle == "BTC"
        assert position.maintenance_margin == pytest.approx(0.002)
        # `size` is USD: the position is worth size_currency (0.2 BTC) at the entry price.
        assert position.settle_notional(50_000.0) == pytest.approx(0.2)


class TestTiers:
    def test_binance_cum_is_kept(self, binance: Any) -> None:
        """Test that Binance's cum from `info` becomes the tier's maintenance amount."""
        raw = {
            "symbol": "BTCUSDT",
            "brackets": [
                {
                    "bracket": 1,
                    "initialLeverage": 125,
                    "notionalCap": 50000,
                    "notionalFloor": 0,
                    "maintMarginRatio": 0.004,
                    "cum": 0.0,
                },
                {
                    "bracket": 2,
                    "initialLeverage": 100,
                    "notionalCap": 250000,
                    "notionalFloor": 50000,
                    "maintMarginRatio": 0.005,
                    "cum": 50.0,
                },
            ],
        }
        rows = binance.parse_market_leverage_tiers(raw)
        assert tiers_from_ccxt("binanceusdm", rows) == (
            Tier(50_000.0, 0.004, 0.0, 1 / 125),
            Tier(250_000.0, 0.005, 50.0, 1 / 100),
        )

    def test_missing_deduction_is_computed(self) -> None:
        """Test that a venue without a deduction field gets the cumulative rule's value."""
        exchange = ccxt.bybit()
        market = {"symbol": "BTC/USDT:USDT", "id": "BTCUSDT", "settle": "USDT"}
        raw = [
            {
                "id": 1,
                "symbol": "BTCUSDT",
                "riskLimitValue": "200000",
                "maintenanceMargin": "0.005",
                "initialMargin": "0.01",
                "maxLeverage": "100",
            },
            {
                "id": 2,
                "symbol": "BTCUSDT",
                "riskLimitValue": "400000",
                "maintenanceMargin": "0.01",
                "initialMargin": "0.02",
                "maxLeverage": "50",
            },
        ]
        rows = exchange.parse_market_leverage_tiers(raw, market)
        tiers = tiers_from_ccxt("bybit", rows)
        assert tiers[1].maintenance_amount == pytest.approx(200_000 * (0.01 - 0.005))
        # Continuity at the boundary is the point of the deduction.
        assert 200_000 * tiers[0].mmr == pytest.approx(
            200_000 * tiers[1].mmr - tiers[1].maintenance_amount
        )

    def test_bad_rate_is_rejected(self) -> None:
        """Test that a maintenance rate that is not a fraction is refused."""
        with pytest.raises(MalformedPayload, match="maintenanceMarginRate"):
            tiers_from_ccxt("x", [{"maxNotional": 1.0, "maintenanceMarginRate": 5.0}])


class TestMarks:
    def test_hyperliquid_mark_from_info(self) -> None:
        """Test that Hyperliquid's ticker (no unified markPrice) yields info.markPx."""
        exchange = ccxt.hyperliquid()
        market = {"symbol": "ETH/USDC:USDC", "id": "ETH", "baseName": "ETH", "swap": True}
        ticker = exchange.parse_ticker(
            {"prevDayPx": "3400.5", "markPx": "3464.7", "midPx": "3465.05", "oraclePx": "3460.1"},
            market,
        )
        assert ticker["markPrice"] is None
        assert mark_from_ticker("hyperliquid", ticker) == 3464.7

    @pytest.mark.parametrize("value", [None, "abc", "0", "-1", "nan", math.inf])
    def test_bad_marks_are_none(self, value: object) -> None:
        """Test that a missing, non-numeric, non-positive or infinite mark is no mark."""
        assert mark_from_ticker("bybit", {"markPrice": value, "info": {}}) is None
