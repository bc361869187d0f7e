"""Signed commands (acknowledge, silence, pause/resume, status) executed on the alert state.

Commands arrive signed (signed_commands.py) from the MQTT command topic or a phone's action
button; `AlertPipeline` (pipeline.py) executes them because it owns the alert state, and pauses
go to the shared `ActionSwitches` the executor reads. This mixin holds that half of the
pipeline: verification, replay memory, execution, and the aggregated refusal audit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import structlog

from monitor.alerts.signed_commands import Command, CommandRefused, envelope, verify
from monitor.core import rules
from monitor.core.alert_state import RulesState, Silence
from monitor.core.model import MarginReport
from monitor.protect.switches import ActionSwitches
from monitor.store import Store

__all__ = ["CommandHandling"]

log = structlog.get_logger("monitor.alerting")

#: Pause length when a pause command names no duration: a pause must always end.
DEFAULT_PAUSE = 3600.0
#: Refused commands are audited and logged once per source per this many seconds, with a
#: count (docs/hardening.md: a flood of 50 000 junk commands wrote 50 000 rows and log lines).
REFUSAL_WINDOW = 60
#: Sources tallied at once; more (an HTTP flood from many addresses) share one tally.
REFUSAL_SOURCES = 256


@dataclasses.dataclass(slots=True)
class _RefusalTally:
    """Refused commands of one source in one minute: one audit row, counted up."""

    minute: int
    reasons: dict[str, int]
    count: int = 1
    seq: int = 0
    dirty: bool = False

    def add(self, reason: str) -> None:
        self.count += 1
        self.dirty = True
        if reason in self.reasons or len(self.reasons) < 16:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def payload(self, source: str) -> dict[str, Any]:
        return {
            "source": source,
            "count": self.count,
            "reasons": self.reasons,
            "minute": self.minute * REFUSAL_WINDOW,
        }


class CommandHandling:
    """The command half of `AlertPipeline` (a mixin: the pipeline owns the state it changes)."""

    store: Store
    state: RulesState
    switches: ActionSwitches
    accounts: frozenset[str] | None
    _secret: bytes | None
    _refusals: dict[str, _RefusalTally]
    _reports: dict[str, MarginReport]

    clock: Callable[[], float]
    #: repeats and silence expiry (`AlertPipeline.tick`): an unsilence announces what it hid
    tick: Callable[[float], object]

    def sign(self, command: Command, now: float) -> str:
        """The signed envelope of `command` (for phone buttons); needs the command secret."""
        if self._secret is None:
            msg = "no command secret configured"
            raise CommandRefused(msg)
        return envelope(command, self._secret, now)

    @property
    def can_sign(self) -> bool:
        """True when a command secret is configured."""
        return self._secret is not None

    def handle_command(
        self, raw: bytes | str, now: float | None = None, source: str = "mqtt"
    ) -> dict[str, Any]:
        """Verify and execute a signed command; the reply says what happened or why not.

        `source` names the door (`mqtt`, `http:<address>`) for the aggregated refusal audit.
        Replays are refused across restarts and doors: the request id is kept in the store
        until the envelope could no longer verify anyway (docs/hardening.md).
        """
        now = self.clock() if now is None else now
        if self._secret is None:
            return self._refuse("commands are disabled: set mqtt.command_secret", now, source)
        try:
            command = verify(raw, self._secret, now)
        except CommandRefused as exc:
            return self._refuse(str(exc), now, source, request_id=exc.request_id)
        if not self.store.remember_request(command.request_id, command.valid_until(), now):
            return self._refuse("duplicate request_id (replay)", now, source, command)
        try:
            self._check_target(command)
            reply = self.execute(command, now)
        except CommandRefused as exc:
            return self._refuse(str(exc), now, source, command)
        self.store.audit(
            command.account or "*",
            "command",
            {"action": command.action, "request_id": command.request_id, **reply},
            now,
        )
        log.info("command.executed", account=command.account, reply=reply)
        return {"ok": True, "request_id": command.request_id, **reply}

    def _check_target(self, command: Command) -> None:
        """An account that is not configured, or a phone token of an episode that is over."""
        account = command.account
        if account is not None and self.accounts is not None and account not in self.accounts:
            raise CommandRefused(f"unknown account {account[:64]!r}")
        if command.episode is not None:
            alert = self.state.alert(account or "", command.rule or "")
            if alert.episode != command.episode:
                raise CommandRefused("token is for an alert episode that is over")

    def _refuse(
        self,
        reason: str,
        now: float,
        source: str,
        command: Command | None = None,
        request_id: str = "",
    ) -> dict[str, Any]:
        """Refuse; audit and log once per source per minute with a count (floods)."""
        minute = int(now // REFUSAL_WINDOW)
        reason = reason[:200]
        if source not in self._refusals and len(self._refusals) >= REFUSAL_SOURCES:
            source = "other"
        tally = self._refusals.get(source)
        if tally is not None and tally.minute != minute:
            self._flush_refusals(now)
            tally = self._refusals.get(source)
        if tally is None:
            log.warning("command.refused", reason=reason, source=source)
            tally = _RefusalTally(minute, {reason: 1})
            tally.seq = self.store.audit("*", "command_refused", tally.payload(source), now)
            self._refusals[source] = tally
        else:
            tally.add(reason)
        request_id = command.request_id if command else request_id
        return {"ok": False, "request_id": request_id, "error": reason}

    def flush(self, now: float | None = None) -> None:
        """Write what is only counted in memory (refusal counts); before the store closes."""
        now = self.clock() if now is None else now
        self._flush_refusals(now + REFUSAL_WINDOW)  # every minute is over: log the summaries

    def _flush_refusals(self, now: float) -> None:
        """Write the counts that grew; close the tallies of minutes that are over."""
        minute = int(now // REFUSAL_WINDOW)
        for source, tally in list(self._refusals.items()):
            if tally.dirty:
                tally.dirty = False
                self.store.update_audit(tally.seq, tally.payload(source))
            if tally.minute != minute:
                del self._refusals[source]
                if tally.count > 1:
                    log.warning(
                        "command.refused_summary",
                        source=source,
                        count=tally.count,
                        reasons=tally.reasons,
                    )

    def execute(self, command: Command, now: float) -> dict[str, Any]:
        """Apply a verified command to the alert state or the action switches."""
        account = command.account
        if command.action == "ack":
            if account is None:
                raise CommandRefused("ack needs an 'account'")
            self.state = rules.acknowledge(self.state, account, command.rule)
            self.store.commit(self.state, (), now)
            return {"action": "ack", "account": account, "rule": command.rule}
        if command.action == "silence":
            assert command.duration is not None  # verify() guarantees it
            silence = Silence(
                id=command.silence_id or command.request_id or f"silence-{now!r}",
                until=now + command.duration,
                account=account,
                rule=command.rule,
                up_to=command.up_to,  # type: ignore[arg-type] # verify() checked the name
                created_by="command",
            )
            self.state = rules.add_silence(self.state, silence)
            self.store.commit(self.state, (), now)
            return {"action": "silence", "silence_id": silence.id, "until": silence.until}
        if command.action == "unsilence":
            if command.silence_id is None:
                raise CommandRefused("unsilence needs a 'silence_id'")
            self.state = rules.remove_silence(self.state, command.silence_id)
            self.store.commit(self.state, (), now)
            self.tick(now)  # announce what the silence was hiding
            return {"action": "unsilence", "silence_id": command.silence_id}
        if command.action == "pause":
            until = now + (command.duration or DEFAULT_PAUSE)
            self.switches.pause(account, until)
            return {"action": "pause", "account": account, "until": until}
        if command.action == "resume":
            self.switches.resume(account)
            return {"action": "resume", "account": account}
        return {"action": "status", "accounts": self.status(now), "silences": self.silences()}

    def silences(self) -> list[dict[str, Any]]:
        """The active silences, for a `status` command (beside the accounts, never in them:
        an account may be called `silences`, docs/alerts.md)."""
        return [
            {"id": s.id, "account": s.account, "rule": s.rule, "until": s.until, "up_to": s.up_to}
            for s in self.state.silences
        ]

    def status(self, now: float) -> dict[str, Any]:
        """Level, firing rules and pause per account, for a `status` command."""
        accounts = sorted({a.account for a in self.state.alerts.values()} | set(self._reports))
        out: dict[str, Any] = {}
        for account in accounts:
            until = self.switches.paused_until(account, now)
            out[account] = {
                "level": self.state.account_level(account),
                "firing": sorted(
                    a.rule for a in self.state.alerts.values() if a.account == account and a.firing
                ),
                "actions_paused_until": None if until is None or math.isinf(until) else until,
            }
        return out
