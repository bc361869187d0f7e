"""Which account's shock-to-liquidation solve runs next, within one CPU budget for all.

The shock solve (`stress.assess`) costs a few plain reports (~165 µs at 20 positions since
the pre-summed curve, `core/shock_curve.py`; ~30 reports before it). Solving every account
every `shock_interval` seconds costs accounts × solve time per interval: 1 000 accounts × 20
positions at 1 s is ~17 % of a core, and more accounts or positions would starve the tick
path (docs/benchmarks.md). So the solves of every account share one budget, a token bucket
of CPU seconds refilled at `share` of one core (at most `burst` seconds banked), and the
scheduler hands it out:

- An account is a candidate once its state changed since its last solve (an unchanged
  account's figures are still exact) and its last solve is at least `interval` old, or it
  was flagged `urgent` (its ratio just crossed an alert threshold toward danger).
- Candidates go nearest-to-danger first: in an alert zone (ratio ≥ the warning threshold,
  or the last shock within the shock warning), then by `danger` (the larger of ratio /
  warning and shock warning / last shock), then the oldest solve.
- While the budget is mostly unspent (a quiet market, a small deployment), an account due
  for a solve takes it inline with its regular report (`grant`).
- No figure grows older than `max_age` while the account changes: an account past it is
  solved even when the budget is spent (that costs at most accounts × solve / max_age).
  An account never solved yet queues right after those in danger.

Pure bookkeeping: no I/O, no clock (the daemon passes monotonic `now` in and charges the
CPU time each solve took).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from monitor.core.alert_config import AlertConfig

__all__ = ["ShockClaim", "ShockScheduler"]


@dataclass(slots=True)
class ShockClaim:
    """One account's standing with the scheduler; the account's own task updates it per tick."""

    account: str
    solved_at: float = -math.inf
    changed: bool = False  # set by the account once it has data
    urgent: bool = False
    ratio: float = 0.0
    shock: float | None = None


class ShockScheduler:
    """A CPU budget for shock solves, shared by every account of the process."""

    def __init__(
        self,
        interval: float,
        config: AlertConfig,
        *,
        share: float = 0.25,
        burst: float = 0.25,
        max_age: float = 60.0,
    ) -> None:
        """`interval`: an account's solves are at least this far apart (settings.shock_interval);
        `share`: fraction of one core the solves may take on average; `burst`: CPU seconds
        that may be banked while idle; `max_age`: the oldest a changing account's figure gets.
        """
        self.interval = interval
        self.max_age = max(max_age, interval)
        self.share = share
        self.burst = burst
        self.tokens = burst
        self.claims: dict[str, ShockClaim] = {}
        self.solves = 0
        self.overdue_solves = 0
        #: CPU seconds charged by every solve so far (the budget's own spending, which a
        #: throughput figure separates from the tick path's: docs/benchmarks.md)
        self.cpu = 0.0
        self._warning = config.warning
        self._shock_warning = config.shock_warning
        self._refilled_at: float | None = None

    def register(self, account: str) -> ShockClaim:
        """A fresh claim for `account` (a restarted account starts over: never solved)."""
        claim = self.claims[account] = ShockClaim(account)
        return claim

    def forget(self, account: str, claim: ShockClaim | None = None) -> None:
        """Drop the account (removed by a reload); only `claim` if given (not its successor)."""
        if claim is None or self.claims.get(account) is claim:
            self.claims.pop(account, None)

    def danger(self, claim: ShockClaim) -> float:
        """How near the account is to an alert: ≥ 1 inside a warning zone (ratio or shock)."""
        level = claim.ratio / self._warning if self._warning > 0 else 0.0
        if self._shock_warning is not None and claim.shock is not None:
            level = max(level, self._shock_warning / claim.shock if claim.shock > 0 else math.inf)
        return level

    def pick(self, now: float, limit: int = 8) -> tuple[list[ShockClaim], float | None]:
        """Up to `limit` claims to solve now, best first; when none, how long to wait (None:
        until something changes). Picking a handful per scan keeps the scan (every account)
        off the tick path's budget; the bucket may dip below zero by that handful, and the
        next pick waits it out, so the average share holds.
        """
        self._refill(now)
        ranked: list[tuple[int, float, float, int, ShockClaim]] = []
        overdue: list[tuple[float, int, ShockClaim]] = []
        next_due = math.inf
        interval, max_age = self.interval, self.max_age
        for n, claim in enumerate(self.claims.values()):
            if not claim.changed:
                continue
            age = now - claim.solved_at
            if age < interval and not claim.urgent:
                next_due = min(next_due, interval - age)
                continue
            danger = self.danger(claim)
            tier = 0 if claim.urgent or danger >= 1.0 else 1 if age >= max_age else 2
            ranked.append((tier, -danger, claim.solved_at, n, claim))
            # a first solve is not "overdue": 1 000 accounts starting at once would all
            # bypass the budget; they queue ahead of routine refreshes instead
            if age >= max_age and claim.solved_at > -math.inf:
                overdue.append((claim.solved_at, n, claim))
        if ranked and self.tokens > 0:
            return [entry[-1] for entry in heapq.nsmallest(limit, ranked)], None
        if overdue:
            chosen = [entry[-1] for entry in heapq.nsmallest(limit, overdue)]
            self.overdue_solves += len(chosen)
            return chosen, None
        if ranked:
            return [], -self.tokens / self.share + 1e-3
        return [], next_due if math.isfinite(next_due) else None

    def grant(self, claim: ShockClaim, now: float) -> bool:
        """Whether an account's own recompute may solve inline: due, and budget to spare.

        While more than half the bucket is banked nobody is queueing, so the account takes
        its solve with its regular report (one report, not two); below that the scheduler
        hands solves out by `pick`, nearest to danger first.
        """
        if not claim.changed or not (claim.urgent or now - claim.solved_at >= self.interval):
            return False
        return self.ample(now)

    def ample(self, now: float) -> bool:
        """Whether more than half the bucket is banked: due accounts then solve inline
        (`grant`), and the picking task may scan less often (daemon/loop.py `AMPLE_GAP`)."""
        self._refill(now)
        return self.tokens >= self.burst / 2

    def solved(self, claim: ShockClaim, now: float, shock: float | None, cpu: float) -> None:
        """A solve of `claim` finished at `now`, taking `cpu` seconds; `shock` its figure."""
        self._refill(now)
        self.tokens -= cpu
        self.cpu += cpu
        self.solves += 1
        claim.solved_at = now
        claim.changed = False
        claim.urgent = False
        claim.shock = shock

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None and now > self._refilled_at:
            self.tokens = min(self.burst, self.tokens + (now - self._refilled_at) * self.share)
        if self._refilled_at is None or now > self._refilled_at:
            self._refilled_at = now
