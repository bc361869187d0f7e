"""Issue 13 §1: a command or a phone token runs at most once, across restarts and doors."""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path

import aiohttp
import pytest

from monitor.alerts.message import build_message
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.signed_commands import Command, CommandRefused, envelope, signature, verify
from monitor.channels.notify import NotifySink
from monitor.config.alerts import NotifyChannel
from monitor.core.alert_config import AlertConfig
from monitor.store import Store
from tests.mqtt_broker import Mosquitto
from tests.reports import ratio_report as report
from tests.security.harness import SECRET, command, running_daemon

KEY = SECRET.encode()
CONFIG = AlertConfig(repeat_every=0, shock_warning=None, shock_critical=None, shock_emergency=None)


def signed_body(body: dict[str, object], ts: float) -> str:
    """An envelope around an arbitrary body (fields the Command class would not write)."""
    text = json.dumps(body)
    return json.dumps({"body": text, "ts": ts, "sig": signature(KEY, ts, text)})


class TestReplayMemory:
    """The replay memory lives in the state store."""

    def test_replay_after_restart_refused(self, tmp_path: Path) -> None:
        """Test that a command executed before a restart is refused after it."""
        raw = envelope(Command("pause", account="acct", duration=60, request_id="p1"), KEY, 100.0)
        first = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, command_secret=KEY)
        assert first.handle_command(raw, now=101.0)["ok"] is True
        first.store.close()
        again = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, command_secret=KEY)
        reply = again.handle_command(raw, now=102.0)
        assert reply["error"] == "duplicate request_id (replay)"

    def test_memory_ends_with_validity(self, tmp_path: Path) -> None:
        """Test that an id is kept as long as its envelope verifies, and pruned after."""
        store = Store(tmp_path / "a.db")
        pipeline = AlertPipeline(store, CONFIG, command_secret=KEY)
        raw = envelope(Command("status", request_id="s1"), KEY, 1000.0)
        assert pipeline.handle_command(raw, now=1000.0)["ok"]
        assert pipeline.handle_command(raw, now=1059.0)["error"].startswith("duplicate")
        store.prune(1061.0)
        assert store._db.execute("SELECT COUNT(*) FROM seen_request").fetchone()[0] == 0
        assert "old" in pipeline.handle_command(raw, now=1061.0)["error"]  # stale anyway

    def test_request_id_required(self) -> None:
        """Test that a signed command without a request_id is refused."""
        raw = signed_body({"action": "pause", "account": "acct"}, 100.0)
        with pytest.raises(CommandRefused, match="request_id"):
            verify(raw, KEY, now=100.0)

    @pytest.mark.parametrize("expires_at", [math.nan, 1e300, 100.0 + 8 * 86400])
    def test_expires_at_bounded(self, expires_at: float) -> None:
        """Test that a NaN or far-future expires_at is refused (it would never expire)."""
        raw = signed_body(
            {"action": "ack", "account": "a", "request_id": "r", "expires_at": expires_at}, 100.0
        )
        with pytest.raises(CommandRefused, match="expires_at"):
            verify(raw, KEY, now=100.0)

    def test_unknown_account_refused(self, tmp_path: Path) -> None:
        """Test that a signed command for an account that is not configured is refused."""
        pipeline = AlertPipeline(Store(None), CONFIG, command_secret=KEY, accounts=["acct"])
        raw = envelope(Command("pause", account="nope", request_id="u1"), KEY, 100.0)
        reply = pipeline.handle_command(raw, now=100.0)
        assert reply == {"ok": False, "request_id": "u1", "error": "unknown account 'nope'"}
        assert pipeline.switches.paused_until("nope", 100.0) is None


class TestPhoneToken:
    """The ntfy button's token: single use, bound to account and episode, not in the URL."""

    def buttons(self, tmp_path: Path) -> tuple[AlertPipeline, list[str]]:
        """A pipeline with a firing alert and the body tokens of its two buttons."""
        pipeline = AlertPipeline(
            Store(tmp_path / "a.db"), CONFIG, command_secret=KEY, clock=lambda: 100.0
        )
        channel = NotifyChannel.model_validate({"name": "phone", "url": "ntfys://h/topic"})
        sink = NotifySink(
            channel, command_url="https://me/command", sign=pipeline.sign, clock=lambda: 100.0
        )
        (event,) = pipeline.on_report(report(0.9), now=100.0)
        header = sink._actions(build_message(event, None))
        assert header is not None
        assert "token" not in header
        assert "https://me/command," in header
        tokens = [part.split(", ")[4].removeprefix("body=") for part in header.split("; ")]
        return pipeline, tokens

    def test_single_use_across_restart(self, tmp_path: Path) -> None:
        """Test that a pressed button's token is refused again, also after a restart."""
        pipeline, (ack, _) = self.buttons(tmp_path)
        raw = base64.urlsafe_b64decode(ack + "=" * (-len(ack) % 4))
        assert pipeline.handle_command(raw, now=110.0)["ok"] is True
        pipeline.store.close()
        again = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, command_secret=KEY)
        assert again.handle_command(raw, now=120.0)["error"] == "duplicate request_id (replay)"

    def test_bound_to_episode(self, tmp_path: Path) -> None:
        """Test that a token of an episode that resolved cannot silence the next one."""
        pipeline, (_, silence) = self.buttons(tmp_path)
        pipeline.on_report(report(0.1), now=200.0)  # resolved
        pipeline.on_report(report(0.9), now=300.0)  # a new episode
        raw = base64.urlsafe_b64decode(silence + "=" * (-len(silence) % 4))
        reply = pipeline.handle_command(raw, now=310.0)
        assert reply["error"] == "token is for an alert episode that is over"
        assert pipeline.state.silences == ()


class TestDaemon:
    """The real process: MQTT and HTTP doors, a restart in between."""

    @pytest.mark.timeout(120)
    async def test_replay_after_restart_both_doors(
        self, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """Test that a pause sent over MQTT, then replayed after a restart over MQTT and over
        HTTP, runs once; a signed pause without request_id is refused."""
        pause = command("pause", account="demo", duration=600)
        async with running_daemon(mosquitto, tmp_path) as daemon:
            assert (await daemon.send(pause))["ok"] is True
        async with running_daemon(mosquitto, tmp_path) as daemon:
            reply = await daemon.send(pause)
            assert reply == {
                "ok": False,
                "request_id": reply["request_id"],
                "error": "duplicate request_id (replay)",
            }
            token = base64.urlsafe_b64encode(pause.encode()).decode().rstrip("=")
            async with aiohttp.ClientSession() as http:
                async with http.post(daemon.command_url, data=token) as resp:
                    assert resp.status == 403
                    assert (await resp.json())["error"] == "duplicate request_id (replay)"
                no_id = signed_body({"action": "resume", "account": "demo"}, time.time())
                async with http.post(daemon.command_url, data=no_id) as resp:
                    assert resp.status == 403
                    assert "request_id" in (await resp.json())["error"]
