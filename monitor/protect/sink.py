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
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from monitor.core.alert_config import ratio_level
from monitor.core.levels import Level
from monitor.core.model import AccountSnapshot, MarginReport
from monitor.protect.audit import ActionHooks
from monitor.protect.backstop import StopBackstop
from monitor.protect.desk import OrderDesk
from monitor.protect.executor import Executor
from monitor.protect.notes import ActionNotes
from monitor.protect.state import kill_switch_files
from monitor.sink import Sink
from monitor.sources.base import Source

if TYPE_CHECKING:
    from monitor.alerts.sink import AlertsSink
    from monitor.config.settings import AccountSettings, Settings

#: Builds the executor (and stop backstop) of one account, None when it is not protected.
MakeExecutor = Callable[["AccountSettings", Source], "tuple[Executor, StopBackstop | None] | None"]

__all__ = [
    "HANDOVER_TIMEOUT",
    "KILL_SWITCH_LOOK",
    "ActionsSink",
    "action_hooks",
    "build_actions_sink",
]

log = structlog.get_logger("monitor.sinks.actions")

#: Longest a woken step waits (seconds) for the alerts of the same report to be written to
#: the MQTT socket before its fresh read (issue 16): without the wait its REST requests went
#: out first and the alert waited ~1.5-2.5 ms. The alert is handed to paho in the report's
#: own call (alerts/delivery.py) and written ~0.1-0.5 ms later; a broker that takes no bytes
#: delays protection by this much at most, one without a session not at all.
HANDOVER_TIMEOUT = 0.005
#: Seconds between two looks for the PAUSE files on behalf of the alerts' words (an order is
#: always checked against the disk): `pause_reason(now, looked=True)`, protect/notes.py
KILL_SWITCH_LOOK = 1.0


class ActionsSink(Sink):
    """A `monitor.sink.Sink` running one `Executor` per protected account."""

    name = "actions"

    def __init__(
        self,
        executors: Mapping[str, Executor],
        backstops: Mapping[str, StopBackstop] | None = None,
        *,
        alerts: AlertsSink | None = None,
        notes: ActionNotes | None = None,
        make: MakeExecutor | None = None,
    ) -> None:
        """`executors` were built with `action_hooks(alerts, notes, ...)` and `alerts.switches`
        (build_actions_sink does); `alerts` ends a rejection's alert once its episode is over;
        `notes` is what the alert messages read (protect/notes.py); `make` builds the executor
        of an account a SIGHUP reload adds or restarts."""
        self.notes = notes if notes is not None else ActionNotes()
        self.notes.executors.update(executors)
        #: the protected accounts' executors (the same mapping the notes read)
        self.executors = self.notes.executors
        self.backstops = dict(backstops or {})
        self._alerts = alerts
        self._make = make
        self._latest: dict[str, tuple[MarginReport, float]] = {}
        self._wake = {name: asyncio.Event() for name in self.executors}
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def protection_disabled(self) -> dict[str, str]:
        """Account -> why its protective actions cannot run (`/healthz`, `check`)."""
        return {
            name: ex.protection_disabled
            for name, ex in sorted(self.executors.items())
            if ex.protection_disabled is not None
        }

    def _resolve_rejection(self, account: str, ex: Executor, report: MarginReport) -> None:
        """End the `action_rejected` alert once the executor's episode is over.

        `Executor.wants` closes the episode when the ratio is back at the target; a ratio
        under the target also ends it (a restart can leave no episode behind).
        """
        if self._alerts is None or ex.busy:
            return
        over = ex.state.episode is None or report.margin_ratio <= ex.policy.target_ratio
        if over and self._alerts.resolve_action_alert(account):
            self.notes.told.pop(account, None)

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """One task per protected account."""
        self._tg = tg
        for account, ex in self.executors.items():
            self._launch(account, ex)
        if self.executors or self._make is not None:
            tg.create_task(self._look_for_kill_switches(), name="actions.kill_switches")

    def _launch(self, account: str, ex: Executor) -> None:
        assert self._tg is not None
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
            self.notes.forget(name)
            self.backstops.pop(name, None)
            self._latest.pop(name, None)
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
                await ex.step(rep, now)
            except Exception:  # a broken step must not end protection for good
                log.exception("actions.step_failed", account=account)
            backstop = self.backstops.get(account)
            if backstop is not None:
                try:
                    await backstop.maintain(rep, now)
                except Exception:  # the venue refused or vanished: retried on the next report
                    log.exception("actions.backstop_failed", account=account)

    async def _look_for_kill_switches(self) -> None:
        """Task `actions.kill_switches`: the PAUSE files as the alerts describe them, looked
        for off the tick -> alert path (the step itself looks again before any order)."""
        while True:
            by_dir: dict[Path, list[Executor]] = {}
            for ex in self.executors.values():
                by_dir.setdefault(ex.state_dir, []).append(ex)
            for state_dir, executors in by_dir.items():
                found = kill_switch_files(state_dir, [ex.account for ex in executors])
                for ex in executors:
                    ex.kill_switch_seen = found[ex.account]
            await asyncio.sleep(KILL_SWITCH_LOOK)

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
        self.notes.saw(account, report, snapshot, now)
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


def action_hooks(alerts: AlertsSink | None, notes: ActionNotes, severity: str) -> ActionHooks:
    """Where the executors' decisions go: the alert side and the notes alerts show.

    `AlertsSink.record_action` writes the store's audit trail, publishes on
    `<prefix>/<account>/action` and counts `margin_monitor_actions_total`; a venue rejection
    becomes an `action_rejected` alert and protection that cannot run a `protection_disabled`
    one at `severity`, the level at which actions step in (docs/actions.md, issue 13).
    """
    if alerts is None:
        return ActionHooks(alert=notes.tell)

    def rejected(account: str, text: str) -> None:
        notes.tell(account, text)
        alerts.raise_action_alert(account, text)

    def disabled(account: str, reason: str | None) -> None:
        alerts.disable_protection(account, reason, severity)

    return ActionHooks(
        audit=alerts.record_action, alert=notes.tell, reject=rejected, disabled=disabled
    )


def action_ratio(settings: Settings) -> float:
    """The margin ratio at which actions step in (`action_level` may name an alert level)."""
    levels = settings.alerts
    return settings.actions.action_ratio(
        {"warning": levels.warning, "critical": levels.critical, "emergency": levels.emergency}
    )


def action_severity(settings: Settings) -> Level:
    """The alert level at which actions step in, `warning` at least: a disabled protection
    is raised at it, so it pages as loudly as the situation it was meant to handle."""
    level = ratio_level(action_ratio(settings), "ok", settings.alerts.to_config())
    return "warning" if level == "ok" else level


def build_actions_sink(
    settings: Settings,
    sources: Mapping[str, Source] | None,
    alerts: AlertsSink | None,
    notes: ActionNotes,
    *,
    clock: Callable[[], float] = time.time,
) -> ActionsSink | None:
    """Executors for the accounts `[actions]` covers whose source can take orders.

    An account acts for real only when `actions.enabled = true`, or when it is on the
    built-in sim and `actions.simulated` is left on (fake money, the demo); every other
    account runs dry: it plans and audits "would have". Their decisions go to `alerts`
    (`action_hooks`), their state to `notes`; the pause switch is the alert side's.
    """
    if not sources:
        return None
    actions = settings.actions
    ratio = action_ratio(settings)
    hooks = action_hooks(alerts, notes, action_severity(settings))

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
            action_ratio=ratio,
            state_dir=settings.state_dir,
            live=live,
            venue="sim" if account.is_sim else source.venue,
            switches=alerts.switches if alerts is not None else None,
            hooks=hooks,
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
    return ActionsSink(executors, backstops, alerts=alerts, notes=notes, make=make)
