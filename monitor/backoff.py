"""Retry pacing: exponential backoff with jitter, capped; plain code, no clock.

One policy for the retry loops (`retry_delay`, and `Backoff` that counts the attempts for a
loop that keeps no count of its own), so it is tested once, exactly; the caller sleeps for
what it says. A live source's reads and streams use `Backoff` (sources/exchange.py); a loop
that counts its own tries (alert delivery, the MQTT session, an account's source task)
`retry_after`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["RETRY_CAP", "Backoff", "retry_after", "retry_delay"]

#: Longest wait of `retry_after` (seconds): the ceiling stops growing at 1.5^10 ≈ 58 s.
RETRY_CAP = 60.0


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    factor: float = 2.0,
    floor: float = 0.5,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry `attempt` (0: the first): a ceiling of `base × factor^attempt`,
    at most `cap`, and a uniform draw from `floor × ceiling` up to the ceiling.

    Jitter spreads the retries of many accounts (or queued messages) after an outage, so
    they do not arrive as one burst and earn a rate-limit ban on top of it; `floor` 0 is
    full jitter (aiomqtt's one honest line, STYLE.md), 0.5 keeps a retry from coming at once.
    """
    ceiling = min(cap, base * factor ** min(attempt, 30))
    uniform = rng.uniform if rng is not None else random.uniform
    return uniform(floor * ceiling, ceiling)


def retry_after(attempt: int) -> float:
    """Seconds before retry number `attempt` (1-based) of a loop that counts its own tries (a
    queued alert's persisted count, a broker session, an account's source task): full jitter
    up to 1.5^attempt seconds, the ceiling growing until the tenth."""
    return retry_delay(min(10, attempt), base=1.0, factor=1.5, cap=RETRY_CAP, floor=0.0)


@dataclass
class Backoff:
    """`retry_delay` with its attempt count: each failure doubles the ceiling up to `cap`,
    a success (`reset`) starts over from `base`."""

    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """The delay before the next try; each call doubles the ceiling up to `cap`."""
        delay = retry_delay(self.attempt, base=self.base, cap=self.cap, rng=self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """A success: the next failure starts from `base` again."""
        self.attempt = 0
