"""Tests for monitor/core/shock_schedule.py: one CPU budget for every account's shock solve."""

from __future__ import annotations

import itertools
import math

import pytest

from monitor.core.alert_config import AlertConfig
from monitor.core.shock_schedule import ShockClaim, ShockScheduler

COST = 0.004  # CPU seconds per solve: 20 positions, before the lead's faster solver


def _scheduler(accounts: int, **kw: float) -> tuple[ShockScheduler, list[ShockClaim]]:
    scheduler = ShockScheduler(1.0, AlertConfig(), **kw)
    claims = [scheduler.register(f"a{i:04d}") for i in range(accounts)]
    for claim in claims:
        claim.changed = True
        claim.ratio = 0.05
    return scheduler, claims


def _run(
    scheduler: ShockScheduler, claims: list[ShockClaim], seconds: float, start: float = 0.0
) -> list[tuple[float, str]]:
    """Drive the scheduler on a virtual clock as the daemon's `shocks` task does; every
    account's figures change again right after each solve (a busy market)."""
    now = start
    solves: list[tuple[float, str]] = []
    while now < start + seconds:
        picked, wait = scheduler.pick(now)
        if not picked:
            assert wait is not None
            now += wait
            continue
        for claim in picked:
            now += COST
            scheduler.solved(claim, now, 0.3, COST)
            solves.append((now, claim.account))
            claim.changed = True
    return solves


class TestBudget:
    def test_solves_across_many_accounts_stay_within_the_share(self) -> None:
        """Test that 1 000 busy accounts get share x time / cost solves, not 1 000 a second."""
        scheduler, claims = _scheduler(1_000, share=0.25, burst=0.25)
        solves = _run(scheduler, claims, 20.0)
        budget = (0.25 * 20.0 + 0.25) / COST
        assert len(solves) <= budget + 8  # one handful may overdraw the bucket
        assert len(solves) >= 0.9 * budget  # and the budget is used, not left idle

    def test_the_account_in_danger_is_solved_every_interval(self) -> None:
        """Test that an account past the warning ratio gets its solve each interval despite
        999 others queueing for the same budget."""
        scheduler, claims = _scheduler(1_000, share=0.25, burst=0.25)
        claims[500].ratio = 0.6  # past warning (0.5)
        solves = _run(scheduler, claims, 20.0)
        times = [t for t, account in solves if account == "a0500"]
        assert len(times) >= 18
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 1.0 + 0.1  # its interval, plus one handful of others' solves

    def test_a_small_last_shock_counts_as_danger(self) -> None:
        """Test that an account whose last shock is within the shock warning goes first."""
        scheduler, claims = _scheduler(50, share=0.25, burst=0.0)
        for claim in claims:
            claim.solved_at, claim.shock = 0.0, 0.5
        claims[7].shock = 0.04  # a 4 % move liquidates: inside shock_warning (10 %)
        assert scheduler.danger(claims[7]) > 1.0
        scheduler.tokens = 0.001
        picked, _ = scheduler.pick(2.0)
        assert picked[0] is claims[7]

    def test_nearest_to_danger_first(self) -> None:
        """Test that outside any alert zone the highest ratio goes first, then the oldest."""
        scheduler, claims = _scheduler(5)
        for i, claim in enumerate(claims):
            claim.solved_at = float(i)
        claims[3].ratio = 0.3
        claims[1].ratio = 0.2
        picked, _ = scheduler.pick(10.0, limit=5)
        assert [c.account for c in picked] == ["a0003", "a0001", "a0000", "a0002", "a0004"]

    def test_an_urgent_claim_skips_its_interval(self) -> None:
        """Test that a claim flagged urgent (a threshold crossed) is due before its interval."""
        scheduler, claims = _scheduler(3)
        for claim in claims:
            claim.solved_at = 9.9
        assert scheduler.pick(10.0) == ([], pytest.approx(0.9))
        claims[2].urgent = True
        picked, _ = scheduler.pick(10.0)
        assert picked == [claims[2]]
        scheduler.solved(claims[2], 10.0, 0.05, COST)
        assert not claims[2].urgent
        assert not claims[2].changed

    def test_unchanged_accounts_are_never_solved(self) -> None:
        """Test that an account whose figures did not change since its solve is not due."""
        scheduler, claims = _scheduler(2)
        for claim in claims:
            scheduler.solved(claim, 0.0, 0.2, COST)
        assert scheduler.pick(100.0) == ([], None)

    def test_no_figure_outlives_the_max_age(self) -> None:
        """Test that with the budget spent, an account past max_age is still solved."""
        scheduler, claims = _scheduler(3, share=0.25, burst=0.25, max_age=60.0)
        for claim in claims:
            claim.solved_at = 0.0
        claims[1].solved_at = -5.0
        scheduler.tokens = -10.0  # spent for the next 40 s
        picked, _ = scheduler.pick(54.0)  # a0001's figure is 59 s old
        assert picked == []
        picked, _ = scheduler.pick(56.0)  # 61 s
        assert picked == [claims[1]]
        assert scheduler.overdue_solves == 1

    def test_a_first_solve_waits_for_the_budget(self) -> None:
        """Test that accounts never solved queue for the budget instead of bypassing it."""
        scheduler, claims = _scheduler(100)
        scheduler.tokens = -1.0
        picked, wait = scheduler.pick(0.0)
        assert picked == []
        assert wait == pytest.approx(1.0 / scheduler.share, rel=0.01)
        assert all(c.solved_at == -math.inf for c in claims)


class TestGrant:
    def test_inline_while_the_budget_is_mostly_unspent(self) -> None:
        """Test that a due account solves inline with plenty banked, not when it is contended."""
        scheduler, claims = _scheduler(1)
        (claim,) = claims
        assert scheduler.grant(claim, 0.0)
        scheduler.solved(claim, 0.0, 0.2, COST)
        claim.changed = True
        assert not scheduler.grant(claim, 0.5)  # its interval (1 s) has not passed
        assert scheduler.grant(claim, 1.0)
        scheduler.tokens = 0.01
        assert not scheduler.grant(claim, 1.0)  # contended: the `shocks` task decides

    def test_forget_keeps_a_successor(self) -> None:
        """Test that forgetting a replaced claim leaves the restarted account's new claim."""
        scheduler, (old,) = _scheduler(1)
        new = scheduler.register(old.account)
        scheduler.forget(old.account, old)
        assert scheduler.claims[old.account] is new
        scheduler.forget(old.account, new)
        assert not scheduler.claims
