"""Retry pacing: full-jitter exponential backoff, capped; a plain object, no clock.

One policy for every retry loop (a live source's reads and streams, alert delivery, the MQTT
session), so they are tested once, exactly; the caller sleeps for what it says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Full-jitter exponential backoff, capped (aiomqtt's one honest line, STYLE.md).

    Jitter spreads the reconnects of many accounts after a venue-wide outage so they do
    not arrive as one burst and earn a rate-limit ban on top of the outage.
    """

    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """The delay before the next try; each call doubles the ceiling up to `cap`."""
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """A success: the next failure starts from `base` again."""
        self.attempt = 0
