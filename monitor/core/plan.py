"""The protective-action planner: which reduce-only orders to send, proved safe. Pure.

`plan_step` turns one report into at most one *step*: the smallest set of reduce-only market
orders that brings the account's margin ratio back to `target_ratio`, using the stress
solver (`stress.minimal_reduction`) for the exact quantities and then making them sendable:

- rounded UP to each market's amount step where needed to reach the target (a rounded-down
  order would leave the account just short of it), never above the position;
- raised to the market's minimum amount / notional when that still fits, otherwise the
  position is FLAGGED (too small to reduce) instead of being retried forever;
- capped by `max_fraction_per_step` of each position and by the notional caps per step and
  per day, and not repeated within the cooldown: a runaway loop cannot sell a book down;
- trimmed again after rounding (integer bisection on the last leg), so a plan is minimal to
  within one step.

Before returning, `prove_reduce_only` checks every order against the snapshot it was planned
on (and the executor checks it again against a fresh read): an order that could open or grow
any position makes the planner raise `UnsafePlan` instead of returning it. Risk gates that
blocked risk-reducing orders hurt users elsewhere (docs/actions.md, nautilus #4695), so
nothing here refuses an order for being reduce-only; everything refuses one that is not.

No clock, no I/O: `now` and the per-account history are passed in (docs/development.md, pure core).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, MarginReport, Position, ReductionPolicy, Side
from monitor.core.stress import Cuts, ReducedRatios, minimal_reduction

__all__ = [
    "ActionHistory",
    "ActionPlan",
    "ActionPolicy",
    "Flag",
    "MarketRules",
    "PlannedOrder",
    "UnsafePlan",
    "closing_side",
    "plan_step",
    "prove_reduce_only",
    "round_up",
    "stop_price",
]

#: Relative slack when comparing float amounts with a step (1e-9 of a step).
_SLACK = 1e-9
_DAY = 86_400.0

Decision = Literal["act", "below_level", "target_met", "cooldown", "daily_cap", "nothing"]


class UnsafePlan(Exception):
    """A planned order could increase a position: the plan is refused, never sent."""


@dataclass(frozen=True, slots=True)
class MarketRules:
    """What a venue accepts for one market (ccxt `market()`: precision and limits).

    `min_notional_reduce_only_exempt`: Binance USDⓈ-M waives MIN_NOTIONAL for reduce-only
    orders (error -4164 "…unless you choose reduce only"), so a small remainder can still be
    closed there (docs/actions.md: respect per-exchange exemptions).
    """

    amount_step: float
    min_amount: float = 0.0
    min_notional: float = 0.0
    min_notional_reduce_only_exempt: bool = False


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    """The planner's part of the `[actions]` settings, with the action level resolved."""

    action_ratio: float
    target_ratio: float
    policy: ReductionPolicy = "largest_mm_contributor"
    priority: tuple[str, ...] = ()
    max_fraction_per_step: float = 0.5
    max_notional_per_step: float | None = None
    max_notional_per_day: float | None = None
    cooldown: float = 10.0
    fee_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class ActionHistory:
    """What earlier steps of this account did (persisted by the executor)."""

    last_step_at: float | None = None
    day: int = 0  # days since the epoch (UTC) that `spent_today` belongs to
    spent_today: float = 0.0
    #: An episode is open: it started at the action level and lasts until the target is
    #: reached, so a capped first step is followed by more (after the cooldown) even once the
    #: ratio is back under the action level (hysteresis between level and target).
    in_episode: bool = False

    def spent_on(self, now: float) -> float:
        """Notional already reduced on the UTC day of `now`."""
        return self.spent_today if self.day == int(now // _DAY) else 0.0

    def after(self, notional: float, now: float) -> ActionHistory:
        """The history once a step of `notional` was taken at `now`."""
        return ActionHistory(now, int(now // _DAY), self.spent_on(now) + notional, True)


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    """One reduce-only market order closing `amount` contracts of one position."""

    symbol: str
    position_side: Side
    amount: float
    notional: float
    hedged: bool = False

    @property
    def side(self) -> Literal["buy", "sell"]:
        """The order side that closes the position (sell a long, buy back a short)."""
        return closing_side(self.position_side)


@dataclass(frozen=True, slots=True)
class Flag:
    """A position the plan wanted to cut but cannot (too small, capped to nothing)."""

    symbol: str
    side: Side
    reason: str


@dataclass(frozen=True, slots=True)
class ActionPlan:
    """One step's decision: the orders to send (maybe none), and why."""

    account: str
    decision: Decision
    reason: str
    ratio_before: float
    ratio_after: float
    target_ratio: float
    reached: bool
    orders: tuple[PlannedOrder, ...] = ()
    flags: tuple[Flag, ...] = ()
    capped: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def notional(self) -> float:
        """Total notional the orders close (report currency)."""
        return sum(o.notional for o in self.orders)


def closing_side(position_side: Side) -> Literal["buy", "sell"]:
    """The order side that reduces a position of `position_side`."""
    return "sell" if position_side == "long" else "buy"


def round_up(qty: float, step: float) -> float:
    """`qty` rounded up to a multiple of `step` (a hair above a multiple stays on it)."""
    return math.ceil(qty / step - _SLACK) * step


def _round_down(qty: float, step: float) -> float:
    return math.floor(qty / step + _SLACK) * step


def _on_step(qty: float, step: float) -> float:
    """Snap a computed multiple of `step` to the nearest float multiple (no 0.30000000004)."""
    decimals = max(0, -math.floor(math.log10(step)) + 2) if step < 1 else 0
    return round(round(qty / step) * step, decimals + 6)


def _meets(ratio: float, target: float) -> bool:
    """`ratio` at or under `target`, ignoring float noise (1e-9 relative) of the solve."""
    return ratio <= target * (1 + 1e-9)


def _notional(p: Position, amount: float) -> float:
    if p.contracts <= 0:
        return 0.0
    return p.settle_notional(p.mark_price) * amount / p.contracts


def plan_step(
    snapshot: AccountSnapshot,
    policy: ActionPolicy,
    markets: Mapping[str, MarketRules],
    history: ActionHistory,
    now: float,
    *,
    current: MarginReport | None = None,
) -> ActionPlan:
    """Plan the next protective step for `snapshot` at time `now`.

    `current` is the report of `snapshot` if the caller has it (saves one valuation).
    Raises `UnsafePlan` if an order could increase a position (a bug, never expected).
    """
    rep = current if current is not None else report(snapshot)
    ratio = rep.margin_ratio

    def idle(decision: Decision, reason: str) -> ActionPlan:
        return ActionPlan(
            snapshot.account,
            decision,
            reason,
            ratio,
            ratio,
            policy.target_ratio,
            ratio <= policy.target_ratio,
        )

    if ratio < policy.action_ratio and not history.in_episode:
        return idle(
            "below_level", f"ratio {ratio:.4f} is below the action level {policy.action_ratio:g}"
        )
    if ratio <= policy.target_ratio:
        return idle("target_met", f"ratio {ratio:.4f} already at or below the target")
    if history.last_step_at is not None and now - history.last_step_at < policy.cooldown:
        wait = policy.cooldown - (now - history.last_step_at)
        return idle("cooldown", f"cooldown: next step in {wait:.1f} s")
    budget = math.inf
    if policy.max_notional_per_step is not None:
        budget = policy.max_notional_per_step
    if policy.max_notional_per_day is not None:
        left = policy.max_notional_per_day - history.spent_on(now)
        if left <= 0:
            return idle("daily_cap", f"daily notional cap {policy.max_notional_per_day:g} reached")
        budget = min(budget, left)

    ratios = ReducedRatios(snapshot, policy.fee_rate)
    solved = minimal_reduction(
        snapshot,
        policy.target_ratio,
        policy.policy,
        policy.priority,
        policy.fee_rate,
        current=rep,
        ratios=ratios,
    )
    positions = {p.key: p for p in snapshot.positions}
    amounts: dict[tuple[str, Side], float] = {}
    flags: list[Flag] = []
    capped = False
    for r in solved.reductions:
        p = positions[(r.symbol, r.side)]
        rules = markets.get(r.symbol)
        if rules is None:
            flags.append(Flag(r.symbol, r.side, "no market rules (precision) known"))
            continue
        amount, why, was_capped = _sendable(p, r.contracts, rules, policy, budget)
        capped = capped or was_capped
        if amount <= 0:
            flags.append(Flag(r.symbol, r.side, why))
            continue
        amounts[p.key] = amount
        budget -= _notional(p, amount)

    if policy.policy != "proportional" or policy.priority:
        amounts = _trim_last(snapshot, ratios, amounts, markets, policy)
    orders = tuple(
        PlannedOrder(key[0], key[1], amt, _notional(positions[key], amt), positions[key].hedged)
        for key, amt in amounts.items()
    )
    prove_reduce_only(snapshot, orders)
    after = _ratio(snapshot, ratios, {(o.symbol, o.position_side): o.amount for o in orders})
    reached = _meets(after, policy.target_ratio)
    if orders:
        reason = f"{len(orders)} reduce-only order(s) take the ratio {ratio:.4f} -> {after:.4f}"
        if not reached:
            reason += " (target not reachable in one step: " + (
                "capped)" if capped else "positions too small or margin gone)"
            )
    else:
        reason = "no sendable order: " + "; ".join(
            f"{f.symbol} {f.side}: {f.reason}" for f in flags
        )
    return ActionPlan(
        account=snapshot.account,
        decision="act" if orders else "nothing",
        reason=reason,
        ratio_before=ratio,
        ratio_after=after,
        target_ratio=policy.target_ratio,
        reached=reached,
        orders=orders,
        flags=tuple(flags),
        capped=capped,
    )


def _sendable(
    p: Position, wanted: float, rules: MarketRules, policy: ActionPolicy, budget: float
) -> tuple[float, str, bool]:
    """The amount to send for `wanted` contracts of `p`: (amount, why-not, capped)."""
    step = rules.amount_step
    ceiling = _round_down(p.contracts, step)  # never above the position
    if p.contracts - ceiling <= step * _SLACK:
        ceiling = p.contracts
    fraction_cap = _round_down(p.contracts * policy.max_fraction_per_step, step)
    if policy.max_fraction_per_step >= 1.0:
        fraction_cap = ceiling
    unit = _notional(p, 1.0)  # report-currency notional of one contract
    budget_cap = _round_down(budget / unit, step) if unit > 0 and math.isfinite(budget) else ceiling
    limit = min(ceiling, fraction_cap, budget_cap)
    capped = round_up(wanted, step) > limit + step * _SLACK
    amount = min(round_up(wanted, step), limit)
    if ceiling == p.contracts and wanted >= p.contracts - step * _SLACK and limit >= ceiling:
        amount = p.contracts  # a full close: exactly the position, whatever its step
    floor_amount = _floor_amount(p, rules)
    if floor_amount > 0 and amount < floor_amount - step * _SLACK:
        if floor_amount <= limit + step * _SLACK:
            amount = round_up(floor_amount, step)
        else:
            why = (
                f"{p.contracts:g} contracts: the minimum order ({floor_amount:g}) exceeds what "
                f"this step may close ({limit:g})"
            )
            return 0.0, why, capped
    if amount <= 0:
        return 0.0, f"capped to nothing (step {step:g}, limit {limit:g})", True
    return (amount if amount == p.contracts else _on_step(amount, step)), "", capped


def _trim_last(
    snapshot: AccountSnapshot,
    ratios: ReducedRatios,
    amounts: dict[tuple[str, Side], float],
    markets: Mapping[str, MarketRules],
    policy: ActionPolicy,
) -> dict[tuple[str, Side], float]:
    """Shrink the last leg to the fewest steps that still reach the target.

    Rounding earlier legs up (or up to a minimum) may already have done part of the last
    leg's work; integer bisection on the last leg's step count restores minimality to one
    step, and a leg the others made unnecessary is dropped.
    """
    positions = {p.key: p for p in snapshot.positions}
    while amounts:
        key = list(amounts)[-1]
        p = positions[key]
        rules = markets[key[0]]
        step = rules.amount_step
        others = {k: v for k, v in amounts.items() if k != key}

        def ratio_with(
            n: int,
            key: tuple[str, Side] = key,
            others: Mapping[tuple[str, Side], float] = others,
            step: float = step,
        ) -> float:
            cuts = {**others, key: n * step} if n > 0 else dict(others)
            return _ratio(snapshot, ratios, cuts)

        full = amounts[key]
        hi = math.ceil(full / step - _SLACK)
        if not _meets(ratio_with(hi), policy.target_ratio):
            return amounts  # this step cannot reach the target: nothing to trim
        if _meets(ratio_with(0), policy.target_ratio):
            del amounts[key]  # the earlier legs already reach the target
            continue
        lo = 0  # ratio_with(lo) > target >= ratio_with(hi)
        if hi > 1 and not _meets(ratio_with(hi - 1), policy.target_ratio):
            lo = hi - 1  # the usual case: rounding up added less than a step (one valuation)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _meets(ratio_with(mid), policy.target_ratio):
                hi = mid
            else:
                lo = mid
        trimmed = _on_step(hi * step, step)
        if trimmed < full - step * _SLACK and trimmed >= _floor_amount(p, rules) - step * _SLACK:
            amounts[key] = trimmed
        return amounts
    return amounts


def _ratio(snapshot: AccountSnapshot, ratios: ReducedRatios, cuts: Cuts) -> float:
    """`report(reduced(snapshot, cuts, fee)).margin_ratio` without the liquidation prices a
    plan never reads and without a copy of the book per trial (a step values ~15 reduced
    books; issue 16). A book `reduced` leaves untouched (no cuts) keeps the venue's own
    figure, which only the full report applies."""
    if not cuts and snapshot.venue_margin is not None:
        return report(snapshot).margin_ratio
    return ratios.ratio(cuts)


def _floor_amount(p: Position, rules: MarketRules) -> float:
    """The smallest order the venue accepts for `p` (minimum amount, minimum notional)."""
    floor_amount = rules.min_amount
    unit = _notional(p, 1.0)
    if rules.min_notional > 0 and not rules.min_notional_reduce_only_exempt and unit > 0:
        floor_amount = max(floor_amount, round_up(rules.min_notional / unit, rules.amount_step))
    return floor_amount


def prove_reduce_only(snapshot: AccountSnapshot, orders: Sequence[PlannedOrder]) -> None:
    """Raise `UnsafePlan` unless every order only shrinks an existing position.

    Checked: the position exists on the closing side, the amount is positive, finite and no
    larger than the position (summed over orders on the same position), and the hedge mode
    matches (a one-way order on a hedged position would open the other side on some venues).
    """
    positions = {p.key: p for p in snapshot.positions}
    total: dict[tuple[str, Side], float] = {}
    for o in orders:
        p = positions.get((o.symbol, o.position_side))
        if p is None or p.contracts <= 0:
            raise UnsafePlan(f"{o.symbol}: no {o.position_side} position to reduce")
        if o.side != closing_side(p.side):
            raise UnsafePlan(f"{o.symbol}: a {o.side} order would grow the {p.side} position")
        if not (math.isfinite(o.amount) and o.amount > 0):
            raise UnsafePlan(f"{o.symbol}: amount {o.amount!r} is not a positive number")
        if o.hedged != p.hedged:
            raise UnsafePlan(f"{o.symbol}: hedge mode of the order does not match the position")
        total[p.key] = total.get(p.key, 0.0) + o.amount
        if total[p.key] > p.contracts * (1 + 1e-12):
            raise UnsafePlan(
                f"{o.symbol}: {total[p.key]:g} contracts exceed the {p.side} position of "
                f"{p.contracts:g}"
            )


def stop_price(side: Side, liquidation_price: float, mark_price: float, distance: float) -> float:
    """Trigger of the backstop stop: `distance` × mark before the liquidation price.

    A long is liquidated below the mark, so its stop sits above the liquidation price; a
    short's sits below. Never on the wrong side of the mark (that would trigger at once).
    """
    gap = distance * mark_price
    if side == "long":
        return min(liquidation_price + gap, mark_price * (1 - 1e-4))
    return max(liquidation_price - gap, mark_price * (1 + 1e-4))


def without(plan: ActionPlan, symbols: Sequence[str]) -> ActionPlan:
    """`plan` with the orders on `symbols` removed (the executor drops what a re-read voids)."""
    return replace(plan, orders=tuple(o for o in plan.orders if o.symbol not in symbols))
