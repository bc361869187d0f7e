"""The daemon's protective-action consumer: reports in, one executor task per account.

`on_report` is awaited inline on the account's recompute task, so it only hands the newest
report to the account's own task (`sink[actions[<account>]]`) and returns; the step (fresh
read, plan, orders, confirmation) runs there. Like the recompute loop, a burst of reports
costs one step: the task always takes the newest report, never a backlog.

Audit records go to the alert store (engineer B's `Store.audit`) and the MQTT action topic
(`<prefix>/<account>/action`); the pause switch is the alert pipeline's (`ActionSwitches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from monitor.core.model import AccountSnapshot, MarginReport
from monitor.core.plan import ActionHistory, ActionPlan, UnsafePlan, plan_step
from monitor.protect.audit import ActionHooks
from monitor.protect.backstop import StopBackstop
from monitor.protect.desk import OrderDesk, market_rules
from monitor.protect.executor import Executor
from monitor.sink import Sink
from monitor.sources.base import Source

if TYPE_CHECKING:
    from monitor.alerts.sink import AlertsSink
    from monitor.config.settings import AccountSettings, Settings

#: Builds the executor (and stop backstop) of one account, None when it is not protected.
MakeExecutor = Callable[["AccountSettings", Source], "tuple[Executor, StopBackstop | None] | None"]

__all__ = ["HANDOVER_TIMEOUT", "ActionsSink", "build_actions_sink"]

log = structlog.get_logger("monitor.sinks.actions")

#: Longest a woken step waits (seconds) for the alerts of the same report to be written to
#: the MQTT socket before its fresh read (issue 16): without the wait its REST requests went
#: out first and the alert waited ~1.5-2.5 ms. The alert is handed to paho in the report's
#: own call (alerts/delivery.py) and written ~0.1-0.5 ms later; a broker that takes no bytes
#: delays protection by this much at most, one without a session not at all.
HANDOVER_TIMEOUT = 0.005


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


class ActionsSink(Sink):
    """A `monitor.sink.Sink` running one `Executor` per protected account."""

    name = "actions"

    def __init__(
        self,
        executors: Mapping[str, Executor],
        backstops: Mapping[str, StopBackstop] | None = None,
        *,
        make: MakeExecutor | None = None,
    ) -> None:
        """`make` builds the executor of an account a SIGHUP reload adds or restarts."""
        self.executors = dict(executors)
        self.backstops = dict(backstops or {})
        self._make = make
        self._latest: dict[str, tuple[MarginReport, float]] = {}
        self._wake = {name: asyncio.Event() for name in self.executors}
        self._notes: dict[str, str] = {}
        self._seen: dict[str, _Seen] = {}
        self._alerts: AlertsSink | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: the alert level at which actions step in: `protection_disabled` is raised at it
        self.severity = "critical"

    def attach(self, alerts: AlertsSink | None) -> None:
        """Use the alert side's audit trail + MQTT action topic, notes and pause switch.

        `AlertsSink.record_action` writes the store's audit trail, publishes on
        `<prefix>/<account>/action` and counts `margin_monitor_actions_total` (engineer B).
        A venue rejection becomes an `action_rejected` alert (docs/actions.md).
        """
        if alerts is None:
            return
        self._alerts = alerts
        alerts.set_action_note(self.note)
        for ex in self.executors.values():
            self._wire(ex)

    def _wire(self, ex: Executor) -> None:
        if self._alerts is None:
            ex.audit.hooks = ActionHooks(alert=self._alert)
            return
        ex.switches = self._alerts.switches
        ex.audit.hooks = ActionHooks(
            audit=self._alerts.record_action,
            alert=self._alert,
            reject=self._rejected,
            disabled=self._disabled,
        )

    def _disabled(self, account: str, reason: str | None) -> None:
        """Protection cannot run (or runs again): a `protection_disabled` alert at the
        action level's severity, and the MQTT state says so (issue 13)."""
        if self._alerts is not None:
            self._alerts.disable_protection(account, reason, self.severity)

    def protection_disabled(self) -> dict[str, str]:
        """Account -> why its protective actions cannot run (`/healthz`, `check`)."""
        return {
            name: ex.protection_disabled
            for name, ex in sorted(self.executors.items())
            if ex.protection_disabled is not None
        }

    def note(self, account: str) -> str | None:
        """The action state as of the alert being built now (alerting.py), None: unprotected.

        Planned from the report the alert was evaluated on (the daemon tells this sink
        before the alert sink, see `daemon.build_sinks`), not from the executor's last step,
        which at an escalation has not run yet and at a resolve is an episode old (docs/alerts.md
        §4). The plan is the pure planner's preview; the executor re-plans on a fresh read.
        """
        ex = self.executors.get(account)
        if ex is None:
            return None
        mode = "live" if ex.live else "dry run"
        told = self._notes.get(account)
        if told is not None and (ex.state.episode is not None or ex.state.halted is not None):
            return told  # a rejection or a flag of the open episode says most
        if ex.state.halted is not None:
            return f"halted ({mode}): {ex.state.halted}"
        seen = self._seen.get(account)
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
        paused = ex.pause_reason(now)
        if paused is not None:
            return f"would reduce, but {paused}: {legs}{target}"
        verb = "reducing (live)" if ex.live else "would reduce (dry run)"
        return f"{verb}: {legs}{target}"

    def _alert(self, account: str, text: str) -> None:
        self._notes[account] = text

    def _rejected(self, account: str, text: str) -> None:
        """A venue refused a protective order: an alert through the outbox, not a retry."""
        self._notes[account] = text
        if self._alerts is not None:
            self._alerts.raise_action_alert(account, text)

    def _resolve_rejection(self, account: str, ex: Executor, report: MarginReport) -> None:
        """End the `action_rejected` alert once the executor's episode is over.

        `Executor.wants` closes the episode when the ratio is back at the target; a ratio
        under the target also ends it (a restart can leave no episode behind).
        """
        if self._alerts is None or ex.busy:
            return
        over = ex.state.episode is None or report.margin_ratio <= ex.policy.target_ratio
        if over and self._alerts.resolve_action_alert(account):
            self._notes.pop(account, None)

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """One task per protected account."""
        self._tg = tg
        for account, ex in self.executors.items():
            self._launch(account, ex)

    def _launch(self, account: str, ex: Executor) -> None:
        assert self._tg is not None
        self._wire(ex)
        self._wake.setdefault(account, asyncio.Event())
        self._tasks[account] = self._tg.create_task(
            self._run(account, ex), name=f"sink[actions[{account}]]"
        )

    async def reload_accounts(
        self, accounts: Mapping[str, AccountSettings], sources: Mapping[str, Source]
    ) -> None:
        """SIGHUP (docs/service.md): follow the accounts the daemon now runs.

        An executor whose account is gone, or whose source was restarted (a changed
        account), stops and releases its writer lock; accounts without one get a fresh
        executor on their current source (it reloads its state file, so a pending order is
        still looked up by client id before anything is sent).
        """
        for name, ex in list(self.executors.items()):
            current: object = sources.get(name)
            if current is ex.desk:
                continue
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            ex.close()
            del self.executors[name]
            self.backstops.pop(name, None)
            self._latest.pop(name, None)
            self._seen.pop(name, None)
            self._wake.pop(name, None)
            log.info("actions.executor_stopped", account=name)
        if self._make is None or self._tg is None:
            return
        for name, source in sources.items():
            if name in self.executors or name not in accounts:
                continue
            built = self._make(accounts[name], source)
            if built is None:
                continue
            ex, backstop = built
            self.executors[name] = ex
            if backstop is not None:
                self.backstops[name] = backstop
            self._wire(ex)
            self._launch(name, ex)
            log.info("actions.executor_started", account=name, live=ex.live)

    async def _run(self, account: str, ex: Executor) -> None:
        wake = self._wake[account]
        while True:
            await wake.wait()
            await self._alert_first()
            wake.clear()
            rep, now = self._latest[account]
            try:
                await ex.on_report(rep, now)
            except Exception:  # a broken step must not end protection for good
                log.exception("actions.step_failed", account=account)
            backstop = self.backstops.get(account)
            if backstop is not None:
                try:
                    await backstop.maintain(rep, now)
                except Exception:  # the venue refused or vanished: retried on the next report
                    log.exception("actions.backstop_failed", account=account)

    async def _alert_first(self) -> None:
        """Let the alerts of the report that woke the step reach the MQTT socket first
        (bounded by HANDOVER_TIMEOUT). They are already handed over: the daemon tells the
        alerts sink right after this one, before this task can run (`daemon.build_sinks`)."""
        if self._alerts is None:
            return
        with contextlib.suppress(TimeoutError):  # not wait_for: cpython#86296
            async with asyncio.timeout(HANDOVER_TIMEOUT):
                await self._alerts.pipeline.handover()

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        """Hand the newest report to the account's task if it may call for a step."""
        ex = self.executors.get(account)
        if ex is None:
            return
        # for `note` only: the executor never acts on the streamed view, it re-reads
        self._seen[account] = _Seen(report, snapshot, now)
        wanted = ex.wants(report, now)  # may close the episode (back at the target)
        self._resolve_rejection(account, ex, report)
        if not (wanted or account in self.backstops):
            return
        self._latest[account] = (report, now)
        self._wake[account].set()

    async def close(self) -> None:
        """Release every writer lock."""
        for ex in self.executors.values():
            ex.close()


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


def build_actions_sink(
    settings: Settings,
    sources: Mapping[str, Source] | None,
    *,
    clock: Callable[[], float] = time.time,
) -> ActionsSink | None:
    """Executors for the accounts `[actions]` covers whose source can take orders.

    An account acts for real only when `actions.enabled = true`, or when it is on the
    built-in sim and `actions.simulated` is left on (fake money, the demo); every other
    account runs dry: it plans and audits "would have".
    """
    if not sources:
        return None
    actions = settings.actions
    alerts = settings.alerts
    thresholds = {
        "warning": alerts.warning,
        "critical": alerts.critical,
        "emergency": alerts.emergency,
    }

    def make(
        account: AccountSettings, source: Source
    ) -> tuple[Executor, StopBackstop | None] | None:
        if not actions.covers(account.name):
            return None
        if not isinstance(source, OrderDesk):
            log.info("actions.no_order_desk", account=account.name)
            return None
        live = actions.enabled or (account.is_sim and actions.simulated)
        ex = Executor(
            account.name,
            source,
            source.fetch_snapshot,
            settings=actions,
            action_ratio=actions.action_ratio(thresholds),
            state_dir=settings.state_dir,
            live=live,
            venue="sim" if account.is_sim else source.venue,
            clock=clock,
        )
        return ex, StopBackstop(ex, actions.stop_loss) if actions.stop_loss.enabled else None

    executors: dict[str, Executor] = {}
    backstops: dict[str, StopBackstop] = {}
    for account in settings.accounts:
        source = sources.get(account.name)
        built = None if source is None else make(account, source)
        if built is not None:
            executors[account.name], backstop = built
            if backstop is not None:
                backstops[account.name] = backstop
    # kept even with no executor yet: a SIGHUP reload may add a protected account
    sink = ActionsSink(executors, backstops, make=make)
    ratio = actions.action_ratio(thresholds)
    reached = [name for name, at in thresholds.items() if at <= ratio]  # warning..emergency
    sink.severity = reached[-1] if reached else "warning"
    return sink
