"""What the daemon needs from a venue: a stream of events and a fresh read.

The sim (`sources/sim.py`) and a live ccxt account (`sources/exchange.py`) share no code yet
look the same to the daemon: `events()` is the live stream (prices, full position and
balance reads, health events); `fetch_snapshot()` is a fresh full read used at start-up and
whenever a caller must not trust the streamed view; `venue_drift()` says how far our ratio is
from the venue's own figure. Their order side is the `OrderDesk` of
`protect/desk.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from monitor.core.model import AccountSnapshot, Event

__all__ = ["Source"]


@runtime_checkable
class Source(Protocol):
    """One account's data feed. `close()` must be safe to call more than once."""

    @property
    def account(self) -> str:
        """The configured account name, as used in every event."""
        ...

    def events(self) -> AsyncIterator[Event]:
        """The live stream; ends only when the source has nothing more to say (a replay)."""
        ...

    async def fetch_snapshot(self) -> AccountSnapshot:
        """A fresh full read of balances, positions and marks."""
        ...

    def venue_drift(self) -> float | None:
        """Our margin ratio minus the venue's own from the last read that carried one (None:
        the venue reports none, or no read yet); the metrics sink exports it."""
        ...

    async def close(self) -> None:
        """Release connections and stop the stream."""
        ...
