"""The latest view of one account, and how each source event changes it. Pure; no clock.

A source streams small events (one mark price, the full position list, the full balance
list); the daemon folds each read into an `AccountState` with `apply` and recomputes the
margin report only when `apply` says something that matters for the money changed. Like
h11's sans-IO protocol objects (STYLE.md), this never does I/O: the event carries its own
time. The daemon's ticks take the O(1) path, the `Ledger` (core/margin/ledger.py); `apply`
on a tick is the plain, whole-snapshot statement of the same rules, which the Ledger is
held to (tests/test_daemon_ticks.py) and which tests use to fold a stream.

Rules, and why (the ordering rule; docs/account-view.md says it for users):
- Every mark carries a time: a `PriceTick` its venue timestamp (else its receive time), an
  `AccountUpdate` the time its read was *sent*. Per symbol, a mark older than the one held
  is dropped, whichever path brought it: a REST read that was in flight while a newer mark
  streamed in must not put the older price back (docs/account-view.md: a false resolved 55 ms
  after a warning). Equal times: the later arrival wins.
- A `PriceTick` moves every position of that symbol (hedge mode holds a long and a short)
  through `Position.at_mark`, which drops the venue-reported PnL and margins: they were true
  at the old price only, so the core recomputes them from the tiers (docs/development.md: a
  field the venue reports wins at its own price; what-if prices always recompute). It also
  re-prices collateral in the symbol's base asset when the symbol is quoted in the account
  currency (a BTC/USDT:USDT tick moves BTC collateral of a USDT account), matching
  `stress.with_prices`.
- A tick with the same price, or for a symbol the account neither holds nor uses as
  collateral, changes no figure; a same-price tick still counts as fresh price data.
- An `AccountUpdate` (one whole read) is applied at once: its positions and balances are
  authoritative and replace the held ones wholesale, so no figure is ever computed from
  half a read. Its marks are merged by the rule above: where a newer mark is held for a
  symbol, the read's positions and collateral of that symbol are re-priced to it. A read
  sent before the last applied read is dropped whole.
- Source health events (`SourceStale`, `SourceDown`, `SourceUp`) belong to the alert rules,
  not to the account's figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Collateral,
    Event,
    Position,
    PriceTick,
    priced_collateral,
)

__all__ = ["AccountState", "Marks", "apply", "initial_state", "merge_read"]

#: symbol -> (price, time the price was true: venue timestamp, else receive or send time)
Marks = Mapping[str, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account's snapshot, when its last applied read was sent, and its newest marks.

    `read_at` is the read's own `ts` (seconds, the source's clock; None: no read yet): a
    read sent before it is dropped whole. `marks` holds the newest mark per symbol with its
    time, for the ordering rule (never mutated: each change makes a new dict). Staleness
    is the sources' and the metrics sink's business (their own clocks), not this view's.
    """

    snapshot: AccountSnapshot
    read_at: float | None = None
    marks: Marks = field(default_factory=dict)


def initial_state(snapshot: AccountSnapshot, ts: float) -> AccountState:
    """A state from a full read (`Source.fetch_snapshot`) sent at `ts`."""
    marks = {p.symbol: (p.mark_price, ts) for p in snapshot.positions}
    return AccountState(snapshot, read_at=ts, marks=marks)


def apply(state: AccountState, event: Event) -> tuple[AccountState, bool]:
    """Fold one event into the state; the flag says whether any figure changed.

    Events of another account are ignored (the daemon routes per account; this is a guard,
    not a feature). The flag is what drives a recompute, so it must be False for every
    event that leaves the snapshot equal.
    """
    if event.account != state.snapshot.account:
        return state, False
    if isinstance(event, PriceTick):
        return _apply_tick(state, event)
    if isinstance(event, AccountUpdate):
        return _apply_read(state, event)
    return state, False


def merge_read(
    read: AccountUpdate, held: Marks, currency: str
) -> tuple[tuple[Position, ...], tuple[Collateral, ...], dict[str, tuple[float, float]]]:
    """The read's positions and collateral with every mark newer than the read kept.

    Returns them and the merged marks. Positions and balances come from the read (they are
    authoritative); a price is the read's unless `held` has one for that symbol stamped
    after the read was sent.
    """
    marks = dict(held)
    newer: dict[str, float] = {}
    for symbol, (price, at) in held.items():
        if at > read.ts:
            newer[symbol] = price
    read_marks = [*read.marks, *((p.symbol, p.mark_price) for p in read.positions)]
    for symbol, price in read_marks:
        if symbol not in newer:
            marks[symbol] = (price, read.ts)
    if not newer:
        return read.positions, read.collateral, marks
    positions = tuple(
        p.at_mark(newer[p.symbol]) if p.symbol in newer else p for p in read.positions
    )
    prices: dict[str, float] = {}
    for symbol, price in newer.items():
        asset = priced_collateral(symbol, currency)
        if asset is not None:
            prices[asset] = price
    collateral = tuple(
        replace(c, price=prices[c.asset]) if c.asset in prices and c.price != prices[c.asset] else c
        for c in read.collateral
    )
    return positions, collateral, marks


def _apply_read(state: AccountState, read: AccountUpdate) -> tuple[AccountState, bool]:
    if state.read_at is not None and read.ts < state.read_at:
        return state, False  # a read sent before the one already applied
    snapshot = state.snapshot
    positions, collateral, marks = merge_read(read, state.marks, snapshot.currency)
    changed = (
        positions != snapshot.positions
        or collateral != snapshot.collateral
        or read.venue_margin != snapshot.venue_margin
    )
    if changed:
        snapshot = replace(
            snapshot, positions=positions, collateral=collateral, venue_margin=read.venue_margin
        )
    return replace(state, snapshot=snapshot, read_at=read.ts, marks=marks), changed


def _apply_tick(state: AccountState, tick: PriceTick) -> tuple[AccountState, bool]:
    # A price that is not a positive finite number cannot be a mark; the source's
    # normaliser should have rejected it, and the core must not divide by it.
    if not (math.isfinite(tick.mark_price) and tick.mark_price > 0.0):
        return state, False
    held = state.marks.get(tick.symbol)
    if held is not None and tick.ts < held[1]:
        return state, False  # older than the mark held: the ordering rule
    marks = dict(state.marks)
    marks[tick.symbol] = (tick.mark_price, tick.ts)
    snapshot = state.snapshot
    relevant = False
    positions = snapshot.positions
    if any(p.symbol == tick.symbol for p in positions):
        relevant = True
        positions = tuple(
            p.at_mark(tick.mark_price) if p.symbol == tick.symbol else p for p in positions
        )
    collateral = snapshot.collateral
    asset = priced_collateral(tick.symbol, snapshot.currency)
    if asset is not None and any(c.asset == asset for c in collateral):
        relevant = True
        collateral = tuple(
            replace(c, price=tick.mark_price)
            if c.asset == asset and c.price != tick.mark_price
            else c
            for c in collateral
        )
    if not relevant:
        return state, False  # not held: the next read's marks set it (bounded memory)
    changed = positions != snapshot.positions or collateral != snapshot.collateral
    if changed:
        snapshot = replace(snapshot, positions=positions, collateral=collateral)
    return replace(state, snapshot=snapshot, marks=marks), changed
