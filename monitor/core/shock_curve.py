"""The cross pool's surplus as a function of a price shock, built once per shock solve. Pure.

Why: the shock solve (`stress.shock_to_liquidation`) values the account at ~30 trial moves.
Re-valuing every position at every trial (`valuation.surplus_at`) cost ~20 µs a trial on a
20-position book, ~650 µs a solve, and the solves of 1 000 accounts share one CPU budget
(daemon/loop.py `SHOCK_CPU_SHARE`, docs/benchmarks.md). Under a move of all prices by one
factor, a linear contract's PnL is linear in that factor and its MM is linear in it between
two tier edges (an inverse contract's: in the factor's reciprocal); the positions of one
settle asset, beta and kind therefore sum to one piecewise-linear PnL and MM whose edges are
known before the first trial. A trial then costs a binary search per such group and the
collateral valuation, whatever the number of positions.

`ShockCurve.of(base, beta_weighted)(s)` equals `surplus_at` of the same account with every
price moved by `s` (beta × `s` where weighted), to rounding (tests/test_shock_curve.py). It
is None for what it does not model (a mark ≤ 0, an inverse contract entered at 0, a figure
that is not finite, a collateral asset listed twice); the solver values those the old way.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from dataclasses import dataclass

from monitor.core.margin.valuation import asset_value
from monitor.core.model import STABLE_ASSETS, AccountSnapshot, Collateral, Position

__all__ = ["MIN_FACTOR", "ShockCurve", "collateral_beta", "factor"]

#: Prices are floored just above zero: a price of 0 makes inverse contracts' value infinite.
MIN_FACTOR = 1e-9


def factor(beta: float, shock: float) -> float:
    """Price multiplier of a `shock` for a `beta`, floored at `MIN_FACTOR`."""
    return max(MIN_FACTOR, 1.0 + beta * shock)


def collateral_beta(c: Collateral, currency: str) -> float:
    """How a collateral price follows the market: its own beta, else 0 for the report
    currency and stablecoins, 1 for the rest."""
    if c.beta is not None:
        return c.beta
    return 0.0 if c.asset == currency or c.asset in STABLE_ASSETS else 1.0


@dataclass(slots=True)
class _Group:
    """Cross positions settled in one asset that move by one factor: PnL = pnl0 + pnl1·x and
    MM = mm0[k] + mm1[k]·x, k = how many `edges` lie below x; x is the factor (linear
    contracts) or its reciprocal (inverse)."""

    asset: int
    beta: float
    inverse: bool
    pnl0: float = 0.0
    pnl1: float = 0.0
    edges: tuple[float, ...] = ()
    mm0: tuple[float, ...] = (0.0,)
    mm1: tuple[float, ...] = (0.0,)
    #: MM is convex in x over the edges kept: continuous at each (a cumulative tier table,
    #: to 1e-9 of the MM there) and never less steep past one. One rate for the whole
    #: position (OKX, no deduction) jumps at each edge instead.
    convex: bool = True


class _Sums:
    """A group's lines while the positions are added: MM starts at x -> 0 (the first tier
    of every position) and each tier edge adds its change of intercept and slope."""

    __slots__ = ("cut", "edges", "pnl0", "pnl1", "slope", "x_max")

    def __init__(self, x_max: float) -> None:
        self.x_max = x_max  # the largest x asked about: tier edges past it are left out
        self.pnl0 = 0.0
        self.pnl1 = 0.0
        self.cut = 0.0
        self.slope = 0.0
        self.edges: list[tuple[float, float, float]] = []  # (x, Δ intercept, Δ slope)

    def group(self, asset: int, beta: float, inverse: bool) -> _Group | None:
        """The summed lines, or None where a figure is not finite (the reference then
        raises or propagates it as it always did)."""
        self.edges.sort()
        cut, slope = self.cut, self.slope
        mm0, mm1 = [cut], [slope]
        convex = True
        for edge, d_cut, d_slope in self.edges:
            below = cut + slope * edge
            cut += d_cut
            slope += d_slope
            mm0.append(cut)
            mm1.append(slope)
            if d_slope < 0.0 or abs(d_cut + d_slope * edge) > 1e-9 * (abs(below) + 1.0):
                convex = False
        if not all(map(math.isfinite, (self.pnl0, self.pnl1, sum(mm0), sum(mm1)))):
            return None
        edges = tuple(e[0] for e in self.edges)
        return _Group(
            asset, beta, inverse, self.pnl0, self.pnl1, edges, tuple(mm0), tuple(mm1), convex
        )


def _maintenance(acc: _Sums, p: Position, notional: float, fee: float, deduct: bool) -> bool:
    """Adds `p`'s MM at notional `notional`·x (`valuation._maintenance_on`) to `acc`, with
    the tier edges up to `acc.x_max`; False for a table it does not model (a bound that is
    not a number).

    `tier_for` takes the first tier whose bound holds the notional, else the last: only a
    bound above every earlier one starts a stretch of its own, and past the highest bound
    the last tier holds."""
    tiers = p.tiers
    if not tiers:
        acc.slope += notional * ((p.mmr or 0.0) + fee)
        return True
    if notional == 0.0:  # nothing open: the tier that holds a notional of 0
        tier = next((t for t in tiers if t.max_notional >= 0.0), tiers[-1])
        acc.cut -= tier.maintenance_amount if deduct else 0.0
        return True
    first = tiers[0]
    rate = first.mmr + fee
    cut = -first.maintenance_amount if deduct else 0.0
    acc.cut += cut
    acc.slope += notional * rate
    top = first.max_notional
    if top != top:  # noqa: PLR0124 - NaN
        return False
    edges, x_max = acc.edges, acc.x_max
    for tier in tiers[1:]:
        if top == math.inf or top / notional > x_max:
            return True
        bound = tier.max_notional
        if bound != bound:  # noqa: PLR0124 - NaN
            return False
        if bound <= top:
            continue  # never reached: an earlier bound already holds its notionals
        next_rate = tier.mmr + fee
        next_cut = -tier.maintenance_amount if deduct else 0.0
        edges.append((top / notional, next_cut - cut, notional * (next_rate - rate)))
        rate, cut, top = next_rate, next_cut, bound
    if top < math.inf and top / notional <= x_max:  # past the highest bound: the last tier
        last = tiers[-1]
        next_cut = -last.maintenance_amount if deduct else 0.0
        edges.append((top / notional, next_cut - cut, notional * (last.mmr + fee - rate)))
    return True


def _concave(groups: list[_Group], assets: list[tuple[Collateral, float]]) -> bool:
    """Whether the surplus is concave in the shock s over [−1, reach], by its make-up.

    Every position moves with the market (beta 1, linear contract: its x is 1 + s, affine)
    and its MM is convex in x; the assets the positions settle in keep their price (beta 0),
    so their value is a concave valuation of an equity affine in s minus a convex MM; the
    other assets either keep their price or move with the market (beta 1) on a fixed
    balance, which is linear in s (concave with banded haircuts on value). A valuation is
    concave when its slope never grows with the equity: liabilities count at least at the
    rate of the first band, and the bands' ratios never rise. At s = −1 every moving price
    is floored at once, so the surplus is flat on [−1, −1 + 1e-9] and concave after.
    """
    settled = {g.asset for g in groups}
    if not all(g.beta == 1.0 and not g.inverse and g.convex for g in groups):
        return False
    for i, (c, beta) in enumerate(assets):
        if beta != 0.0 and (i in settled or beta != 1.0):
            return False
        owed = 1.0 + c.liability_markup
        if not c.haircut_tiers:
            if 1.0 - c.haircut > owed:
                return False
            continue
        bounds = [band.up_to for band in c.haircut_tiers]
        ratios = [owed] + [band.ratio for band in c.haircut_tiers]
        if bounds[0] <= 0.0 or any(a >= b for a, b in itertools.pairwise(bounds)):
            return False
        if any(a < b for a, b in itertools.pairwise(ratios)):
            return False
    return True


class ShockCurve:
    """Surplus (margin balance − MM of the cross pool) at a shock `s`, from pre-summed lines."""

    __slots__ = ("_assets", "_groups", "_zeros", "concave")

    def __init__(self, groups: list[_Group], assets: list[tuple[Collateral, float]]) -> None:
        self._groups = groups
        self._assets = assets
        self._zeros = [0.0] * len(assets)
        #: the surplus is concave in the shock on [−1, reach] (`_concave`): positive at both
        #: ends of a range there, it is positive everywhere in between
        self.concave = _concave(groups, assets)

    @classmethod
    def of(
        cls, base: AccountSnapshot, beta_weighted: bool = False, reach: float = math.inf
    ) -> ShockCurve | None:
        """The curve of `base`, whose positions are valued from their schedules only
        (`Position.scheduled`); None where a price or figure is outside what it models.
        `reach`: the largest shock it is asked about (exact for every s in [−1, reach];
        its tier edges beyond are left out)."""
        currency = base.currency
        rules = base.rules
        deduct, venue_fee = rules.tier_deduction, rules.liquidation_fee
        assets: list[tuple[Collateral, float]] = []
        index: dict[str, int] = {}
        for c in base.collateral:
            if c.asset in index:
                return None
            index[c.asset] = len(assets)
            assets.append((c, collateral_beta(c, currency)))
        # (asset, beta, inverse) -> [pnl0, pnl1, MM intercept and slope at x -> 0, edges]
        groups: dict[tuple[int, float, bool], _Sums] = {}
        for p in base.positions:
            if p.margin_mode != "cross":
                continue
            settle = p.settle or currency
            if settle not in index:
                # `surplus_at`: an asset with no balance entry counts at price 1, unmoved
                index[settle] = len(assets)
                assets.append((Collateral(settle, 0.0), 0.0))
            beta = p.beta if beta_weighted else 1.0
            size = p.contracts * p.contract_size
            mark, entry = p.mark_price, p.entry_price
            if not (mark > 0.0 and size >= 0.0 and (entry != 0.0 or not p.inverse)):
                return None
            key = (index[settle], beta, p.inverse)
            acc = groups.get(key)
            if acc is None:
                # the largest x a shock in [−1, reach] gives these positions (x: the factor
                # or, inverse, its reciprocal)
                low = max(MIN_FACTOR, min(1.0 - beta, 1.0 + beta * reach))
                high = max(MIN_FACTOR, 1.0 - beta, 1.0 + beta * reach)
                acc = groups[key] = _Sums(1.0 / low if p.inverse else high)
            sized = size if p.side == "long" else -size
            if p.inverse:  # pnl = ±size·(1/entry − 1/(mark·f)), notional = size/(mark·f)
                acc.pnl0 += sized / entry
                acc.pnl1 -= sized / mark
                notional = size / mark
            else:  # pnl = ±size·(mark·f − entry), notional = size·mark·f
                acc.pnl0 -= sized * entry
                acc.pnl1 += sized * mark
                notional = size * mark
            fee = venue_fee if p.liquidation_fee is None else p.liquidation_fee
            if not _maintenance(acc, p, notional, fee, deduct):
                return None
        built = [acc.group(*key) for key, acc in groups.items()]
        if not all(g is not None for g in built):
            return None
        return cls([g for g in built if g is not None], assets)

    def __call__(self, s: float) -> float:
        pnl = self._zeros.copy()
        mm = self._zeros.copy()
        for g in self._groups:
            f = factor(g.beta, s)
            x = 1.0 / f if g.inverse else f
            k = bisect_left(g.edges, x)
            pnl[g.asset] += g.pnl0 + g.pnl1 * x
            mm[g.asset] += g.mm0[k] + g.mm1[k] * x
        total = 0.0
        for (c, beta), p, m in zip(self._assets, pnl, mm, strict=True):
            price = c.price * factor(beta, s) if beta != 0.0 else c.price
            total += asset_value(c, c.amount + p, price) - m * price * (1.0 + c.liability_markup)
        return total
