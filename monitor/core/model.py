"""The data every part of margin-monitor agrees on: frozen, typed, free of I/O.

Everything here is a value. Sources turn exchange payloads into these, the pure core
(`margin`, `stress`, `state`, `rules`, `actions`) computes over them, sinks render them.
Keeping them immutable is what lets the core be tested without a clock or a network,
and lets one snapshot be shared across tasks without locks.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

from monitor.core.venue_rules import VenueRules, rules_for_venue

__all__ = [
    "STABLE_ASSETS",
    "AccountSnapshot",
    "AccountUpdate",
    "Collateral",
    "CollateralFall",
    "CollateralRisk",
    "CollateralTier",
    "Event",
    "MarginMode",
    "MarginReport",
    "ModelDrift",
    "Position",
    "PositionRisk",
    "PriceTick",
    "Reduction",
    "ReductionPlan",
    "ReductionPolicy",
    "ShockToLiquidation",
    "Side",
    "SourceDown",
    "SourceStale",
    "SourceUp",
    "Tier",
    "VenueMargin",
    "base_asset",
    "priced_collateral",
    "quote_asset",
]

Side = Literal["long", "short"]
MarginMode = Literal["cross", "isolated"]

#: Assets whose price is taken not to move under a market-wide shock. A shock moves
#: every position's mark and the price of every other (volatile) collateral asset.
STABLE_ASSETS = frozenset({"USD", "USDT", "USDC", "BUSD", "FDUSD", "DAI", "TUSD", "USDE", "USDP"})


@dataclass(frozen=True, slots=True)
class Tier:
    """One step of a venue's maintenance-margin table.

    `maintenance_amount` is the cumulative deduction (Binance `cum`, Bybit "MM deduction",
    Hyperliquid "maintenance deduction") that keeps MM continuous across tiers:
    MM = notional × mmr − maintenance_amount for notional ≤ max_notional.
    """

    max_notional: float
    mmr: float
    maintenance_amount: float = 0.0
    imr: float | None = None


@dataclass(frozen=True, slots=True)
class CollateralTier:
    """A haircut band for a collateral asset (Bybit UTA tiered collateral value ratio).

    The ratio applies marginally to the part of the balance up to `up_to`, counted in
    asset units (`basis="amount"`, Bybit) or in report-currency value (`basis="value"`,
    OKX/Bitget); the last band usually has `up_to = inf`.
    """

    up_to: float
    ratio: float


@dataclass(frozen=True, slots=True)
class Collateral:
    """A balance in one asset, valued in the report currency.

    A positive balance is worth `amount × price × (1 − haircut)`; a negative one (and
    margin owed in this asset) counts at `price × (1 + liability_markup)`: Binance
    multi-assets mode's bid and ask rates are exactly this pair.
    """

    asset: str
    amount: float
    price: float = 1.0
    haircut: float = 0.0
    liability_markup: float = 0.0
    haircut_tiers: tuple[CollateralTier, ...] = ()
    tier_basis: Literal["amount", "value"] = "amount"
    beta: float | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """One open position, with sizes always non-negative and direction in `side`.

    Optional figures the venue reports (`unrealized_pnl`, `initial_margin`,
    `maintenance_margin`) win over computed ones at the current prices; any what-if
    price recomputes them from `tiers`/`mmr`/`leverage`. `liquidation_fee` is the taker
    fee rate this position pays when liquidated, where it differs from the venue's
    default (`VenueRules.liquidation_fee`; a VIP fee tier, say).
    """

    symbol: str
    side: Side
    contracts: float
    entry_price: float
    mark_price: float
    contract_size: float = 1.0
    margin_mode: MarginMode = "cross"
    leverage: float | None = None
    settle: str | None = None
    inverse: bool = False
    hedged: bool = False
    unrealized_pnl: float | None = None
    initial_margin: float | None = None
    maintenance_margin: float | None = None
    mmr: float | None = None
    tiers: tuple[Tier, ...] = ()
    isolated_margin: float | None = None
    beta: float = 1.0
    liquidation_fee: float | None = None

    @property
    def sign(self) -> int:
        """+1 for a long, −1 for a short: the factor that turns a price move into PnL."""
        return 1 if self.side == "long" else -1

    @property
    def key(self) -> tuple[str, Side]:
        """Identity of a position within an account (hedge mode holds both sides)."""
        return (self.symbol, self.side)

    def settle_notional(self, price: float) -> float:
        """Position value at `price` in the settle asset (coins for inverse contracts)."""
        size = self.contracts * self.contract_size
        if self.inverse:
            return size / price if price > 0 else math.inf
        return size * price

    def at_mark(self, price: float) -> Position:
        """The same position at another mark price.

        Venue-reported PnL and margins were true at the old mark only, so they are dropped;
        a reported figure that has no schedule behind it (no tiers, no mmr, no leverage)
        is first turned into the rate it implies, so a what-if keeps the venue's terms.
        """
        if price == self.mark_price:
            return self
        return self.scheduled().repriced(price)

    def repriced(self, price: float) -> Position:
        """`replace(self, mark_price=price)`, slot by slot: `replace` re-reads the fields
        and goes through keyword arguments (~6 µs for 18 fields), and even the frozen
        `__init__` costs ~2.8 µs (an `object.__setattr__` per field); the Ledger re-prices
        every moved position per report, ~20 000 a second at 1 000 accounts
        (docs/benchmarks.md). The slots' own setters fill a bare instance in ~1.8 µs. Figures
        are kept as they are: for a what-if use `at_mark`."""
        values = list(_position_values(self))
        values[_MARK] = price
        return _filled(values)

    def scheduled(self) -> Position:
        """The same position valued only from its schedule (tiers, mmr, leverage).

        Venue-reported figures become the rates they imply at the current mark, so every
        what-if (another price, a smaller size) recomputes on the venue's own terms.
        """
        mmr, leverage = self.mmr, self.leverage
        notional = self.settle_notional(self.mark_price)
        if notional > 0 and math.isfinite(notional):
            if self.maintenance_margin is not None and not self.tiers and mmr is None:
                mmr = self.maintenance_margin / notional
            if self.initial_margin is not None and leverage is None and self.initial_margin > 0:
                leverage = notional / self.initial_margin
        values = list(_position_values(self))  # field by field, as `repriced` says why
        values[_UPNL] = values[_MM] = values[_IM] = None
        values[_MMR], values[_LEVERAGE] = mmr, leverage
        return Position(*values)

    def resized(
        self, contracts: float, unrealized_pnl: float | None, isolated_margin: float | None
    ) -> Position:
        """`replace(self, contracts=..., unrealized_pnl=..., isolated_margin=...)`, slot by
        slot as in `repriced`: the planner builds one per trial size (~10 per plan preview,
        `stress.ReducedRatios`), and the preview is on the crash -> alert path (issue 16)."""
        values = list(_position_values(self))
        values[_CONTRACTS], values[_UPNL], values[_ISOLATED] = (
            contracts,
            unrealized_pnl,
            isolated_margin,
        )
        return _filled(values)


def base_asset(symbol: str) -> str:
    """`BTC` of `BTC/USDT:USDT` (ccxt unified symbol); the symbol itself if it has no `/`."""
    return symbol.split("/", 1)[0]


def priced_collateral(symbol: str, currency: str) -> str | None:
    """The collateral asset whose price a mark of `symbol` also sets, if any.

    A linear market quoted in the report currency prices its base asset: a BTC/USDT:USDT
    mark is what BTC collateral of a USDT account is worth. One place for this rule, shared
    by the state machine, the what-ifs, the ledger and the liquidation solver.
    """
    if "/" not in symbol or quote_asset(symbol) != currency:
        return None
    asset = base_asset(symbol)
    return None if asset == currency else asset


def quote_asset(symbol: str) -> str | None:
    """`USDT` of `BTC/USDT:USDT`; None when the symbol is not in ccxt's unified form."""
    if "/" not in symbol:
        return None
    return symbol.split("/", 1)[1].split(":", 1)[0]


_position_values = operator.attrgetter(*(f.name for f in fields(Position)))
_POSITION_FIELDS = [f.name for f in fields(Position)]
_MARK = _POSITION_FIELDS.index("mark_price")
#: each field's slot setter (the member descriptor's `__set__`, which a frozen dataclass's
#: `__setattr__` guard does not see) and a bare instance: `Position.repriced`
_SLOT_SETTERS = tuple(getattr(Position, name).__set__ for name in _POSITION_FIELDS)
_bare_position = object.__new__


def _filled(values: list[Any]) -> Position:
    """A Position of these field values, through the slots' setters (`Position.repriced`)."""
    new = _bare_position(Position)
    for set_slot, value in zip(_SLOT_SETTERS, values, strict=True):
        set_slot(new, value)
    return new


_CONTRACTS = _POSITION_FIELDS.index("contracts")
_UPNL = _POSITION_FIELDS.index("unrealized_pnl")
_MM = _POSITION_FIELDS.index("maintenance_margin")
_IM = _POSITION_FIELDS.index("initial_margin")
_MMR = _POSITION_FIELDS.index("mmr")
_LEVERAGE = _POSITION_FIELDS.index("leverage")
_ISOLATED = _POSITION_FIELDS.index("isolated_margin")


@dataclass(frozen=True, slots=True)
class VenueMargin:
    """The venue's own account figures, for an account no public formula reproduces.

    Portfolio-margin accounts (Binance PM `uniMMR`, Bybit PORTFOLIO_MARGIN, OKX portfolio
    mode) are margined on scenario risk: their live ratio is the venue's figure, in the
    Binance/Bybit direction and scaled so that 1 is the venue's liquidation line (≥ 1 is
    liquidation; Binance PM: 1.05 / uniMMR, as it liquidates at uniMMR ≤ 1.05).
    `margin_ratio` None means the account is portfolio-margined but the venue gave no
    figure: the report then says its cross-margin ratio is only an estimate
    (`MarginReport.model = "estimate"`).
    """

    margin_ratio: float | None
    maintenance_margin: float | None = None
    margin_balance: float | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """Everything needed to value one account at one instant.

    `venue_margin` is set only for accounts whose ratio is the venue's own figure; a
    what-if (other prices) drops it, since the venue's figure holds at its prices only.
    """

    account: str
    currency: str
    collateral: tuple[Collateral, ...]
    positions: tuple[Position, ...]
    venue: str | None = None
    venue_margin: VenueMargin | None = None

    @property
    def rules(self) -> VenueRules:
        """The venue's conventions for this account."""
        return rules_for_venue(self.venue)


class PositionRisk(NamedTuple):
    """One position's figures inside a report, in the report currency.

    A NamedTuple, not a frozen dataclass like the rest: a report builds one per position,
    and a frozen dataclass's `__init__` (one `object.__setattr__` per field) was 1.1 ms of
    a 4 ms 1 000-position report (the 2 ms goal, docs/benchmarks.md). Just as immutable and typed.
    """

    symbol: str
    side: Side
    margin_mode: MarginMode
    contracts: float
    mark_price: float
    notional: float
    unrealized_pnl: float
    initial_margin: float
    maintenance_margin: float
    margin_ratio: float | None
    liquidation_price: float | None
    hedged: bool = False


@dataclass(frozen=True, slots=True)
class ShockToLiquidation:
    """Smallest relative move of all prices that liquidates: `down` < 0 < `up`, None if none."""

    down: float | None
    up: float | None


@dataclass(frozen=True, slots=True)
class CollateralFall:
    """One non-stable collateral asset: its margin value (after haircut), its share of the
    margin balance, and the fall of its price alone that liquidates the account (in
    (−1, 0]; None when even a fall to zero does not)."""

    asset: str
    value: float
    share: float | None
    fall: float | None


@dataclass(frozen=True, slots=True)
class CollateralRisk:
    """Collateral risk in the user's terms: how much of the margin balance is non-stable
    collateral, and per asset the fall that liquidates (`monitor.core.collateral_risk`)."""

    non_stable_share: float | None
    assets: tuple[CollateralFall, ...]


@dataclass(frozen=True, slots=True)
class MarginReport:
    """The state of an account's cross pool, plus every position's own figures.

    `margin_ratio` = maintenance_margin / margin_balance: 0 is no risk and ≥ 1 is
    liquidation (Binance/Bybit convention); +inf when the margin balance is ≤ 0 under an
    open cross position; 0 when nothing is open in the cross pool (`valuation.margin_ratio`).
    `model` says where the ratio comes from: "cross" (our model of the venue's cross
    margin), "venue" (the venue's own figure: portfolio margin; position figures, liquidation
    prices and shocks are then cross-model estimates), "estimate" (portfolio margin without
    a venue figure: the cross model is only an estimate).
    """

    account: str
    currency: str
    wallet_balance: float
    unrealized_pnl: float
    margin_balance: float
    initial_margin: float
    maintenance_margin: float
    margin_ratio: float
    margin_level: float
    free_collateral: float
    liquidated: bool
    positions: tuple[PositionRisk, ...]
    shock_to_liquidation: ShockToLiquidation | None = None
    model: Literal["cross", "venue", "estimate"] = "cross"
    collateral_risk: CollateralRisk | None = None
    #: Our model's ratio, where `margin_ratio` is the used one (venue_ratio.with_venue);
    #: None on a report nobody compared with a venue.
    model_ratio: float | None = None
    #: The venue's own ratio of the last read, carried forward by our model's change since;
    #: None where the venue reports none.
    venue_ratio: float | None = None

    @property
    def finite_ratio(self) -> bool:
        """False when the pool is already wiped out (ratio = +inf)."""
        return math.isfinite(self.margin_ratio)


# --- events: what a source tells the daemon ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceTick:
    """A new mark price for one symbol (also moves collateral priced off the same asset).

    `ts` is the venue's timestamp of the price where the venue sends one, else its receive
    time: an older tick never replaces a newer mark (state.apply, Ledger.tick).
    """

    account: str
    symbol: str
    mark_price: float
    ts: float


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """One read of the whole account, applied as one: positions, balances and the marks
    they were valued at (docs/account-view.md: the view is always one the venue could have had).

    A REST reconciliation or a fill the sim announces. Never split into a positions event
    and a balance event: a report between the two halves met new positions with the old
    wallet (docs/account-view.md: 0.088 reported where the venue said 0.51).

    - `ts`: when the read was *sent* (seconds, the source's clock). Every value in it is at
      least that new, so a streamed mark stamped later than `ts` is kept over the read's
      (`state.apply` holds the ordering rule; docs/account-view.md).
    - `positions`, `collateral`: authoritative, they replace the held ones wholesale.
      `collateral` carries each asset's amount, price and haircut as read: the place for
      the venue's collateral rules (live haircut reads land here).
    - `marks`: symbol -> price of every market the read priced something with (positions'
      marks, the symbols that price collateral).
    - `venue_ratio`: the venue's own account margin ratio from the same read, where the
      venue reports one (Binance totalMaintMargin / totalMarginBalance, Bybit
      accountMMRate, ...); None where it does not.
    - `venue_margin`: for a portfolio-margin account only, the venue's figures as the live
      ratio (`VenueMargin`, docs/collateral.md); None for every other account.
    """

    account: str
    positions: tuple[Position, ...]
    collateral: tuple[Collateral, ...]
    ts: float
    marks: tuple[tuple[str, float], ...] = ()
    venue_ratio: float | None = None
    venue_margin: VenueMargin | None = None


@dataclass(frozen=True, slots=True)
class SourceStale:
    """A data kind (`prices`, `positions`, `balance`) has been silent for `age` seconds."""

    account: str
    kind: str
    age: float


@dataclass(frozen=True, slots=True)
class SourceDown:
    """The source gave up for a reason a person must fix (bad keys, permission)."""

    account: str
    reason: str


@dataclass(frozen=True, slots=True)
class SourceUp:
    """Fresh data flows again for `kind` (clears a stale or down condition)."""

    account: str
    kind: str


@dataclass(frozen=True, slots=True)
class ModelDrift:
    """Our ratio and the venue's own, from the same reads, disagree beyond the tolerance on
    two reads in a row (`drifting`), or agree again (not `drifting`): the daemon's
    `model_drift` signal (monitor/core/venue_ratio.py)."""

    account: str
    drifting: bool
    model_ratio: float
    venue_ratio: float


Event = PriceTick | AccountUpdate | SourceStale | SourceDown | SourceUp | ModelDrift


# --- what-if results: the minimal reduction the stress solver proposes ---------------------

ReductionPolicy = Literal["largest_mm_contributor", "worst_pnl", "proportional"]


@dataclass(frozen=True, slots=True)
class Reduction:
    """Close `contracts` of one position (reduce-only); sizes are unrounded solver output."""

    symbol: str
    side: Side
    contracts: float
    notional: float
    hedged: bool = False


@dataclass(frozen=True, slots=True)
class ReductionPlan:
    """The smallest reduce-only quantities that bring the ratio to `target_ratio`.

    `reached` is False when even closing everything the policy allows cannot get there; the
    reductions are then the best effort. Closing every cross position leaves no MM, hence
    ratio 0, so a wiped-out balance (ratio +inf) is reached only by closing it all.
    """

    policy: ReductionPolicy
    target_ratio: float
    ratio_before: float
    ratio_after: float
    reached: bool
    reductions: tuple[Reduction, ...]
