"""Tests for monitor/channels/mqtt.py against a real mosquitto (tests/conftest.py `mosquitto`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import SecretStr

from monitor.alerts.message import AlertMessage
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.signed_commands import Command, envelope
from monitor.channels.mqtt import MqttSettings, MqttSink
from monitor.channels.mqtt_payloads import discovery_configs, state_payload
from monitor.core.alert_config import AlertConfig
from monitor.core.model import MarginReport, PositionRisk, ShockToLiquidation
from monitor.store import Store
from tests.mqtt_broker import Mosquitto, collecting

SECRET = b"test-secret"
CONFIG = AlertConfig(repeat_every=0)


def report(ratio: float, account: str = "acct", balance: float = 1000.0) -> MarginReport:
    """A report with one position and a shock to liquidation."""
    pos = PositionRisk(
        symbol="BTC/USDT:USDT",
        side="long",
        margin_mode="cross",
        contracts=1.0,
        mark_price=60000.0,
        notional=60000.0,
        unrealized_pnl=-150.0,
        initial_margin=600.0,
        maintenance_margin=ratio * balance,
        margin_ratio=None,
        liquidation_price=52000.0,
    )
    return MarginReport(
        account=account,
        currency="USDT",
        wallet_balance=balance,
        unrealized_pnl=-150.0,
        margin_balance=balance,
        initial_margin=600.0,
        maintenance_margin=ratio * balance,
        margin_ratio=ratio,
        margin_level=math.inf if ratio == 0 else 1 / ratio,
        free_collateral=balance - 600.0,
        liquidated=ratio >= 1,
        positions=(pos,),
        shock_to_liquidation=ShockToLiquidation(down=-0.3, up=None),
    )


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to the test (aiomqtt's own test convention)."""
    return f"mmtest-{request.node.name.replace('[', '-').rstrip(']')}-{secrets.token_hex(3)}"


def alert(rule: str, kind: str, detail: str, value: float | None = None) -> AlertMessage:
    """An alert of `acct`: firing at critical, or resolved."""
    return AlertMessage(
        id=f"{rule}.{kind}",
        fingerprint=f"acct/{rule}",
        account="acct",
        rule=rule,
        kind=kind,
        level="ok" if kind == "resolved" else "critical",
        previous_level="ok",
        episode="e",
        started_at=1.0,
        at=2.0,
        duration=1.0,
        value=value,
        previous_value=None,
        worst_value=value,
        worst_level="critical",
        detail=detail,
    )


def settings_for(broker: Mosquitto, prefix: str, **extra: object) -> MqttSettings:
    """Sink settings pointing at the fixture broker."""
    return MqttSettings.model_validate(
        {
            "host": broker.host,
            "port": broker.port,
            "prefix": prefix,
            "timeout": 2.0,
            "state_interval": 0.0,
            "discovery_prefix": f"{prefix}-ha",
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def running(sink: MqttSink) -> AsyncIterator[MqttSink]:
    """The sink's connection loop, connected before the block starts."""
    task = asyncio.create_task(sink.run())
    try:
        async with asyncio.timeout(10):
            await sink.wait_connected()
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def delivering(pipeline: AlertPipeline) -> AsyncIterator[AlertPipeline]:
    """The pipeline's delivery tasks."""
    task = asyncio.create_task(pipeline.run())
    try:
        yield pipeline
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TestPayloads:
    """Pure payload builders."""

    def test_state_payload(self) -> None:
        """Test that the state carries the report contract plus level and percent fields."""
        data = state_payload(report(0.62), "warning")
        assert data["account"] == "acct"
        assert data["margin_ratio"] == 0.62
        assert data["margin_ratio_pct"] == 62.0
        assert data["shock_to_liquidation_pct"] == 30.0
        assert data["level"] == "warning"

    def test_state_payload_flags(self) -> None:
        """Test that the binary sensors' flags are in the state, false unless set."""
        assert state_payload(report(0.3), "ok")["source_down"] is False
        data = state_payload(report(0.3), "ok", {"protection_active": True})
        assert (data["source_down"], data["protection_active"]) == (False, True)

    def test_state_payload_liquidated(self) -> None:
        """Test that an infinite ratio becomes "inf" and a null percentage, valid JSON."""
        data = state_payload(report(math.inf), "emergency")
        assert data["margin_ratio"] == "inf"
        assert data["margin_ratio_pct"] is None
        json.dumps(data, allow_nan=False)

    def test_discovery(self) -> None:
        """Test that discovery describes five sensors and two binary sensors of one device."""
        settings = MqttSettings(prefix="mm", expire_after=120)
        configs = dict(discovery_configs(settings, "binance main", "USDT"))
        assert sorted(configs) == sorted(
            [
                f"homeassistant/sensor/margin_monitor_binance_main_{k}/config"
                for k in [
                    "free_collateral",
                    "level",
                    "margin_balance",
                    "margin_ratio",
                    "shock_to_liquidation",
                ]
            ]
            + [
                f"homeassistant/binary_sensor/margin_monitor_binance_main_{k}/config"
                for k in ["source_down", "protection_active"]
            ]
        )
        down = configs["homeassistant/binary_sensor/margin_monitor_binance_main_source_down/config"]
        assert (down["device_class"], down["state_topic"]) == ("problem", "mm/binance main/state")
        assert down["value_template"] == "{{ 'ON' if value_json.source_down else 'OFF' }}"
        ratio = configs["homeassistant/sensor/margin_monitor_binance_main_margin_ratio/config"]
        assert ratio["state_topic"] == "mm/binance main/state"
        assert ratio["availability_topic"] == "mm/status"
        assert ratio["expire_after"] == 120
        assert ratio["unit_of_measurement"] == "%"
        assert ratio["device"]["identifiers"] == ["margin_monitor_binance_main"]
        balance = configs["homeassistant/sensor/margin_monitor_binance_main_margin_balance/config"]
        assert balance["unit_of_measurement"] == "USDT"

    def test_settings_reject_wildcards_and_hide_secrets(self) -> None:
        """Test that a prefix with a wildcard is refused and secrets do not print."""
        with pytest.raises(ValueError, match="prefix"):
            MqttSettings(prefix="a/#")
        s = MqttSettings(password=SecretStr("hunter2"), command_secret=SecretStr("k"))
        assert "hunter2" not in repr(s)
        assert "hunter2" not in str(s.model_dump())


class TestBroker:
    """Topics, payloads, retain and QoS seen by a real subscriber."""

    async def test_alerts_state_status(
        self, mosquitto: Mosquitto, prefix: str, tmp_path: Path
    ) -> None:
        """Test that alerts arrive QoS 1 not retained, state and status arrive retained."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False))
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [sink])
        async with (
            collecting(mosquitto, [f"{prefix}/#"]) as sub,
            running(sink),
            delivering(pipeline),
        ):
            pipeline.on_report(report(0.2))
            pipeline.on_report(report(0.75))
            await sub.wait_for(
                lambda: (
                    len(sub.on(f"{prefix}/acct/alert")) == 1
                    and len(sub.on(f"{prefix}/acct/state")) >= 1
                )
            )
        (alert,) = sub.on(f"{prefix}/acct/alert")
        assert alert.qos == 1
        assert not alert.retain
        body = json.loads(alert.payload)  # type: ignore[arg-type]
        assert (body["kind"], body["level"], body["margin_ratio"]) == ("firing", "critical", 0.75)
        assert body["positions"][0]["symbol"] == "BTC/USDT:USDT"
        assert sub.on(f"{prefix}/status")[0].payload == b"online"

        # A subscriber arriving later gets the retained state and status.
        async with collecting(mosquitto, [f"{prefix}/#"]) as late:
            await late.wait_for(
                lambda: (
                    len(late.on(f"{prefix}/acct/state")) == 1
                    and len(late.on(f"{prefix}/status")) == 1
                )
            )
        (state,) = late.on(f"{prefix}/acct/state")
        assert state.retain
        assert json.loads(state.payload)["level"] == "critical"  # type: ignore[arg-type]
        # The sink shut down cleanly: status says offline (retained).
        assert late.on(f"{prefix}/status")[0].payload == b"offline"
        assert late.on(f"{prefix}/acct/alert") == []

    async def test_no_nagle_on_the_daemons_socket(self, mosquitto: Mosquitto, prefix: str) -> None:
        """Test that the sink's connection has TCP_NODELAY: an alert is not held on the socket
        until the broker acknowledges the packet before it."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False))
        async with running(sink):
            assert sink._wire._paho is not None
            sock = sink._wire._paho.socket()
            assert isinstance(sock, socket.socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

    async def test_alert_larger_than_the_socket_buffer(
        self, mosquitto: Mosquitto, prefix: str
    ) -> None:
        """Test that an alert whose bytes do not all fit the socket in `send_now`'s own write
        is finished by aiomqtt's writer: acknowledged, flushed and delivered whole."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False))
        # past any loopback socket buffer
        big = alert("margin_ratio", "firing", "x" * 16_000_000, value=0.9)
        async with collecting(mosquitto, [f"{prefix}/acct/alert"]) as sub, running(sink):
            mosquitto.pause()  # a broker that takes no bytes: the socket buffer fills up
            try:
                acked = sink.send_now([big])
                assert acked is not None
                assert sink._wire._paho is not None
                assert sink._wire._paho.want_write()  # left over after the call's own write
                flushed = sink.written()
                await asyncio.sleep(0.2)
                assert not flushed.done()
            finally:
                mosquitto.resume()
            async with asyncio.timeout(30):
                assert await acked == {big.id}
                await flushed
            await sub.wait_for(lambda: len(sub.messages) == 1, 30)
        assert json.loads(sub.messages[0].payload)["detail"] == big.detail  # type: ignore[arg-type]

    async def test_write_request_for_a_socket_closed_before_the_loop_runs_it(
        self, mosquitto: Mosquitto, prefix: str
    ) -> None:
        """Test that paho asking, from another thread, to watch a socket it then closes before
        the loop gets to it adds no writer: no EBADF "Exception in callback" (a stopping
        daemon's last alert did this, issue 16's fault matrix) and no watch on a dead fd."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False))
        loop = asyncio.get_running_loop()
        failures: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: failures.append(context))
        try:
            async with running(sink):
                inner = sink._wire._paho
                assert inner is not None
                sock = inner.socket()
                assert isinstance(sock, socket.socket)
                fd = sock.fileno()
                asking = threading.Thread(  # as paho's connect thread does
                    target=inner.on_socket_register_write, args=(inner, None, sock)
                )
                asking.start()
                asking.join()  # the loop has not run: the request waits in its queue
                inner._sock_close()
                for _ in range(5):
                    await asyncio.sleep(0)
                selector = loop._selector  # type: ignore[attr-defined]
                assert fd not in selector.get_map()
        finally:
            loop.set_exception_handler(None)
        assert failures == []

    async def test_state_only_on_change_and_rate_limited(
        self, mosquitto: Mosquitto, prefix: str
    ) -> None:
        """Test that an unchanged report is not republished and bursts are thinned."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False, state_interval=0.5))
        topic = f"{prefix}/acct/state"
        async with collecting(mosquitto, [topic]) as sub, running(sink):
            sink.observe_report(report(0.3), "ok")
            await sub.wait_for(lambda: len(sub.on(topic)) == 1)
            sink.observe_report(report(0.3), "ok")
            for i in range(20):
                sink.observe_report(report(0.31 + i / 1000), "ok")
            await sub.wait_for(lambda: len(sub.on(topic)) >= 2)
            await asyncio.sleep(0.8)
        ratios = [json.loads(m.payload)["margin_ratio"] for m in sub.on(topic)]  # type: ignore[arg-type]
        assert ratios[0] == 0.3
        assert ratios[-1] == pytest.approx(0.329)
        assert len(ratios) <= 3

    async def test_last_will_on_lost_connection(self, mosquitto: Mosquitto, prefix: str) -> None:
        """Test that the broker publishes the retained `offline` will when the link dies."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False, keepalive=5))
        async with collecting(mosquitto, [f"{prefix}/status"]) as sub, running(sink):
            await sub.wait_for(lambda: [m.payload for m in sub.messages] == [b"online"])
            client = sink._client
            assert client is not None
            # Cut the TCP connection under paho, as a crash or a network fault would.
            client._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            await sub.wait_for(lambda: b"offline" in [m.payload for m in sub.messages])
            # ... and the sink reconnects by itself and says online again.
            await sub.wait_for(lambda: [m.payload for m in sub.messages][-1] == b"online")

    async def test_home_assistant_discovery(self, mosquitto: Mosquitto, prefix: str) -> None:
        """Test that discovery is retained and re-sent when Home Assistant comes online."""
        sink = MqttSink(settings_for(mosquitto, prefix))
        ha = f"{prefix}-ha"
        # five sensors and two binary sensors
        async with (
            collecting(mosquitto, [f"{ha}/sensor/#", f"{ha}/binary_sensor/#"]) as sub,
            running(sink),
        ):
            sink.observe_report(report(0.3), "ok")
            await sub.wait_for(lambda: len(sub.messages) == 7)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as ha_client:
                await ha_client.publish(f"{ha}/status", "online", qos=1)
            await sub.wait_for(lambda: len(sub.messages) == 14)
        config = json.loads(sub.messages[0].payload)  # type: ignore[arg-type]
        assert config["availability_topic"] == f"{prefix}/status"
        async with collecting(mosquitto, [f"{ha}/sensor/#", f"{ha}/binary_sensor/#"]) as late:
            await late.wait_for(lambda: len(late.messages) == 7)
        assert all(m.retain for m in late.messages)

    async def test_stop_during_a_publish_ends(self, mosquitto: Mosquitto, prefix: str) -> None:
        """Test that cancelling the sink while discovery is still publishing ends its task.

        The sensors' configs arrive first; the stop lands while the binary sensors' are in
        flight. A cancel swallowed inside aiomqtt's publish once left the state task waiting
        forever, and the sink (and a daemon's shutdown) with it."""
        sink = MqttSink(settings_for(mosquitto, prefix))
        ha = f"{prefix}-ha"
        async with collecting(mosquitto, [f"{ha}/sensor/#"]) as sub:
            task = asyncio.create_task(sink.run())
            async with asyncio.timeout(10):
                await sink.wait_connected()
            sink.observe_report(report(0.3), "ok")
            await sub.wait_for(lambda: len(sub.messages) == 5)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as ha_client:
                await ha_client.publish(f"{ha}/status", "online", qos=1)
            await sub.wait_for(lambda: len(sub.messages) == 10)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
        assert done == {task}
        assert task.cancelled()

    async def test_binary_sensor_states(self, mosquitto: Mosquitto, prefix: str) -> None:
        """Test that source_down follows its alert and protection_active the action feed."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False))
        topic = f"{prefix}/acct/state"

        def down(kind: str) -> AlertMessage:
            return alert("source_down", kind, "binanceusdm rejected the API key")

        def flags(sub: Any) -> tuple[bool, bool]:
            last = json.loads(sub.messages[-1].payload)
            return last["source_down"], last["protection_active"]

        async with collecting(mosquitto, [topic]) as sub, running(sink):
            sink.observe_report(report(0.3), "ok")
            await sub.wait_for(lambda: len(sub.messages) == 1)
            assert flags(sub) == (False, False)
            assert await sink.deliver([down("firing")]) == {"source_down.firing"}
            await sub.wait_for(lambda: flags(sub) == (True, False))
            sink.publish_action("acct", {"kind": "planned", "live": False})
            await sub.wait_for(lambda: flags(sub) == (True, True))
            await sink.deliver([down("resolved")])
            sink.publish_action("acct", {"kind": "would_have", "live": False})
            sink.publish_action("acct", {"kind": "resolved", "live": False})
            await sub.wait_for(lambda: flags(sub) == (False, False))

    async def test_action_topic(self, mosquitto: Mosquitto, prefix: str) -> None:
        """Test that publish_action reaches <prefix>/<account>/action."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False))
        topic = f"{prefix}/acct/action"
        async with collecting(mosquitto, [topic]) as sub, running(sink):
            sink.publish_action("acct", {"decision": "would_reduce", "qty": 0.1})
            await sub.wait_for(lambda: len(sub.on(topic)) == 1)
        assert json.loads(sub.on(topic)[0].payload) == {  # type: ignore[arg-type]
            "decision": "would_reduce",
            "qty": 0.1,
        }

    async def test_username_password(self, tmp_path: Path, prefix: str) -> None:
        """Test that credentials from the settings authenticate and wrong ones do not."""
        broker = Mosquitto(tmp_path / "auth", users={"monitor": "s3cret"})
        broker.start()
        try:
            good = MqttSink(
                settings_for(broker, prefix, username="monitor", password="s3cret", discovery=False)
            )
            async with running(good):
                assert good.connected
            bad = MqttSink(
                settings_for(broker, prefix, username="monitor", password="wrong", discovery=False)
            )
            task = asyncio.create_task(bad.run())
            await asyncio.sleep(1.0)
            assert not bad.connected
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            broker.stop()


class TestTls:
    """MQTT over TLS with the settings' CA file."""

    async def test_tls_connects_and_verifies(self, tmp_path: Path, prefix: str) -> None:
        """Test that the sink connects over TLS trusting the CA file, and not without it."""
        broker = Mosquitto(tmp_path / "tls", tls=True)
        broker.start()
        try:
            good = MqttSink(
                settings_for(broker, prefix, tls=True, tls_ca_file=broker.ca_file, discovery=False)
            )
            async with running(good):
                assert good.connected
            untrusted = MqttSink(settings_for(broker, prefix, tls=True, discovery=False))
            task = asyncio.create_task(untrusted.run())
            await asyncio.sleep(1.0)
            assert not untrusted.connected
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            broker.stop()


class TestCommands:
    """Signed commands on the command topic, answered on the reply topic."""

    async def send(self, broker: Mosquitto, topic: str, payload: str) -> None:
        """Publish one command as a separate client."""
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(topic, payload, qos=1)

    async def test_signed_commands(self, mosquitto: Mosquitto, prefix: str, tmp_path: Path) -> None:
        """Test that signed pause/silence work and bad or stale commands are refused."""
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [], command_secret=SECRET)
        sink = MqttSink(
            settings_for(mosquitto, prefix, discovery=False),
            command_handler=pipeline.handle_command,
        )
        reply = f"{prefix}/reply"
        now = pipeline.clock()
        async with collecting(mosquitto, [reply]) as sub, running(sink):
            pause = Command("pause", account="acct", duration=600, request_id="r1")
            await self.send(mosquitto, f"{prefix}/acct/command", envelope(pause, SECRET, now))
            silence = Command(
                "silence", account="acct", duration=3600, up_to="warning", request_id="r2"
            )
            await self.send(mosquitto, f"{prefix}/command", envelope(silence, SECRET, now))
            forged = Command("resume", account="acct", request_id="r3")
            await self.send(mosquitto, f"{prefix}/command", envelope(forged, b"guess", now))
            old = Command("resume", account="acct", request_id="r4")
            await self.send(mosquitto, f"{prefix}/command", envelope(old, SECRET, now - 120))
            await self.send(mosquitto, f"{prefix}/command", "not json")
            await sub.wait_for(lambda: len(sub.messages) == 5)
        replies = [json.loads(m.payload) for m in sub.messages]  # type: ignore[arg-type]
        accepted = {r["request_id"] for r in replies if r["ok"]}
        assert accepted == {"r1", "r2"}
        assert pipeline.switches.is_paused("acct", now + 10)
        assert not pipeline.switches.is_paused("acct", now + 700)
        assert pipeline.state.silences[0].up_to == "warning"
        errors = sorted(r["error"] for r in replies if not r["ok"])
        assert len(errors) == 3
        assert "bad signature" in errors
        assert any("s old (limit 60 s)" in e for e in errors)
        assert any("not JSON" in e for e in errors)
        pipeline.tick()  # writes the refusal count that grew (one row per source a minute)
        refused = pipeline.store.audit_trail(kind="command_refused")
        assert sum(r.payload["count"] for r in refused) == 3
        assert len(refused) <= 2  # two only when a minute ended in between


class TestBrokerRestart:
    """At least once across a broker restart."""

    @pytest.mark.timeout(60)
    async def test_every_alert_arrives_across_restart(
        self, mosquitto: Mosquitto, prefix: str, tmp_path: Path
    ) -> None:
        """Test that every alert id of a burst arrives although the broker restarts midway."""
        sink = MqttSink(settings_for(mosquitto, prefix, discovery=False))
        pipeline = AlertPipeline(Store(tmp_path / "a.db"), CONFIG, [sink])
        topic = f"{prefix}/+/alert"
        sent: set[str] = set()
        async with collecting(mosquitto, [topic]) as sub, running(sink), delivering(pipeline):
            for i in range(400):
                ratio = 0.9 if i % 2 == 0 else 0.1
                sent.update(
                    e.id
                    for e in pipeline.on_report(report(ratio, f"a{(i // 2) % 4}"), now=1000.0 + i)
                )
                if i == 200:
                    mosquitto.restart()
                if i % 20 == 0:
                    await asyncio.sleep(0)
            assert len(sent) == 400

            def got() -> set[str]:
                return {json.loads(m.payload)["id"] for m in sub.messages}  # type: ignore[arg-type]

            await sub.wait_for(lambda: got() >= sent, limit=40)
        assert got() >= sent
        assert pipeline.store.pending() == []
