"""What-ifs over a snapshot: prices moved, every price shocked, positions reduced. Pure.

The questions a trader asks before a sell-off: "what if BTC falls to support?" (`with_prices`),
"how far can everything fall before I am liquidated?" (`shock_to_liquidation`), and "what is
the least I must close to get back to a safe ratio?" (`minimal_reduction`). Each answers by
re-valuing a modified snapshot with `margin.report`, so a what-if can never disagree with the
report itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from monitor.core.margin.report import pnl_at, ratio_of, report
from monitor.core.margin.valuation import (
    asset_value,
    figures_of,
    margin_ratio,
    members,
    pool,
    surplus_at,
)
from monitor.core.model import (
    AccountSnapshot,
    Collateral,
    MarginReport,
    Position,
    Reduction,
    ReductionPlan,
    ReductionPolicy,
    ShockToLiquidation,
    Side,
    priced_collateral,
)
from monitor.core.shock_curve import ShockCurve
from monitor.core.shock_curve import collateral_beta as _collateral_beta
from monitor.core.shock_curve import factor as _factor

__all__ = [
    "MAX_UP_SHOCK",
    "ReducedRatios",
    "assess",
    "first_crossing",
    "minimal_reduction",
    "reduced",
    "shock_to_liquidation",
    "shocked",
    "with_prices",
]

#: Upward moves are searched up to +1000 %; beyond that "no move liquidates" is reported.
MAX_UP_SHOCK = 10.0
#: Relative precision of a solved shock or reduction.
_TOLERANCE = 1e-12
Cuts = Mapping[tuple[str, Side], float]
_POLICIES: tuple[ReductionPolicy, ...] = ("largest_mm_contributor", "worst_pnl", "proportional")


# --- prices -------------------------------------------------------------------------------


def with_prices(snapshot: AccountSnapshot, prices: Mapping[str, float]) -> AccountSnapshot:
    """The snapshot with some mark prices (by symbol) or collateral prices (by asset) set.

    A symbol quoted in the report currency also re-prices collateral in its base asset
    (BTC/USDT:USDT at 52,000 makes BTC collateral worth 52,000), unless that asset's price
    is given explicitly.
    """
    if not prices:
        return snapshot
    asset_prices = {k: v for k, v in prices.items() if "/" not in k}
    for symbol, price in prices.items():
        asset = priced_collateral(symbol, snapshot.currency)
        if asset is not None:
            asset_prices.setdefault(asset, price)
    positions = tuple(
        p.at_mark(prices[p.symbol]) if p.symbol in prices else p for p in snapshot.positions
    )
    collateral = tuple(
        replace(c, price=asset_prices[c.asset])
        if c.asset in asset_prices and c.asset != snapshot.currency
        else c
        for c in snapshot.collateral
    )
    # the venue's own figure (portfolio margin) holds at its prices only (docs/collateral.md)
    return replace(snapshot, positions=positions, collateral=collateral, venue_margin=None)


def shocked(
    snapshot: AccountSnapshot, shock: float, beta_weighted: bool = False
) -> AccountSnapshot:
    """Every price moved by `shock` (−0.1 = −10 %), or by beta × shock per position.

    Volatile collateral moves with the market (a BTC crash shrinks BTC collateral); the
    report currency and stablecoins stay put. Prices are floored at zero.
    """
    positions = tuple(
        p.at_mark(p.mark_price * _factor(p.beta if beta_weighted else 1.0, shock))
        for p in snapshot.positions
    )
    collateral = tuple(
        replace(c, price=c.price * _factor(_collateral_beta(c, snapshot.currency), shock))
        if _collateral_beta(c, snapshot.currency) != 0.0
        else c
        for c in snapshot.collateral
    )
    return replace(snapshot, positions=positions, collateral=collateral, venue_margin=None)


# --- shock to liquidation -----------------------------------------------------------------


def _first_crossing(
    f: Callable[[float], float], end: float, grid: int = 13, *, concave: bool = False
) -> float | None:
    """Smallest |s| on the way from 0 to `end` where f(s) ≤ 0, to `_TOLERANCE`.

    A geometric grid (fine near 0, where most accounts' answer lies) brackets the first
    sign change; the Illinois variant of regula falsi then converges in a few steps on
    these piecewise-linear curves, with bisection as a guard. `concave`: f is concave on
    the way, so f > 0 at both ends means f > 0 at every grid point, and the grid is skipped
    (the direction in which a book does not liquidate, or both for a hedged one); else the
    grid is bisected rather than walked (`_concave_crossing`), to the same bracket.
    """
    f_lo = f(0.0)
    if f_lo <= 0.0:
        return 0.0
    if concave:
        return _concave_crossing(f, end, grid, f_lo)
    lo = 0.0
    for k in range(grid):
        hi = end * (2.0 ** (k - grid + 1))
        f_hi = f(hi)
        if f_hi <= 0.0:
            return _illinois(f, lo, f_lo, hi, f_hi)
        lo, f_lo = hi, f_hi
    return None


def _concave_crossing(
    f: Callable[[float], float], end: float, grid: int, f_zero: float
) -> float | None:
    """`_first_crossing` of a concave f with f(0) = `f_zero` > 0: the same grid bracket,
    found by bisecting the grid instead of walking it, then the same Illinois steps.

    Concave and positive at 0, f is positive on the way out up to its crossing and not after
    it, so the grid points' signs run + ... + then − ... −: bisection finds the first − in
    ~4 valuations where the walk took up to 13 (the solve of every account, every second,
    docs/benchmarks.md), and brackets with the same points and values as the walk, so the
    answer is the walk's to the bit (tests/test_shock_curve.py)."""
    f_end = f(end)
    if f_end > 0.0:
        return None  # positive at both ends: positive all the way
    points = [end * (2.0 ** (k - grid + 1)) for k in range(grid)]
    values: dict[int, float] = {-1: f_zero, grid - 1: f_end}  # index -1: the shock 0
    lo, hi = -1, grid - 1  # f(points[lo]) > 0 >= f(points[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        value = values[mid] = f(points[mid])
        if value <= 0.0:
            hi = mid
        else:
            lo = mid
    return _illinois(f, 0.0 if lo < 0 else points[lo], values[lo], points[hi], values[hi])


def _illinois(f: Callable[[float], float], lo: float, f_lo: float, hi: float, f_hi: float) -> float:
    """Root in [lo, hi] with f(lo) > 0 ≥ f(hi); returns a point where f ≤ 0.

    The functions solved here (a shocked surplus, a reduced book's excess) are linear
    between MM tier bounds, so a secant step often lands on the root itself; the next one
    then lands on (or within the tolerance of) that end. It is put half the tolerance
    inside it, so the bracket closes from the other side in one valuation; bisecting there
    instead took ~40 more (issue 16: the reduction solve of a crash's plan preview)."""
    side = 0
    for _ in range(200):
        near = 0.5 * _TOLERANCE * max(1.0, abs(hi))
        if abs(hi - lo) <= 2.0 * near:
            break
        low, high = min(lo, hi), max(lo, hi)
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        mid = min(max(mid, low + near), high - near)
        if not low < mid < high:  # a NaN from an infinite value
            mid = 0.5 * (lo + hi)
        f_mid = f(mid)
        if f_mid <= 0.0:
            hi, f_hi = mid, f_mid
            if side == -1:
                f_lo *= 0.5
            side = -1
        else:
            lo, f_lo = mid, f_mid
            if side == 1:
                f_hi *= 0.5
            side = 1
    return hi


def shock_to_liquidation(
    snapshot: AccountSnapshot, beta_weighted: bool = False
) -> ShockToLiquidation:
    """Smallest uniform (or beta-weighted) move of all prices, down and up, reaching ratio 1.

    `down` is in (−1, 0] and `up` in [0, MAX_UP_SHOCK]; None where no move in that range
    liquidates (a fully hedged or unlevered book).
    """
    base = _without_reported(snapshot)
    if not any(p.margin_mode == "cross" for p in base.positions):
        # nothing open in the cross pool: nothing liquidates (margin_ratio 0), even where a
        # shock takes a balance (BTC debt, say) below zero (docs/margin-edges.md: empty cross pool)
        return ShockToLiquidation(down=None, up=None)
    # the surplus of shocked(base, s, beta_weighted) at each trial s, from lines summed once
    # (monitor/core/shock_curve.py); the position-by-position valuation where they do not hold
    curve = ShockCurve.of(base, beta_weighted, reach=MAX_UP_SHOCK)
    f = curve or _surplus_by_position(base, beta_weighted)
    concave = curve is not None and curve.concave
    down = _first_crossing(f, -1.0, concave=concave)
    up = _first_crossing(f, MAX_UP_SHOCK, concave=concave)
    return ShockToLiquidation(down=down, up=up)


def _surplus_by_position(base: AccountSnapshot, beta_weighted: bool) -> Callable[[float], float]:
    """The reference valuation of a shock: every position re-valued at every trial."""
    marks = [(p.mark_price, p.beta if beta_weighted else 1.0) for p in base.positions]
    moving = [
        (c.asset, c.price, _collateral_beta(c, base.currency))
        for c in base.collateral
        if _collateral_beta(c, base.currency) != 0.0
    ]

    def f(s: float) -> float:
        # the same figures as surplus(shocked(base, s, beta_weighted)), without new objects
        return surplus_at(
            base,
            [mark * _factor(beta, s) for mark, beta in marks],
            {asset: price * _factor(beta, s) for asset, price, beta in moving},
        )

    return f


def _without_reported(snapshot: AccountSnapshot) -> AccountSnapshot:
    """Venue figures hold at one price only; a move recomputes everything from schedules.

    A position with no venue figure is already valued from its schedule and is kept as it
    is (`Position.scheduled` would copy it unchanged: ~3 µs a position per solve)."""
    if all(
        p.unrealized_pnl is None and p.maintenance_margin is None and p.initial_margin is None
        for p in snapshot.positions
    ):
        return snapshot
    return replace(snapshot, positions=tuple(p.scheduled() for p in snapshot.positions))


def assess(snapshot: AccountSnapshot, base: MarginReport | None = None) -> MarginReport:
    """The report with its shock to liquidation and its collateral risk (the fall of each
    collateral asset alone that liquidates, docs/collateral.md) filled in: what the daemon
    publishes. `base`: `report(snapshot)` where the caller has it already (the daemon's
    `Ledger.report`, exactly that report from the figures it keeps, at a fraction of the cost)."""
    from monitor.core.collateral_risk import collateral_risk  # noqa: PLC0415 - builds on this module

    if base is None:
        base = report(snapshot)
    return replace(
        base,
        shock_to_liquidation=shock_to_liquidation(snapshot),
        collateral_risk=collateral_risk(snapshot, base.margin_balance),
    )


#: The bracketing root finder of the shock solve, for the other what-if solvers.
first_crossing = _first_crossing


# --- minimal reduction --------------------------------------------------------------------


def reduced(snapshot: AccountSnapshot, cuts: Cuts, fee_rate: float = 0.0) -> AccountSnapshot:
    """The snapshot after closing `cuts[(symbol, side)]` contracts of each position at mark.

    Closing realises PnL into the settle asset's balance, so the margin balance is unchanged
    except for the taker fee; margins shrink with the size (tier-aware, via the schedule).
    """
    if not cuts:
        return snapshot
    settle_delta: dict[str, float] = {}
    positions: list[Position] = []
    for p in snapshot.positions:
        cut = min(cuts.get(p.key, 0.0), p.contracts)
        if cut <= 0.0:
            positions.append(p)
            continue
        settle = p.settle or snapshot.currency
        kept = p.contracts - cut
        fraction = kept / p.contracts
        schedule = p.scheduled()
        pnl_now = p.unrealized_pnl if p.unrealized_pnl is not None else pnl_at(p, p.mark_price)
        fee = fee_rate * p.settle_notional(p.mark_price) * (cut / p.contracts)
        settle_delta[settle] = settle_delta.get(settle, 0.0) + pnl_now * (1 - fraction) - fee
        if kept > 0.0:
            positions.append(
                schedule.resized(
                    kept,
                    None if p.unrealized_pnl is None else p.unrealized_pnl * fraction,
                    None if p.isolated_margin is None else p.isolated_margin * fraction,
                )
            )
    collateral = list(snapshot.collateral)
    for asset, delta in settle_delta.items():
        for i, c in enumerate(collateral):
            if c.asset == asset:
                collateral[i] = replace(c, amount=c.amount + delta)
                break
        else:
            collateral.append(Collateral(asset=asset, amount=delta))
    return replace(
        snapshot, positions=tuple(positions), collateral=tuple(collateral), venue_margin=None
    )


class ReducedRatios:
    """`ratio_of(reduced(snapshot, cuts, fee_rate))` for many trial `cuts` of one snapshot.

    The reduction solve and the planner's rounding value ~15 reduced books per plan, and the
    plan preview is on the crash -> alert path (issue 16). Each `reduced` copied the snapshot,
    its collateral and every cut position, and `ratio_of` pooled every position again, while
    a trial only changes the cut positions' figures and the settle balances. Here the book is
    pooled once; a trial re-values the cut positions alone (their `reduced` form, with
    `figures_of`, which is what `pool` computes for them) and re-adds the per-asset sums from
    the same figures in the same order with the same `sum`, so each ratio is the one
    `ratio_of(reduced(...))` gives, to the bit: a plan is the same plan, only sooner. A closed
    position counts 0.0 in the sums instead of leaving them (the same totals; only the sign of
    a zero may differ, which no ratio reads). Books the shortcut does not cover (a symbol and
    side held twice, an asset listed twice as collateral: never from a venue) take the
    reference path. Trials are remembered: the solve and the rounding ask for some twice.
    Scratch space private to one plan, like `valuation.AssetBook`.
    """

    __slots__ = (
        "_books",
        "_cross",
        "_fee_rate",
        "_index",
        "_mm",
        "_pnl",
        "_reference",
        "_rules",
        "_seen",
        "_snapshot",
        "_terms",
    )

    def __init__(self, snapshot: AccountSnapshot, fee_rate: float = 0.0) -> None:
        self._snapshot = snapshot
        self._fee_rate = fee_rate
        positions = snapshot.positions
        books, self._pnl, _, self._mm = pool(snapshot)
        self._index = {p.key: i for i, p in enumerate(positions)}
        self._reference = len(self._index) < len(positions) or len(books) < len(snapshot.collateral)
        currency = snapshot.currency
        owners = [p.settle or currency if p.margin_mode == "cross" else None for p in positions]
        picks = {id(book): pick for book, pick in members(books, owners)}
        #: per book, in pool order: its asset, collateral, ask rate and what picks its figures
        self._books = [
            (asset, book.collateral, book.ask, picks.get(id(book))) for asset, book in books.items()
        ]
        self._cross = len(positions) - owners.count(None)
        self._rules = snapshot.rules
        self._terms: dict[int, tuple[Position, str, float, float, Position]] = {}
        self._seen: dict[tuple[tuple[int, float], ...], tuple[float, float, bool]] = {}

    def ratio(self, cuts: Cuts) -> float:
        """The margin ratio once `cuts[(symbol, side)]` contracts are closed at mark."""
        figures = self._figures(cuts)
        if figures is None:
            return ratio_of(reduced(self._snapshot, cuts, self._fee_rate))
        owed, balance, exposed = figures
        return margin_ratio(owed, balance, exposed=exposed)

    def excess(self, cuts: Cuts, target: float) -> float:
        """A number with the sign of `ratio(cuts) - target` that is linear in the cuts
        wherever the MM tiers and the collateral's value are (the ratio is not: MM over a
        balance that shrinks by the fees): `(ratio - target) * balance`, ≈ MM owed minus
        `target` x balance. Its root is the ratio's, and a secant solve lands on it in a
        step or two instead of ~8 (issue 16: the plan preview is on the crash -> alert
        path). The sign is the ratio's own comparison, so a solve on it accepts exactly
        the cuts the ratio accepts."""
        figures = self._figures(cuts)
        if figures is None:
            return self.ratio(cuts) - target
        owed, balance, exposed = figures
        over = margin_ratio(owed, balance, exposed=exposed) - target
        if balance > 0.0:
            return over * balance
        return 1.0 if over > 0.0 else -1.0  # past liquidation (+inf), or an empty pool (0)

    def _figures(self, cuts: Cuts) -> tuple[float, float, bool] | None:
        """(MM owed, margin balance, exposed) of the reduced book; None: the reference path."""
        if self._reference:
            return None
        positions = self._snapshot.positions
        trial: list[tuple[int, float]] = []
        for key, wanted in cuts.items():
            i = self._index.get(key)
            if i is not None:
                cut = min(wanted, positions[i].contracts)
                if not cut <= 0.0:  # as `reduced` skips a cut (a NaN is not skipped there)
                    trial.append((i, cut))
        trial.sort()  # `reduced` moves the settle balances in position order
        seen = tuple(trial)
        figures = self._seen.get(seen)
        if figures is None:
            figures = self._seen[seen] = self._value(trial)
        return figures

    def _value(self, trial: list[tuple[int, float]]) -> tuple[float, float, bool]:
        """`ratio_of`'s figures of the reduced book, from the pooled ones (see the class)."""
        pnl, mm = self._pnl, self._mm
        settle_delta: dict[str, float] = {}
        closed = 0
        if trial:
            pnl, mm = pnl[:], mm[:]
        fee_rate = self._fee_rate
        for i, cut in trial:
            # `reduced`'s arithmetic, step for step, on what it computes alike for every trial
            terms = self._terms.get(i)
            if terms is None:
                terms = self._terms[i] = self._terms_of(i)
            p, settle, pnl_now, notional, schedule = terms
            kept = p.contracts - cut
            fraction = kept / p.contracts
            fee = fee_rate * notional * (cut / p.contracts)
            settle_delta[settle] = settle_delta.get(settle, 0.0) + pnl_now * (1 - fraction) - fee
            if kept > 0.0:
                left = schedule.resized(
                    kept,
                    None if p.unrealized_pnl is None else p.unrealized_pnl * fraction,
                    None if p.isolated_margin is None else p.isolated_margin * fraction,
                )
                pnl[i], _, mm[i] = figures_of(left, self._rules)
            else:
                pnl[i] = mm[i] = 0.0
                if p.margin_mode == "cross":
                    closed += 1
        balances: list[float] = []
        owed: list[float] = []
        for asset, c, ask, pick in self._books:
            book_pnl = book_mm = 0.0
            if pick is not None:
                book_pnl, book_mm = sum(pick(pnl)), sum(pick(mm))
            amount = c.amount + settle_delta[asset] if asset in settle_delta else c.amount
            balances.append(asset_value(c, amount + book_pnl))
            owed.append(book_mm * ask)
        return sum(owed), sum(balances), self._cross > closed

    def _terms_of(self, i: int) -> tuple[Position, str, float, float, Position]:
        """What `reduced` computes for position `i` whatever the cut: the position, its settle
        asset, its PnL and notional at mark, and its schedule (venue figures as rates)."""
        snapshot = self._snapshot
        p = snapshot.positions[i]
        pnl_now = p.unrealized_pnl if p.unrealized_pnl is not None else pnl_at(p, p.mark_price)
        settle = p.settle or snapshot.currency
        return p, settle, pnl_now, p.settle_notional(p.mark_price), p.scheduled()


def _order(
    snapshot: AccountSnapshot, policy: ReductionPolicy, priority: Sequence[str], rep: MarginReport
) -> list[Position]:
    """The cross positions in the order the policy closes them, ranked on `rep`'s figures."""
    risks = {(r.symbol, r.side): r for r in rep.positions}
    cross = [p for p in snapshot.positions if p.margin_mode == "cross" and p.contracts > 0]
    if policy == "worst_pnl":
        cross.sort(key=lambda p: risks[p.key].unrealized_pnl)
    else:
        cross.sort(key=lambda p: -risks[p.key].maintenance_margin)
    if priority:
        rank = {symbol: i for i, symbol in enumerate(priority)}
        cross.sort(key=lambda p: rank.get(p.symbol, len(rank)))
    return cross


def minimal_reduction(
    snapshot: AccountSnapshot,
    target_ratio: float,
    policy: ReductionPolicy = "largest_mm_contributor",
    priority: Sequence[str] = (),
    fee_rate: float = 0.0,
    *,
    current: MarginReport | None = None,
    ratios: ReducedRatios | None = None,
) -> ReductionPlan:
    """Smallest reduce-only quantities bringing the cross ratio down to `target_ratio`.

    Policies: `largest_mm_contributor` and `worst_pnl` close positions one after the other in
    that order (a user `priority` list of symbols goes first), each only as far as needed;
    `proportional` cuts every cross position by the same, smallest sufficient fraction.
    Quantities are exact (unrounded): the action planner rounds them to market precision.
    `current`: `report(snapshot)` where the caller has it (the planner does: the report the
    alert was raised on), so the ranking costs no report of its own (issue 16: ~10 % of a
    plan preview, on the crash -> alert path). `ratios`: the evaluator of this snapshot and
    `fee_rate` where the caller values more reduced books after the solve (the planner's
    rounding), so the trials both ask for are valued once.
    """
    if policy not in _POLICIES:
        msg = f"policy {policy!r} is not one of {', '.join(_POLICIES)}"
        raise ValueError(msg)
    if ratios is None:
        ratios = ReducedRatios(snapshot, fee_rate)
    ratio = ratios.ratio
    before = ratio({})

    cuts: dict[tuple[str, Side], float] = {}
    if before > target_ratio:
        order = _order(
            snapshot, policy, priority, current if current is not None else report(snapshot)
        )
        if policy == "proportional" and not priority:
            fraction = _smallest(
                lambda k: ratios.excess({p.key: p.contracts * k for p in order}, target_ratio)
            )
            cuts = {p.key: p.contracts * fraction for p in order}
        else:
            for p in order:
                full = {**cuts, p.key: p.contracts}
                if ratio(full) > target_ratio:
                    cuts = full
                    continue
                done = dict(cuts)

                def partial(k: float, p: Position = p, done: Cuts = done) -> float:
                    return ratios.excess({**done, p.key: p.contracts * k}, target_ratio)

                cuts[p.key] = p.contracts * _smallest(partial)
                break
    after = ratio(cuts)
    by_key = {p.key: p for p in snapshot.positions}
    reductions = tuple(
        Reduction(
            symbol=key[0],
            side=by_key[key].side,
            contracts=qty,
            notional=by_key[key].settle_notional(by_key[key].mark_price)
            * qty
            / by_key[key].contracts,
            hedged=by_key[key].hedged,
        )
        for key, qty in cuts.items()
        if qty > 0
    )
    return ReductionPlan(
        policy=policy,
        target_ratio=target_ratio,
        ratio_before=before,
        ratio_after=after,
        reached=after <= target_ratio,
        reductions=reductions,
    )


def _smallest(excess_at: Callable[[float], float]) -> float:
    """Smallest k in [0, 1] with excess_at(k) ≤ 0 (it falls as k grows); 1 if none.

    Illinois, as for shocks, on `ReducedRatios.excess`, which is linear between MM tier
    bounds, so the first secant step lands on the root (issue 16: the executor plans on its
    fresh read between the crossing frame and the order, and the alert's plan preview runs
    before it; bisection was ~1.3 ms of each, Illinois on the ratio itself ~8 valuations).
    """
    at_one = excess_at(1.0)
    if at_one > 0.0:
        return 1.0
    at_zero = excess_at(0.0)
    if at_zero <= 0.0:
        return 0.0
    return _illinois(excess_at, 0.0, at_zero, 1.0, at_one)
