"""What the protective side says about an account in the alerts it is part of.

An alert about a margin ratio says what protection did or would do about it (docs/alerts.md
§4): planned from the report the alert was evaluated on, at most once per report (issue 16).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from monitor.core.model import AccountSnapshot, MarginReport
from monitor.core.plan import ActionHistory, ActionPlan, UnsafePlan, plan_step
from monitor.protect.desk import market_rules
from monitor.protect.executor import Executor


@dataclass(slots=True)
class _Seen:
    """The newest report of an account and the plan preview of it.

    The preview is computed at most once per report and step history: every alert that one
    report raises (a crossing raises two) shows the same plan, and a report no alert needs
    costs no preview at all (issue 16: two previews were 2.5-3.7 ms of a crossing's alert).
    """

    report: MarginReport
    snapshot: AccountSnapshot
    now: float
    preview: tuple[ActionHistory, ActionPlan | None] | None = None

    def plan(self, ex: Executor) -> ActionPlan | None:
        """The executor's next step on this report, planned once per history."""
        history = ex.state.history
        if self.preview is None or self.preview[0] != history:
            self.preview = (history, _preview(ex, self.snapshot, self.report, self.now))
        return self.preview[1]


def _legs(plan: ActionPlan) -> str:
    return ", ".join(f"{o.side} {o.amount:g} {o.symbol}" for o in plan.orders)


def _preview(
    ex: Executor, snapshot: AccountSnapshot, rep: MarginReport, now: float
) -> ActionPlan | None:
    """What the executor's next step would be on `snapshot` (pure planner, no venue call)."""
    markets = {}
    for p in snapshot.positions:
        with contextlib.suppress(Exception):  # an unknown market is flagged by the planner
            markets[p.symbol] = market_rules(ex.desk, p.symbol, ex.venue)
    try:
        return plan_step(snapshot, ex.policy, markets, ex.state.history, now, current=rep)
    except UnsafePlan:
        return None
