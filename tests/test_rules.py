"""Tests for monitor/core/rules.py: the alert lifecycle on synthetic ratio paths."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core import alert_config, rules
from monitor.core.alert_config import AlertConfig
from monitor.core.alert_state import AlertEvent, AlertMap, AlertState, RulesState, Silence, updated
from monitor.core.levels import LEVELS, level_exit, level_rank, target_level
from monitor.core.model import ShockToLiquidation, SourceDown, SourceStale, SourceUp
from tests.reports import ratio_report as report

NO_REPEAT = AlertConfig(
    repeat_every=0, shock_warning=None, shock_critical=None, shock_emergency=None
)


def run_path(
    ratios: Sequence[float],
    config: AlertConfig = NO_REPEAT,
    dt: float = 1.0,
    state: RulesState | None = None,
    start: float = 0.0,
) -> tuple[RulesState, list[AlertEvent]]:
    """Feed a ratio path at `dt` intervals; return the final state and every event."""
    state = state or RulesState()
    out: list[AlertEvent] = []
    for i, ratio in enumerate(ratios):
        state, events = rules.evaluate(state, report(ratio), start + i * dt, config)
        out.extend(events)
    return state, out


def apply_op(
    state: RulesState, account: str, op: str, x: float, now: float, *, config: AlertConfig
) -> RulesState:
    """One step of a generated history: a report (with a shock figure for `shock`), a source
    event, the clock, an acknowledgement, a rejected order or a silence."""
    if op in ("report", "shock"):
        shock = x / 10 if op == "shock" else None
        return rules.evaluate(state, report(x, account, shock), now, config)[0]
    if op == "stale":
        return rules.on_source_event(state, SourceStale(account, "prices", 30.0), now, config)[0]
    if op == "down":
        return rules.on_source_event(state, SourceDown(account, "x"), now, config)[0]
    if op == "up":
        return rules.on_source_event(state, SourceUp(account, "prices"), now, config)[0]
    if op == "tick":
        return rules.tick(state, now, config)[0]
    if op == "ack":
        return rules.acknowledge(state, account)
    if op == "silence":
        return rules.add_silence(state, Silence(f"s{now}", until=now + 3 * x, account=account))
    return rules.on_action_rejected(state, account, "InvalidOrder", now, config)[0]


def delivered(events: Sequence[AlertEvent]) -> list[tuple[str, str]]:
    """(kind, level) of the events that reach a person."""
    return [(e.kind, e.level) for e in events if e.delivered]


class TestLevels:
    """Entering and leaving levels with hysteresis."""

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ([0.1, 0.2, 0.3], []),
            ([0.1, 0.5], [("firing", "warning")]),
            ([0.1, 0.72], [("firing", "critical")]),
            ([0.1, 0.9], [("firing", "emergency")]),
            ([0.1, math.inf], [("firing", "emergency")]),
            ([0.5, 0.46, 0.54, 0.47], [("firing", "warning")]),
            ([0.5, 0.44], [("firing", "warning"), ("resolved", "ok")]),
            (
                [0.5, 0.7, 0.85],
                [("firing", "warning"), ("escalated", "critical"), ("escalated", "emergency")],
            ),
            ([0.86, 0.81, 0.79], [("firing", "emergency"), ("deescalated", "critical")]),
            ([0.86, 0.3], [("firing", "emergency"), ("resolved", "ok")]),
            (
                [0.86, 0.66, 0.6],
                [("firing", "emergency"), ("deescalated", "critical"), ("deescalated", "warning")],
            ),
            ([0.5, float("nan"), 0.5], [("firing", "warning")]),
        ],
    )
    def test_path(self, path: list[float], expected: list[tuple[str, str]]) -> None:
        """Test that a ratio path produces exactly the expected announcements."""
        _, events = run_path(path)
        assert delivered(events) == expected

    def test_resolved_carries_duration_and_worst(self) -> None:
        """Test that resolved reports the episode's duration and worst ratio and level."""
        _, events = run_path([0.1, 0.55, 0.75, 0.6, 0.2], dt=10.0)
        resolved = [e for e in events if e.kind == "resolved"]
        assert len(resolved) == 1
        assert resolved[0].duration == 30.0
        assert resolved[0].worst_value == 0.75
        assert resolved[0].worst_level == "critical"
        assert resolved[0].previous_value == 0.6

    def test_event_ids_are_deterministic_and_unique(self) -> None:
        """Test that the same path gives the same ids, all distinct, and a new episode a new id."""
        path = [0.5, 0.72, 0.2, 0.6, 0.1]
        _, first = run_path(path)
        _, second = run_path(path)
        assert [e.id for e in first] == [e.id for e in second]
        assert len({e.id for e in first}) == len(first)
        assert len({e.episode for e in first}) == 2

    def test_threshold_and_previous_value(self) -> None:
        """Test that an escalation names the crossed threshold and the value it moved from."""
        _, events = run_path([0.55, 0.72])
        assert events[1].threshold == 0.7
        assert events[1].previous_value == 0.55
        assert events[1].value == 0.72

    @given(
        st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3, unique=True).map(sorted),
        st.integers(0, 3),
        st.floats(0.0, 0.2),
        st.sampled_from(LEVELS),
        st.integers(0, 2),
        st.one_of(st.floats(-0.3, 0.3), st.just(math.inf), st.just(math.nan)),
    )
    @settings(max_examples=300, deadline=None)
    def test_level_exit_is_where_target_level_leaves(  # noqa: PLR0917 - drawn values
        self,
        ascending: list[float],
        off: int,
        band: float,
        level: str,
        near: int,
        offset: float,
    ) -> None:
        """Test that target_level drops below a level exactly for values below level_exit,
        and never keeps a level whose threshold is off (the daemon's tick check relies on it)."""
        value = ascending[near] + offset  # near a threshold, where hysteresis decides
        thresholds = tuple(None if i == off else t for i, t in enumerate(ascending, start=1))
        current = LEVELS[level_rank(level)]
        after = target_level(value, current, thresholds, band)
        edge = level_exit(current, thresholds, band)
        if current != "ok" and thresholds[level_rank(current) - 1] is None:
            assert edge == math.inf
            assert after != current or math.isnan(value)
        else:
            assert (level_rank(after) < level_rank(current)) == (value < edge)


class TestHoldFor:
    """The optional pending time before a higher level is entered."""

    def test_short_spike_is_ignored(self) -> None:
        """Test that a spike shorter than hold_for never fires."""
        config = AlertConfig(hold_for=5.0, repeat_every=0)
        _, events = run_path([0.1, 0.6, 0.6, 0.1, 0.1], config)
        assert delivered(events) == []

    def test_held_level_fires_after_hold_for(self) -> None:
        """Test that a level held for hold_for fires exactly when the hold ends."""
        config = AlertConfig(hold_for=3.0, repeat_every=0)
        _, events = run_path([0.1, 0.6, 0.6, 0.6, 0.6, 0.6], config)
        assert delivered(events) == [("firing", "warning")]
        assert events[0].at == 4.0

    def test_tick_ends_the_hold_without_new_reports(self) -> None:
        """Test that tick() enters the held level when no new report arrives."""
        config = AlertConfig(hold_for=3.0, repeat_every=0)
        state, events = run_path([0.6], config)
        assert events == []
        state, events = rules.tick(state, 2.0, config)
        assert events == ()
        _, events = rules.tick(state, 3.0, config)
        assert delivered(events) == [("firing", "warning")]


class TestRepeat:
    """Unchanged levels repeat on schedule."""

    def test_repeat_timing_exact(self) -> None:
        """Test that an unchanged level repeats at exactly every repeat_every."""
        config = AlertConfig(repeat_every=10.0)
        _, events = run_path([0.6] * 35, config)
        assert [(e.kind, e.at) for e in events] == [
            ("firing", 0.0),
            ("repeat", 10.0),
            ("repeat", 20.0),
            ("repeat", 30.0),
        ]

    def test_tick_repeats_without_reports(self) -> None:
        """Test that tick() produces due repeats when no report arrives."""
        config = AlertConfig(repeat_every=10.0)
        state, _ = run_path([0.6], config)
        times = []
        for now in range(1, 31):
            state, events = rules.tick(state, float(now), config)
            times.extend(e.at for e in events)
        assert times == [10.0, 20.0, 30.0]

    def test_level_change_restarts_repeat_clock(self) -> None:
        """Test that an escalation resets the repeat schedule."""
        config = AlertConfig(repeat_every=10.0)
        _, events = run_path([0.6] * 5 + [0.75] * 12, config)
        assert [(e.kind, e.at) for e in events] == [
            ("firing", 0.0),
            ("escalated", 5.0),
            ("repeat", 15.0),
        ]


class TestShock:
    """Levels set by the shock that would liquidate."""

    def test_shock_levels(self) -> None:
        """Test that a smaller shock to liquidation escalates the shock rule."""
        config = AlertConfig(repeat_every=0)
        state = RulesState()
        kinds = []
        for i, shock in enumerate([0.3, 0.09, 0.045, 0.015, 0.2]):
            state, events = rules.evaluate(state, report(0.1, shock=shock), float(i), config)
            kinds += [(e.rule, e.kind, e.level) for e in events if e.delivered]
        assert kinds == [
            ("shock_to_liquidation", "firing", "warning"),
            ("shock_to_liquidation", "escalated", "critical"),
            ("shock_to_liquidation", "escalated", "emergency"),
            ("shock_to_liquidation", "resolved", "ok"),
        ]

    def test_shock_hysteresis(self) -> None:
        """Test that a shock wobbling inside the band around 10 % does not flap."""
        config = AlertConfig(repeat_every=0, shock_band=0.01)
        state = RulesState()
        out = []
        for i, shock in enumerate([0.099, 0.105, 0.098, 0.109, 0.111]):
            state, events = rules.evaluate(state, report(0.1, shock=shock), float(i), config)
            out += [(e.kind, e.level) for e in events]
        assert out == [("firing", "warning"), ("resolved", "ok")]

    def test_report_without_shock_leaves_shock_alert(self) -> None:
        """Test that a report without shock_to_liquidation does not resolve the shock alert."""
        config = AlertConfig(repeat_every=0)
        state, _ = rules.evaluate(RulesState(), report(0.1, shock=0.04), 0.0, config)
        state, events = rules.evaluate(state, report(0.1), 1.0, config)
        assert events == ()
        assert state.alert("acct", alert_config.RULE_SHOCK).level == "critical"

    def test_no_liquidating_move_is_ok(self) -> None:
        """Test that a report where no move liquidates is level ok."""
        r = replace(report(0.1), shock_to_liquidation=ShockToLiquidation(None, None))
        assert alert_config.shock_fraction(r) == math.inf
        _, events = rules.evaluate(RulesState(), r, 0.0, AlertConfig())
        assert events == ()


class TestSourceAlerts:
    """Stale data and a source that gave up."""

    def test_stale_lifecycle(self) -> None:
        """Test that stale fires once, repeats, and resolves on SourceUp of the same kind."""
        config = AlertConfig(repeat_every=60.0)
        state, ev = rules.on_source_event(
            RulesState(), SourceStale("a", "prices", 30.0), 0.0, config
        )
        assert [(e.rule, e.kind, e.level) for e in ev] == [("stale_prices", "firing", "warning")]
        assert "30 s" in ev[0].detail
        state, ev = rules.on_source_event(state, SourceStale("a", "prices", 40.0), 10.0, config)
        assert ev == ()
        state, ev = rules.on_source_event(state, SourceUp("a", "positions"), 20.0, config)
        assert ev == ()
        state, ev = rules.on_source_event(state, SourceUp("a", "prices"), 30.0, config)
        assert [(e.rule, e.kind, e.duration) for e in ev] == [("stale_prices", "resolved", 30.0)]
        assert not state.alert("a", "stale_prices").firing

    def test_source_down_lifecycle(self) -> None:
        """Test that source_down fires critical with its reason and resolves on SourceUp."""
        config = AlertConfig()
        state, ev = rules.on_source_event(RulesState(), SourceDown("a", "bad api key"), 0.0, config)
        assert [(e.rule, e.level, e.detail) for e in ev] == [
            ("source_down", "critical", "bad api key")
        ]
        _, ev = rules.on_source_event(state, SourceUp("a", "balance"), 5.0, config)
        assert [(e.rule, e.kind) for e in ev] == [("source_down", "resolved")]


class TestActionRejected:
    """A venue refusing a protective order (issue 5 §4)."""

    def test_one_alert_per_rejection_episode(self) -> None:
        """Test that a rejection fires once, a second one is quiet, and the end resolves it."""
        config = AlertConfig(repeat_every=0)
        state, ev = rules.on_action_rejected(RulesState(), "a", "InsufficientFunds", 0.0, config)
        assert [(e.fingerprint, e.kind, e.level, e.detail) for e in ev] == [
            ("a/action_rejected", "firing", "critical", "InsufficientFunds")
        ]
        state, ev = rules.on_action_rejected(state, "a", "InsufficientFunds again", 5.0, config)
        assert ev == ()
        state, ev = rules.on_action_resolved(state, "a", 9.0, config)
        assert [(e.kind, e.duration) for e in ev] == [("resolved", 9.0)]
        assert not state.alert("a", alert_config.RULE_ACTION_REJECTED).firing
        assert rules.on_action_resolved(state, "a", 10.0, config) == (state, ())

    def test_not_inhibited_by_a_margin_emergency(self) -> None:
        """Test that a refused protective order is heard even while the account is at emergency."""
        state, _ = run_path([0.1, 0.95])
        _, ev = rules.on_action_rejected(state, "acct", "reduce-only rejected", 3.0, NO_REPEAT)
        assert [(e.rule, e.delivered) for e in ev] == [("action_rejected", True)]


class TestSuppression:
    """Inhibition, silences and acknowledgement."""

    def test_emergency_inhibits_lesser_alerts(self) -> None:
        """Test that a margin emergency mutes the shock warning, which catches up afterwards."""
        config = AlertConfig(repeat_every=0)
        state, ev = rules.evaluate(RulesState(), report(0.9, shock=0.09), 0.0, config)
        assert {(e.rule, e.level, e.suppressed) for e in ev} == {
            ("margin_ratio", "emergency", None),
            ("shock_to_liquidation", "warning", "inhibited"),
        }
        state, ev = rules.evaluate(state, report(0.2, shock=0.09), 1.0, config)
        assert {(e.rule, e.kind, e.level, e.suppressed) for e in ev} == {
            ("margin_ratio", "resolved", "ok", None),
            ("shock_to_liquidation", "firing", "warning", None),
        }

    def test_stale_is_never_inhibited(self) -> None:
        """Test that a stale alert reaches a person during an emergency."""
        config = AlertConfig(repeat_every=0)
        state, _ = rules.evaluate(RulesState(), report(0.9), 0.0, config)
        _, ev = rules.on_source_event(state, SourceStale("acct", "prices", 30), 1.0, config)
        assert [e.suppressed for e in ev] == [None]

    def test_silence_mutes_and_expires(self) -> None:
        """Test that a silence mutes its alert until it expires, then the level is announced."""
        state = rules.add_silence(RulesState(), Silence(id="s1", until=5.0, account="acct"))
        state, ev = run_path([0.6, 0.6, 0.6], state=state)
        assert [e.suppressed for e in ev] == ["silenced:s1"]
        state, ev = rules.tick(state, 5.0, NO_REPEAT)
        assert delivered(ev) == [("firing", "warning")]
        assert state.silences == ()

    def test_silence_does_not_hide_a_higher_level(self) -> None:
        """Test that a silence up to warning lets the emergency through."""
        state = rules.add_silence(
            RulesState(), Silence(id="s", until=100.0, account="acct", up_to="warning")
        )
        _, ev = run_path([0.6, 0.9], state=state)
        assert [(e.level, e.suppressed) for e in ev] == [
            ("warning", "silenced:s"),
            ("emergency", None),
        ]

    def test_silenced_episode_resolves_quietly(self) -> None:
        """Test that an episode nobody was told about ends without a resolved message."""
        state = rules.add_silence(RulesState(), Silence(id="s", until=100.0))
        _, ev = run_path([0.6, 0.1], state=state)
        assert [(e.kind, e.suppressed) for e in ev] == [
            ("firing", "silenced:s"),
            ("resolved", "unannounced"),
        ]

    def test_remove_silence(self) -> None:
        """Test that a lifted silence stops muting."""
        state = rules.add_silence(RulesState(), Silence(id="s", until=100.0))
        state = rules.remove_silence(state, "s")
        _, ev = run_path([0.6], state=state)
        assert delivered(ev) == [("firing", "warning")]

    def test_acknowledge_stops_repeats_until_escalation(self) -> None:
        """Test that an acknowledged alert stops repeating and an escalation breaks through."""
        config = AlertConfig(repeat_every=10.0)
        state, _ = run_path([0.6], config)
        state = rules.acknowledge(state, "acct")
        state, ev = run_path([0.6] * 30, config, state=state, start=1.0)
        assert delivered(ev) == []
        assert {e.suppressed for e in ev} == {"acknowledged"}
        state, ev = run_path([0.75] * 11, config, state=state, start=31.0)
        assert delivered(ev) == [("escalated", "critical"), ("repeat", "critical")]

    def test_acknowledge_ends_with_episode(self) -> None:
        """Test that the next episode after an acknowledged one is not acknowledged."""
        state, _ = run_path([0.6])
        state = rules.acknowledge(state, "acct", alert_config.RULE_MARGIN)
        state, ev = run_path([0.6, 0.1, 0.6], state=state, start=1.0)
        assert delivered(ev) == [("resolved", "ok"), ("firing", "warning")]


# --- properties on random paths ---------------------------------------------------------------

ratios = st.lists(st.floats(min_value=0.0, max_value=1.2, allow_nan=False), min_size=1, max_size=60)


class TestProperties:
    """Invariants that hold on any ratio path."""

    @given(ratios)
    @settings(max_examples=300, deadline=None)
    def test_one_resolved_per_episode(self, path: list[float]) -> None:
        """Test that every episode that started and ended has exactly one resolved."""
        _, events = run_path([*path, 0.0])
        firing = [e.episode for e in events if e.kind == "firing"]
        resolved = [e.episode for e in events if e.kind == "resolved"]
        assert firing == resolved
        assert len(set(firing)) == len(firing)

    @given(ratios)
    @settings(max_examples=300, deadline=None)
    def test_transitions_respect_thresholds_and_band(self, path: list[float]) -> None:
        """Test that a level is entered only at its threshold and left only below it − band."""
        config = NO_REPEAT
        thresholds = dict(zip(LEVELS[1:], config.ratio_thresholds(), strict=True))
        _, events = run_path(path, config)
        for e in events:
            assert e.value is not None
            if e.kind in ("firing", "escalated"):
                assert e.value >= thresholds[e.level]  # type: ignore[operator]
            if e.kind in ("deescalated", "resolved"):
                left = thresholds[e.previous_level]
                assert e.value < left - config.band  # type: ignore[operator]

    @given(ratios)
    @settings(max_examples=300, deadline=None)
    def test_escalation_is_immediate(self, path: list[float]) -> None:
        """Test that the evaluation whose ratio crosses a higher threshold announces it."""
        state = RulesState()
        for i, ratio in enumerate(path):
            before = state.alert("acct", alert_config.RULE_MARGIN).level
            state, events = rules.evaluate(state, report(ratio), float(i), NO_REPEAT)
            raw = sum(1 for t in NO_REPEAT.ratio_thresholds() if t is not None and ratio >= t)
            if raw > level_rank(before):
                assert [e.level for e in events] == [LEVELS[raw]]

    @given(
        st.floats(min_value=0.5, max_value=0.699),
        st.lists(st.floats(min_value=0.451, max_value=0.69), min_size=1, max_size=50),
    )
    @settings(max_examples=200, deadline=None)
    def test_no_flapping_inside_band(self, first: float, wobble: list[float]) -> None:
        """Test that after entering warning, values inside [0.45, 0.7) never produce an event."""
        _, events = run_path([first, *wobble])
        assert [(e.kind, e.level) for e in events] == [("firing", "warning")]

    @given(st.integers(min_value=1, max_value=20), st.integers(min_value=30, max_value=200))
    @settings(max_examples=100, deadline=None)
    def test_repeat_count(self, every: int, length: int) -> None:
        """Test that an unchanged level repeats floor((length-1)/every) times at exact times."""
        config = AlertConfig(repeat_every=float(every))
        _, events = run_path([0.6] * length, config)
        repeats = [e.at for e in events if e.kind == "repeat"]
        assert repeats == [float(every * k) for k in range(1, (length - 1) // every + 1)]


class TestAccountIndex:
    """The per-account index that keeps a report O(its own alerts)."""

    _steps = st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["report", "stale", "down", "up", "tick", "ack", "rejected"]),
            st.floats(0.0, 1.2),
        ),
        max_size=40,
    )

    @settings(max_examples=150, deadline=None)
    @given(_steps)
    def test_index_matches_alerts(self, steps: list[tuple[str, str, float]]) -> None:
        """Test that after any mix of operations the index lists exactly each account's alerts
        and the per-account views agree with a scan of every alert."""
        config = AlertConfig(repeat_every=5.0)
        state = RulesState()
        for i, (account, op, x) in enumerate(steps):
            # "shock": the report with a shock figure this test has always sent
            state = apply_op(
                state, account, "shock" if op == "report" else op, x, float(i), config=config
            )
            scanned: dict[str, set[str]] = {}
            for fp, alert in state.alerts.items():
                scanned.setdefault(alert.account, set()).add(fp)
            assert {a: set(fps) for a, fps in state.index.items()} == scanned
            for name in ("a", "b", "c"):
                brute = [a.level for a in state.alerts.values() if a.account == name]
                assert state.account_level(name) == max(brute, key=level_rank, default="ok")

    def test_rebuilt_when_not_given(self) -> None:
        """Test that a state built from stored alerts (no index) indexes them itself."""
        state, _ = rules.evaluate(RulesState(), report(0.9, "a"), 0.0, NO_REPEAT)
        state, _ = rules.evaluate(state, report(0.6, "b"), 1.0, NO_REPEAT)
        loaded = RulesState(alerts=dict(state.alerts))
        assert dict(loaded.index) == {"a": state.index["a"], "b": state.index["b"]}
        assert loaded == state  # the index is not part of equality


class TestQuietReport:
    """The shortcut for a report that only moves a quiet margin alert's value."""

    _steps = st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(["report", "shock", "stale", "up", "tick", "ack", "silence"]),
            st.floats(0.0, 1.2),
        ),
        max_size=30,
    )

    @settings(max_examples=300, deadline=None)
    @given(
        _steps,
        st.sampled_from(["a", "b"]),
        st.floats(0.0, 1.2),
        st.one_of(st.none(), st.floats(0.0, 0.12), st.just(math.inf)),
    )
    def test_same_as_the_long_way(
        self,
        steps: list[tuple[str, str, float]],
        account: str,
        ratio: float,
        shock: float | None,
    ) -> None:
        """Test that after any history a report, with or without a shock figure, gives the
        state and events the full step gives."""
        config = AlertConfig(repeat_every=5.0, hold_for=2.0)
        state = RulesState()
        for i, (name, op, x) in enumerate(steps):
            state = apply_op(state, name, op, x, float(i), config=config)
            later = float(len(steps))
            quick = rules.evaluate(state, report(ratio, account, shock), later, config)
            full = rules._evaluate_stepped(state, report(ratio, account, shock), later, config)
            assert quick == full
            assert dict(quick[0].index) == dict(full[0].index)

    def test_taken_when_quiet(self) -> None:
        """Test that a calm account's report leaves every other alert object as it was."""
        state, _ = run_path([0.1, 0.2])
        other, _ = rules.evaluate(state, report(0.3, "b"), 2.0, NO_REPEAT)
        after, events = rules.evaluate(other, report(0.25), 3.0, NO_REPEAT)
        assert events == ()
        assert after.alert("acct", alert_config.RULE_MARGIN).value == 0.25
        assert after.index is other.index
        assert after.alerts["b/margin_ratio"] is other.alerts["b/margin_ratio"]

    def test_taken_for_a_quiet_shock_figure(self) -> None:
        """Test that a calm account's report with a calm shock figure takes the shortcut
        (the index and the other account's alerts are the same objects) and sets both values."""
        state, _ = rules.evaluate(RulesState(), report(0.1, "acct", 0.5), 0.0, AlertConfig())
        state, _ = rules.evaluate(state, report(0.3, "b", 0.4), 1.0, AlertConfig())
        after, events = rules.evaluate(state, report(0.2, "acct", 0.45), 2.0, AlertConfig())
        assert events == ()
        assert after.index is state.index
        assert after.alerts["b/shock_to_liquidation"] is state.alerts["b/shock_to_liquidation"]
        assert after.alert("acct", alert_config.RULE_MARGIN).value == 0.2
        assert after.alert("acct", alert_config.RULE_SHOCK).value == 0.45

    def test_not_taken_for_a_shock_figure_in_the_warning_zone(self) -> None:
        """Test that a shock figure inside the shock warning fires through the long way."""
        config = AlertConfig(hold_for=0.0)
        state, _ = rules.evaluate(RulesState(), report(0.1, "acct", 0.5), 0.0, config)
        assert config.shock_warning is not None
        near = config.shock_warning / 2
        _, events = rules.evaluate(state, report(0.1, "acct", near), 1.0, config)
        assert [(e.rule, e.kind) for e in events] == [(alert_config.RULE_SHOCK, "firing")]


class TestAlertMap:
    """The immutable alert map whose copies share what did not change."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.lists(st.tuples(st.integers(0, 150), st.floats(0.0, 1.0)), max_size=8),
            max_size=60,
        )
    )
    def test_behaves_as_dict_copies(self, batches: list[list[tuple[int, float]]]) -> None:
        """Test that every map in a chain of updates equals the dict the same updates give,
        order and length included, and that no update changes an earlier map."""
        current, plain = AlertMap(), dict[str, AlertState]()
        history: list[tuple[AlertMap, dict[str, AlertState]]] = []
        for batch in batches:
            changes = {f"a{k}/r": AlertState(f"a{k}", "r", value=v) for k, v in batch}
            current, plain = updated(current, changes), {**plain, **changes}
            history.append((current, plain))
        for mapping, expected in history:
            assert list(mapping) == list(expected)
            assert list(mapping.items()) == list(expected.items())
            assert len(mapping) == len(expected)
            assert mapping == expected
            assert all(mapping[fp] is alert and fp in mapping for fp, alert in expected.items())
            assert mapping.get("missing/r") is None
            assert "missing/r" not in mapping

    def test_with_value_is_replace(self) -> None:
        """Test that `with_value` changes the value and keeps every other field."""
        lifecycle = ("warning", "ep", 1.0, 3, 0.5, 2.0, 0.4, 0.6, "critical", "warning")
        alert = AlertState("a", "r", *lifecycle, True, "critical", 1.5, "detail")
        assert [getattr(alert, f.name) == f.default for f in fields(AlertState)] == [False] * 16
        assert alert.with_value(0.7) == replace(alert, value=0.7)
        assert alert.with_value(None) == replace(alert, value=None)
