"""monitor.core.margin.ledger: tick-by-tick totals agree with a full report at the same prices."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.margin.ledger import Ledger
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, Position
from monitor.core.stress import with_prices
from tests.strategies import accounts


class TestLedger:
    @settings(max_examples=200, deadline=None)
    @given(accounts(), st.data())
    def test_ticks_match_a_full_report(self, s: AccountSnapshot, data: st.DataObject) -> None:
        """Test that any sequence of ticks leaves the ledger equal to a report at those prices."""
        ledger = Ledger(s)
        prices: dict[str, float] = {}
        for _ in range(data.draw(st.integers(min_value=1, max_value=20))):
            p = data.draw(st.sampled_from(s.positions))
            price = p.mark_price * data.draw(st.floats(min_value=0.5, max_value=1.5))
            ledger.tick(p.symbol, price)
            prices[p.symbol] = price
        expected = report(with_prices(s, prices))
        if math.isfinite(expected.margin_ratio):
            assert ledger.ratio() == pytest.approx(expected.margin_ratio, rel=1e-6)
        got = report(ledger.snapshot())
        assert got.margin_balance == pytest.approx(expected.margin_balance, rel=1e-9, abs=1e-6)
        assert got.initial_margin == pytest.approx(expected.initial_margin, rel=1e-9, abs=1e-6)
        assert got.maintenance_margin == pytest.approx(
            expected.maintenance_margin, rel=1e-9, abs=1e-6
        )

    def test_irrelevant_and_bad_ticks_change_nothing(self) -> None:
        """Test that unknown symbols, same prices and non-positive prices are no-ops."""
        s = AccountSnapshot(
            "a",
            "USDT",
            (Collateral("USDT", 1_000),),
            (Position("BTC/USDT:USDT", "long", 1, 60_000, 60_000, mmr=0.01),),
        )
        ledger = Ledger(s)
        assert not ledger.tick("ETH/USDT:USDT", 3_000)
        assert not ledger.tick("BTC/USDT:USDT", 60_000)
        assert not ledger.tick("BTC/USDT:USDT", float("nan"))
        assert not ledger.tick("BTC/USDT:USDT", -1)
        assert ledger.tick("BTC/USDT:USDT", 59_000)
        assert ledger.ratio() == math.inf
        assert report(ledger.snapshot()).margin_balance == pytest.approx(0.0)

    def test_collateral_follows_its_market(self) -> None:
        """Test that a BTC/USDT tick re-prices BTC collateral, as a full report would."""
        s = AccountSnapshot(
            "a",
            "USDT",
            (Collateral("USDT", 0), Collateral("BTC", 1, 60_000, haircut=0.1)),
            (Position("BTC/USDT:USDT", "short", 1, 60_000, 60_000, mmr=0.01),),
        )
        ledger = Ledger(s)
        ledger.tick("BTC/USDT:USDT", 50_000)
        balance = 50_000 * 0.9 + 10_000
        assert ledger.ratio() == pytest.approx(50_000 * 0.01 / balance)
        assert report(ledger.snapshot()).margin_balance == pytest.approx(balance)
