"""The alert lifecycle's data: each fingerprint's state, silences, and the events to send.

Frozen values the rules (`monitor.core.rules`) step from one state to the next; the store
keeps them across restarts and the sinks read them.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from monitor.core.levels import Level, level_rank

__all__ = [
    "AlertEvent",
    "AlertKind",
    "AlertMap",
    "AlertState",
    "RulesState",
    "Silence",
    "announce",
    "episode_id",
    "fingerprint",
    "indexed",
    "updated",
]

AlertKind = Literal["firing", "escalated", "deescalated", "repeat", "resolved"]


def fingerprint(account: str, rule: str) -> str:
    """Stable identity of an alert across episodes and restarts."""
    return f"{account}/{rule}"


def episode_id(fp: str, started_at: float) -> str:
    """Deterministic episode id: the same fingerprint and start time give the same id."""
    digest = hashlib.sha256(f"{fp}|{started_at!r}".encode()).hexdigest()
    return digest[:16]


@dataclass(frozen=True, slots=True)
class Silence:
    """Mute alerts of `account` (None: all) and `rule` (None: all) up to level `up_to`."""

    id: str
    until: float
    account: str | None = None
    rule: str | None = None
    up_to: Level = "emergency"
    created_by: str = ""

    def matches(self, account: str, rule: str, level: str, now: float) -> bool:
        """True when this silence is active at `now` and covers the alert at `level`."""
        return (
            now < self.until
            and (self.account is None or self.account == account)
            and (self.rule is None or self.rule == rule)
            and level_rank(level) <= level_rank(self.up_to)
        )


@dataclass(frozen=True, slots=True)
class AlertState:
    """One fingerprint's lifecycle. `level` ok with `episode` "" means nothing is firing.

    `value` is the rule's figure in its natural unit (ratio, or shock fraction), None for
    stale/down alerts. `notified_level` is the level last announced to a person in this
    episode ("ok" = nothing announced yet); the gap to `level` drives catch-up.
    """

    account: str
    rule: str
    level: Level = "ok"
    episode: str = ""
    started_at: float = 0.0
    seq: int = 0
    value: float | None = None
    last_event_at: float = 0.0
    last_sent_value: float | None = None
    worst_value: float | None = None
    worst_level: Level = "ok"
    notified_level: Level = "ok"
    acknowledged: bool = False
    pending_level: Level = "ok"
    pending_since: float | None = None
    detail: str = ""

    @property
    def fingerprint(self) -> str:
        """`<account>/<rule>`."""
        return fingerprint(self.account, self.rule)

    @property
    def firing(self) -> bool:
        """True inside an episode."""
        return self.level != "ok"

    def with_value(self, value: float | None) -> AlertState:
        """`replace(self, value=value)` at a third of its cost: what a report does to most
        alerts (rules._quiet_report), once per report per account (docs/benchmarks.md)."""
        fields = list(_alert_fields(self))
        fields[_VALUE] = value
        return AlertState(*fields)


#: Changed fingerprints an `AlertMap` keeps beside its base before it folds them in.
COMPACT_AFTER = 64


class AlertMap(Mapping[str, AlertState]):
    """An immutable fingerprint -> `AlertState` map whose `updated` copy costs O(changes).

    Every report steps one account's alerts, and copying every account's alerts to change
    two was most of a report's rule evaluation at 1 000 accounts (a 2 000-entry dict copy,
    ~10 µs; docs/benchmarks.md). An `AlertMap` shares an untouched `base` with the maps it
    was derived from and keeps the changed entries in a small `delta`, folded into a new
    base once it holds `COMPACT_AFTER` fingerprints. Neither dict is ever mutated after the
    map is built, so every earlier state stays as it was. Iteration order is that of the
    plain dict the same updates would give (existing keys in place, new ones last).
    """

    __slots__ = ("_base", "_delta", "_len")

    def __init__(
        self,
        base: Mapping[str, AlertState] | None = None,
        delta: dict[str, AlertState] | None = None,
    ) -> None:
        """`base` is copied; `delta` (private to `updated`) is taken as it is."""
        self._base: dict[str, AlertState] = dict(base or {})
        self._delta: dict[str, AlertState] = delta or {}
        self._len = len(self._base) + sum(1 for fp in self._delta if fp not in self._base)

    def __getitem__(self, fp: str) -> AlertState:
        alert = self._delta.get(fp)
        return alert if alert is not None else self._base[fp]

    def __contains__(self, fp: object) -> bool:
        return fp in self._delta or fp in self._base

    def __iter__(self) -> Iterator[str]:
        base = self._base
        yield from base
        yield from (fp for fp in self._delta if fp not in base)

    def __len__(self) -> int:
        return self._len

    def _merged(self) -> dict[str, AlertState]:
        return {**self._base, **self._delta} if self._delta else self._base

    def keys(self) -> KeysView[str]:
        """At C speed, as are the views below: `rules.tick`'s scan of every alert once a
        second and the status page go through them, not through `__getitem__` per key."""
        return self._merged().keys()

    def items(self) -> ItemsView[str, AlertState]:
        return self._merged().items()

    def values(self) -> ValuesView[AlertState]:
        return self._merged().values()

    def __repr__(self) -> str:
        return f"AlertMap({dict(self.items())!r})"

    def updated(self, changes: Mapping[str, AlertState]) -> AlertMap:
        """A new map with `changes` applied; this one is left as it is."""
        if not changes:
            return self
        delta = {**self._delta, **changes}
        if len(delta) >= COMPACT_AFTER:
            merged = dict(self._base)
            merged.update(delta)
            folded = AlertMap.__new__(AlertMap)
            folded._base, folded._delta, folded._len = merged, {}, len(merged)
            return folded
        grown = AlertMap.__new__(AlertMap)
        grown._base, grown._delta = self._base, delta
        grown._len = self._len + sum(
            1 for fp in changes if fp not in self._base and fp not in self._delta
        )
        return grown


def updated(alerts: Mapping[str, AlertState], changes: Mapping[str, AlertState]) -> AlertMap:
    """`alerts` with `changes` applied, as an `AlertMap` (a plain mapping is copied once)."""
    if isinstance(alerts, AlertMap):
        return alerts.updated(changes)
    return AlertMap({**alerts, **changes})


_alert_fields = operator.attrgetter(*(f.name for f in fields(AlertState)))
_VALUE = [f.name for f in fields(AlertState)].index("value")


@dataclass(frozen=True, slots=True)
class RulesState:
    """All alerts and silences. `alerts` is immutable: every change makes a new map (an
    `AlertMap`, whose copies share what did not change).

    `index` lists each account's fingerprints. Every report evaluates one account, and
    scanning every account's alerts to find its own made a report cost O(accounts) (a
    whole core at 100 sim accounts, docs/benchmarks.md). Fingerprints are never removed, so
    one index serves every later state until a new fingerprint appears; it is derived
    from `alerts` when not given, and never part of equality.
    """

    alerts: Mapping[str, AlertState] = field(default_factory=dict)
    silences: tuple[Silence, ...] = ()
    index: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.index) == 0 and len(self.alerts) != 0:
            object.__setattr__(self, "index", _index_of(self.alerts))

    def alert(self, account: str, rule: str) -> AlertState:
        """The state of one fingerprint (a fresh ok state if never seen)."""
        return self.alerts.get(fingerprint(account, rule)) or AlertState(account, rule)

    def of_account(self, account: str) -> list[AlertState]:
        """Every alert of one account, without looking at the others."""
        alerts = self.alerts
        return [alerts[fp] for fp in self.index.get(account, ())]

    def account_level(self, account: str) -> Level:
        """Highest level of any alert of the account."""
        levels = [a.level for a in self.of_account(account)]
        return max(levels, key=level_rank, default="ok")


def _index_of(alerts: Mapping[str, AlertState]) -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for fp, alert in alerts.items():
        index.setdefault(alert.account, []).append(fp)
    return {account: tuple(fps) for account, fps in index.items()}


def indexed(
    index: Mapping[str, tuple[str, ...]], alerts: Mapping[str, AlertState], fps: Iterable[str]
) -> Mapping[str, tuple[str, ...]]:
    """`index` with any of `fps` it lacks added (copied only then: new fingerprints are rare)."""
    grown: dict[str, tuple[str, ...]] | None = None
    for fp in fps:
        account = alerts[fp].account
        known = (grown or index).get(account, ())
        if fp not in known:
            grown = dict(index) if grown is None else grown
            grown[account] = (*known, fp)
    return index if grown is None else grown


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """Something to tell a person about one alert, with what they need to judge it.

    `id` is `<episode>.<seq>`: unique, stable across a restart, usable for deduplication.
    `previous_value` is the value at the last event of the episode ("how it moved").
    `suppressed` is None for events to deliver, else `silenced:<id>`, `inhibited`,
    `acknowledged` or `unannounced` (a resolve of an episode nobody was told about).
    """

    id: str
    fingerprint: str
    account: str
    rule: str
    kind: AlertKind
    level: Level
    previous_level: Level
    episode: str
    started_at: float
    at: float
    value: float | None
    previous_value: float | None
    worst_value: float | None
    worst_level: Level
    threshold: float | None = None
    detail: str = ""
    suppressed: str | None = None

    @property
    def duration(self) -> float:
        """Seconds since the episode started."""
        return self.at - self.started_at

    @property
    def delivered(self) -> bool:
        """True when this event should reach the sinks."""
        return self.suppressed is None


def announce(
    alert: AlertState,
    kind: AlertKind,
    previous_level: Level,
    now: float,
    threshold: float | None = None,
) -> tuple[AlertState, AlertEvent]:
    """The event telling a person about `alert` as it stands now, and the alert with its
    sequence moved on, so the episode's next event gets the next id."""
    event = AlertEvent(
        id=f"{alert.episode}.{alert.seq}",
        fingerprint=alert.fingerprint,
        account=alert.account,
        rule=alert.rule,
        kind=kind,
        level=alert.level,
        previous_level=previous_level,
        episode=alert.episode,
        started_at=alert.started_at,
        at=now,
        value=alert.value,
        previous_value=alert.last_sent_value,
        worst_value=alert.worst_value,
        worst_level=alert.worst_level,
        threshold=threshold,
        detail=alert.detail,
    )
    return replace(alert, seq=alert.seq + 1, last_event_at=now), event
