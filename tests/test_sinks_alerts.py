"""Tests for monitor/alerts/sink.py: the daemon's alert consumer and its wiring."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import SecretStr

from monitor.alerts.sink import build_alerts_sink
from monitor.config.alerts import MqttSettings, NotifySettings
from monitor.core.alert_config import AlertConfig
from monitor.core.model import SourceStale, SourceUp


class TestBuildAlertsSink:
    """Wiring from settings."""

    def test_store_opened_lazily(self, tmp_path: Path) -> None:
        """Test that building the sink (as `check` does) creates no state file."""
        sink = build_alerts_sink(tmp_path / "state", AlertConfig(), None, None)
        assert not (tmp_path / "state").exists()
        assert sink.pipeline.store.path == tmp_path / "state" / "alerts.sqlite3"
        assert (tmp_path / "state" / "alerts.sqlite3").exists()

    def test_buttons_need_key_and_url(self, tmp_path: Path) -> None:
        """Test that phone buttons are wired only with a command key and a command URL."""
        notify = NotifySettings.model_validate(
            {
                "command_url": "https://m.example/command",
                "channels": [{"name": "p", "url": "ntfy://127.0.0.1:9/t"}],
            }
        )
        mqtt = MqttSettings.model_validate({"command_secret": "k", "port": 1})
        signed = build_alerts_sink(tmp_path, AlertConfig(), mqtt, notify)
        channel = signed.pipeline.sinks[1]
        assert channel.name == "notify[p]"
        assert getattr(channel, "command_url", None) == "https://m.example/command"
        unsigned = build_alerts_sink(tmp_path / "b", AlertConfig(), None, notify)
        assert getattr(unsigned.pipeline.sinks[0], "sign", "x") is None
        assert isinstance(mqtt.command_secret, SecretStr)


class TestAlertsSink:
    """The Sink protocol side."""

    async def test_events_actions_and_notes(self, tmp_path: Path) -> None:
        """Test that stale events alert, actions are audited and the action note is shown."""
        sink = build_alerts_sink(
            tmp_path, AlertConfig(), None, None, action_note=lambda account: f"paused for {account}"
        )
        await sink.on_event(SourceStale("a", "prices", 30.0))
        assert sink.pipeline.state.alert("a", "stale_prices").firing
        await sink.on_event(SourceUp("a", "prices"))
        assert not sink.pipeline.state.alert("a", "stale_prices").firing
        sink.record_action("a", "order_planned", {"qty": 0.1}, at=5.0)
        (entry,) = sink.pipeline.store.audit_trail(kind="order_planned")
        assert (entry.account, entry.payload) == ("a", {"qty": 0.1})
        assert sink.pipeline.action_note is not None
        assert sink.pipeline.action_note("a") == "paused for a"
        await sink.close()
        assert json.dumps(entry.payload)
