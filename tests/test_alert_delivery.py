"""Alerts on time and truthful, end to end (issue 14): a real mosquitto, a local HTTP receiver
behind a real Apprise `json://` URL, and the alert sink built by the same factory as `run`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from structlog.testing import capture_logs

from monitor.alerts.message import AlertMessage
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.sink import DRAIN_CAP, AlertsSink, build_alerts_sink
from monitor.channels.notify import NotifySink
from monitor.config.alerts import MqttSettings, NotifySettings
from monitor.config.settings import Settings, load_settings
from monitor.core.margin import report as margin
from monitor.core.model import AccountSnapshot, ShockToLiquidation
from monitor.core.plan import plan_step
from monitor.daemon import supervisor
from monitor.daemon.supervisor import run_daemon
from monitor.daemon.wiring import build_sinks
from monitor.protect import notes as protect_notes
from monitor.protect.sink import HANDOVER_TIMEOUT, ActionsSink
from monitor.sink import Sink
from monitor.sources.sim import SimVenue
from monitor.sources.sim_book import DEMO_BOOK
from monitor.sources.sim_prices import ReplayStep
from monitor.store import Store
from tests.mqtt_broker import Mosquitto, collecting
from tests.test_mqtt import prefix, settings_for
from tests.test_notify import (
    MARGIN_ONLY,
    Receiver,
    channel,
    delivering,
    receiver,
    report,
    until,
)

__all__ = ["prefix"]  # the fixture, shared with test_mqtt

ROOT = Path(__file__).resolve().parent.parent


def titles(rec: Receiver) -> list[str]:
    """The titles the receiver got, in arrival order."""
    return [json.loads(body)["title"] for _, _, body in rec.requests]


def notify_settings(port: int, **extra: object) -> NotifySettings:
    """One `json://` channel at the local receiver."""
    return NotifySettings.model_validate(
        {
            "channels": [
                {"name": "phone", "url": f"json://127.0.0.1:{port}/hook", "timeout": 2, **extra}
            ]
        }
    )


class _Stop(Exception):
    """Ends the TaskGroup the way the daemon's `_Shutdown` does."""


@contextlib.asynccontextmanager
async def started(sink: AlertsSink) -> AsyncIterator[None]:
    """The sink's tasks in a TaskGroup, stopped at the end as the daemon stops them."""
    try:
        async with asyncio.TaskGroup() as tg:
            await sink.start(tg)
            yield
            raise _Stop
    except* _Stop:
        pass


class TestPacing:
    """A phone channel that may send once per `min_interval`."""

    async def test_escalation_leaves_at_first_allowed_moment(self, tmp_path: Path) -> None:
        """Test that an escalation queued during the pacing wait goes in the next send."""
        async with receiver() as rec:
            sink = NotifySink(channel(f"json://127.0.0.1:{rec.port}/hook", min_interval=1.5))
            pipeline = AlertPipeline(Store(tmp_path / "a.db"), MARGIN_ONLY, [sink])
            async with delivering(pipeline):
                pipeline.on_report(report(0.55))
                await rec.wait(1)
                sent = time.monotonic()
                await asyncio.sleep(0.2)
                pipeline.on_report(report(0.75))  # waits out the pacing
                await asyncio.sleep(0.3)
                pipeline.on_report(report(0.9))  # fired while the channel still waits
                fired = time.monotonic()
                await rec.wait(2)
                arrived = time.monotonic()
        assert arrived - fired <= 1.5  # one pacing interval at most, not two
        assert arrived - sent >= 1.4  # the pacing still holds
        assert titles(rec)[1] == "EMERGENCY main: margin ratio 90.0 % (+1 more)"
        assert len(rec.requests) == 2

    async def test_resolved_news_says_so_in_the_title(self, tmp_path: Path) -> None:
        """Test that an emergency already resolved when it leaves is titled as resolved."""
        async with receiver() as rec:
            sink = NotifySink(channel(f"json://127.0.0.1:{rec.port}/hook", min_interval=1.0))
            pipeline = AlertPipeline(Store(tmp_path / "a.db"), MARGIN_ONLY, [sink])
            async with delivering(pipeline):
                pipeline.on_report(report(0.55), now=1000.0)
                await rec.wait(1)
                pipeline.on_report(report(0.9), now=1000.2)
                pipeline.on_report(report(0.3), now=1000.4)
                await rec.wait(2)
        body = json.loads(rec.requests[1][2])
        assert body["title"] == (
            "RESOLVED main: margin ratio back to normal "
            "(was EMERGENCY: margin ratio 90.0 %) (+1 more)"
        )
        assert body["message"].index("EMERGENCY main") < body["message"].index("RESOLVED main")


class TestShutdown:
    """Stopping with alerts still queued, as `margin-monitor run` does on SIGTERM."""

    async def test_status_online_then_offline_once(
        self, mosquitto: Mosquitto, prefix: str, tmp_path: Path
    ) -> None:
        """Test that the status topic reads online ... offline and nothing follows offline."""
        async with receiver() as rec, collecting(mosquitto, [f"{prefix}/#"]) as sub:
            sink = build_alerts_sink(
                tmp_path,
                MARGIN_ONLY,
                settings_for(mosquitto, prefix),
                notify_settings(rec.port, min_interval=1.0),
            )
            async with started(sink):
                assert sink.mqtt is not None
                async with asyncio.timeout(10):
                    await sink.mqtt.wait_connected()
                sink.pipeline.on_report(report(0.55, account="acct"))
                await rec.wait(1)
                sink.pipeline.on_report(report(0.9, account="acct"))  # queued: pacing
                await asyncio.sleep(0.05)
            assert sink.pipeline.store.pending("notify[phone]")  # still queued at the stop
            await sink.close()
            await sub.wait_for(
                lambda: any(m.payload == b"offline" for m in sub.on(f"{prefix}/status"))
            )
            await asyncio.sleep(0.3)  # anything published after offline would arrive now
        status = [m.payload for m in sub.on(f"{prefix}/status")]
        assert status == [b"online", b"offline"]
        topics = [m.topic.value for m in sub.messages]
        assert topics[-1] == f"{prefix}/status"  # offline is the last word
        assert f"{prefix}/acct/state" in topics
        assert len(rec.requests) == 2  # the queued emergency went out during the drain

    async def test_final_state_goes_before_offline(
        self, mosquitto: Mosquitto, prefix: str, tmp_path: Path
    ) -> None:
        """Test that a state held back by state_interval is published before offline."""
        mqtt = settings_for(mosquitto, prefix, state_interval=60.0)
        async with collecting(mosquitto, [f"{prefix}/#"]) as sub:
            sink = build_alerts_sink(tmp_path, MARGIN_ONLY, mqtt, None)
            async with started(sink):
                assert sink.mqtt is not None
                async with asyncio.timeout(10):
                    await sink.mqtt.wait_connected()
                sink.pipeline.on_report(report(0.2, account="acct"))
                await sub.wait_for(lambda: len(sub.on(f"{prefix}/acct/state")) == 1)
                sink.pipeline.on_report(report(0.3, account="acct"))  # held back: 60 s
                await asyncio.sleep(0.2)
                assert len(sub.on(f"{prefix}/acct/state")) == 1
            await sink.close()
            await sub.wait_for(lambda: sub.messages[-1].payload == b"offline")
        states = [json.loads(m.payload) for m in sub.on(f"{prefix}/acct/state")]  # type: ignore[arg-type]
        assert [s["margin_ratio"] for s in states] == [0.2, 0.3]
        assert [m.topic.value for m in sub.messages][-2:] == [
            f"{prefix}/acct/state",
            f"{prefix}/status",
        ]

    async def test_no_phone_alert_left_at_clean_stop(self, tmp_path: Path) -> None:
        """Test that the drain waits out the pacing so every queued phone alert is sent."""
        async with receiver() as rec:
            sink = build_alerts_sink(
                tmp_path, MARGIN_ONLY, None, notify_settings(rec.port, min_interval=2.5)
            )
            async with started(sink):
                sink.pipeline.on_report(report(0.55))
                await rec.wait(1)
                sink.pipeline.on_report(report(0.75))
                sink.pipeline.on_report(report(0.9))
                await asyncio.sleep(0.05)
            assert len(sink.pipeline.store.pending()) == 2
            budget = sink.drain_budget()
            assert 2.0 < budget <= DRAIN_CAP
            began = time.monotonic()
            with capture_logs() as logs:
                await sink.close()
            took = time.monotonic() - began
        assert len(rec.requests) == 2
        assert titles(rec)[1] == "EMERGENCY main: margin ratio 90.0 % (+1 more)"
        assert took < budget
        assert not [e for e in logs if e["event"] == "alerts.undelivered_at_shutdown"]

    async def test_says_what_stays_queued(self, tmp_path: Path) -> None:
        """Test that alerts the drain cannot deliver are named in the log and kept."""
        async with receiver() as rec:
            rec.status = 500
            sink = build_alerts_sink(tmp_path, MARGIN_ONLY, None, notify_settings(rec.port))
            async with started(sink):
                (event,) = sink.pipeline.on_report(report(0.9))
                await rec.wait(1)
            with capture_logs() as logs:
                await sink.close()
        (left,) = [e for e in logs if e["event"] == "alerts.undelivered_at_shutdown"]
        assert left["sinks"] == {"notify[phone]": 1}
        assert left["ids"] == {"notify[phone]": [event.id]}
        again = Store(tmp_path / "alerts.sqlite3")
        assert [r.message_id for r in again.pending()] == [event.id]
        again.close()

    def test_drain_cap_fits_systemd_stop_timeout(self) -> None:
        """Test that the drain cap plus the leftover-task grace fits TimeoutStopSec."""
        for unit in ("margin-monitor.service", "margin-monitor@.service"):
            text = (ROOT / "systemd" / unit).read_text()
            match = re.search(r"^TimeoutStopSec=(\d+)s?$", text, re.MULTILINE)
            assert match is not None, unit
            assert float(match.group(1)) >= DRAIN_CAP + supervisor.STOP_GRACE + 5.0


class TestConnecting:
    """The first alert after a start, while the broker session is still connecting."""

    async def test_first_alert_waits_for_the_session(
        self, mosquitto: Mosquitto, prefix: str, tmp_path: Path
    ) -> None:
        """Test that an alert raised before the session is up arrives with no failure logged."""
        mqtt: MqttSettings = settings_for(mosquitto, prefix)
        async with collecting(mosquitto, [f"{prefix}/+/alert"]) as sub:
            sink = build_alerts_sink(tmp_path, MARGIN_ONLY, mqtt, None)
            with capture_logs() as logs:
                (event,) = sink.pipeline.on_report(report(0.9, account="acct"))
                async with started(sink):
                    await sub.wait_for(lambda: len(sub.messages) == 1)
                await sink.close()
        assert json.loads(sub.messages[0].payload)["id"] == event.id  # type: ignore[arg-type]
        assert not [e for e in logs if e["event"] == "alert.delivery_failed"]


def crash_daemon_sinks(tmp_path: Path) -> tuple[SimVenue, list[Sink]]:
    """The demo account (actions in dry run) whose next snapshot is a 14 % sell-off past the
    action level, and the sinks `run` builds for it; MQTT only queues (never started)."""
    settings = load_settings(
        None,
        state_dir=tmp_path,
        accounts=[{"name": "demo", "exchange": "sim"}],
        actions={"simulated": False},
        mqtt={"host": "127.0.0.1", "port": 9, "timeout": 1.0},
    )
    crash = [
        ReplayStep(0.0, tuple((m.symbol, m.price0 * 0.856**m.beta) for m in DEMO_BOOK.markets))
    ]
    venue = SimVenue("demo", settings.accounts[0].sim, replay=crash)
    return venue, build_sinks(settings, tui=False, sources={"demo": venue})


class TestActionState:
    """The `action` every alert carries, in the demo sell-off with actions in dry run."""

    async def test_each_alert_tells_the_action_state_of_its_moment(
        self, mosquitto: Mosquitto, prefix: str, tmp_path: Path
    ) -> None:
        """Test that escalations carry the dry-run plan and resolves no stale 'would reduce'."""
        settings = load_settings(
            None,
            state_dir=tmp_path,
            accounts=[{"name": "demo", "exchange": "sim", "sim": {"speed": 20}}],
            actions={"simulated": False},  # the sim account runs dry, like a live default
            mqtt={"host": mosquitto.host, "port": mosquitto.port, "prefix": prefix, "timeout": 2.0},
        )
        sources = {a.name: SimVenue(a.name, a.sim) for a in settings.accounts}
        sinks = build_sinks(settings, tui=False, sources=sources)
        async with collecting(mosquitto, [f"{prefix}/demo/alert"]) as sub:
            await _run_sim(settings, sinks, sources, 4.5)
            await sub.wait_for(
                lambda: any(
                    json.loads(m.payload)["kind"] == "resolved"  # type: ignore[arg-type]
                    and json.loads(m.payload)["rule"] == "margin_ratio"  # type: ignore[arg-type]
                    for m in sub.messages
                )
            )
            alerts = [json.loads(m.payload) for m in sub.messages]  # type: ignore[arg-type]
        action_ratio = 0.70  # actions.action_level "critical" of the default ladder
        assert alerts
        for a in alerts:
            assert a["action"] is not None  # configured (dry run) is never "not configured"
            assert "(dry run)" in a["action"]
            if a["kind"] == "resolved":
                assert "would reduce" not in a["action"]
            if a["margin_ratio"] >= action_ratio and a["kind"] != "resolved":
                assert a["action"].startswith(
                    ("would reduce (dry run): sell ", "episode open (dry run): step 1 would have")
                )
            if a["margin_ratio"] < action_ratio and a["kind"] == "firing":
                assert a["action"].startswith("none needed (dry run)")
        assert any(a["margin_ratio"] >= action_ratio for a in alerts)

    async def test_escalation_plan_and_resolve_state(self, tmp_path: Path) -> None:
        """Test that the escalation carries the dry-run plan and the resolve the state after."""
        venue, sinks = crash_daemon_sinks(tmp_path)
        calm = SimVenue("demo").snapshot()
        alerts = next(s for s in sinks if isinstance(s, AlertsSink))
        actions = next(s for s in sinks if isinstance(s, ActionsSink))

        async def tell(snapshot: AccountSnapshot, now: float) -> None:
            rep = margin.report(snapshot)
            for sink in sinks:  # in the daemon's order (AccountLoop._tell)
                await sink.on_report("demo", rep, snapshot, now)

        def actions_of_queue() -> list[tuple[str, str | None]]:
            rows = alerts.pipeline.store.pending("mqtt")
            return [
                (m.kind, m.action) for m in map(AlertMessage.from_json, (r.payload for r in rows))
            ]

        await tell(calm, 1000.0)
        await tell(venue.snapshot(), 1001.0)
        (fired,) = actions_of_queue()
        assert fired[0] == "firing"
        assert fired[1] is not None
        assert fired[1].startswith("would reduce (dry run): sell ")
        assert "reduce-only, toward 40.0%" in fired[1]
        await actions.executors["demo"].step(margin.report(venue.snapshot()), 1001.5)
        assert actions.executors["demo"].state.episode is not None  # the dry-run step ran
        await tell(calm, 1002.0)
        _, resolved = actions_of_queue()
        assert resolved[0] == "resolved"
        assert resolved[1] == "none needed (dry run): acts at margin ratio 70.0%, now 6.8%"
        await alerts.close()
        for sink in sinks:
            if isinstance(sink, ActionsSink):
                await sink.close()

    async def test_one_plan_preview_per_report(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the alerts one crossing raises share one plan preview (issue 16)."""
        venue, sinks = crash_daemon_sinks(tmp_path)
        alerts = next(s for s in sinks if isinstance(s, AlertsSink))
        plans: list[float] = []

        def counted(*args: Any, **kwargs: Any) -> Any:
            if args[1].action_ratio > 0:  # a preview (the start-up warm-up plans at ratio 0)
                plans.append(args[4])  # `now`: which report was planned
            return plan_step(*args, **kwargs)

        monkeypatch.setattr(protect_notes, "plan_step", counted)
        calm, crashed = SimVenue("demo").snapshot(), venue.snapshot()
        # the crash's shock solve: 3 % from liquidation raises the shock rule too
        for snapshot, now, shock in (
            (calm, 1000.0, None),
            (crashed, 1001.0, ShockToLiquidation(-0.03, None)),
        ):
            rep = dataclasses.replace(margin.report(snapshot), shock_to_liquidation=shock)
            for sink in sinks:  # in the daemon's order (AccountLoop._tell)
                await sink.on_report("demo", rep, snapshot, now)
        notes = [
            AlertMessage.from_json(r.payload).action for r in alerts.pipeline.store.pending("mqtt")
        ]
        assert len(notes) >= 2  # the crossing raised more than one alert
        assert len(set(notes)) == 1
        assert notes[0] is not None
        assert notes[0].startswith("would reduce (dry run): sell ")
        assert plans == [1001.0]  # the calm report needed no preview, the crash one
        await alerts.close()

    async def test_alert_is_on_the_socket_before_the_step_reads(
        self,
        mosquitto: Mosquitto,
        prefix: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that the alert of the report that wakes a step is sent before its fresh read."""
        seen = await _step_reads(mosquitto, prefix, tmp_path, monkeypatch)
        assert seen  # the sell-off woke a dry-run step
        levels, unsent, _ = seen[0]
        # the alert of the report that crossed the action level was handed to paho first
        assert "margin_ratio critical" in levels, (levels, seen)
        assert not unsent  # and written to the broker's socket, not queued in paho

    async def test_a_stuck_broker_delays_the_step_by_the_bound_only(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that a broker that takes no bytes holds a step back HANDOVER_TIMEOUT at most."""
        broker = Mosquitto(tmp_path / "stuck")
        broker.start()
        try:
            seen = await _step_reads(broker, "stuck", tmp_path / "daemon", monkeypatch, stuck=True)
        finally:
            broker.resume()
            broker.stop()
        assert seen
        levels, unsent, waited = seen[0]
        assert "margin_ratio critical" in levels, (levels, seen)
        assert unsent  # the alert is still in paho: the step did not wait for the socket
        # ~HANDOVER_TIMEOUT (5 ms); the slack is for a shared CI machine, still far below
        # the publish timeout (2 s) a step would wait if it waited for the broker
        assert waited < HANDOVER_TIMEOUT + 0.5, waited


async def _run_sim(
    settings: Settings, sinks: list[Sink], sources: dict[str, SimVenue], duration: float
) -> None:
    """The daemon on the sim accounts for `duration` s (30 s at most)."""
    await asyncio.wait_for(
        run_daemon(
            settings,
            settings.accounts,
            sinks,
            sources=list(sources.values()),
            duration=duration,
            handle_signals=False,
        ),
        30,
    )


async def _step_reads(
    broker: Mosquitto,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    stuck: bool = False,
) -> list[tuple[list[str], bool, float]]:
    """Run the demo sell-off with actions in dry run; at each fresh read of a step, record
    the alerts handed to paho so far, whether paho still holds unsent bytes, and how long
    the step waited since the report that woke it. `stuck`: once connected, the broker is
    SIGSTOPped and paho's queue filled, so nothing more reaches the socket."""
    settings = load_settings(
        None,
        state_dir=tmp_path,
        accounts=[{"name": "demo", "exchange": "sim", "sim": {"speed": 20}}],
        actions={"simulated": False},
        # no shock alert: it would inhibit the margin alert of the crossing report
        alerts={
            "shock_warning": 0.003,
            "shock_critical": 0.002,
            "shock_emergency": 0.001,
            "shock_band": 0.0005,
        },
        mqtt={"host": broker.host, "port": broker.port, "prefix": prefix, "timeout": 2.0},
    )
    sources = {a.name: SimVenue(a.name, a.sim) for a in settings.accounts}
    sinks = build_sinks(settings, tui=False, sources=sources)
    mqtt = next(s for s in sinks if isinstance(s, AlertsSink)).mqtt
    assert mqtt is not None
    actions = next(s for s in sinks if isinstance(s, ActionsSink))
    executor = actions.executors["demo"]
    published: list[dict[str, Any]] = []
    seen: list[tuple[list[str], bool, float]] = []
    woken: list[float] = []
    publish = paho.Client.publish

    def recorded(
        client: paho.Client, topic: str, payload: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        if topic.endswith("/alert"):
            published.append(json.loads(payload))
        return publish(client, topic, payload, *args, **kwargs)

    on_report = actions.on_report

    async def told(account: str, rep: Any, snapshot: Any, now: float) -> None:
        woken.append(time.perf_counter())
        await on_report(account, rep, snapshot, now)

    async def fresh_read() -> AccountSnapshot:
        assert mqtt._client is not None  # the live session: is paho still holding bytes?
        unsent = mqtt._client._client.want_write()
        waited = time.perf_counter() - woken[-1]
        seen.append(([f"{a['rule']} {a['level']}" for a in published], unsent, waited))
        if stuck:
            broker.resume()
        return await sources["demo"].fetch_snapshot()

    async def jam() -> None:
        await mqtt.wait_connected()
        broker.pause()
        assert mqtt._client is not None
        mqtt._client._client.publish(f"{prefix}/jam", b"0" * 32_000_000)  # fills the socket

    monkeypatch.setattr(paho.Client, "publish", recorded)
    monkeypatch.setattr(actions, "on_report", told)
    executor.fresh_read = fresh_read
    jammer = asyncio.create_task(jam()) if stuck else None
    await _run_sim(settings, sinks, sources, 3.0)
    if jammer is not None:
        await jammer
    return seen


class TestSigterm:
    """`margin-monitor run` as a process, stopped by SIGTERM with phone alerts queued."""

    async def test_sigterm_drains_phone_alerts_and_says_offline_last(
        self, mosquitto: Mosquitto, prefix: str, tmp_path: Path
    ) -> None:
        """Test that SIGTERM sends the queued phone alerts, then offline, and exits 0."""
        config = tmp_path / "config.toml"
        async with receiver() as rec, collecting(mosquitto, [f"{prefix}/#"]) as sub:
            config.write_text(
                "\n".join(
                    [
                        f'state_dir = "{tmp_path / "state"}"',
                        "[mqtt]",
                        f'host = "{mosquitto.host}"',
                        f"port = {mosquitto.port}",
                        f'prefix = "{prefix}"',
                        "discovery = false",
                        "[[notify.channels]]",
                        'name = "phone"',
                        # min_interval: the 5.5 s default
                        f'url = "json://127.0.0.1:{rec.port}/hook"',
                        "[[accounts]]",
                        'name = "demo"',
                        'exchange = "sim"',
                        "sim = { speed = 20 }",
                    ]
                )
                + "\n"
            )
            proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "margin-monitor"),
                "run",
                "--config",
                str(config),
                "--no-tui",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
            try:
                await rec.wait(1, limit=30)
                outbox = tmp_path / "state" / "alerts.sqlite3"

                def queued() -> int:
                    with contextlib.closing(sqlite3.connect(outbox)) as db:
                        query = "SELECT COUNT(*) FROM outbox WHERE sink = 'notify[phone]'"
                        return int(db.execute(query).fetchone()[0])

                # the first send's row is marked delivered once Apprise returns: give it that
                # moment, so the row counted next is one waiting out the channel's pacing
                await asyncio.sleep(0.5)
                await until(lambda: queued() > 0, 10)
                proc.send_signal(signal.SIGTERM)
                out, _ = await asyncio.wait_for(proc.communicate(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            status = f"{prefix}/status"
            await sub.wait_for(lambda: b"offline" in [m.payload for m in sub.on(status)])
            await asyncio.sleep(0.3)
        logs = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert proc.returncode == 0, out.decode()[-3000:]
        assert queued() == 0  # 0 phone alerts left queued at a clean stop
        assert len(rec.requests) >= 2
        assert "alerts.undelivered_at_shutdown" not in [e["event"] for e in logs]
        assert [m.payload for m in sub.on(status)] == [b"online", b"offline"]
        assert sub.messages[-1].topic.value == status


class TestReplayRestart:
    """A restart into a replay that begins at critical (issue 14 §6)."""

    async def test_restart_continues_the_episode(self, tmp_path: Path) -> None:
        """Test that a second run of a replay starting at critical sends no resolve."""
        settings = load_settings(
            None,
            state_dir=tmp_path,
            accounts=[{"name": "demo", "exchange": "sim", "sim": {"speed": 50}}],
            actions={"simulated": False},
            mqtt={"host": "127.0.0.1", "port": 9, "timeout": 0.5},  # no broker: rows stay queued
        )
        crash = tuple((m.symbol, m.price0 * 0.856**m.beta) for m in DEMO_BOOK.markets)
        replay = [ReplayStep(0.0, crash), ReplayStep(1.0, crash)]
        for _ in range(2):
            sources = [SimVenue("demo", settings.accounts[0].sim, replay=replay)]
            sinks = build_sinks(settings, tui=False, sources={"demo": sources[0]})
            await asyncio.wait_for(
                run_daemon(
                    settings,
                    settings.accounts,
                    sinks,
                    replay=replay,
                    sources=sources,
                    handle_signals=False,
                ),
                30,
            )
        store = Store(tmp_path / "alerts.sqlite3")
        margin_alerts = [
            m
            for m in map(AlertMessage.from_json, (r.payload for r in store.pending("mqtt")))
            if m.rule == "margin_ratio"
        ]
        store.close()
        assert [(m.kind, m.level) for m in margin_alerts] == [("firing", "critical")]
