"""Tests for monitor/core/state.py: folding source events into an account's latest view."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Collateral,
    Position,
    PriceTick,
    SourceDown,
    SourceStale,
    SourceUp,
)
from monitor.core.state import AccountState, apply, initial_state
from tests.strategies import SYMBOLS, accounts

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def _account(**kw: object) -> AccountSnapshot:
    positions = (
        Position(
            BTC,
            "long",
            1.0,
            60000.0,
            61000.0,
            unrealized_pnl=1000.0,
            maintenance_margin=244.0,
            initial_margin=6100.0,
            mmr=0.004,
        ),
        Position(BTC, "short", 0.5, 62000.0, 61000.0, hedged=True, mmr=0.004),
        Position(ETH, "short", 10.0, 3000.0, 3100.0, mmr=0.005),
    )
    snapshot = AccountSnapshot(
        "acct",
        "USDT",
        (Collateral("USDT", 10000.0), Collateral("BTC", 0.2, 61000.0, haircut=0.05)),
        positions,
    )
    return replace(snapshot, **kw)  # type: ignore[arg-type]


def _state() -> AccountState:
    return initial_state(_account(), ts=100.0)


class TestPriceTick:
    def test_moves_both_sides_of_a_hedged_symbol(self) -> None:
        """Test that a tick sets the mark of every position of its symbol (hedge mode)."""
        state, changed = apply(_state(), PriceTick("acct", BTC, 59000.0, 101.0))
        assert changed
        btc = [p for p in state.snapshot.positions if p.symbol == BTC]
        assert [p.side for p in btc] == ["long", "short"]
        assert all(p.mark_price == 59000.0 for p in btc)
        eth = next(p for p in state.snapshot.positions if p.symbol == ETH)
        assert eth.mark_price == 3100.0

    def test_drops_venue_figures_of_the_moved_position(self) -> None:
        """Test that venue-reported PnL and margins of a re-marked position are dropped."""
        state, _ = apply(_state(), PriceTick("acct", BTC, 59000.0, 101.0))
        long = next(p for p in state.snapshot.positions if p.key == (BTC, "long"))
        assert long.unrealized_pnl is None
        assert long.maintenance_margin is None
        assert long.initial_margin is None

    def test_moves_collateral_of_the_base_asset(self) -> None:
        """Test that a BTC/USDT:USDT tick re-prices BTC collateral of a USDT account."""
        state, _ = apply(_state(), PriceTick("acct", BTC, 59000.0, 101.0))
        prices = {c.asset: c.price for c in state.snapshot.collateral}
        assert prices == {"USDT": 1.0, "BTC": 59000.0}

    def test_collateral_only_tick_changes(self) -> None:
        """Test that a tick for a collateral asset with no position still changes the state."""
        snapshot = _account(positions=())
        state, changed = apply(initial_state(snapshot, 1.0), PriceTick("acct", BTC, 50000.0, 2.0))
        assert changed
        assert state.snapshot.collateral[1].price == 50000.0

    def test_other_quote_does_not_move_collateral(self) -> None:
        """Test that a BTC/USDC:USDC tick leaves BTC collateral of a USDT account alone."""
        state, changed = apply(_state(), PriceTick("acct", "BTC/USDC:USDC", 1.0, 101.0))
        assert not changed
        assert state == _state()

    def test_same_price_is_no_change_but_fresh(self) -> None:
        """Test that a repeated price changes no figure yet refreshes the mark's time."""
        first, _ = apply(_state(), PriceTick("acct", ETH, 3200.0, 101.0))
        second, changed = apply(first, PriceTick("acct", ETH, 3200.0, 105.0))
        assert not changed
        assert second.snapshot == first.snapshot
        assert second.marks[ETH] == (3200.0, 105.0)

    def test_unknown_symbol_is_a_no_op(self) -> None:
        """Test that a tick for a symbol the account does not touch leaves the state equal."""
        state = _state()
        after, changed = apply(state, PriceTick("acct", "XRP/USDT:USDT", 0.5, 200.0))
        assert not changed
        assert after is state

    def test_bad_prices_are_ignored(self) -> None:
        """Test that NaN, infinite, zero and negative marks never reach the snapshot."""
        state = _state()
        for price in (math.nan, math.inf, 0.0, -1.0):
            after, changed = apply(state, PriceTick("acct", BTC, price, 101.0))
            assert not changed
            assert after is state

    def test_other_account_is_ignored(self) -> None:
        """Test that an event of another account does not touch this one."""
        state = _state()
        after, changed = apply(state, PriceTick("other", BTC, 1.0, 101.0))
        assert (after, changed) == (state, False)

    def test_marks_keep_their_own_times(self) -> None:
        """Test that a tick stamps its own symbol's mark only: an older tick of another
        symbol still applies, and the newer mark keeps its time."""
        state, _ = apply(_state(), PriceTick("acct", BTC, 59000.0, 150.0))
        state, _ = apply(state, PriceTick("acct", ETH, 3000.0, 120.0))
        assert state.marks[BTC] == (59000.0, 150.0)
        assert state.marks[ETH] == (3000.0, 120.0)
        assert state.snapshot.positions[2].mark_price == 3000.0


def _read(
    ts: float,
    positions: tuple[Position, ...] | None = None,
    collateral: tuple[Collateral, ...] | None = None,
) -> AccountUpdate:
    account = _account()
    return AccountUpdate(
        "acct",
        account.positions if positions is None else positions,
        account.collateral if collateral is None else collateral,
        ts,
    )


class TestFullReads:
    def test_read_replaces_positions_and_balance_together(self) -> None:
        """Test that one AccountUpdate replaces positions and collateral at once, stamped."""
        new = (Position(ETH, "long", 1.0, 3000.0, 3000.0),)
        wallet = (Collateral("USDT", 5.0),)
        state, changed = apply(_state(), _read(110.0, new, wallet))
        assert changed
        assert state.snapshot.positions == new
        assert state.snapshot.collateral == wallet
        assert state.read_at == 110.0

    def test_equal_read_is_fresh_but_unchanged(self) -> None:
        """Test that a read equal to the current view refreshes its times only."""
        state, changed = apply(_state(), _read(120.0))
        assert not changed
        assert state.read_at == 120.0
        assert state.marks[BTC] == (61000.0, 120.0)

    def test_older_read_is_dropped(self) -> None:
        """Test that a read sent before the last applied one cannot undo it."""
        newer = (Position(ETH, "long", 2.0, 3000.0, 3000.0),)
        state, _ = apply(_state(), _read(130.0, newer, (Collateral("USDT", 1.0),)))
        after, changed = apply(state, _read(125.0, (), ()))
        assert (after, changed) == (state, False)


class TestOrderingRule:
    def test_newer_streamed_mark_survives_a_read_in_flight(self) -> None:
        """Test that a read sent before a streamed mark keeps the streamed mark (issue 11)."""
        state, _ = apply(_state(), PriceTick("acct", BTC, 58000.0, 105.0))
        read = _read(104.0)  # sent at 104, answered after the 105 tick: its BTC is 61 000
        state, _ = apply(state, read)
        btc = [p for p in state.snapshot.positions if p.symbol == BTC]
        assert all(p.mark_price == 58000.0 for p in btc)
        # BTC collateral is priced off the same market: it keeps the newer price too
        assert next(c for c in state.snapshot.collateral if c.asset == "BTC").price == 58000.0
        eth = next(p for p in state.snapshot.positions if p.symbol == ETH)
        assert eth.mark_price == 3100.0
        assert state.marks[BTC] == (58000.0, 105.0)
        assert state.marks[ETH] == (3100.0, 104.0)

    def test_read_newer_than_the_mark_wins(self) -> None:
        """Test that a read sent after the last tick replaces that tick's mark."""
        state, _ = apply(_state(), PriceTick("acct", BTC, 58000.0, 103.0))
        state, _ = apply(state, _read(104.0))
        btc = [p for p in state.snapshot.positions if p.symbol == BTC]
        assert all(p.mark_price == 61000.0 for p in btc)
        assert state.marks[BTC] == (61000.0, 104.0)

    def test_older_tick_is_dropped(self) -> None:
        """Test that a tick older than the held mark of its symbol changes nothing."""
        state, _ = apply(_state(), PriceTick("acct", BTC, 58000.0, 105.0))
        after, changed = apply(state, PriceTick("acct", BTC, 57000.0, 104.9))
        assert (after, changed) == (state, False)
        after, changed = apply(state, _read(104.0))
        later, changed = apply(after, PriceTick("acct", BTC, 57000.0, 104.5))
        assert not changed
        assert all(p.mark_price == 58000.0 for p in later.snapshot.positions if p.symbol == BTC)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["tick", "read"]),
                st.floats(100.0, 200.0),
                st.floats(50_000.0, 70_000.0),
            ),
            max_size=12,
        )
    )
    def test_latest_wins_in_every_order(self, steps: list[tuple[str, float, float]]) -> None:
        """Test that the BTC mark held is always the one with the latest time, ties to the
        later arrival, whatever order ticks and reads arrive in."""
        state = _state()
        best = (61000.0, 100.0)
        read_at = 100.0
        for kind, ts, price in steps:
            if kind == "tick":
                state, _ = apply(state, PriceTick("acct", BTC, price, ts))
                if ts >= best[1]:
                    best = (price, ts)
            else:
                moved = tuple(
                    p.at_mark(price) if p.symbol == BTC else p for p in _account().positions
                )
                state, _ = apply(state, _read(ts, moved))
                if ts >= read_at:
                    read_at = ts
                    if ts >= best[1]:
                        best = (price, ts)
            assert state.marks[BTC] == best
            assert all(p.mark_price == best[0] for p in state.snapshot.positions if p.symbol == BTC)


class TestHealthEvents:
    def test_health_events_change_nothing(self) -> None:
        """Test that stale/down/up events leave the account's figures and times alone."""
        state = _state()
        for event in (
            SourceStale("acct", "prices", 40.0),
            SourceDown("acct", "bad keys"),
            SourceUp("acct", "prices"),
        ):
            assert apply(state, event) == (state, False)

    def test_initial_state_is_stamped_with_its_read(self) -> None:
        """Test that a full read stamps the state and every mark it carries."""
        state = _state()
        assert state.read_at == 100.0
        assert dict(state.marks) == {BTC: (61000.0, 100.0), ETH: (3100.0, 100.0)}


prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False)
symbols = st.sampled_from((*SYMBOLS, "DOGE/USDT:USDT", "BTC/USDC:USDC"))


class TestProperties:
    @given(accounts(), symbols, prices)
    def test_tick_is_idempotent(self, snapshot: AccountSnapshot, symbol: str, price: float) -> None:
        """Test that applying the same tick twice equals applying it once, and says so."""
        tick = PriceTick(snapshot.account, symbol, price, 5.0)
        once, _ = apply(initial_state(snapshot, 1.0), tick)
        twice, changed = apply(once, tick)
        assert twice == once
        assert not changed

    @given(accounts(), prices)
    def test_unheld_symbol_is_a_no_op(self, snapshot: AccountSnapshot, price: float) -> None:
        """Test that a tick for a symbol neither held nor collateral changes nothing."""
        state = initial_state(snapshot, 1.0)
        assert apply(state, PriceTick(snapshot.account, "DOGE/USDT:USDT", price, 2.0)) == (
            state,
            False,
        )

    @given(accounts(), symbols, prices)
    def test_changed_flag_matches_snapshot(
        self, snapshot: AccountSnapshot, symbol: str, price: float
    ) -> None:
        """Test that the changed flag is True exactly when the snapshot differs."""
        state = initial_state(snapshot, 1.0)
        after, changed = apply(state, PriceTick(snapshot.account, symbol, price, 2.0))
        assert changed == (after.snapshot != state.snapshot)

    @given(accounts(), symbols, prices)
    def test_tick_only_touches_its_symbol(
        self, snapshot: AccountSnapshot, symbol: str, price: float
    ) -> None:
        """Test that positions of other symbols and their venue figures stay identical."""
        tick = PriceTick(snapshot.account, symbol, price, 2.0)
        after, _ = apply(initial_state(snapshot, 1.0), tick)
        for before, now in zip(snapshot.positions, after.snapshot.positions, strict=True):
            if before.symbol != symbol:
                assert now is before
            else:
                assert now.mark_price == price
                assert (now.contracts, now.side, now.entry_price) == (
                    before.contracts,
                    before.side,
                    before.entry_price,
                )

    @given(accounts(), st.lists(st.tuples(symbols, prices), min_size=1, max_size=20))
    def test_last_tick_wins(
        self, snapshot: AccountSnapshot, ticks: list[tuple[str, float]]
    ) -> None:
        """Test that after a burst every held symbol carries the last price sent for it."""
        state = initial_state(snapshot, 1.0)
        for i, (symbol, price) in enumerate(ticks):
            state, _ = apply(state, PriceTick(snapshot.account, symbol, price, 2.0 + i))
        last = dict(ticks)
        for p in state.snapshot.positions:
            if p.symbol in last:
                assert p.mark_price == last[p.symbol]
