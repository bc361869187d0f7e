"""Retry pacing and freshness clocks (monitor/backoff.py, sources/backoff.py): exact, no clock."""

from __future__ import annotations

import random

from monitor.backoff import Backoff
from monitor.sources.backoff import Freshness, FreshnessChange, Throttle


class TestBackoff:
    def test_jittered_doubling_up_to_the_cap(self) -> None:
        """Test that each delay lies in [ceiling/2, ceiling] and the ceiling doubles to the cap."""
        backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
        ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        for ceiling in ceilings:
            delay = backoff.next_delay()
            assert ceiling / 2 <= delay <= ceiling

    def test_reset_starts_over(self) -> None:
        """Test that a success brings the next delay back to the base."""
        backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(2))
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        assert backoff.next_delay() <= 1.0

    def test_jitter_spreads_accounts(self) -> None:
        """Test that two accounts failing together do not retry at the same instant."""
        a = Backoff(rng=random.Random(3))
        b = Backoff(rng=random.Random(4))
        assert [a.next_delay() for _ in range(4)] != [b.next_delay() for _ in range(4)]


class TestThrottle:
    def test_penalise_and_relax(self) -> None:
        """Test that rate limits double the slow-down up to its limit and successes halve it."""
        throttle = Throttle(limit=8.0)
        for _ in range(5):
            throttle.penalise()
        assert throttle.factor == 8.0
        throttle.relax()
        assert throttle.factor == 4.0
        for _ in range(5):
            throttle.relax()
        assert throttle.factor == 1.0


class TestFreshness:
    def test_stale_once_then_fresh_once(self) -> None:
        """Test that each transition is reported exactly once, with the age at detection."""
        clock = Freshness(stale_after=10.0)
        clock.start("prices", now=0.0)
        assert clock.check(now=9.0) == []
        assert clock.check(now=10.5) == [FreshnessChange("prices", stale=True, age=10.5)]
        assert clock.check(now=20.0) == []
        assert clock.fresh("prices", now=21.0) == FreshnessChange("prices", stale=False, age=0.0)
        assert clock.fresh("prices", now=22.0) is None

    def test_stopped_kind_is_never_stale(self) -> None:
        """Test that a kind with nothing to watch (no positions to price) never goes stale."""
        clock = Freshness(stale_after=1.0)
        clock.start("prices", now=0.0)
        clock.stop("prices")
        assert clock.check(now=100.0) == []
