"""Tests for monitor/alerts/pipeline.py: delivery, retries, commands, logs; the demo end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from monitor.alerts.message import AlertMessage
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.signed_commands import Command, envelope
from monitor.core.alert_config import AlertConfig
from monitor.core.model import CollateralFall, CollateralRisk, ShockToLiquidation
from monitor.store import Store
from tests.mqtt_broker import Mosquitto, collecting
from tests.reports import ratio_report as report

SECRET = b"k"
CONFIG = AlertConfig(repeat_every=0, shock_warning=None, shock_critical=None, shock_emergency=None)


class FlakySink:
    """A sink that refuses the first `failures` batches, then acknowledges what it is told."""

    def __init__(self, failures: int = 0, ack_only: set[str] | None = None) -> None:
        self.name = "flaky"
        self.failures = failures
        self.ack_only = ack_only
        self.batches: list[list[str]] = []

    def wants(self, message: AlertMessage) -> bool:
        """Test helper: takes everything."""
        return True

    async def deliver(self, messages: Sequence[AlertMessage]) -> Collection[str]:
        """Test helper: fail, then acknowledge (all, or `ack_only`)."""
        self.batches.append([m.id for m in messages])
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("service down")
        ids = {m.id for m in messages}
        return ids if self.ack_only is None else ids & self.ack_only


async def run_until(pipeline: AlertPipeline, condition: object, limit: float = 5.0) -> None:
    """Run the pipeline's tasks until `condition()` holds."""
    task = asyncio.create_task(pipeline.run())
    try:
        for _ in range(int(limit / 0.01)):
            if condition():  # type: ignore[operator]
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class TestDelivery:
    """At least once, per sink, with retries."""

    async def test_failure_then_success(self, tmp_path: Path) -> None:
        """Test that a failed batch stays queued with a counted attempt and is retried."""
        sink = FlakySink(failures=1)
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [sink])
        (event,) = pipeline.on_report(report(0.6))
        await run_until(
            pipeline, lambda: pipeline.store.pending() and pipeline.store.pending()[0].attempts == 1
        )
        assert pipeline.store.pending()[0].last_error == "ConnectionError: service down"
        pipeline.retry_now("flaky")
        await run_until(pipeline, lambda: not pipeline.store.pending())
        assert sink.batches == [[event.id], [event.id]]

    async def test_partial_acknowledgement(self, tmp_path: Path) -> None:
        """Test that only acknowledged messages leave the outbox."""
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [FlakySink()])
        first = pipeline.on_report(report(0.6))[0].id
        second = pipeline.on_report(report(0.9))[0].id
        pipeline = AlertPipeline(pipeline.store, CONFIG, [FlakySink(ack_only={first})])
        await run_until(
            pipeline,
            lambda: (
                [r.message_id for r in pipeline.store.pending()] == [second]
                and pipeline.store.pending()[0].attempts >= 1
            ),
        )

    async def test_suppressed_events_are_not_queued(self, tmp_path: Path) -> None:
        """Test that a silenced alert is logged but never reaches the outbox."""
        pipeline = AlertPipeline(
            Store(tmp_path / "a.db"), CONFIG, [FlakySink()], command_secret=SECRET
        )
        now = pipeline.clock()
        reply = pipeline.handle_command(
            envelope(Command("silence", account="acct", duration=60, request_id="s"), SECRET, now),
            now,
        )
        assert reply["ok"]
        with capture_logs() as logs:
            events = pipeline.on_report(report(0.6), now)
        assert [e.suppressed for e in events] == ["silenced:s"]
        assert pipeline.store.pending() == []
        (entry,) = [e for e in logs if e["event"] == "alert"]
        assert (entry["alert_level"], entry["suppressed"]) == ("warning", "silenced:s")

    def test_alert_log_levels(self, tmp_path: Path) -> None:
        """Test that every alert is a structlog event whose severity follows the level."""
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [])
        with capture_logs() as logs:
            for i, ratio in enumerate([0.6, 0.75, 0.9, 0.1]):
                pipeline.on_report(report(ratio), now=float(i))
        assert [(e["log_level"], e["kind"], e["alert_level"]) for e in logs] == [
            ("warning", "firing", "warning"),
            ("error", "escalated", "critical"),
            ("critical", "escalated", "emergency"),
            ("info", "resolved", "ok"),
        ]


class TestReports:
    """What the pipeline keeps of the reports it sees."""

    def test_last_shock_is_kept(self, tmp_path: Path) -> None:
        """Test that a report without a shock solve is shown with the last one computed."""
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [FlakySink()])
        with_shock = dataclasses.replace(
            report(0.2), shock_to_liquidation=ShockToLiquidation(down=-0.3, up=None)
        )
        pipeline.on_report(with_shock, now=1.0)
        pipeline.on_report(report(0.6), now=2.0)
        (row,) = pipeline.store.pending()
        message = AlertMessage.from_json(row.payload)
        assert (message.margin_ratio, message.shock_down) == (0.6, -0.3)

    def test_last_collateral_risk_is_kept(self, tmp_path: Path) -> None:
        """Test that the phone text of an alert on a report without a shock solve still
        says which collateral fall alone liquidates (the last one solved, issue 12)."""
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [FlakySink()])
        risk = CollateralRisk(0.5, (CollateralFall("BTC", 1_000.0, 0.5, -0.25),))
        pipeline.on_report(dataclasses.replace(report(0.2), collateral_risk=risk), now=1.0)
        pipeline.on_report(report(0.6), now=2.0)
        (row,) = pipeline.store.pending()
        message = AlertMessage.from_json(row.payload)
        assert "a fall of 25.0% in BTC alone liquidates this account" in message.collateral
        assert "50.0% of the margin balance is non-stable collateral" in message.collateral


class TestCommands:
    """Signed commands executed against the alert state and the switches."""

    def pipeline(self, tmp_path: Path) -> AlertPipeline:
        """A pipeline with a command key and a clock at 1000."""
        return AlertPipeline(
            Store(tmp_path / "a.db"),
            AlertConfig(repeat_every=10),
            [],
            command_secret=SECRET,
            clock=lambda: 1000.0,
        )

    def send(
        self, pipeline: AlertPipeline, command: Command, ts: float = 1000.0
    ) -> dict[str, object]:
        """Sign and handle a command."""
        return pipeline.handle_command(envelope(command, SECRET, ts))

    def test_ack_pause_resume_status(self, tmp_path: Path) -> None:
        """Test that ack, pause, resume and status act and are audited."""
        p = self.pipeline(tmp_path)
        p.on_report(report(0.6), now=1000.0)
        assert self.send(p, Command("ack", account="acct", request_id="1"))["ok"]
        assert p.state.alert("acct", "margin_ratio").acknowledged
        reply = self.send(p, Command("pause", account="acct", duration=300, request_id="2"))
        assert reply["until"] == 1300.0
        assert p.switches.is_paused("acct", 1299.0)
        assert not p.switches.is_paused("other", 1299.0)
        assert self.send(p, Command("resume", account="acct", request_id="3"))["ok"]
        assert not p.switches.is_paused("acct", 1001.0)
        status = self.send(p, Command("status", request_id="4"))
        assert status["accounts"] == {  # type: ignore[comparison-overlap]
            "acct": {"level": "warning", "firing": ["margin_ratio"], "actions_paused_until": None}
        }
        assert status["silences"] == []
        assert [r.payload["action"] for r in p.store.audit_trail(kind="command")] == [
            "ack",
            "pause",
            "resume",
            "status",
        ]

    def test_account_named_silences(self, tmp_path: Path) -> None:
        """Test that an account called `silences` keeps its entry beside the silence list."""
        p = self.pipeline(tmp_path)
        p.on_report(report(0.6, account="silences"), now=1000.0)
        self.send(
            p, Command("silence", account="acct", duration=600, silence_id="s", request_id="1")
        )
        status = self.send(p, Command("status", request_id="2"))
        accounts = status["accounts"]
        assert isinstance(accounts, dict)
        assert accounts["silences"] == {
            "level": "warning",
            "firing": ["margin_ratio"],
            "actions_paused_until": None,
        }
        assert status["silences"] == [
            {"id": "s", "account": "acct", "rule": None, "until": 1600.0, "up_to": "emergency"}
        ]

    def test_stale_refusal_echoes_request_id(self, tmp_path: Path) -> None:
        """Test that a readable but stale command is refused with its own request_id."""
        p = self.pipeline(tmp_path)
        reply = self.send(p, Command("ack", account="acct", request_id="r-7"), ts=900.0)
        assert reply == {
            "ok": False,
            "request_id": "r-7",
            "error": "command is 100 s old (limit 60 s): replay?",
        }
        forged = json.dumps(
            {"body": '{"action":"ack","request_id":"r-8"}', "ts": 1000, "sig": "0" * 64}
        )
        assert p.handle_command(forged)["request_id"] == ""  # unsigned: nothing echoed

    def test_unsilence_announces(self, tmp_path: Path) -> None:
        """Test that lifting a silence announces the level it was hiding."""
        p = self.pipeline(tmp_path)
        self.send(
            p, Command("silence", account="acct", duration=600, silence_id="s", request_id="1")
        )
        assert p.on_report(report(0.6), now=1000.0)[0].suppressed == "silenced:s"
        assert self.send(p, Command("unsilence", silence_id="s", request_id="2"))["ok"]
        assert [r.message_id for r in p.store.pending()] == []  # no sinks configured
        assert p.state.alert("acct", "margin_ratio").notified_level == "warning"

    def test_refusals(self, tmp_path: Path) -> None:
        """Test that replays, missing fields and a missing key are refused and audited (one
        row per source and minute, with the count)."""
        p = self.pipeline(tmp_path)
        assert self.send(p, Command("ack", account="acct", request_id="r"))["ok"]
        assert self.send(p, Command("ack", account="acct", request_id="r"))["error"] == (
            "duplicate request_id (replay)"
        )
        assert self.send(p, Command("ack", request_id="x"))["error"] == "ack needs an 'account'"
        assert self.send(p, Command("unsilence", request_id="y"))["error"] == (
            "unsilence needs a 'silence_id'"
        )
        keyless = AlertPipeline(Store(None), CONFIG, [])
        assert "disabled" in keyless.handle_command(b"{}")["error"]  # type: ignore[operator]
        [row] = p.store.audit_trail(kind="command_refused")
        assert row.payload["source"] == "mqtt"
        assert row.payload["count"] == 1  # the first refusal is written at once
        p.tick()
        [row] = p.store.audit_trail(kind="command_refused")
        assert row.payload["count"] == 3  # the tick writes the count that grew
        assert row.payload["reasons"] == {
            "duplicate request_id (replay)": 1,
            "ack needs an 'account'": 1,
            "unsilence needs a 'silence_id'": 1,
        }


class TestEndToEnd:
    """`margin-monitor run --config config/demo-mqtt.toml` against a real broker."""

    @pytest.mark.timeout(90)
    async def test_demo_over_mqtt(self, mosquitto: Mosquitto, tmp_path: Path) -> None:
        """Test that the console script publishes state, the escalation and the resolve."""
        prefix = f"mme2e-{secrets.token_hex(3)}"
        script = Path(sys.executable).parent / "margin-monitor"
        config = Path(__file__).parent.parent / "config" / "demo-mqtt.toml"
        env = {
            **os.environ,
            "MARGIN_MONITOR__MQTT__PORT": str(mosquitto.port),
            "MARGIN_MONITOR__MQTT__PREFIX": prefix,
            "MARGIN_MONITOR__MQTT__DISCOVERY_PREFIX": f"{prefix}-ha",
            "MARGIN_MONITOR__STATE_DIR": str(tmp_path / "state"),
            "MARGIN_MONITOR__ACCOUNTS__DEMO__SIM__SPEED": "8",
        }
        async with collecting(mosquitto, [f"{prefix}/#"]) as sub:
            proc = await asyncio.create_subprocess_exec(
                str(script),
                "run",
                "--config",
                str(config),
                "--no-tui",
                "--duration",
                "12",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, output.decode()[-3000:]
            await sub.wait_for(
                lambda: any(m.payload == b"offline" for m in sub.on(f"{prefix}/status"))
            )
        alerts = [json.loads(m.payload) for m in sub.on(f"{prefix}/demo/alert")]  # type: ignore[arg-type]
        margin = [(a["kind"], a["level"]) for a in alerts if a["rule"] == "margin_ratio"]
        assert margin[:3] == [
            ("firing", "warning"),
            ("escalated", "critical"),
            ("escalated", "emergency"),
        ]
        assert margin[-1] == ("resolved", "ok")
        assert all(m.qos == 1 for m in sub.on(f"{prefix}/demo/alert"))
        assert sub.on(f"{prefix}/status")[0].payload == b"online"
        async with collecting(mosquitto, [f"{prefix}/demo/state"]) as late:
            await late.wait_for(lambda: len(late.messages) == 1)
        state = late.messages[0]
        assert state.retain
        assert json.loads(state.payload)["account"] == "demo"  # type: ignore[arg-type]
