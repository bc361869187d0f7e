"""The closed-form tier walk's shortcut: a report from scratch takes the walk's end from the
tier table's clearance bounds (`liquidation._Clearance`) instead of walking, and must give
the walked result to the bit, for every k0, right at the bounds included.

The `Ledger` always walks (it keeps the walk), so tests/test_ledger_report.py compares the
two over mixed accounts; here k0 is put within a few ulps of each bound, where a bound
taken a hair too low would show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.margin.ledger import Ledger
from monitor.core.margin.liquidation import Walk, _Clearance, _clearance, _closed_form
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, Position, Tier
from tests.strategies import tier_tables


def ulps(x: float, n: int) -> float:
    """`x` moved by n units in the last place (down for n < 0)."""
    for _ in range(abs(n)):
        x = math.nextafter(x, math.inf if n > 0 else -math.inf)
    return x


@dataclass(frozen=True)
class Rates:
    """A settle asset's closed-form rates and the venue's rule and fee."""

    rate: float
    ask: float
    deduct: bool
    fee: float


def closed_form(p: Position, k0: float, r: Rates, *, walk: bool) -> float | None:
    """`_closed_form` walking the tiers (a walk list given: the `Ledger`'s way), or as a
    report from scratch calls it (no walk list: the shortcut)."""
    walks: list[Walk | None] | None = [None] if walk else None
    return _closed_form(p, k0, 1e6, r.rate, r.ask, p.contracts, r.deduct, r.fee, walks, 0)


def same(a: float | None, b: float | None) -> bool:
    """Equal to the bit (NaN, the general solver's signal, equal to itself)."""
    if a is not None and b is not None and math.isnan(a) and math.isnan(b):
        return True
    return a == b and repr(a) == repr(b)


rates = st.builds(
    Rates,
    rate=st.sampled_from((1.0, 0.95, 54_000.0)),
    ask=st.sampled_from((1.0, 1.01, 60_600.0)),
    deduct=st.booleans(),
    fee=st.sampled_from((0.0, 0.0005)),
)


class TestClearance:
    @settings(max_examples=400, deadline=None)
    @given(tier_tables(), rates, st.data())
    def test_shortcut_is_the_walk_at_the_bounds(
        self, tiers: tuple[Tier, ...], r: Rates, data: st.DataObject
    ) -> None:
        """Test that with k0 a few ulps either side of a clearance bound, the shortcut of a
        report from scratch gives the walk's price (or its None, or its NaN) to the bit."""
        side = data.draw(st.sampled_from(("long", "short")))
        size = data.draw(st.floats(min_value=1e-3, max_value=1e4))
        mark = data.draw(st.floats(min_value=0.5, max_value=1e5))
        p = Position("S/USDT:USDT", side, size, mark, mark, leverage=10, tiers=tiers)
        clear = _clearance(tiers, r.rate, r.ask, r.fee, r.deduct)
        bound = clear.long if side == "long" else clear.short
        steps = data.draw(st.integers(min_value=-40, max_value=40))
        for k0 in (ulps(bound, steps), bound * (1 + steps * 1e-6), -bound):
            if math.isfinite(k0):
                got = closed_form(p, k0, r, walk=False)
                assert same(got, closed_form(p, k0, r, walk=True))

    def test_bounds_clear_every_tier(self) -> None:
        """Test that at its bound every tier's root lies where the shortcut says: a long's below
        its floor (tier 0: below price 0), a short's above its cap but in the last tier."""
        tiers = (Tier(50_000, 0.004, 0), Tier(250_000, 0.005, 50), Tier(math.inf, 0.01, 1_300))
        clear = _clearance(tiers, 1.0, 1.0, 0.0, True)
        floors = (0.0, 50_000.0, 250_000.0)
        for tier, floor in zip(tiers, floors, strict=True):
            assert -(clear.long + tier.maintenance_amount) / (1.0 - tier.mmr) < floor
            root = -(clear.short + tier.maintenance_amount) / (-1.0 - tier.mmr)
            assert root >= floor
            assert tier is tiers[-1] or root > tier.max_notional
        assert (clear.offset, clear.slope) == (1_300.0, -1.01)

    def test_unusable_table_has_no_bound(self) -> None:
        """Test that a table with a tier whose line does not rise toward safety for a long
        gets a NaN long bound, which no k0 reaches: every long walks (and meets the NaN)."""
        tiers = (Tier(1_000, 0.5), Tier(math.inf, 1.5))  # 1 − 1.5 < 0: not monotone for a long
        clear: _Clearance = _clearance(tiers, 1.0, 1.0, 0.0, True)
        assert math.isnan(clear.long)
        assert not clear.long <= 1e300

    def test_report_from_scratch_takes_the_shortcut(self) -> None:
        """Test that a well-collateralised book's report has the short's price in the last
        tier and no price for the long, as the walk gives them."""
        tiers = (Tier(50_000, 0.004, 0), Tier(250_000, 0.005, 50), Tier(math.inf, 0.01, 1_300))
        s = AccountSnapshot(
            "a",
            "USDT",
            (Collateral("USDT", 5_000_000),),
            (
                Position("A/USDT:USDT", "long", 10, 1_000, 1_000, leverage=10, tiers=tiers),
                Position("B/USDT:USDT", "short", 10, 1_000, 1_000, leverage=10, tiers=tiers),
            ),
            venue="binanceusdm",
        )
        got = report(s)
        long_line, short_line = got.positions
        assert long_line.liquidation_price is None
        # k0 = 5e6 + 10 000 (the short's PnL at price 0) − 40 (the long's MM): the last tier
        assert short_line.liquidation_price == -(5_009_960 + 1_300) / -1.01 / 10
        assert Ledger(s).report() == got  # the walk, to the bit

    def test_one_table_at_two_rates(self) -> None:
        """Test that one tiers tuple used at two settle rates (a haircut on the settle asset,
        an isolated position at rate 1 beside it) gets each rate's bounds, never the other's:
        every report from scratch equals the walked one."""
        tiers = (Tier(50_000, 0.004, 0), Tier(250_000, 0.005, 50), Tier(math.inf, 0.01, 1_300))
        held = (
            Position("A/USDT:USDT", "short", 200, 1_000, 1_000, leverage=10, tiers=tiers),
            Position("B/USDT:USDT", "long", 10, 1_000, 1_000, leverage=10, tiers=tiers),
            Position(
                "C/USDT:USDT",
                "short",
                200,
                1_000,
                1_000,
                margin_mode="isolated",
                isolated_margin=300_000,
                tiers=tiers,
            ),
        )
        for haircut in (0.0, 0.3, 0.0, 0.6):
            s = AccountSnapshot(
                "a", "USDT", (Collateral("USDT", 400_000, haircut=haircut),), held, venue="gate"
            )
            got = report(s)
            assert got == Ledger(s).report()
            assert got.positions[0].liquidation_price is not None
