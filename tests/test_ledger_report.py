"""Ledger.report: the daemon's routine report, from the figures the ledger keeps, against
the reference `report(snapshot)` pooled from scratch, over mixed books.

Exact, field for field, with no tolerance: a tick values a moved position with the same
functions `valuation.pool` uses on the re-priced position, and `Ledger.report` re-sums the
books from those figures in pool's order (not the ticks' running sums, whose rounding
differs), so both reports do the same arithmetic on the same numbers.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.margin.ledger import Ledger
from monitor.core.margin.report import report
from monitor.core.model import (
    AccountSnapshot,
    Collateral,
    CollateralTier,
    Position,
    Tier,
    VenueMargin,
)
from tests.strategies import tier_tables

LINEAR = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
INVERSE = "BTC/USD:BTC"
PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}


@st.composite
def mixed_positions(draw: st.DrawFn, symbol: str) -> list[Position]:
    """One position of `symbol` (two, hedged, sometimes): cross or isolated, tiers or a
    flat rate, sometimes with the venue's own figures; inverse for the coin-margined market."""
    inverse = symbol == INVERSE
    base = PRICES[symbol.split("/", maxsplit=1)[0]]
    mark = base * draw(st.floats(min_value=0.8, max_value=1.2))
    hedged = not inverse and draw(st.integers(0, 3)) == 0
    held = []
    for side in ("long", "short") if hedged else (draw(st.sampled_from(("long", "short"))),):
        entry = mark * draw(st.floats(min_value=0.7, max_value=1.3))
        notional = draw(st.floats(min_value=10.0, max_value=2_000_000))
        mode = "cross" if hedged else draw(st.sampled_from(("cross", "cross", "isolated")))
        size = 100.0 if inverse else 1.0  # USD per inverse contract
        contracts = notional / size if inverse else notional / mark
        tiers = draw(st.one_of(st.just(()), tier_tables()))
        venue_figures = draw(st.booleans())
        held.append(
            Position(
                symbol=symbol,
                side=side,  # type: ignore[arg-type]
                contracts=contracts,
                entry_price=entry,
                mark_price=mark,
                contract_size=size,
                margin_mode=mode,  # type: ignore[arg-type]
                leverage=float(draw(st.integers(min_value=1, max_value=50))),
                settle="BTC" if inverse else None,
                inverse=inverse,
                hedged=hedged,
                mmr=None if tiers else draw(st.floats(min_value=0.002, max_value=0.1)),
                tiers=tiers,
                unrealized_pnl=(
                    draw(st.floats(min_value=-1e5, max_value=1e5)) if venue_figures else None
                ),
                maintenance_margin=(
                    draw(st.floats(min_value=0.0, max_value=1e4)) if venue_figures else None
                ),
                isolated_margin=notional / 10 / (mark if inverse else 1.0)
                if mode == "isolated"
                else None,
            )
        )
    return held


@st.composite
def mixed_accounts(draw: st.DrawFn) -> AccountSnapshot:
    """USDT plus BTC/ETH collateral (flat or banded haircuts, liability markups, negative
    or zero amounts), linear and inverse positions, sometimes a portfolio-margin figure."""
    symbols = draw(st.lists(st.sampled_from((*LINEAR, INVERSE)), min_size=1, unique=True))
    positions = [p for s in symbols for p in draw(mixed_positions(s))]
    amount = st.one_of(st.just(0.0), st.floats(min_value=-5e4, max_value=5e6))
    collateral = [Collateral("USDT", draw(amount))]
    btc_needed = INVERSE in symbols
    for asset in ("BTC", "ETH"):
        if (asset == "BTC" and btc_needed) or draw(st.booleans()):
            bands: tuple[CollateralTier, ...] = ()
            if draw(st.booleans()):
                bands = (
                    CollateralTier(draw(st.floats(0.5, 50)), 0.95),
                    CollateralTier(math.inf, 0.8),
                )
            collateral.append(
                Collateral(
                    asset,
                    draw(st.one_of(st.just(0.0), st.floats(min_value=-5, max_value=30))),
                    price=PRICES[asset],
                    haircut=draw(st.sampled_from((0.0, 0.05, 0.1))),
                    liability_markup=draw(st.sampled_from((0.0, 0.01))),
                    haircut_tiers=bands,
                )
            )
    venue_margin = None
    if draw(st.integers(0, 5)) == 0:
        venue_margin = VenueMargin(draw(st.one_of(st.none(), st.floats(0.0, 2.0))), 100.0, 1e4)
    return AccountSnapshot(
        "mixed",
        "USDT",
        tuple(collateral),
        tuple(positions),
        venue=draw(st.sampled_from((None, "binanceusdm", "bybit", "okx", "hyperliquid"))),
        venue_margin=venue_margin,
    )


class TestLedgerReport:
    @settings(max_examples=300, deadline=None)
    @given(mixed_accounts())
    def test_first_report_equals_the_reference_exactly(self, s: AccountSnapshot) -> None:
        """Test that a ledger's report before any tick is `report(snapshot)`, field for field."""
        assert Ledger(s).report() == report(s)

    @settings(max_examples=300, deadline=None)
    @given(mixed_accounts(), st.data())
    def test_report_after_ticks_matches_the_reference(
        self, s: AccountSnapshot, data: st.DataObject
    ) -> None:
        """Test that after any ticks (collateral-pricing ones too, reports in between) the
        ledger's report matches `report` of the same state pooled from scratch."""
        ledger = Ledger(s)
        symbols = sorted({p.symbol for p in s.positions} | {"ETH/USDT:USDT"})
        for _ in range(data.draw(st.integers(min_value=1, max_value=12))):
            symbol = data.draw(st.sampled_from(symbols))
            price = PRICES[symbol.split("/")[0]] * data.draw(st.floats(0.3, 2.0))
            ledger.tick(symbol, price)
            if data.draw(st.booleans()):
                assert ledger.report() == report(ledger.snapshot())
        assert ledger.report() == report(ledger.snapshot())

    def test_report_is_the_state_of_the_last_tick(self) -> None:
        """Test that the report follows each tick: a move into loss shows in PnL and ratio."""
        s = AccountSnapshot(
            "a",
            "USDT",
            (Collateral("USDT", 10_000),),
            (Position("BTC/USDT:USDT", "long", 1, 60_000, 60_000, mmr=0.01),),
        )
        ledger = Ledger(s)
        assert ledger.report().unrealized_pnl == 0.0
        ledger.tick("BTC/USDT:USDT", 55_000)
        got = ledger.report()
        assert got.unrealized_pnl == pytest.approx(-5_000)
        assert got.margin_ratio == pytest.approx(550 / 5_000)
        assert got.positions[0].liquidation_price == pytest.approx(50_000 / 0.99)


class TestResumedWalks:
    def test_walks_resume_only_where_they_hold(self) -> None:
        """Test that a ledger's liquidation walks, kept between reports and resumed, give
        the reference prices to the bit while the pool's surplus moves both ways."""
        tiers = tuple(
            Tier(upper, rate, cum)
            for upper, rate, cum in (
                (10_000.0, 0.01, 0.0),
                (50_000.0, 0.02, 100.0),
                (200_000.0, 0.05, 1_600.0),
                (math.inf, 0.1, 11_600.0),
            )
        )
        positions = tuple(
            Position(f"S{i}/USDT:USDT", side, 3.0 + i, 10_000.0, 10_000.0, leverage=10, tiers=tiers)
            for i, side in enumerate(("long", "short", "long", "short"))
        )
        s = AccountSnapshot(
            "a", "USDT", (Collateral("USDT", 30_000),), positions, venue="binanceusdm"
        )
        ledger = Ledger(s)
        walked = 0
        for step, price in enumerate((10_500, 9_000, 11_000, 8_000, 12_000, 9_500, 7_000)):
            ledger.tick(f"S{step % 2}/USDT:USDT", float(price))
            assert ledger.report() == report(ledger.snapshot())
            walked += sum(w is not None for w in ledger._kept.walks)
        assert walked  # the walks were kept, so the later reports resumed some
