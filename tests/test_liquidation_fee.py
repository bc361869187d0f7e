"""Issue 19 §2: OKX's and Gate's liquidation condition counts the taker fee charged at
liquidation on top of the maintenance rate (docs/margin-edges.md §2 quotes both venues).

Vectors: the 5× isolated ETH example of a peer project's test suite (freqtrade, tests of
`dry_run_liquidation_price`, the formula it cites from Gate's "liquidation price /
bankruptcy price" page and OKX's isolated-margin page: entry 10, size 1, margin 2,
MMR 1 %, taker 0.06 %): long 8.085708510208207, short 11.87413417771621. Without the fee
term the same inputs give 8.0808 and 11.8812.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, Position, Side, Tier
from monitor.core.stress import shock_to_liquidation, shocked, with_prices
from monitor.core.venue_rules import rules_for_venue
from monitor.errors import UserError
from monitor.report_json import report_to_dict, snapshot_to_dict
from monitor.snapshot import parse_snapshot
from tests.strategies import accounts

ETH = "ETH/USDT:USDT"
EXE = Path(sys.executable).with_name("margin-monitor")


def isolated_file(venue: str, side: str, fee: float | None) -> dict[str, Any]:
    """The peer's 5× example as a snapshot file: size 1 at 10, margin 2, MMR 1 %."""
    position: dict[str, Any] = {
        "symbol": ETH,
        "side": side,
        "contracts": 1.0,
        "entry_price": 10.0,
        "mark_price": 10.0,
        "margin_mode": "isolated",
        "leverage": 5,
        "mmr": 0.01,
        "isolated_margin": 2.0,
    }
    if fee is not None:
        position["liquidation_fee"] = fee
    return {
        "account": "peer",
        "currency": "USDT",
        "venue": venue,
        "collateral": [{"asset": "USDT", "amount": 0.0}],
        "positions": [position],
    }


def gate_linear(
    side: Side,
    *,
    entry: float,
    margin: float,
    multiplier: float,
    size: float,
    mmr: float,
    taker: float,
) -> float:
    """Gate's published formula, as printed: (Entry Price ± Margin / Contract Multiplier /
    Size) / [1 ± (Maintenance Margin Ratio + Taker Rate)], "−" for long, "+" for short."""
    s = -1 if side == "long" else 1
    return (entry + s * margin / multiplier / size) / (1 + s * (mmr + taker))


def gate_inverse(
    side: Side, *, entry: float, margin: float, size: float, mmr: float, taker: float
) -> float:
    """Gate's inverse formula: position × average opening price × (1 ± MMR ± taker) /
    (position ± margin × average opening price), "+" for long, "−" for short."""
    s = 1 if side == "long" else -1
    return size * entry * (1 + s * mmr + s * taker) / (size + s * margin * entry)


class TestPeerVectors:
    @pytest.mark.parametrize("venue", ["okx", "gate"])
    @pytest.mark.parametrize(
        ("side", "expected"),
        [
            ("long", 8.085708510208207),
            ("short", 11.87413417771621),
        ],
    )
    def test_five_x_isolated(self, venue: str, side: str, expected: float) -> None:
        """Test the peer's OKX and Gate 5× vectors through the snapshot file and report."""
        snap = parse_snapshot(isolated_file(venue, side, 0.0006), "peer.json")
        (pos,) = report_to_dict(report(snap))["positions"]
        assert pos["liquidation_price"] == pytest.approx(expected, abs=1e-6)

    def test_report_command(self, tmp_path: Path) -> None:
        """Test the OKX long vector through `margin-monitor report --json`."""
        path = tmp_path / "okx.json"
        path.write_text(json.dumps(isolated_file("okx", "long", 0.0006)))
        done = subprocess.run(
            [str(EXE), "report", "--snapshot", str(path), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        lp = json.loads(done.stdout)["positions"][0]["liquidation_price"]
        assert lp == pytest.approx(8.085708510208207, abs=1e-6)

    @pytest.mark.parametrize("venue", ["binanceusdm", "hyperliquid", None])
    def test_venues_without_the_term(self, venue: str | None) -> None:
        """Test that Binance, Hyperliquid (and no venue) keep the fee-free rule."""
        data = isolated_file("x", "long", None)
        if venue is None:
            del data["venue"]
        else:
            data["venue"] = venue
        (pos,) = report(parse_snapshot(data, "x.json")).positions
        assert pos.liquidation_price == pytest.approx(8 / 0.99, abs=1e-9)


class TestVenueDefault:
    @pytest.mark.parametrize("venue", ["okx", "gate", "gateio"])
    def test_base_tier_taker_rate(self, venue: str) -> None:
        """Test that a position without its own rate pays the venue's base taker rate."""
        assert rules_for_venue(venue).liquidation_fee == 0.0005
        (pos,) = report(parse_snapshot(isolated_file(venue, "long", None), "v.json")).positions
        assert pos.liquidation_price == pytest.approx(8 / (1 - 0.0105), abs=1e-9)

    @pytest.mark.parametrize("side", ["long", "short"])
    @pytest.mark.parametrize(
        "case",
        [
            {
                "entry": 60_000.0,
                "margin": 600.0,
                "multiplier": 0.0001,
                "size": 1_000,
                "mmr": 0.004,
                "taker": 0.00075,
            },
            {
                "entry": 2_500.0,
                "margin": 37.5,
                "multiplier": 0.01,
                "size": 30,
                "mmr": 0.005,
                "taker": 0.0005,
            },
            {
                "entry": 0.25,
                "margin": 12.0,
                "multiplier": 10.0,
                "size": 48,
                "mmr": 0.01,
                "taker": 0.0005,
            },
        ],
    )
    def test_gate_linear_formula(self, side: Side, case: dict[str, float]) -> None:
        """Test that a Gate isolated linear LP equals Gate's printed formula (contracts ×
        multiplier), long and short."""
        p = Position(
            "X/USDT:USDT",
            side,
            case["size"],
            case["entry"],
            case["entry"],
            contract_size=case["multiplier"],
            margin_mode="isolated",
            mmr=case["mmr"],
            isolated_margin=case["margin"],
            liquidation_fee=case["taker"],
        )
        s = AccountSnapshot("g", "USDT", (Collateral("USDT", 0.0),), (p,), "gate")
        lp = report(s).positions[0].liquidation_price
        assert lp == pytest.approx(gate_linear(side, **case), rel=1e-12)

    @pytest.mark.parametrize("side", ["long", "short"])
    def test_gate_inverse_formula(self, side: Side) -> None:
        """Test that a Gate inverse isolated LP equals Gate's printed inverse formula."""
        case = {"entry": 60_000.0, "margin": 0.01, "size": 3_000.0, "mmr": 0.005, "taker": 0.00075}
        p = Position(
            "BTC/USD:BTC",
            side,
            case["size"],
            case["entry"],
            case["entry"],
            settle="BTC",
            inverse=True,
            margin_mode="isolated",
            mmr=case["mmr"],
            isolated_margin=case["margin"],
            liquidation_fee=case["taker"],
        )
        s = AccountSnapshot(
            "g", "USD", (Collateral("BTC", 0.0, price=case["entry"]),), (p,), "gate"
        )
        lp = report(s).positions[0].liquidation_price
        assert lp == pytest.approx(gate_inverse(side, **case), rel=1e-12)


class TestCrossRatio:
    def test_okx_ratio_counts_liquidation_fees(self) -> None:
        """Test OKX cross: ratio = (MM + notional × taker) / equity, the inverse of OKX's
        mgnRatio = adjusted equity / (maintenance margin + liquidation fees)."""
        p = Position(
            "BTC/USDT:USDT", "long", 0.5, 60_000, 60_000, tiers=(Tier(float("inf"), 0.004, 0.0),)
        )
        r = report(AccountSnapshot("o", "USDT", (Collateral("USDT", 3_000.0),), (p,), "okx"))
        assert r.maintenance_margin == pytest.approx(30_000 * (0.004 + 0.0005))
        assert r.margin_ratio == pytest.approx(30_000 * 0.0045 / 3_000)

    def test_venue_reported_mm_gets_the_fee_on_top(self) -> None:
        """Test that OKX's own `mmr` (MM alone) has the liquidation fee added, and a what-if
        keeps the same terms."""
        p = Position("BTC/USDT:USDT", "long", 0.5, 60_000, 60_000, maintenance_margin=120.0)
        s = AccountSnapshot("o", "USDT", (Collateral("USDT", 3_000.0),), (p,), "okx")
        assert report(s).maintenance_margin == pytest.approx(120.0 + 15.0)
        moved = report(with_prices(s, {"BTC/USDT:USDT": 30_000.0}))
        assert moved.maintenance_margin == pytest.approx(60.0 + 7.5)

    def test_snapshot_round_trip_and_bad_value(self) -> None:
        """Test that `liquidation_fee` survives write/read and a bad one is a one-line error."""
        snap = parse_snapshot(isolated_file("okx", "long", 0.0006), "a.json")
        again = parse_snapshot(snapshot_to_dict(snap), "b.json")
        assert again == snap
        assert again.positions[0].liquidation_fee == 0.0006
        bad = isolated_file("okx", "long", 1.5)
        with pytest.raises(UserError, match="liquidation_fee") as info:
            parse_snapshot(bad, "c.json")
        assert "\n" not in str(info.value)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        accounts(),
        st.sampled_from(("okx", "gate")),
        st.lists(
            st.one_of(st.none(), st.floats(min_value=0.0, max_value=0.002)), min_size=4, max_size=4
        ),
    )
    def test_ratio_is_one_at_every_liquidation_price(
        self, s: AccountSnapshot, venue: str, fees: list[float | None]
    ) -> None:
        """Test that with the fee term the ratio at each liquidation price is 1 (± 1e-9)
        and the shock to liquidation reaches ratio 1 too (OKX with one flat rate: its
        whole-position tiers jump across 1 at an edge, tests/test_margin.py covers that)."""
        s = replace(
            s,
            venue=venue,
            positions=tuple(
                replace(
                    p,
                    liquidation_fee=f,
                    **({"tiers": (), "mmr": p.tiers[0].mmr} if venue == "okx" else {}),
                )
                for p, f in zip(s.positions, fees, strict=False)
            ),
        )
        r = report(s)
        for p in r.positions:
            if p.liquidation_price is not None:
                at = report(with_prices(s, {p.symbol: p.liquidation_price}))
                assert at.margin_ratio == pytest.approx(1.0, abs=1e-9)
        if r.liquidated:
            return
        shock = shock_to_liquidation(s)
        for move in (shock.down, shock.up):
            if move is not None:
                assert report(shocked(s, move)).margin_ratio == pytest.approx(1, rel=1e-4)
