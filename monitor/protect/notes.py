"""What the protective side says about an account in the alerts it is part of.

An alert about a margin ratio says what protection did or would do about it (docs/alerts.md
§4): planned from the report the alert was evaluated on, at most once per report (issue 16).

The alert side and the actions side each need the other: alerts show this note; executors
audit, alert and read the pause switch through the alert side. `ActionNotes` is built first
(daemon/wiring.py) and handed to both at construction: the alert pipeline asks `note`, the
actions sink records the protected accounts' executors and reports in it, and the executors'
alert hooks write what they told. No side is wired to the other after the fact.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

from monitor.core.model import AccountSnapshot, MarginReport
from monitor.core.plan import ActionHistory, ActionPlan, MarketRules, UnsafePlan, plan_step
from monitor.protect.desk import market_rules
from monitor.protect.executor import Executor

__all__ = ["ActionNotes"]


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
    try:
        return plan_step(
            snapshot, ex.policy, _markets(ex, snapshot), ex.state.history, now, current=rep
        )
    except UnsafePlan:
        return None


def _markets(ex: Executor, snapshot: AccountSnapshot) -> dict[str, MarketRules]:
    markets = {}
    for p in snapshot.positions:
        with contextlib.suppress(Exception):  # an unknown market is flagged by the planner
            markets[p.symbol] = market_rules(ex.desk, p.symbol, ex.venue)
    return markets


def _warm_up(ex: Executor, snapshot: AccountSnapshot, rep: MarginReport, now: float) -> None:
    """Run the planner's whole path once on a real snapshot and drop the result (issue 16).

    The first alert after a start-up paid ~0.2 ms more for its plan preview than a later
    one with the same work (the solve's and the rounding's first executions: Python's
    specialising interpreter quickens code after its first calls). A plan toward half the
    current ratio from an empty history takes that path (solve, rounding, trim) at start-up
    instead. Pure: no state, no history, no order, no I/O, nothing kept.
    """
    if not rep.margin_ratio > 0.0:
        return  # no margin in use: no reduction to solve
    policy = replace(ex.policy, action_ratio=0.0, target_ratio=rep.margin_ratio / 2)
    with contextlib.suppress(Exception):  # a warm-up never stops a report
        plan_step(snapshot, policy, _markets(ex, snapshot), ActionHistory(), now, current=rep)


@dataclass(slots=True)
class ActionNotes:
    """The protected accounts as the alert messages describe them.

    Attributes:
        executors: account -> its executor, kept by the actions sink (a reload adds and
            removes them).
        told: account -> the last thing its executor alerted about (a flag, a rejection).
        seen: account -> the newest report the actions sink was handed.
        warmed: the planner ran once at start-up (`_warm_up`, on the first report of a
            protected account): once per process is what it takes.
    """

    executors: dict[str, Executor] = field(default_factory=dict)
    told: dict[str, str] = field(default_factory=dict)
    seen: dict[str, _Seen] = field(default_factory=dict)
    warmed: bool = False

    def tell(self, account: str, text: str) -> None:
        """An executor's alert (`ActionHooks.alert`): the note of its open episode."""
        self.told[account] = text

    def saw(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        """The newest report of `account` (for the note only: the executor re-reads)."""
        self.seen[account] = _Seen(report, snapshot, now)
        if not self.warmed:
            ex = self.executors.get(account)
            if ex is not None:
                self.warmed = True
                _warm_up(ex, snapshot, report, now)

    def forget(self, account: str) -> None:
        """The account's executor is gone (a reload): nothing more to say about it."""
        self.executors.pop(account, None)
        self.seen.pop(account, None)

    def note(self, account: str) -> str | None:
        """The action state as of the alert being built now (alerting.py), None: unprotected.

        Planned from the report the alert was evaluated on (the daemon tells the actions sink
        before the alert sink, see `daemon.build_sinks`), not from the executor's last step,
        which at an escalation has not run yet and at a resolve is an episode old (docs/alerts.md
        §4). The plan is the pure planner's preview; the executor re-plans on a fresh read.
        """
        ex = self.executors.get(account)
        if ex is None:
            return None
        mode = "live" if ex.live else "dry run"
        told = self.told.get(account)
        if told is not None and (ex.state.episode is not None or ex.state.halted is not None):
            return told  # a rejection or a flag of the open episode says most
        if ex.state.halted is not None:
            return f"halted ({mode}): {ex.state.halted}"
        seen = self.seen.get(account)
        level = f"acts at margin ratio {ex.policy.action_ratio:.1%}"
        if seen is None:
            return f"armed ({mode}): {level}"
        rep, now = seen.report, seen.now
        if rep.margin_ratio < ex.policy.action_ratio and ex.state.episode is None:
            return f"none needed ({mode}): {level}, now {rep.margin_ratio:.1%}"
        plan = seen.plan(ex)
        if plan is None:
            return f"no plan ({mode}): the planner refused this state; see the log"
        last = ex.last_plan
        if not plan.orders:
            if ex.state.episode is not None and last is not None and last.orders:
                done = "reduced" if ex.live else "would have reduced"
                return (
                    f"episode open ({mode}): step {ex.state.step} {done} {_legs(last)}; "
                    f"{plan.reason}, until back at {plan.target_ratio:.1%}"
                )
            return f"no order now ({mode}): {plan.reason}"
        legs = _legs(plan)
        target = f" (reduce-only, toward {plan.target_ratio:.1%})"
        paused = ex.pause_reason(now, looked=True)  # the PAUSE files as of <= 1 s ago
        if paused is not None:
            return f"would reduce, but {paused}: {legs}{target}"
        verb = "reducing (live)" if ex.live else "would reduce (dry run)"
        return f"{verb}: {legs}{target}"
