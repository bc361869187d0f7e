"""Tests for the pure protective-action planner (monitor/core/plan.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from monitor.config.actions import ActionsSettings
from monitor.config.settings import load_settings
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, Position, Tier
from monitor.core.plan import (
    ActionHistory,
    ActionPolicy,
    MarketRules,
    PlannedOrder,
    UnsafePlan,
    plan_step,
    prove_reduce_only,
    round_up,
    stop_price,
)
from monitor.core.stress import minimal_reduction, reduced
from monitor.errors import UserError
from monitor.protect.sink import action_severity
from monitor.venues.orders import client_order_id, order_params
from tests.strategies import accounts

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
BTC_INV = "BTC/USD:BTC"
TIERS = (
    Tier(50_000, 0.004, 0),
    Tier(250_000, 0.005, 50),
    Tier(1_000_000, 0.01, 1_300),
    Tier(10_000_000, 0.025, 16_300),
)
MARKETS = {
    BTC: MarketRules(0.001, 0.001, 5.0, min_notional_reduce_only_exempt=True),
    ETH: MarketRules(0.01, 0.01),
    BTC_INV: MarketRules(1.0, 1.0),
}


def _policy(**kw: object) -> ActionPolicy:
    base: dict[str, object] = {
        "action_ratio": 0.7,
        "target_ratio": 0.4,
        "max_fraction_per_step": 1.0,
        "cooldown": 0.0,
    }
    base.update(kw)
    return ActionPolicy(**base)  # type: ignore[arg-type]


def _long_btc(
    contracts: float = 2.0, wallet: float = 4_000.0, mark: float = 60_000.0, hedged: bool = False
) -> Position:
    return Position(BTC, "long", contracts, mark, mark, leverage=20, tiers=TIERS, hedged=hedged)


def _account(
    *positions: Position,
    wallet: float = 4_000.0,
    currency: str = "USDT",
    extra: tuple[Collateral, ...] = (),
) -> AccountSnapshot:
    return AccountSnapshot(
        "acct", currency, (Collateral(currency, wallet), *extra), positions, venue="binanceusdm"
    )


def _ratio_after(
    snap: AccountSnapshot, orders: tuple[PlannedOrder, ...], fee: float = 0.0
) -> float:
    cuts = {(o.symbol, o.position_side): o.amount for o in orders}
    return report(reduced(snap, cuts, fee)).margin_ratio


class TestPlanTable:
    """Table-driven cases from the issue: the shapes a real account takes."""

    def test_one_position_is_cut_just_enough(self) -> None:
        """Test that one long is cut to the target, rounded up to the step, minimal."""
        snap = _account(_long_btc(2.0), wallet=700.0)
        assert report(snap).margin_ratio > 0.7
        plan = plan_step(snap, _policy(), MARKETS, ActionHistory(), 0.0)
        assert plan.decision == "act"
        assert plan.reached
        (order,) = plan.orders
        assert order.side == "sell"
        assert order.symbol == BTC
        assert math.isclose(order.amount / 0.001, round(order.amount / 0.001))
        assert _ratio_after(snap, plan.orders) <= 0.4
        smaller = (replace(order, amount=order.amount - 0.001),)
        assert _ratio_after(snap, smaller) > 0.4

    def test_hedged_pair_gets_position_sides(self) -> None:
        """Test that hedge-mode legs carry their own positionSide and only shrink."""
        long = _long_btc(2.0, hedged=True)
        short = Position(BTC, "short", 1.0, 60_000, 60_000, leverage=20, tiers=TIERS, hedged=True)
        snap = _account(long, short, wallet=1_000.0)
        plan = plan_step(
            snap, _policy(action_ratio=0.3, target_ratio=0.2), MARKETS, ActionHistory(), 0.0
        )
        assert plan.orders
        for o in plan.orders:
            params = order_params(o, "binanceusdm", "cid")
            assert params["hedged"] is True
            assert params["reduceOnly"] is True
            assert params["positionSide"] == o.position_side.upper()
            assert o.side == ("sell" if o.position_side == "long" else "buy")

    def test_one_way_gets_reduce_only_without_position_side(self) -> None:
        """Test that a one-way order is reduceOnly with the client id and no positionSide."""
        order = PlannedOrder(BTC, "short", 0.5, 30_000.0)
        assert order_params(order, "bybit", "abc") == {"reduceOnly": True, "clientOrderId": "abc"}
        assert order.side == "buy"

    def test_tiered_notional_is_solved_across_tiers(self) -> None:
        """Test that a position spanning tiers is cut to the target with tier-aware MM."""
        big = _long_btc(20.0)  # 1.2 M notional: the 2.5 % tier
        snap = _account(big, wallet=30_000.0)
        ratio = report(snap).margin_ratio
        plan = plan_step(
            snap,
            _policy(action_ratio=ratio * 0.9, target_ratio=ratio * 0.5),
            MARKETS,
            ActionHistory(),
            0.0,
        )
        assert plan.reached
        assert _ratio_after(snap, plan.orders) <= ratio * 0.5
        # the cut moves the position down a tier, so less than a flat-rate half is needed
        assert plan.orders[0].amount < 10.0

    def test_inverse_contracts_in_whole_contracts(self) -> None:
        """Test that an inverse (coin-settled) position is cut in whole contracts."""
        inv = Position(
            BTC_INV,
            "long",
            40_000,
            60_000,
            60_000,
            contract_size=100.0,
            leverage=20,
            inverse=True,
            settle="BTC",
            mmr=0.005,
        )
        snap = AccountSnapshot("inv", "BTC", (Collateral("BTC", 0.6),), (inv,), venue="binance")
        ratio = report(snap).margin_ratio
        plan = plan_step(
            snap,
            _policy(action_ratio=ratio * 0.9, target_ratio=ratio * 0.5),
            MARKETS,
            ActionHistory(),
            0.0,
        )
        (order,) = plan.orders
        assert order.amount == int(order.amount)
        assert plan.reached

    def test_position_below_minimum_is_flagged_not_looped(self) -> None:
        """Test that a position smaller than the venue minimum is flagged with no order."""
        tiny = Position(ETH, "long", 0.005, 3_000, 3_000, leverage=50, mmr=0.5)
        snap = _account(tiny, wallet=10.0)
        assert report(snap).margin_ratio > 0.7
        plan = plan_step(snap, _policy(), MARKETS, ActionHistory(), 0.0)
        assert plan.decision == "nothing"
        assert not plan.orders
        assert plan.flags
        assert plan.flags[0].symbol == ETH
        assert "minimum" in plan.flags[0].reason

    def test_target_already_met(self) -> None:
        """Test that an account under the action level plans nothing."""
        snap = _account(_long_btc(0.1), wallet=10_000.0)
        plan = plan_step(snap, _policy(), MARKETS, ActionHistory(), 0.0)
        assert plan.decision == "below_level"
        assert not plan.orders
        assert plan.reached

    def test_open_episode_continues_below_the_level(self) -> None:
        """Test that under the action level but over target, only an open episode acts."""
        snap = _account(_long_btc(2.0), wallet=1_000.0)
        assert 0.4 < report(snap).margin_ratio < 0.7
        assert plan_step(snap, _policy(), MARKETS, ActionHistory(), 0.0).decision == "below_level"
        going = ActionHistory(last_step_at=-100.0, in_episode=True)
        plan = plan_step(snap, _policy(), MARKETS, going, 0.0)
        assert plan.decision == "act"
        assert plan.reached

    def test_min_amount_raises_a_small_cut(self) -> None:
        """Test that a cut below the market minimum is raised to the minimum when it fits."""
        eth = Position(ETH, "long", 10.0, 3_000, 3_000, leverage=20, mmr=0.01)
        snap = _account(eth, wallet=310.0)
        rules = {ETH: MarketRules(0.01, 2.0)}
        ratio = report(snap).margin_ratio
        pol = _policy(action_ratio=ratio * 0.9, target_ratio=ratio * 0.99)
        exact = minimal_reduction(snap, ratio * 0.99).reductions[0].contracts
        assert exact < 2.0  # the solve wants less than the venue's minimum order
        plan = plan_step(snap, pol, rules, ActionHistory(), 0.0)
        assert plan.orders[0].amount == pytest.approx(2.0)

    def test_cooldown_and_daily_cap(self) -> None:
        """Test that a step inside the cooldown, or past the daily cap, plans nothing."""
        snap = _account(_long_btc(2.0), wallet=700.0)
        pol = _policy(cooldown=30.0, max_notional_per_day=50_000.0)
        first = plan_step(snap, pol, MARKETS, ActionHistory(), 1_000.0)
        assert first.decision == "act"
        history = ActionHistory().after(first.notional, 1_000.0)
        assert plan_step(snap, pol, MARKETS, history, 1_010.0).decision == "cooldown"
        spent = ActionHistory(0.0, 2_000 // 86_400, 50_000.0)
        assert plan_step(snap, pol, MARKETS, spent, 2_000.0).decision == "daily_cap"
        # a new UTC day resets the budget
        assert plan_step(snap, pol, MARKETS, spent, 2_000.0 + 86_400).decision == "act"

    def test_fraction_and_notional_caps(self) -> None:
        """Test that one step closes at most the fraction and the notional cap."""
        snap = _account(_long_btc(2.0), wallet=500.0)
        plan = plan_step(snap, _policy(max_fraction_per_step=0.25), MARKETS, ActionHistory(), 0.0)
        assert plan.orders[0].amount <= 0.5
        assert plan.capped
        assert not plan.reached
        plan = plan_step(
            snap, _policy(max_notional_per_step=12_000.0), MARKETS, ActionHistory(), 0.0
        )
        assert plan.notional <= 12_000.0
        assert plan.capped


class TestProof:
    """The invariant check that refuses any order that could grow a position."""

    def test_refuses_wrong_side(self) -> None:
        """Test that buying against a long (a new short or a bigger long) is refused."""
        snap = _account(_long_btc(1.0))
        with pytest.raises(UnsafePlan, match="no short position"):
            prove_reduce_only(snap, (PlannedOrder(BTC, "short", 0.1, 1.0),))

    def test_refuses_more_than_the_position(self) -> None:
        """Test that two orders summing above the position are refused."""
        snap = _account(_long_btc(1.0))
        legs = (PlannedOrder(BTC, "long", 0.6, 1.0), PlannedOrder(BTC, "long", 0.6, 1.0))
        with pytest.raises(UnsafePlan, match="exceed"):
            prove_reduce_only(snap, legs)

    def test_refuses_unknown_symbol_and_bad_amount(self) -> None:
        """Test that an order on a symbol with no position, or a NaN amount, is refused."""
        snap = _account(_long_btc(1.0))
        with pytest.raises(UnsafePlan):
            prove_reduce_only(snap, (PlannedOrder(ETH, "long", 0.1, 1.0),))
        with pytest.raises(UnsafePlan, match="positive"):
            prove_reduce_only(snap, (PlannedOrder(BTC, "long", math.nan, 1.0),))

    def test_refuses_hedge_mode_mismatch(self) -> None:
        """Test that a one-way order on a hedge-mode position is refused."""
        snap = _account(_long_btc(1.0, hedged=True))
        with pytest.raises(UnsafePlan, match="hedge"):
            prove_reduce_only(snap, (PlannedOrder(BTC, "long", 0.1, 1.0, hedged=False),))


class TestHelpers:
    def test_client_ids_are_deterministic_and_venue_shaped(self) -> None:
        """Test that the same (account, episode, step, leg) gives the same id, others differ."""
        a = client_order_id("main", "e1", 1, 0, "binanceusdm")
        assert a == client_order_id("main", "e1", 1, 0, "binanceusdm")
        assert a != client_order_id("main", "e1", 2, 0, "binanceusdm")
        assert len(a) == 32
        assert a.isalnum()
        hl = client_order_id("main", "e1", 1, 0, "hyperliquid")
        assert hl.startswith("0x")
        assert len(hl) == 34
        int(hl, 16)

    def test_round_up_stays_on_a_multiple(self) -> None:
        """Test that rounding up keeps exact multiples and lifts the rest one step."""
        assert round_up(0.3, 0.1) == pytest.approx(0.3)
        assert round_up(0.30001, 0.1) == pytest.approx(0.4)

    def test_stop_price_sits_before_liquidation(self) -> None:
        """Test that a long's stop is above its liquidation price, a short's below."""
        assert stop_price("long", 50_000, 60_000, 0.02) == pytest.approx(51_200)
        assert stop_price("short", 70_000, 60_000, 0.02) == pytest.approx(68_800)
        assert stop_price("long", 59_900, 60_000, 0.02) < 60_000

    def test_settings_refuse_a_target_above_the_level(self) -> None:
        """Test that target_ratio at or above a numeric action_level is a config error."""
        with pytest.raises(ValueError, match="target_ratio"):
            ActionsSettings(action_level=0.5, target_ratio=0.6)
        assert ActionsSettings().action_ratio({"critical": 0.7}) == 0.7
        assert ActionsSettings().enabled is False


STEPS = st.sampled_from((0.001, 0.01, 0.1, 1.0))


@st.composite
def cases(draw: st.DrawFn) -> tuple[AccountSnapshot, ActionPolicy, dict[str, MarketRules]]:
    drawn = draw(accounts(max_positions=3))
    markets = {p.symbol: MarketRules(draw(STEPS)) for p in drawn.positions}
    # a venue only ever holds whole steps (it fills orders on the step), so positions do too
    held = tuple(
        replace(
            p,
            contracts=max(1, round(p.contracts / markets[p.symbol].amount_step))
            * markets[p.symbol].amount_step,
        )
        for p in drawn.positions
    )
    snap = replace(drawn, positions=held)
    ratio = report(snap).margin_ratio
    assume(math.isfinite(ratio) and ratio > 1e-6)
    caps = draw(st.booleans())
    policy = ActionPolicy(
        action_ratio=0.0,
        target_ratio=ratio * draw(st.floats(min_value=0.2, max_value=0.95)),
        policy=draw(st.sampled_from(("largest_mm_contributor", "worst_pnl", "proportional"))),
        max_fraction_per_step=draw(st.sampled_from((1.0, 0.5, 0.25))) if caps else 1.0,
        max_notional_per_step=draw(st.floats(min_value=100, max_value=1e6)) if caps else None,
        cooldown=0.0,
    )
    return snap, policy, markets


class TestProperties:
    """Hypothesis: the planner's promises over random accounts."""

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(cases())
    def test_never_increases_exposure_and_respects_caps(self, case: tuple) -> None:  # type: ignore[type-arg]
        """Test that every order only shrinks a position, within the fraction and notional caps."""
        snap, policy, markets = case
        plan = plan_step(snap, policy, markets, ActionHistory(), 0.0)
        held = {p.key: p for p in snap.positions}
        for o in plan.orders:
            p = held[(o.symbol, o.position_side)]
            assert o.side == ("sell" if p.side == "long" else "buy")
            assert 0 < o.amount <= p.contracts * (1 + 1e-12)
            if policy.max_fraction_per_step < 1:
                assert o.amount <= p.contracts * policy.max_fraction_per_step + 1e-9
        if policy.max_notional_per_step is not None:
            assert plan.notional <= policy.max_notional_per_step * (1 + 1e-9)
        after = reduced(snap, {(o.symbol, o.position_side): o.amount for o in plan.orders})
        for p in after.positions:
            assert p.contracts <= held[p.key].contracts

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(cases())
    def test_reaches_the_target_where_possible_minimal_to_a_step(self, case: tuple) -> None:  # type: ignore[type-arg]
        """Test that an uncapped plan reaches the target and one step less would not."""
        snap, policy, markets = case
        policy = replace(policy, max_fraction_per_step=1.0, max_notional_per_step=None)
        solved = minimal_reduction(snap, policy.target_ratio, policy.policy)
        plan = plan_step(snap, policy, markets, ActionHistory(), 0.0)
        assume(solved.reached and not plan.flags)
        assert plan.reached
        raw = {(r.symbol, r.side): r.contracts for r in solved.reductions}
        for o in plan.orders:
            step = markets[o.symbol].amount_step
            assert o.amount <= raw[(o.symbol, o.position_side)] + step * (1 + 1e-6)
        if policy.policy != "proportional" and plan.orders:
            last = plan.orders[-1]
            step = markets[last.symbol].amount_step
            if last.amount - step > 0:
                less = (*plan.orders[:-1], replace(last, amount=last.amount - step))
                assert _ratio_after(snap, less) > policy.target_ratio * (1 + 1e-9)

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(cases(), st.sampled_from((0.0, 0.0005)))
    def test_ratio_after_is_the_report_of_the_reduced_book(self, case: tuple, fee: float) -> None:  # type: ignore[type-arg]
        """Test that the plan's ratio after is, to the bit, the full report's of the cut book."""
        snap, policy, markets = case
        policy = replace(policy, fee_rate=fee)
        plan = plan_step(snap, policy, markets, ActionHistory(), 0.0)
        assert plan.ratio_after == _ratio_after(snap, plan.orders, fee)


class TestSettingsSection:
    """The `[actions]` section through the real loader: one-line errors naming the field."""

    @pytest.mark.parametrize(
        ("toml", "message"),
        [
            ("action_level = 0.5\ntarget_ratio = 0.6", "actions: target_ratio 0.6 must be below"),
            ('policy = "biggest"', "actions.policy"),
            ("enabeld = true", "did you mean 'enabled'"),
            ("max_fraction_per_step = 0", "actions.max_fraction_per_step"),
        ],
    )
    def test_bad_values_are_one_line_errors(self, tmp_path: Path, toml: str, message: str) -> None:
        """Test that a bad [actions] value is one UserError line naming the field."""
        path = tmp_path / "bad.toml"
        path.write_text(f"[actions]\n{toml}\n")
        with pytest.raises(UserError) as err:
            load_settings(path)
        assert message in str(err.value)
        assert "\n" not in str(err.value)

    def test_defaults_are_safe(self) -> None:
        """Test that with no section live venues run dry and the sim demo acts."""
        actions = load_settings(None).actions
        assert actions.enabled is False
        assert actions.simulated is True
        assert actions.stop_loss.enabled is False


class TestActionSeverity:
    """The alert level the actions sink reports a disabled protection at (protect/sink.py)."""

    @pytest.mark.parametrize(
        ("action_level", "severity"),
        [
            ('"warning"', "warning"),
            ('"critical"', "critical"),
            ('"emergency"', "emergency"),
            ("0.3", "warning"),
            ("0.5", "warning"),
            ("0.69", "warning"),
            ("0.7", "critical"),
            ("0.9", "emergency"),
        ],
    )
    def test_severity_is_the_level_of_the_action_ratio(
        self, tmp_path: Path, action_level: str, severity: str
    ) -> None:
        """Test that the severity is the alert level the action ratio sits at, warning at least."""
        path = tmp_path / "actions.toml"
        path.write_text(
            '[[accounts]]\nname = "demo"\nexchange = "sim"\n'
            "[alerts]\nwarning = 0.5\ncritical = 0.7\nemergency = 0.85\n"
            f"[actions]\naction_level = {action_level}\ntarget_ratio = 0.2\n"
        )
        assert action_severity(load_settings(path)) == severity
