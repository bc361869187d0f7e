"""monitor.core.shock_curve: the shock solve's pre-summed surplus against the reference."""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.margin.valuation import surplus_at
from monitor.core.model import AccountSnapshot, Collateral, CollateralTier, Position, Tier
from monitor.core.shock_curve import ShockCurve, factor
from monitor.core.stress import (
    MAX_UP_SHOCK,
    _surplus_by_position,
    _without_reported,
    first_crossing,
    shock_to_liquidation,
)
from tests.strategies import tier_tables

ASSETS = ("BTC", "ETH", "USDC")
PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "USDC": 1.0}
VENUES = (None, "binanceusdm", "bybit", "hyperliquid", "okx", "gate")
TIERS = (Tier(50_000, 0.004, 0), Tier(250_000, 0.005, 50), Tier(1_000_000, 0.01, 1_300))


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, object]:
    """An MM schedule: a venue-style tier table, the same table out of order, a flat rate,
    or none at all (only a reported figure, or nothing)."""
    kind = draw(st.sampled_from(("tiers", "shuffled", "mmr", "none")))
    if kind == "mmr":
        return {"mmr": draw(st.floats(min_value=0.001, max_value=0.2))}
    if kind == "none":
        return {}
    tiers = draw(tier_tables())
    if kind == "shuffled":
        tiers = tuple(draw(st.permutations(tiers)))
    return {"tiers": tiers}


@st.composite
def any_position(draw: st.DrawFn, n: int, linear: bool = False) -> Position:
    """A position of any kind the daemon values: linear or inverse, cross or isolated,
    settled in the report currency or another asset, with venue figures or without."""
    inverse = False if linear else draw(st.booleans())
    entry = draw(st.floats(min_value=0.5, max_value=100_000))
    mark = entry * draw(st.floats(min_value=0.5, max_value=1.5))
    notional = draw(st.floats(min_value=0.0, max_value=3_000_000))
    contract_size = draw(st.sampled_from((1.0, 0.001, 100.0)))
    # inverse: notional in coins is size / mark; linear: size × mark
    size = notional * mark if inverse else notional / mark
    reported = draw(st.booleans())
    return Position(
        symbol=f"S{n}/USD:{'BTC' if inverse else 'USDT'}",
        side=draw(st.sampled_from(("long", "short"))),
        contracts=size / contract_size,
        entry_price=entry,
        mark_price=mark,
        contract_size=contract_size,
        margin_mode=draw(st.sampled_from(("cross", "cross", "isolated"))),
        leverage=float(draw(st.integers(min_value=1, max_value=50))),
        settle=draw(st.sampled_from(("BTC", "ETH")))
        if inverse
        else draw(st.sampled_from((None, "USDT", "USDC"))),
        inverse=inverse,
        unrealized_pnl=draw(st.floats(min_value=-1e5, max_value=1e5)) if reported else None,
        maintenance_margin=notional * 0.01 if reported and draw(st.booleans()) else None,
        initial_margin=notional * 0.1 if reported and draw(st.booleans()) else None,
        isolated_margin=notional / 10,
        beta=draw(st.floats(min_value=-1.0, max_value=3.0)),
        liquidation_fee=draw(st.sampled_from((None, 0.0, 0.0005, 0.001))),
        **draw(schedules()),  # type: ignore[arg-type]
    )


@st.composite
def any_account(draw: st.DrawFn, linear: bool = False) -> AccountSnapshot:
    """An account with up to 8 positions and USDT plus some of BTC, ETH and USDC as
    collateral (haircuts, banded haircuts, liability mark-ups, betas), or none of them.
    `linear`: linear contracts only (most books, and the ones whose surplus can be concave)."""
    count = draw(st.integers(min_value=1, max_value=8))
    positions = tuple(draw(any_position(n, linear)) for n in range(count))
    collateral = []
    if draw(st.booleans()):
        collateral.append(Collateral("USDT", draw(st.floats(min_value=-1e5, max_value=5e6))))
    for asset in draw(st.sets(st.sampled_from(ASSETS))):
        bands = ()
        if draw(st.booleans()):
            bands = (
                CollateralTier(draw(st.floats(min_value=1.0, max_value=1e6)), 0.95),
                CollateralTier(math.inf, draw(st.sampled_from((0.0, 0.5, 0.9)))),
            )
        collateral.append(
            Collateral(
                asset,
                draw(st.floats(min_value=-50.0, max_value=500.0)),
                price=PRICES[asset] * draw(st.floats(min_value=0.5, max_value=2.0)),
                haircut=draw(st.sampled_from((0.0, 0.05, 0.1))),
                liability_markup=draw(st.sampled_from((0.0, 0.005))),
                haircut_tiers=bands,
                tier_basis=draw(st.sampled_from(("amount", "value"))),
                beta=draw(st.sampled_from((None, 0.0, 0.5, 1.0, 1.5))),
            )
        )
    return AccountSnapshot(
        "acct", "USDT", tuple(collateral), positions, venue=draw(st.sampled_from(VENUES))
    )


def scale(s: AccountSnapshot, shock: float) -> float:
    """The size of the figures the surplus is a difference of: rounding is relative to it."""
    notional = sum(
        p.contracts * p.contract_size * (p.mark_price + p.entry_price) * (1 + abs(shock) * 3)
        for p in s.positions
    )
    held = sum(abs(c.amount) * c.price * (1 + abs(shock) * 2) for c in s.collateral)
    return 1.0 + notional + held


class TestShockCurve:
    @settings(max_examples=400, deadline=None)
    @given(any_account(), st.floats(min_value=-1.5, max_value=12.0), st.booleans())
    def test_equals_the_surplus_of_every_position_repriced(
        self, s: AccountSnapshot, shock: float, weighted: bool
    ) -> None:
        """Test that the curve's surplus at a shock equals surplus_at with every price moved."""
        base = _without_reported(s)
        curve = ShockCurve.of(base, weighted)
        assert curve is not None
        assert curve(shock) == pytest.approx(
            _surplus_by_position(base, weighted)(shock), rel=1e-9, abs=1e-11 * scale(s, shock)
        )

    def test_matches_surplus_at_on_each_tier_of_a_table_out_of_order(self) -> None:
        """Test that an unsorted tier table is read as tier_for reads it, first bound first."""
        tiers = (Tier(100_000, 0.01, 500), Tier(50_000, 0.004, 0), Tier(200_000, 0.02, 1_500))
        p = Position("X/USDT:USDT", "long", 1.0, 40_000, 40_000, tiers=tiers)
        base = AccountSnapshot("a", "USDT", (Collateral("USDT", 30_000),), (p,))
        curve = ShockCurve.of(base)
        assert curve is not None
        # notional 20k, 60k, 120k, 300k: the first tier, the first again (50k is never
        # reached ahead of 100k), the third, the last (past every bound)
        for shock in (-0.5, 0.5, 2.0, 6.5):
            price = 40_000 * factor(1.0, shock)
            expected = surplus_at(base, [price], {})
            assert curve(shock) == pytest.approx(expected, rel=1e-12)

    def test_an_asset_listed_twice_is_left_to_the_reference(self) -> None:
        """Test that a collateral asset listed twice gets no curve (the reference decides)."""
        p = Position("X/USDT:USDT", "long", 1.0, 100, 100, mmr=0.01)
        usdt = Collateral("USDT", 10)
        base = AccountSnapshot("a", "USDT", (usdt, usdt), (p,))
        assert ShockCurve.of(base) is None

    def test_a_zero_mark_is_left_to_the_reference(self) -> None:
        """Test that a position marked at 0 gets no curve (its inverse value is infinite)."""
        p = Position("X/USD:BTC", "long", 1.0, 100, 0.0, mmr=0.01, inverse=True, settle="BTC")
        base = AccountSnapshot("a", "USDT", (Collateral("BTC", 1.0, price=100.0),), (p,))
        assert ShockCurve.of(base) is None


class TestConcave:
    def test_a_cumulative_tier_table_in_usdt_is_concave(self) -> None:
        """Test that linear positions under cumulative tiers, USDT and BTC collateral make a
        concave surplus, even with a broken tier past the reach of the solve."""
        # the last tier's deduction does not match (MM falls at 1M), out of reach: 11 x 60k
        broken = (*TIERS, Tier(math.inf, 0.05, 266_300))
        p = Position("BTC/USDT:USDT", "long", 1.0, 60_000, 60_000, tiers=broken)
        q = Position("ETH/USDT:USDT", "short", 10.0, 3_000, 3_000, mmr=0.01)
        btc = Collateral("BTC", 0.5, price=60_000, haircut=0.05)
        base = AccountSnapshot("a", "USDT", (Collateral("USDT", 10_000), btc), (p, q))
        curve = ShockCurve.of(base, reach=MAX_UP_SHOCK)
        assert curve is not None
        assert curve.concave

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param({"venue": "okx"}, id="one rate, no deduction: MM jumps at each edge"),
            pytest.param({"inverse": True}, id="inverse: PnL not affine in the shock"),
            pytest.param({"settle": "BTC"}, id="settled in an asset whose price moves"),
        ],
    )
    def test_what_breaks_concavity(self, change: dict[str, object]) -> None:
        """Test that a jumping MM, an inverse contract or PnL in a moving asset is not
        taken as concave (the solver then walks its whole grid)."""
        venue = change.pop("venue", "binanceusdm")
        p = replace(Position("BTC/USDT:USDT", "long", 1.0, 60_000, 60_000, tiers=TIERS), **change)
        held = (Collateral("USDT", 10_000), Collateral("BTC", 0.5, price=60_000))
        base = AccountSnapshot("a", "USDT", held, (p,), venue=str(venue))
        curve = ShockCurve.of(base, reach=MAX_UP_SHOCK)
        assert curve is not None
        assert not curve.concave


class TestShockSolve:
    @settings(max_examples=300, deadline=None)
    @given(st.one_of(any_account(), any_account(linear=True)), st.booleans())
    def test_finds_the_shock_the_reference_finds(self, s: AccountSnapshot, weighted: bool) -> None:
        """Test that the solve on the curve finds the reference solve's shocks to 1e-9."""
        base = _without_reported(s)
        if not any(p.margin_mode == "cross" for p in base.positions):
            return
        reference = _surplus_by_position(base, weighted)
        expected = (first_crossing(reference, -1.0), first_crossing(reference, MAX_UP_SHOCK))
        found = shock_to_liquidation(s, beta_weighted=weighted)
        for got, want in zip((found.down, found.up), expected, strict=True):
            assert (got is None) == (want is None)
            if got is not None and want is not None:
                assert got == pytest.approx(want, abs=1e-9)


@st.composite
def concave_books(draw: st.DrawFn) -> AccountSnapshot:
    """Linear USDT positions under cumulative tiers on USDT (and BTC) collateral: the
    books whose surplus is concave, with a balance anywhere from a crossing near 0 to none."""
    positions = tuple(
        Position(
            f"S{i}/USDT:USDT",
            draw(st.sampled_from(("long", "short"))),
            draw(st.floats(min_value=0.01, max_value=100.0)),
            entry,
            entry * draw(st.floats(min_value=0.5, max_value=1.5)),
            tiers=draw(tier_tables()),
        )
        for i, entry in enumerate(
            draw(st.lists(st.floats(min_value=1.0, max_value=50_000), min_size=1, max_size=6))
        )
    )
    collateral = [Collateral("USDT", draw(st.floats(min_value=0.0, max_value=2e6)))]
    if draw(st.booleans()):
        collateral.append(
            Collateral("BTC", draw(st.floats(min_value=0.0, max_value=20.0)), price=60_000.0)
        )
    return AccountSnapshot("acct", "USDT", tuple(collateral), positions, venue="binanceusdm")


class TestConcaveCrossing:
    @settings(max_examples=400, deadline=None)
    @given(concave_books())
    def test_bisecting_the_grid_finds_what_walking_it_finds(self, s: AccountSnapshot) -> None:
        """Test that on a concave surplus the bisected grid gives the walked grid's shock to
        the bit, in both directions (the same bracket, the same Illinois steps)."""
        curve = ShockCurve.of(s, reach=MAX_UP_SHOCK)
        assert curve is not None
        assert curve.concave
        for end in (-1.0, MAX_UP_SHOCK):
            assert first_crossing(curve, end, concave=True) == first_crossing(curve, end)

    @pytest.mark.parametrize("usdt", [0.0, 300.0, 1_000.0, 3_000.0, 10_000.0, 30_000.0, 1e6])
    def test_every_cell_of_the_grid(self, usdt: float) -> None:
        """Test that crossings in different cells of the grid (near 0, mid-way, at the end,
        none) come out of the bisection as out of the walk, down to the points valued."""
        p = Position("BTC/USDT:USDT", "long", 1.0, 60_000, 60_000, tiers=TIERS)
        q = Position("ETH/USDT:USDT", "short", 4.0, 3_000, 3_000, tiers=TIERS)
        base = AccountSnapshot("a", "USDT", (Collateral("USDT", usdt),), (p, q))
        curve = ShockCurve.of(base, reach=MAX_UP_SHOCK)
        assert curve is not None
        assert curve.concave
        for end in (-1.0, MAX_UP_SHOCK):
            walk: list[float] = []
            bisect: list[float] = []
            calls = (walk, bisect)

            def counted(s: float, into: list[float]) -> float:
                into.append(s)
                assert curve is not None
                return curve(s)

            walked = first_crossing(functools.partial(counted, into=walk), end)
            bisected = first_crossing(functools.partial(counted, into=bisect), end, concave=True)
            assert bisected == walked
            if walked is not None and walked != 0.0:  # the same Illinois steps from the bracket
                hi = next(i for i, s in enumerate(calls[0]) if curve(s) <= 0)
                steps = calls[0][hi + 1 :]
                assert steps
                assert calls[1][-len(steps) :] == steps
