"""Liquidation prices: the mark of one market at which the account's ratio reaches 1.

A cross position's liquidation price is the mark of its symbol at which MM = margin balance
with every other price held (Binance's LP formula is the one-tier, one-asset special case,
FAQ b3c689c1f50a44cabb3a84e663b81d93); collateral in the same market's base asset moves with
it (BTC collateral falls with BTC/USDT). An isolated position's is the mark at which its own
margin + PnL = its MM (Bybit isolated formula when MM is on the entry value). Pure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from monitor.core.margin.valuation import (
    AssetBook,
    asset_breakpoints,
    computed_maintenance_margin,
    isolated_margin_of,
    margin_ratio,
    pnl_at,
)
from monitor.core.model import AccountSnapshot, Position, PositionRisk, Tier, priced_collateral
from monitor.core.venue_rules import VenueRules

__all__ = ["Kept", "Walk", "position_risks"]

INF = math.inf
_NAN = math.nan
_UNSEEN: tuple[float, float, float, float, float] = (_NAN,) * 5


# A position's value is linear in x = price (linear contracts) or x = 1/price (inverse
# contracts) between breakpoints; so is its PnL and, within a tier, its MM. Between the
# breakpoints of one symbol (tier edges, the settle asset's equity crossing zero or a haircut
# band) the account's surplus is therefore exactly linear in x and each segment is solved
# in closed form. This is Binance's formula generalised to tiers, hedge mode and haircuts.


@dataclass(frozen=True, slots=True)
class _Group:
    """The positions sharing one price (one symbol, or one isolated position)."""

    positions: tuple[Position, ...]
    inverse: bool


#: Where a closed-form walk over the tiers stopped: (k0, tier, its floor, went down, went up).
#: Each step it took compared one tier's root with that tier's bracket; the root of every
#: tier, -(k0 + deduction)/per_notional, moves monotonically with k0 (float arithmetic is
#: monotone too), down as k0 rises for a long and up for a short. So while the position and
#: the rates are the same, a walk that went down holds again for a k0 on the side that
#: lowers every tier's root (up: raises), and the next walk resumes where this one stopped,
#: with the result a walk from the mark's tier would give, to the bit. A resumed walk that
#: takes no further step keeps the k0 it was first taken at (the bound is the one its steps
#: were checked against), so a k0 that goes back and forth keeps resuming.
Walk = tuple[float, int, float, bool, bool]


@dataclass(slots=True)
class Kept:
    """What a `Ledger` keeps of its last report's per-position work, entry i valid while
    position i does not move and no collateral price does (the ledger drops it then).

    `walks`: where each closed-form walk stopped (`Walk`; tier −1: no root above price 0).
    `lines`: a report line that holds as it was: an isolated position's (nothing outside
    it moves it: bound unused), or a cross position's with no liquidation price, which
    holds while its k0 stays on the safe side of the bound its walk was checked at.
    """

    walks: list[Walk | None]
    lines: list[tuple[float, PositionRisk] | None]

    @classmethod
    def empty(cls, n: int) -> Kept:
        """Nothing kept for `n` positions."""
        return cls([None] * n, [None] * n)

    def forget(self, i: int) -> None:
        """Position i moved: what was kept of it no longer holds."""
        self.walks[i] = None
        self.lines[i] = None


@dataclass(frozen=True, slots=True)
class _Clearance:
    """Where a closed-form walk over one tier table ends for any k0 past a bound, at one
    settle asset's rates and one fee rate: a report from scratch takes the end, not the walk.

    Each tier's root -(k0 + offset)/slope only moves one way as k0 rises (`Walk`: float
    addition and division are monotone too), so a comparison that holds at one k0 holds at
    every larger one. `long` is a k0 at which every tier's root lies below its floor (tier 0:
    below price 0), checked with the walk's own float operations: from there on a long's walk,
    from whichever tier, steps down to "no root above price 0". `short`: every tier's root but
    the last lies at or above its floor and above its cap, the last tier's at or above its
    floor: a short's walk steps up to the last tier and ends inside it, at -(k0 + `offset`) /
    `slope` (that tier's terms). NaN where no such k0 was found (a tier that does not rise
    toward safety, infinite caps): k0 ≥ NaN never holds, so the walk runs.
    `rate`, `ask`, `fee`, `deduct`: what it was computed at (`_clearance` checks them).
    """

    tiers: tuple[Tier, ...]
    rate: float
    ask: float
    fee: float
    deduct: bool
    long: float
    short: float
    offset: float
    slope: float


#: `_clearance`'s results by id of the tiers tuple. A cache of values computed from immutable
#: inputs, not state: an entry holds its tiers tuple, so no other tuple can take that id
#: while the entry lives, and an entry taken at the same rates, fee and rule is what
#: `_clearance` would compute again.
#: Tier tables live as long as a market's (sources cache them per symbol, ~1 h), so each
#: report from scratch finds its tables here; bounded by clearing when full (a table costs
#: ~10 µs to compute, a report from scratch of 1 000 positions ~1 ms).
_CLEARANCES: dict[int, _Clearance] = {}
_CLEARANCES_MAX = 4096


def _clearance(
    tiers: tuple[Tier, ...], rate: float, ask: float, fee: float, deduct: bool
) -> _Clearance:
    """`tiers`' `_Clearance` at these rates, fee and deduction rule, computed and cached
    (`_CLEARANCES`, where `_closed_form` looks first: inline, it runs per position)."""
    # each tier's terms as `_closed_form`'s walk computes them, float for float
    floors = [0.0, *(t.max_notional for t in tiers[:-1])]
    caps = [t.max_notional for t in tiers]
    offsets = [ask * t.maintenance_amount if deduct else 0.0 for t in tiers]
    longs = [rate - ask * (t.mmr + fee) for t in tiers]
    shorts = [-rate - ask * (t.mmr + fee) for t in tiers]
    lines = list(zip(offsets, longs, shorts, floors, caps, strict=True))

    def long_clear(k0: float) -> bool:
        return all(up > 0.0 and -(k0 + off) / up < floor for off, up, _, floor, _ in lines)

    def short_clear(k0: float) -> bool:
        *below, top = lines
        off, _, down, floor, _ = top
        return (
            down < 0.0
            and -(k0 + off) / down >= floor
            and all(
                down < 0.0 and (v := -(k0 + off) / down) >= floor and v > cap
                for off, _, down, floor, cap in below
            )
        )

    # the bound in exact arithmetic (each tier's comparison solved for k0), nudged up until
    # the float comparisons hold
    long_guess = max(-floor * up - off for off, up, _, floor, _ in lines)
    short_guess = max(
        [-floor * down - off for off, _, down, floor, _ in lines]
        + [-cap * down - off for off, _, down, _, cap in lines[:-1]]
    )
    clear = _Clearance(
        tiers,
        rate,
        ask,
        fee,
        deduct,
        _bound(long_clear, long_guess),
        _bound(short_clear, short_guess),
        offsets[-1],
        shorts[-1],
    )
    if len(_CLEARANCES) >= _CLEARANCES_MAX:
        _CLEARANCES.clear()
    _CLEARANCES[id(tiers)] = clear
    return clear


def _bound(holds: Callable[[float], bool], guess: float) -> float:
    """A k0 at or a hair above `guess` at which `holds`, else NaN (see `_Clearance`)."""
    for nudge in (0.0, 1e-12, 1e-9, 1e-6):
        k0 = guess + (abs(guess) + 1.0) * nudge
        if math.isfinite(k0) and holds(k0):
            return k0
    return _NAN


def _x(price: float, inverse: bool) -> float:
    return 1.0 / price if inverse else price


def _price(x: float, inverse: bool) -> float:
    return 1.0 / x if inverse else x


def _tier_edges(group: _Group, rules: VenueRules) -> list[float]:
    edges: list[float] = []
    for p in group.positions:
        if rules.isolated_mm_on_entry and p.margin_mode == "isolated":
            continue
        size = p.contracts * p.contract_size
        if size <= 0:
            continue
        # notional = size × x in both cases (linear: size·price; inverse: size/price)
        edges.extend(t.max_notional / size for t in p.tiers[:-1] if math.isfinite(t.max_notional))
    return edges


def _pnl_slope(group: _Group) -> float:
    """d(PnL)/dx of the group, settle units: linear +size per long, inverse −size per long."""
    slope = sum(p.sign * p.contracts * p.contract_size for p in group.positions)
    return -slope if group.inverse else slope


def _solve(
    surplus: _Surplus,
    group: _Group,
    edges: Iterable[float],
    x_now: float,
) -> float | None:
    """Root of the piecewise-linear surplus(x) on x > 0 nearest x_now, as a price."""
    points = sorted({e for e in edges if e > 0 and math.isfinite(e)})
    bounds = [0.0, *points, INF]
    roots: list[float] = []
    previous_end: float | None = None
    for lo, hi in itertools.pairwise(bounds):
        span = hi - lo if math.isfinite(hi) else max(lo, x_now, 1e-12)
        x1 = lo + span / 3.0
        x2 = lo + 2.0 * span / 3.0
        if not x1 < x2:
            continue  # two edges within rounding of each other: no room for a root between
        f1, f2 = surplus(x1), surplus(x2)
        slope = (f2 - f1) / (x2 - x1)
        f_lo = f1 - slope * (x1 - lo)
        if previous_end is not None and (previous_end > 0) != (f_lo > 0):
            roots.append(lo)  # a jump across zero at an edge (OKX whole-position tiers)
        if slope != 0.0:
            root = x1 - f1 / slope
            if lo <= root <= hi:
                roots.append(root)
        previous_end = f1 + slope * (hi - x1) if math.isfinite(hi) else None
    # a root within rounding of x = 0 means "only at a price of zero" (or infinity): none
    roots = [x for x in roots if x > x_now * 1e-9]
    if not roots:
        return None
    best = min(roots, key=lambda x: abs(math.log(x / x_now)) if x > 0 else INF)
    return _price(best, group.inverse)


class _Surplus:
    """margin balance − MM of the pool as a function of one group's x, all else held.

    `moving` is the collateral asset priced by the same market (BTC collateral while
    BTC/USDT moves), which a real move takes along; every other price is held.
    """

    __slots__ = ("base", "books", "group", "moving", "rules", "settle")

    def __init__(
        self,
        group: _Group,
        rules: VenueRules,
        books: dict[str, AssetBook] | None,
        settle: str,
        *,
        base: float,
        moving: str | None = None,
    ) -> None:
        self.group = group
        self.rules = rules
        self.books = books
        self.settle = settle
        self.base = base
        self.moving = moving

    def __call__(self, x: float) -> float:
        price = _price(x, self.group.inverse)
        pnl = 0.0
        mm = 0.0
        for p in self.group.positions:
            pnl += pnl_at(p, price)
            mm += computed_maintenance_margin(p, self.rules, price)
        if self.books is None:  # isolated: the position's own margin, in the settle asset
            return self.base + pnl - mm
        book = self.books[self.settle]
        total = self.base + book.surplus(book.pnl + pnl, book.mm + mm)
        if self.moving is not None:
            moving = self.books[self.moving]
            total += moving.surplus(moving.pnl, moving.mm, price)
        return total


def position_risks(
    snapshot: AccountSnapshot,
    books: dict[str, AssetBook],
    pnl: Sequence[float],
    im: Sequence[float],
    mm: Sequence[float],
    *,
    kept: Kept | None = None,
) -> tuple[list[PositionRisk], bool]:
    """Every position's line of the report, liquidation price included (cross positions of
    one symbol share one), and whether a cross position is open (`margin_ratio`'s exposed).

    `books`, `pnl`, `im`, `mm`: the pool and each position's figures in its settle asset
    (`valuation.pool`, or the `Ledger`'s). One pass builds each line and solves its price:
    this loop is the report's per-position cost (docs/benchmarks.md).

    `kept`: what the `Ledger` keeps of the previous report's work (`Kept`), used where it
    still holds and updated; None: everything from scratch. The result is the same.
    """
    rules = snapshot.rules
    positions, currency = snapshot.positions, snapshot.currency
    pool = {a: b.surplus(b.pnl, b.mm) for a, b in books.items()}
    pool_total = sum(pool.values())
    several_assets = len(books) > 1
    # settle asset -> (price, ask): what a figure in that asset is worth in the report
    rates = {a: (b.collateral.price, b.ask) for a, b in books.items()}
    # Symbols held twice (hedge mode) are solved together after the pass; found up front
    # so the usual book, one position per symbol, takes one pass (docs/benchmarks.md).
    shared = _shared_symbols(positions)
    # The common case, a lone linear position per symbol settling in a flat-haircut asset,
    # is the closed form; its per-asset terms are the same for every such symbol, so they
    # are computed once here rather than by moving each symbol out of the book and back.
    closed: dict[str, tuple[float, float, float, float, float] | None] = {}
    isnan = math.isnan
    deduct = rules.tier_deduction
    venue_fee = rules.liquidation_fee
    on_entry = rules.isolated_mm_on_entry
    walks = kept.walks if kept is not None else None
    lines = kept.lines if kept is not None else None
    # `tuple.__new__` is what PositionRisk(...) runs, minus its Python-level `__new__`
    make = tuple.__new__
    risks: list[PositionRisk] = []
    exposed = False  # a cross position is open (empty cross pool: no risk, docs/margin-edges.md)
    for i, p in enumerate(positions):
        isolated = p.margin_mode == "isolated"
        if not isolated:
            exposed = True
        elif lines is not None and (line := lines[i]) is not None:
            risks.append(line[1])  # its own margin against its own MM: as it was
            continue
        contracts, mark = p.contracts, p.mark_price
        own_pnl, own_mm = pnl[i], mm[i]
        settle = p.settle or currency
        q = contracts * p.contract_size
        lp: float | None = None
        terms = None  # the closed form's (base, equity, rate, ask, mm): `_closed_terms`
        moving = None
        if contracts <= 0 or mark <= 0:
            pass  # nothing to liquidate
        elif isolated:
            if not p.inverse and not on_entry:
                # its own margin against its own MM, nothing else in
                terms = (isolated_margin_of(p), 0.0, 1.0, 1.0, 0.0)
                own_pnl = own_mm = 0.0
            else:
                lp = _isolated_price(p, rules)
        elif shared and p.symbol in shared:
            pass  # solved with the other side after the pass
        else:
            if several_assets:
                moving = _moving_asset(p, currency, books, settle)
            if not p.inverse and moving is None:
                terms = closed.get(settle, _UNSEEN)
                if terms is _UNSEEN:
                    terms = closed[settle] = _closed_terms(books[settle], pool_total - pool[settle])
            if terms is None:
                lp = _group_price(snapshot, books, pnl, mm, [i], pool, moving)
        if terms is not None:
            base, equity, rate, ask, book_mm = terms
            long = p.side == "long"
            entry = p.entry_price
            # the pool's surplus with this position's own PnL and MM taken out (grouped so
            # that a position alone in its asset cancels exactly), at the price where its
            # own PnL is zero (its PnL there is −s·q·entry)
            equity -= own_pnl
            k0 = (base - ask * (book_mm - own_mm)) + rate * (
                equity - (q * entry if long else -q * entry)
            )
            if lines is not None and (line := lines[i]) is not None:
                # no root above price 0 at a k0 on this side of the one checked (`Walk`)
                bound = line[0]
                if (k0 >= bound) if long else (k0 <= bound):
                    risks.append(line[1])
                    continue
            lp = _closed_form(p, k0, equity, rate, ask, q, deduct, venue_fee, walks, i)
            if lp is not None and isnan(lp):  # its assumptions failed: the general solver
                if isolated:
                    lp = _isolated_price(p, rules)
                else:
                    lp = _group_price(snapshot, books, pnl, mm, [i], pool, None)
        if isolated:
            own = margin_ratio(mm[i], isolated_margin_of(p) + pnl[i], exposed=True)
        else:
            own = None
        if p.inverse:  # Position.settle_notional, inlined
            notional = q / mark if mark > 0 else INF
        else:
            notional = q * mark
        # in the report currency; x × 1.0 is x, so the usual settle asset (the report
        # currency itself) skips the products
        line_pnl, line_im, line_mm = pnl[i], im[i], mm[i]
        price, to_report = rates[settle]
        if price != 1.0:
            notional *= price
            line_pnl *= price
        if to_report != 1.0:
            line_im *= to_report
            line_mm *= to_report
        risk = make(
            PositionRisk,
            (
                p.symbol,
                p.side,
                p.margin_mode,
                contracts,
                mark,
                notional,
                line_pnl,
                line_im,
                line_mm,
                own,
                lp,
                p.hedged,
            ),
        )
        risks.append(risk)
        if lines is not None:
            if isolated:
                lines[i] = (0.0, risk)
            elif (
                lp is None and walks is not None and (walk := walks[i]) is not None and walk[1] < 0
            ):
                lines[i] = (walk[0], risk)
    for indices in shared.values():
        first = positions[indices[0]]
        settle = first.settle or currency
        moving = _moving_asset(first, currency, books, settle) if several_assets else None
        lp = _group_price(snapshot, books, pnl, mm, indices, pool, moving)
        for i in indices:
            risks[i] = risks[i]._replace(liquidation_price=lp)
    return risks, exposed


def _closed_form(  # noqa: PLR0917 - positional: runs once per position per report
    p: Position,
    k0: float,
    equity: float,
    rate: float,
    ask: float,
    q: float,
    deduct: bool,
    venue_fee: float,
    walks: list[Walk | None] | None,
    i: int,
) -> float | None:
    """LP of a lone linear position by the closed form (`_closed_terms`), walking tiers
    outward from the current one; NaN where its assumptions fail (the general solver runs).

    `k0`: the pool's surplus without this position, its PnL at price 0 put in
    (`_closed_terms`); `equity`: the settle asset's without this position; `rate`, `ask`:
    the asset's rates; `q`: its size. `walks[i]`: where this position's previous walk
    stopped (`Walk`), resumed when still valid, and where this one stops; None (a report
    from scratch): no walk to keep, so where k0 clears the table the end is taken, not walked.
    """
    if not 0.0 < q < INF:
        return _NAN  # sizes that underflow to 0 (or overflow): the general solver copes
    long = p.side == "long"
    mark = p.mark_price
    # per unit of notional, the surplus moves by rate·s − ask·(mmr + fee) (OKX and Gate
    # charge the liquidation fee on top of the maintenance rate)
    rate_s = rate if long else -rate
    fee = venue_fee if p.liquidation_fee is None else p.liquidation_fee
    tiers = p.tiers
    held = None
    top: float | None = None  # the root in the last tier, when the walk is known to end there
    if walks is None:
        # a report from scratch (no walk to keep): where k0 clears the whole table the walk's
        # end is known without taking it (`_Clearance`). First what the bounds take of a
        # usual table (rates and deductions ≥ 0), so a position that walks anyway does not
        # look them up: a long's k0 above 0, a short's above the last tier's floor at `rate`
        if tiers and (k0 > 0.0 if long else len(tiers) < 2 or k0 > tiers[-2].max_notional * rate):
            clear = _CLEARANCES.get(id(tiers))  # valid when taken at these rates, fee, rule
            if clear is None or not (
                clear.rate == rate
                and clear.ask == ask
                and clear.fee == fee
                and clear.deduct is deduct
            ):
                clear = _clearance(tiers, rate, ask, fee, deduct)
            if long:
                if k0 >= clear.long:
                    return None  # every tier's root lies below its floor: none above price 0
            elif k0 >= clear.short:
                top = -(k0 + clear.offset) / clear.slope
    else:
        held = walks[i]
        if held is not None:
            if (
                (k0 >= held[0] if long else k0 <= held[0])
                if held[3]
                else (k0 <= held[0] if long else k0 >= held[0])
            ):
                # every step the walk took holds at this k0 too (`Walk`): resume it
                if held[1] < 0:
                    return None  # still no root above price 0
            else:
                held = None
        walks[i] = None  # none where the walk fails (NaN)
    if top is not None:
        value = top
    elif not tiers:
        per_notional = rate_s - ask * ((p.mmr or 0.0) + fee)
        if (per_notional <= 0.0) if long else (per_notional >= 0.0):
            return _NAN  # not monotone
        value = -k0 / per_notional
        if value < 0.0:
            if walks is not None:
                walks[i] = (k0, -1, 0.0, True, False)  # a decision like a step down
            return None  # the root is at a price ≤ 0: nothing liquidates
    else:
        last = len(tiers) - 1
        if held is not None:
            _, t, floor, down, up = held
        else:
            notional = q * mark
            t = 0
            while t < last and notional > tiers[t].max_notional:
                t += 1
            # each tier's line is solved for the notional, which its bracket (floor, ceiling]
            # bounds; from the current tier the walk only ever heads one way, down or up
            down = up = False
            floor = tiers[t - 1].max_notional if t else 0.0
        inside = False
        lp: float | None = None
        while True:
            tier = tiers[t]
            per_notional = rate_s - ask * (tier.mmr + fee)
            if (per_notional <= 0.0) if long else (per_notional >= 0.0):
                return _NAN  # not monotone
            value = -(k0 + (ask * tier.maintenance_amount if deduct else 0.0)) / per_notional
            if value < floor:  # the root lies below tier t
                if up:  # surplus jumps across zero at this tier edge (OKX)
                    lp = floor / q
                    break
                if not t:  # the root is at a price ≤ 0: nothing liquidates
                    t, down = -1, True  # a decision like a step down
                    break
                down = True
                t -= 1
                floor = tiers[t - 1].max_notional if t else 0.0
            elif t < last and value > tier.max_notional:  # the root lies above tier t
                if down:  # surplus jumps across zero at this tier edge (OKX)
                    lp = tier.max_notional / q
                    break
                up = True
                t += 1
                floor = tier.max_notional
            else:
                inside = True
                break
        if walks is not None and (down or up):
            # a resumed walk that took no step holds wherever the held one does
            walks[i] = held if held is not None and held[1] == t else (k0, t, floor, down, up)
        if not inside:
            return lp
    x = value / q
    # the settle asset went negative at the root: another valuation rate applies (the
    # general solver); ~0 is rounding: no price
    entry = p.entry_price
    if rate != ask and equity + (q if long else -q) * (x - entry) <= 0.0:
        return _NAN
    return x if x > mark * 1e-9 else None


def _shared_symbols(positions: Sequence[Position]) -> dict[str, list[int]]:
    """Symbols with more than one open cross position (hedge mode), to their indices."""
    if len({p.symbol for p in positions}) == len(positions):
        return {}
    by_symbol: dict[str, list[int]] = {}
    for i, p in enumerate(positions):
        if p.contracts > 0 and p.mark_price > 0 and p.margin_mode != "isolated":
            by_symbol.setdefault(p.symbol, []).append(i)
    return {symbol: indices for symbol, indices in by_symbol.items() if len(indices) > 1}


def _isolated_price(p: Position, rules: VenueRules) -> float | None:
    """LP of an isolated position, its own margin + PnL against its own MM, by the
    piecewise solver (where `liquidation_prices`' closed form does not hold)."""
    group = _Group((p,), p.inverse)
    surplus = _Surplus(group, rules, None, "", base=isolated_margin_of(p))
    return _solve(surplus, group, _tier_edges(group, rules), _x(p.mark_price, p.inverse))


def _group_price(  # noqa: PLR0917 - liquidation_prices' locals, on its rare path
    snapshot: AccountSnapshot,
    books: dict[str, AssetBook],
    pnl: Sequence[float],
    mm: Sequence[float],
    indices: Sequence[int],
    pool: dict[str, float],
    moving: str | None,
) -> float | None:
    """LP of one symbol's cross positions by the piecewise solver (no closed form)."""
    first = snapshot.positions[indices[0]]
    settle = first.settle or snapshot.currency
    book = books[settle]
    base = sum(pool.values()) - pool[settle] - (pool[moving] if moving else 0.0)
    # take this symbol's current contribution out of its settle asset's book
    own_pnl = sum(pnl[i] for i in indices)
    own_mm = sum(mm[i] for i in indices)
    book.pnl -= own_pnl
    book.mm -= own_mm
    try:
        return _cross_liquidation_price(
            snapshot, snapshot.rules, indices, book, base=base, moving=moving
        )
    finally:
        book.pnl += own_pnl
        book.mm += own_mm


def _closed_terms(book: AssetBook, base: float) -> tuple[float, float, float, float, float] | None:
    """(base, equity, rate, ask, mm) of a settle asset for the closed form, with the book's
    whole PnL and MM still in (each position takes its own out); None when its haircut is
    banded (no single rate). `base`: the surplus of every other asset.

    With a lone linear position's own PnL and MM taken out, k = base − ask·(mm − own MM),
    and its move from price 0 put back, k0 = k + rate·(equity − own PnL − s·q·entry), the
    surplus at its mark x is, tier by tier, k0 + rate·s·q·x − ask·(q·x·(mmr_t + fee) − d_t):
    the Binance formula (with OKX's and Gate's liquidation fee; the settle asset's equity
    valued at the bid rate), re-solved in the neighbouring tier when the answer falls
    outside the tier it assumed (the FAQ's instruction); monotone, so the root is unique.
    `_closed_form` walks it; NaN there (the settle asset negative at the root, a tier where
    the surplus does not rise toward safety) sends the general solver."""
    c = book.collateral
    if c.haircut_tiers:
        return None
    return base, c.amount + book.pnl, c.price * (1.0 - c.haircut), book.ask, book.mm


def _cross_liquidation_price(
    snapshot: AccountSnapshot,
    rules: VenueRules,
    indices: Sequence[int],
    book: AssetBook,
    *,
    base: float,
    moving: str | None,
) -> float | None:
    """LP of one symbol's cross positions; `book` holds every other position's share.

    The lone-linear closed form is tried by the caller (`liquidation_prices`); here the
    group is solved piecewise."""
    first = snapshot.positions[indices[0]]
    group = _Group(tuple(snapshot.positions[i] for i in indices), first.inverse)
    settle = first.settle or snapshot.currency
    surplus = _Surplus(
        group,
        rules,
        {settle: book, **({moving: _book_of(snapshot, moving)} if moving else {})},
        settle,
        base=base,
        moving=moving,
    )
    x_now = _x(first.mark_price, group.inverse)
    edges = _tier_edges(group, rules)
    edges.extend(_equity_edges(book, group, x_now))
    if moving is not None:
        edges.extend(_value_edges(_book_of(snapshot, moving)))
    return _solve(surplus, group, edges, x_now)


def _book_of(snapshot: AccountSnapshot, asset: str) -> AssetBook:
    """A collateral asset's book; only used for assets no cross position settles in."""
    return AssetBook(next(c for c in snapshot.collateral if c.asset == asset))


def _equity_edges(book: AssetBook, group: _Group, x_now: float) -> list[float]:
    """x where the settle asset's equity crosses zero or a haircut band edge."""
    slope = _pnl_slope(group)
    if slope == 0.0:
        return []
    price = _price(x_now, group.inverse)
    equity_now = book.collateral.amount + book.pnl + sum(pnl_at(p, price) for p in group.positions)
    return [x_now + (level - equity_now) / slope for level in asset_breakpoints(book.collateral)]


def _moving_asset(
    p: Position, currency: str, books: dict[str, AssetBook], settle: str
) -> str | None:
    """The collateral asset a linear X/<currency> market re-prices (see `with_prices`)."""
    asset = None if p.inverse else priced_collateral(p.symbol, currency)
    if asset is None or asset == settle or asset not in books:
        return None
    return asset


def _value_edges(book: AssetBook) -> list[float]:
    """Prices where value-based haircut bands of a re-priced collateral asset change slope."""
    c = book.collateral
    equity = c.amount + book.pnl
    if c.tier_basis != "value" or equity <= 0:
        return []
    return [band.up_to / equity for band in c.haircut_tiers if math.isfinite(band.up_to)]
