"""The alert state machine: reports and source events in, alert events out. Pure; no clock.

Every function takes the current `RulesState` and the time and returns a new state plus the
events to announce, like h11's sans-IO protocol objects (STYLE.md), so the whole lifecycle is
testable with synthetic ratio paths and a restart is just "load the state, keep evaluating".

The lifecycle follows Prometheus Alertmanager (docs/notifications.md) with the gaps its users
still hit closed here (§5):

- Levels `ok < warning < critical < emergency` per rule. A rule is one of `margin_ratio`
  (higher is worse), `shock_to_liquidation` (the smallest price move that liquidates; smaller
  is worse), `stale_<kind>` and `source_down`. An alert's fingerprint is `<account>/<rule>`.
- Dual-threshold hysteresis (prometheus #10536, still open there): a level is entered when
  its threshold is crossed and left only once the value falls back past threshold − band, so
  a ratio wobbling around a threshold never flaps.
- Optional `hold_for` (Prometheus `for:`): a higher level must hold that long first.
- Escalation sends at once; an unchanged level repeats every `repeat_every`; going back to ok
  sends exactly one `resolved` with the episode's duration and worst value.
- An episode is one stretch away from ok. Its id is derived from the fingerprint and its start
  time, so a restarted daemon that reloads the state continues the same episode and event
  ids, and receivers can deduplicate at-least-once deliveries.
- Inhibition: an account whose margin or shock rule is at emergency mutes that account's
  lesser margin/shock alerts. Stale and source-down alerts are never inhibited: a blind
  monitor during an emergency is exactly what a person must hear about.
- Silences (with expiry and a highest level they cover, so "silence this warning for an
  hour" never hides the emergency that follows) and acknowledgement (stops repeats and
  de-escalation chatter of the current episode; escalation breaks through).

Suppressed events are still returned, with `suppressed` naming why, so the pipeline can log
them; only unsuppressed ones go to the outbox. When the reason goes away and the level was
never announced, the next evaluation announces it ("catch-up").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from monitor.core.alert_config import (
    RULE_ACTION_REJECTED,
    RULE_MARGIN,
    RULE_MODEL_DRIFT,
    RULE_SHOCK,
    RULE_SOURCE_DOWN,
    AlertConfig,
    shock_fraction,
    stale_rule,
)
from monitor.core.alert_state import (
    AlertEvent,
    AlertKind,
    AlertState,
    RulesState,
    Silence,
    announce,
    episode_id,
    fingerprint,
    indexed,
    updated,
)
from monitor.core.levels import Level, level_rank, target_level
from monitor.core.model import MarginReport, ModelDrift, SourceDown, SourceStale, SourceUp

__all__ = [
    "acknowledge",
    "add_silence",
    "evaluate",
    "on_action_rejected",
    "on_action_resolved",
    "on_source_event",
    "remove_silence",
    "tick",
]


_THRESHOLD_RULES = (RULE_MARGIN, RULE_SHOCK)


# --- the threshold rules' levels (the level function itself: monitor.core.levels) ----------


def _worse(rule: str, a: float | None, b: float | None) -> float | None:
    """The worse of two values of `rule` (higher ratio, smaller shock)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b) if rule == RULE_SHOCK else max(a, b)


def _rule_level(rule: str, value: float, current: Level, config: AlertConfig) -> Level:
    """The level of a threshold rule's `value` coming from `current`: the margin ratio as it
    is, the shock negated (smaller is worse) against its own thresholds and band."""
    if rule == RULE_MARGIN:
        return target_level(value, current, config.ratio_thresholds(), config.band)
    return target_level(-value, current, config.shock_thresholds(), config.shock_band)


# --- one step of one alert ------------------------------------------------------------------


def _advance(
    alert: AlertState,
    new_level: Level,
    value: float | None,
    now: float,
    config: AlertConfig,
    *,
    threshold: float | None = None,
    detail: str = "",
) -> tuple[AlertState, AlertEvent | None]:
    """Move `alert` to `new_level` and say what happened, before any suppression."""
    old = alert.level
    rule = alert.rule
    if new_level == "ok" and old == "ok":
        return alert.with_value(value), None

    if old == "ok":
        started = now
        episode = episode_id(alert.fingerprint, started)
        alert = replace(
            alert,
            episode=episode,
            started_at=started,
            seq=0,
            worst_value=value,
            worst_level=new_level,
            notified_level="ok",
            acknowledged=False,
            last_sent_value=None,
        )
        kind: AlertKind | None = "firing"
    elif new_level == "ok":
        kind = "resolved"
    elif level_rank(new_level) > level_rank(old):
        kind = "escalated"
    elif level_rank(new_level) < level_rank(old):
        kind = "deescalated"
    elif config.repeat_every > 0 and now - alert.last_event_at >= config.repeat_every:
        kind = "repeat"
    else:
        kind = None

    worst_value = _worse(rule, alert.worst_value, value)
    worst_level = max(alert.worst_level, new_level, key=level_rank)
    alert = replace(
        alert,
        level=new_level,
        value=value,
        worst_value=worst_value,
        worst_level=worst_level,
        detail=detail or alert.detail,
        acknowledged=alert.acknowledged and kind != "escalated",
    )
    if kind is None:
        return alert, None
    return announce(alert, kind, old, now, threshold)


def _threshold_of(rule: str, level: Level, config: AlertConfig) -> float | None:
    """The entry threshold of `level` in the rule's natural unit (None for ok/off)."""
    rank = level_rank(level)
    if rank == 0 or rule not in _THRESHOLD_RULES:
        return None
    if rule == RULE_MARGIN:
        return config.ratio_thresholds()[rank - 1]
    return (config.shock_warning, config.shock_critical, config.shock_emergency)[rank - 1]


def _step_threshold(
    alert: AlertState, value: float, now: float, config: AlertConfig
) -> tuple[AlertState, AlertEvent | None]:
    """Hysteresis plus hold_for on one threshold rule."""
    target = _rule_level(alert.rule, value, alert.level, config)
    if level_rank(target) > level_rank(alert.level) and config.hold_for > 0:
        since = alert.pending_since if alert.pending_since is not None else now
        if now - since < config.hold_for:
            held = replace(alert, pending_level=target, pending_since=since)
            # Not yet entered: the value still moves, the level and episode do not.
            return _advance(held, alert.level, value, now, config)
    if alert.pending_level != "ok" or alert.pending_since is not None:
        alert = replace(alert, pending_level="ok", pending_since=None)
    threshold = _threshold_of(alert.rule, target, config)
    return _advance(alert, target, value, now, config, threshold=threshold)


# --- suppression ----------------------------------------------------------------------------


def _inhibited(state: RulesState, alert: AlertState) -> bool:
    """An emergency on an account's threshold rule mutes its lesser threshold alerts."""
    if alert.rule not in _THRESHOLD_RULES or alert.level == "emergency":
        return False
    return any(
        other.rule in _THRESHOLD_RULES and other.level == "emergency"
        for other in state.of_account(alert.account)
    )


def _suppression(state: RulesState, alert: AlertState, kind: AlertKind, now: float) -> str | None:
    """Why an event of `alert` must not reach a person now, or None."""
    if kind == "resolved":
        # A resolve follows whatever was announced; an episode nobody heard of ends quietly.
        return None if alert.notified_level != "ok" else "unannounced"
    for silence in state.silences:
        if silence.matches(alert.account, alert.rule, alert.level, now):
            return f"silenced:{silence.id}"
    if _inhibited(state, alert):
        return "inhibited"
    if alert.acknowledged and kind in ("repeat", "deescalated"):
        return "acknowledged"
    return None


def _catch_up(alert: AlertState, now: float) -> tuple[AlertState, AlertEvent]:
    """Announce a level that was reached while muted, now that nothing mutes it."""
    kind: AlertKind
    if alert.notified_level == "ok":
        kind = "firing"
    elif level_rank(alert.level) > level_rank(alert.notified_level):
        kind = "escalated"
    else:
        kind = "deescalated"
    return announce(alert, kind, alert.notified_level, now)


def _finish(
    state: RulesState,
    changed: Mapping[str, tuple[AlertState, AlertEvent | None]],
    now: float,
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """Store the stepped alerts, then decide suppression with the whole account in view."""
    alerts = updated(state.alerts, {fp: alert for fp, (alert, _event) in changed.items()})
    silences = tuple(s for s in state.silences if now < s.until)
    index = indexed(state.index, alerts, changed)
    state = RulesState(alerts=alerts, silences=silences, index=index)
    events: list[AlertEvent] = []
    # what the pass below decides, applied at its end (an alert's level, all that the
    # suppression of the others reads, does not change in it)
    final: dict[str, AlertState] = {}
    accounts = {alert.account for alert, _ in changed.values()}
    for fp in [fp for account in sorted(accounts) for fp in index.get(account, ())]:
        alert = alerts[fp]
        event = changed[fp][1] if fp in changed else None
        if event is not None:
            reason = _suppression(state, alert, event.kind, now)
            event = replace(event, suppressed=reason)
            if reason is None:
                notified: Level = alert.level if event.kind != "resolved" else "ok"
                alert = replace(alert, notified_level=notified, last_sent_value=event.value)
            events.append(event)
        elif (
            alert.firing
            and alert.notified_level != alert.level
            and _suppression(state, alert, "firing", now) is None
            and not (
                # Acknowledged de-escalations stay quiet until something worse happens.
                alert.acknowledged and level_rank(alert.level) < level_rank(alert.notified_level)
            )
        ):
            alert, event = _catch_up(alert, now)
            alert = replace(alert, notified_level=alert.level, last_sent_value=alert.value)
            events.append(event)
        if alert.level == "ok" and alert.episode:
            # Episode over: keep only what the next episode needs (nothing but identity).
            alert = AlertState(alert.account, alert.rule, value=alert.value)
        final[fp] = alert
    return RulesState(alerts=alerts.updated(final), silences=silences, index=index), tuple(events)


# --- public API -----------------------------------------------------------------------------


def evaluate(
    state: RulesState, report: MarginReport, now: float, config: AlertConfig
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """Apply one margin report of one account; returns the new state and its events.

    The shock rule is evaluated only when the report carries `shock_to_liquidation`
    (`stress.assess`); a report without it leaves that alert as it was.
    """
    quiet = _quiet_report(state, report, now, config)
    if quiet is not None:
        return quiet, ()
    return _evaluate_stepped(state, report, now, config)


def _evaluate_stepped(
    state: RulesState, report: MarginReport, now: float, config: AlertConfig
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """`evaluate` the long way: step the rules, then `_finish` with the account in view."""
    account = report.account
    changed: dict[str, tuple[AlertState, AlertEvent | None]] = {}
    margin = state.alert(account, RULE_MARGIN)
    changed[margin.fingerprint] = _step_threshold(margin, report.margin_ratio, now, config)
    shock = shock_fraction(report)
    if shock is not None:
        alert = state.alert(account, RULE_SHOCK)
        changed[alert.fingerprint] = _step_threshold(alert, shock, now, config)
    return _finish(state, changed, now)


def _quiet_report(
    state: RulesState, report: MarginReport, now: float, config: AlertConfig
) -> RulesState | None:
    """The state `_evaluate_stepped` returns for a report that changes nothing but the
    threshold alerts' values, or None when the report may do more.

    Most reports of a running daemon (1 000 accounts, one a second each, nearly every one
    with its shock solve since the pre-summed solve made them cheap; docs/benchmarks.md):
    the margin alert (and the shock alert, for a report with a shock figure) quiet and
    staying at ok, and no alert of the account in an episode (so no catch-up, reset or
    inhibition to decide), no silence expiring. Then the long way only replaces those
    alerts' values; this does just that, and skips its per-alert `replace` chain and the
    account's suppression pass.
    """
    account = report.account
    alerts = state.alerts
    fps = state.index.get(account, ())
    fp = fingerprint(account, RULE_MARGIN)
    margin = alerts.get(fp)
    if (
        margin is None  # the account's first report: the index grows (the long way)
        or fp not in fps
        or not _stays_quiet(margin, report.margin_ratio, config)
    ):
        return None
    changes = {fp: margin.with_value(report.margin_ratio)}
    shock = shock_fraction(report)
    if shock is not None:
        shock_fp = fingerprint(account, RULE_SHOCK)
        alert = alerts.get(shock_fp)
        if alert is None or shock_fp not in fps or not _stays_quiet(alert, shock, config):
            return None  # the first shock figure grows the index: the long way too
        changes[shock_fp] = alert.with_value(shock)
    for other in fps:
        alert = alerts[other]
        if alert.level != "ok" or alert.episode:
            return None
    silences = state.silences
    if silences and any(now >= s.until for s in silences):
        return None  # `_finish` drops expired silences
    return RulesState(alerts=updated(alerts, changes), silences=silences, index=state.index)


def _stays_quiet(alert: AlertState, value: float, config: AlertConfig) -> bool:
    """A threshold alert at ok, outside any episode or hold, that `value` leaves at ok:
    `_step_threshold` then only sets its value."""
    return (
        alert.level == "ok"
        and not alert.episode
        and alert.pending_level == "ok"
        and alert.pending_since is None
        and _rule_level(alert.rule, value, "ok", config) == "ok"
    )


def on_source_event(
    state: RulesState,
    event: SourceStale | SourceDown | SourceUp,
    now: float,
    config: AlertConfig,
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """Stale data, a source that gave up, and its recovery, each with its own lifecycle.

    `SourceStale(kind)` fires `stale_<kind>`; `SourceDown` fires `source_down`;
    `SourceUp(kind)` resolves `stale_<kind>` and `source_down` (fresh data flows again).
    """
    account = event.account
    changed: dict[str, tuple[AlertState, AlertEvent | None]] = {}
    if isinstance(event, SourceStale):
        alert = state.alert(account, stale_rule(event.kind))
        detail = f"no fresh {event.kind} for {event.age:.0f} s"
        changed[alert.fingerprint] = _advance(
            alert, config.stale_level, event.age, now, config, detail=detail
        )
    elif isinstance(event, SourceDown):
        alert = state.alert(account, RULE_SOURCE_DOWN)
        changed[alert.fingerprint] = _advance(
            alert, config.source_down_level, None, now, config, detail=event.reason
        )
    else:
        for rule in (stale_rule(event.kind), RULE_SOURCE_DOWN):
            alert = state.alert(account, rule)
            if alert.firing:
                changed[alert.fingerprint] = _advance(alert, "ok", None, now, config)
    return _finish(state, changed, now)


def on_action_rejected(
    state: RulesState, account: str, detail: str, now: float, config: AlertConfig
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """A venue rejected a protective order: `<account>/action_rejected` fires.

    One episode per rejection stretch: raising it again while it fires only updates the
    detail (and repeats on `repeat_every` like any alert), so a person hears about a refused
    protective order once, not once per report (docs/actions.md).
    """
    alert = state.alert(account, RULE_ACTION_REJECTED)
    changed = {
        alert.fingerprint: _advance(
            alert, config.action_rejected_level, None, now, config, detail=detail
        )
    }
    return _finish(state, changed, now)


def on_action_resolved(
    state: RulesState, account: str, now: float, config: AlertConfig
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """The executor's episode ended (back at the target): resolve `action_rejected`."""
    alert = state.alert(account, RULE_ACTION_REJECTED)
    if not alert.firing:
        return state, ()
    changed = {alert.fingerprint: _advance(alert, "ok", None, now, config)}
    return _finish(state, changed, now)


def on_model_drift(
    state: RulesState, event: ModelDrift, now: float, config: AlertConfig
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """Our ratio and the venue's drifted apart on two reads in a row: `model_drift` fires
    at warning (the ratio used then is the worse of the two, venue_ratio.py); it resolves
    when a read agrees again."""
    alert = state.alert(event.account, RULE_MODEL_DRIFT)
    if not event.drifting:
        if not alert.firing:
            return state, ()
        return _finish(state, {alert.fingerprint: _advance(alert, "ok", None, now, config)}, now)
    gap = (event.model_ratio - event.venue_ratio) / event.venue_ratio if event.venue_ratio else 0
    detail = (
        f"our margin ratio {event.model_ratio:.4f} vs the venue's {event.venue_ratio:.4f} "
        f"({gap:+.1%}) on consecutive reads; likely cause: a tier table, collateral haircut "
        "or margin mode that differs from the venue's (alerts and actions use the worse figure)"
    )
    changed = {alert.fingerprint: _advance(alert, "warning", None, now, config, detail=detail)}
    return _finish(state, changed, now)


def tick(
    state: RulesState, now: float, config: AlertConfig, accounts: Iterable[str] | None = None
) -> tuple[RulesState, tuple[AlertEvent, ...]]:
    """Time passing without new data: due repeats, ended hold times, expired silences.

    The daemon calls this about once a second, because an unchanged account produces no new
    report (state.apply skips no-ops) yet must still repeat on schedule.
    """
    wanted = None if accounts is None else set(accounts)
    changed: dict[str, tuple[AlertState, AlertEvent | None]] = {}
    for fp, alert in state.alerts.items():
        if wanted is not None and alert.account not in wanted:
            continue
        if alert.rule in _THRESHOLD_RULES and alert.value is not None:
            if _quiet(alert, config):
                continue  # nothing to repeat or hold: stepping it again changes nothing
            changed[fp] = _step_threshold(alert, alert.value, now, config)
        elif alert.firing:
            changed[fp] = _advance(alert, alert.level, alert.value, now, config)
    if not changed and not any(now >= s.until for s in state.silences):
        return state, ()
    return _finish(state, changed, now)


def _quiet(alert: AlertState, config: AlertConfig) -> bool:
    """True for a threshold alert at ok, outside any episode and hold, whose last value sits
    below every entry threshold: stepping it again with that value changes nothing.

    Most of the daemon's alerts at any time (one margin and one shock alert per account,
    1 000 accounts, docs/benchmarks.md): `tick` skips them instead of rebuilding each every second.
    """
    value = alert.value
    if (
        value is None
        or alert.level != "ok"
        or alert.episode
        or alert.pending_level != "ok"
        or alert.pending_since is not None
    ):
        return False
    return _rule_level(alert.rule, value, "ok", config) == "ok"


def add_silence(state: RulesState, silence: Silence) -> RulesState:
    """Add (or replace, by id) a silence."""
    others = tuple(s for s in state.silences if s.id != silence.id)
    return replace(state, silences=(*others, silence))


def remove_silence(state: RulesState, silence_id: str) -> RulesState:
    """Lift a silence before it expires."""
    return replace(state, silences=tuple(s for s in state.silences if s.id != silence_id))


def acknowledge(state: RulesState, account: str, rule: str | None = None) -> RulesState:
    """Acknowledge the current episode of one alert, or of every alert of the account.

    Repeats and de-escalations of that episode stay quiet; an escalation re-arms the alert
    and a new episode starts unacknowledged.
    """
    changes = {
        fp: replace(alert, acknowledged=True)
        for fp, alert in state.alerts.items()
        if alert.account == account and (rule is None or alert.rule == rule) and alert.firing
    }
    return replace(state, alerts=updated(state.alerts, changes))
