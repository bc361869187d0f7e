"""Retry pacing and freshness clocks (monitor/backoff.py, sources/backoff.py): exact, no clock."""

from __future__ import annotations

import random

import pytest

from monitor.backoff import RETRY_CAP, Backoff, retry_after, retry_delay
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


class TestRetryDelay:
    @pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10])
    def test_full_jitter_bounds(self, attempt: int) -> None:
        """Test that floor 0 draws from [0, base x factor^attempt], capped."""
        rng = random.Random(attempt)
        delays = [
            retry_delay(attempt, base=1.0, factor=1.5, cap=20.0, floor=0.0, rng=rng)
            for _ in range(200)
        ]
        ceiling = min(20.0, 1.5**attempt)
        assert 0.0 <= min(delays) < ceiling / 4  # the lower part of the range is reached
        assert ceiling * 3 / 4 < max(delays) <= ceiling
        assert len(set(delays)) > 100  # jittered, not a constant

    def test_floor_keeps_half_the_ceiling(self) -> None:
        """Test that the default floor never retries sooner than half the ceiling."""
        rng = random.Random(5)
        delays = [retry_delay(3, base=0.5, cap=30.0, rng=rng) for _ in range(200)]
        assert min(delays) >= 2.0
        assert max(delays) <= 4.0

    def test_huge_attempt_stays_at_the_cap(self) -> None:
        """Test that an attempt count in the thousands neither overflows nor passes the cap."""
        delay = retry_delay(10_000, base=0.5, cap=30.0, rng=random.Random(6))
        assert 15.0 <= delay <= 30.0

    def test_backoff_draws_what_retry_delay_draws(self) -> None:
        """Test that Backoff is retry_delay with a counter: the same draws from the same seed."""
        backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(7))
        rng = random.Random(7)
        expected = [retry_delay(n, base=0.5, cap=4.0, rng=rng) for n in range(6)]
        assert [backoff.next_delay() for _ in range(6)] == expected


class TestRetryAfter:
    @pytest.mark.parametrize("attempt", [1, 2, 5, 10, 11, 50])
    def test_bounds(self, attempt: int) -> None:
        """Test that the delay is jittered within [0, 1.5**min(10, attempt)] and capped."""
        delays = [retry_after(attempt) for _ in range(200)]
        assert min(delays) >= 0
        assert max(delays) <= min(RETRY_CAP, 1.5 ** min(10, attempt))
        assert len(set(delays)) > 100  # jittered, not a constant

    def test_draws_from_the_shared_generator(self) -> None:
        """Test that a seeded `random` gives the same delays as `random.uniform` did."""
        state = random.getstate()
        try:
            random.seed(11)
            first = [retry_after(4) for _ in range(5)]
            random.seed(11)
            assert first == [random.uniform(0, 1.5**4) for _ in range(5)]
        finally:
            random.setstate(state)


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
