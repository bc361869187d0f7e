"""Tests for monitor/alerts/message.py: the delivered message and its strict JSON form."""

from __future__ import annotations

import dataclasses
import json
import math

from monitor.alerts.message import AlertMessage, build_message, finite_or_str
from monitor.core.alert_state import AlertEvent
from monitor.core.model import MarginReport, PositionRisk, ShockToLiquidation


def event(value: float | None = 0.9) -> AlertEvent:
    """An emergency firing event."""
    return AlertEvent(
        id="e.0",
        fingerprint="a/margin_ratio",
        account="a",
        rule="margin_ratio",
        kind="firing",
        level="emergency",
        previous_level="ok",
        episode="e",
        started_at=10.0,
        at=12.5,
        value=value,
        previous_value=None,
        worst_value=value,
        worst_level="emergency",
        threshold=0.85,
    )


def report(ratio: float) -> MarginReport:
    """A report with four positions of different maintenance margin."""
    positions = tuple(
        PositionRisk(
            f"S{i}/USDT:USDT",
            "long",
            "cross",
            1.0,
            100.0,
            100.0 * i,
            -1.0,
            10.0,
            float(i),
            None,
            None if i == 2 else 50.0,
        )
        for i in (1, 4, 2, 3)
    )
    return MarginReport(
        "a",
        "USDT",
        100.0,
        -4.0,
        96.0,
        40.0,
        10.0,
        ratio,
        1 / ratio,
        56.0,
        False,
        positions,
        ShockToLiquidation(-0.05, None),
    )


class TestBuildMessage:
    """Event plus report."""

    def test_top_positions_and_figures(self) -> None:
        """Test that the three biggest MM contributors are named, biggest first."""
        m = build_message(event(), report(0.9), action="would reduce S4 by 0.5")
        assert [p.symbol for p in m.positions] == ["S4/USDT:USDT", "S3/USDT:USDT", "S2/USDT:USDT"]
        assert (m.margin_balance, m.free_collateral, m.shock_down, m.shock_up) == (
            96.0,
            56.0,
            -0.05,
            None,
        )
        assert m.duration == 2.5
        assert m.action == "would reduce S4 by 0.5"

    def test_json_round_trip_with_infinity(self) -> None:
        """Test that an infinite ratio survives the outbox as the string "inf", strict JSON."""
        m = build_message(event(math.inf), report(math.inf))
        text = m.to_json()
        assert json.loads(text)["value"] == "inf"
        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        assert AlertMessage.from_json(text) == m

    def test_json_is_made_once_and_follows_a_replace(self) -> None:
        """Test that the outbox and MQTT get the same text from one serialisation, that a
        replaced message serialises its own fields, and the cache is no field of the wire."""
        m = build_message(event(0.8), report(0.8))
        text = m.to_json()
        assert m.to_json() is text
        assert "_json" not in json.loads(text)
        changed = dataclasses.replace(m, detail="other")
        assert json.loads(changed.to_json())["detail"] == "other"
        assert json.loads(m.to_json())["detail"] != "other"
        again = AlertMessage.from_json(text)
        assert again == m
        assert hash(again) == hash(m)
        assert again.to_json() == text

    def test_source_alert_without_report(self) -> None:
        """Test that a stale alert without a report has no account figures."""
        m = build_message(event(None), None)
        assert m.margin_balance is None
        assert m.positions == ()
        assert AlertMessage.from_json(m.to_json()) == m

    def test_finite_or_str(self) -> None:
        """Test the JSON spelling of non-finite numbers."""
        assert [finite_or_str(v) for v in (1.5, math.inf, -math.inf, None)] == [
            1.5,
            "inf",
            "-inf",
            None,
        ]
