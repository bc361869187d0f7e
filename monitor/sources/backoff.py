"""Polling slow-down and freshness clocks for a live source: plain objects, time passed in.

Kept free of asyncio and of the clock so the policies can be tested exactly; the
exchange source feeds them `time.monotonic()` and sleeps for what they say. The retry
pacing itself is `monitor/backoff.py`, shared with the alert delivery.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Freshness", "FreshnessChange", "Throttle"]


@dataclass
class Throttle:
    """A polling slow-down factor: doubles on every rate-limit answer, halves on success.

    Venues ban clients that keep hammering after a 429 (Binance 418, docs/venues.md);
    backing off the whole polling rate, not only the failed request, is what avoids it.
    """

    factor: float = 1.0
    limit: float = 16.0

    def penalise(self) -> None:
        self.factor = min(self.limit, self.factor * 2.0)

    def relax(self) -> None:
        self.factor = max(1.0, self.factor / 2.0)


@dataclass(frozen=True, slots=True)
class FreshnessChange:
    """A data kind went stale (`stale=True`, with its age) or fresh again."""

    kind: str
    stale: bool
    age: float


@dataclass
class Freshness:
    """One clock per data kind (`prices`, `positions`, `balance`): last fresh time and
    whether `stale` has been announced, so each transition is reported exactly once."""

    stale_after: float
    last: dict[str, float] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)

    def start(self, kind: str, now: float) -> None:
        """Begin watching `kind` (its age counts from now until the first data)."""
        self.last.setdefault(kind, now)

    def stop(self, kind: str) -> None:
        """No data of this kind is expected any more (no open positions to price)."""
        self.last.pop(kind, None)
        self.stale.discard(kind)

    def fresh(self, kind: str, now: float) -> FreshnessChange | None:
        """Fresh data arrived; returns the change if `kind` was stale."""
        self.last[kind] = now
        if kind in self.stale:
            self.stale.discard(kind)
            return FreshnessChange(kind, stale=False, age=0.0)
        return None

    def age(self, kind: str, now: float) -> float:
        return now - self.last.get(kind, now)

    def check(self, now: float) -> list[FreshnessChange]:
        """Kinds whose age just passed `stale_after`."""
        out = []
        for kind, last in self.last.items():
            age = now - last
            if age > self.stale_after and kind not in self.stale:
                self.stale.add(kind)
                out.append(FreshnessChange(kind, stale=True, age=age))
        return out
