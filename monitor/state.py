"""The latest view of one account, and how each source event changes it. Pure; no clock.

A source streams small events (one mark price, the full position list, the full balance
list); the daemon folds them into an `AccountState` with `apply` and recomputes the margin
report only when `apply` says something that matters for the money changed. Like h11's
sans-IO protocol objects (STYLE.md), this never does I/O: the event carries its own time.

Rules, and why:
- A `PriceTick` moves every position of that symbol (hedge mode holds a long and a short)
  through `Position.at_mark`, which drops the venue-reported PnL and margins: they were true
  at the old price only, so the core recomputes them from the tiers (DESIGN.md, "a field the
  venue reports wins ... what-if prices always recompute"). It also re-prices collateral in
  the symbol's base asset when the symbol is quoted in the account currency (a BTC/USDT:USDT
  tick moves BTC collateral of a USDT account), matching `stress.with_prices`.
- A tick with the same price, or for a symbol the account neither holds nor uses as
  collateral, changes no figure; a same-price tick still counts as fresh price data.
- `PositionsUpdate` and `BalanceUpdate` are full reads (REST reconciliation or a full
  stream frame): they replace wholesale. One older than the last of its kind is dropped, so
  a slow REST answer can never undo a newer stream frame.
- Source health events (`SourceStale`, `SourceDown`, `SourceUp`) belong to the alert rules,
  not to the account's figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from monitor.model import (
    AccountSnapshot,
    BalanceUpdate,
    Event,
    PositionsUpdate,
    PriceTick,
    priced_collateral,
)

__all__ = ["KINDS", "AccountState", "DataKind", "apply", "initial_state"]

DataKind = Literal["prices", "positions", "balance"]
KINDS: tuple[DataKind, ...] = ("prices", "positions", "balance")


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account's snapshot plus when each kind of data was last seen fresh.

    The timestamps are the events' own `ts` (seconds, the source's clock); None means that
    kind has not arrived yet. The daemon's staleness check reads them.
    """

    snapshot: AccountSnapshot
    prices_at: float | None = None
    positions_at: float | None = None
    balance_at: float | None = None

    def updated_at(self, kind: DataKind) -> float | None:
        """When data of `kind` last arrived (None: never)."""
        if kind == "prices":
            return self.prices_at
        if kind == "positions":
            return self.positions_at
        return self.balance_at


def initial_state(snapshot: AccountSnapshot, ts: float) -> AccountState:
    """A state from a full read (`Source.fetch_snapshot`): every kind is fresh at `ts`."""
    return AccountState(snapshot, prices_at=ts, positions_at=ts, balance_at=ts)


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
    if isinstance(event, PositionsUpdate):
        if state.positions_at is not None and event.ts < state.positions_at:
            return state, False
        changed = event.positions != state.snapshot.positions
        snapshot = replace(state.snapshot, positions=event.positions) if changed else state.snapshot
        return replace(state, snapshot=snapshot, positions_at=event.ts), changed
    if isinstance(event, BalanceUpdate):
        if state.balance_at is not None and event.ts < state.balance_at:
            return state, False
        changed = (event.collateral != state.snapshot.collateral
                   or event.venue_margin != state.snapshot.venue_margin)
        snapshot = (
            replace(state.snapshot, collateral=event.collateral,
                    venue_margin=event.venue_margin) if changed else state.snapshot
        )
        return replace(state, snapshot=snapshot, balance_at=event.ts), changed
    return state, False


def _apply_tick(state: AccountState, tick: PriceTick) -> tuple[AccountState, bool]:
    # A price that is not a positive finite number cannot be a mark; the source's
    # normaliser should have rejected it, and the core must not divide by it.
    if not (math.isfinite(tick.mark_price) and tick.mark_price > 0.0):
        return state, False
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
        return state, False
    changed = positions != snapshot.positions or collateral != snapshot.collateral
    prices_at = tick.ts if state.prices_at is None else max(state.prices_at, tick.ts)
    if changed:
        snapshot = replace(snapshot, positions=positions, collateral=collateral)
    return replace(state, snapshot=snapshot, prices_at=prices_at), changed
