"""Three real daemon processes as the StatefulSet runs them: `--shard auto` with ordinals
0..2 over one config, a per-pod MQTT prefix, a state directory per pod; one is SIGKILLed and
comes back with its directory (a pod rescheduled with its volume) or without it (a new one)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.daemon.shards import INDEX_ENV, SHARDS_ENV, shard_of
from tests.mqtt_broker import Collector, Mosquitto, free_port

CONSOLE_SCRIPT = Path(sys.executable).with_name("margin-monitor")
SHARDS = 3
ACCOUNTS = [f"acct-{i}" for i in range(9)]


def write_config(path: Path, broker: Mosquitto) -> Path:
    """Calm sim accounts whose margin ratio (~0.07) sits above a low warning: one steady
    `firing` per account, nothing else (no shock level is near, repeats are an hour away)."""
    lines = [
        "[alerts]",
        "warning = 0.03",
        "band = 0.01",
        "critical = 0.5",
        "emergency = 0.8",
        "[mqtt]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        "discovery = false",
        "keepalive = 5",
    ]
    for name in ACCOUNTS:
        lines += [
            "[[accounts]]",
            f'name = "{name}"',
            'exchange = "sim"',
            'sim = { scenario = "calm" }',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Pods:
    """The StatefulSet's pods as processes: pod k has ordinal k and its own state dir."""

    def __init__(self, tmp: Path, config: Path, root: str) -> None:
        self.tmp, self.config, self.root = tmp, config, root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.ports = {k: free_port() for k in range(SHARDS)}  # each pod's metrics port

    def start(self, k: int, state: str | None = None) -> None:
        inherited = ("MARGIN_MONITOR", "WATCHDOG_", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")
        env = {n: v for n, v in os.environ.items() if not n.startswith(inherited)}
        pod = f"margin-monitor-{k}"
        env |= {
            INDEX_ENV: str(k),  # what the downward API sets
            SHARDS_ENV: str(SHARDS),
            "STATE_DIRECTORY": str(self.tmp / (state or f"state-{pod}")),
            "MARGIN_MONITOR__MQTT__PREFIX": f"{self.root}/{pod}",
            "MARGIN_MONITOR__MQTT__CLIENT_ID": pod,
            "MARGIN_MONITOR__METRICS__ENABLED": "true",
            "MARGIN_MONITOR__METRICS__PORT": str(self.ports[k]),
        }
        with (self.tmp / f"{pod}.err").open("ab") as err:
            self.procs[k] = subprocess.Popen(
                [
                    str(CONSOLE_SCRIPT),
                    "run",
                    "--no-tui",
                    "--config",
                    str(self.config),
                    "--shard",
                    "auto",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def errors(self) -> dict[str, str]:
        """The end of each pod's stderr, for a failure message."""
        return {p.name: p.read_text()[-500:] for p in self.tmp.glob("*.err")}

    def kill(self, k: int) -> None:
        proc = self.procs.pop(k)
        proc.kill()  # a node or OOM kill: no clean shutdown, no DISCONNECT
        proc.wait(timeout=10)

    def stop_all(self) -> dict[int, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[int, int | None] = {}
        for k, proc in self.procs.items():
            try:
                codes[k] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[k] = None
        return codes


def owners(collector: TimedCollector, root: str, since: float = 0.0) -> dict[str, set[str]]:
    """Account -> the pods whose prefix published its state after `since` (monotonic)."""
    found: dict[str, set[str]] = defaultdict(set)
    for at, m in zip(collector.arrivals, collector.messages, strict=True):
        parts = m.topic.value.split("/")
        if at >= since and m.topic.value.startswith(f"{root}/") and parts[-1] == "state":
            found[parts[-2]].add(parts[-3])
    return found


def firings(collector: TimedCollector, since: float = 0.0) -> dict[str, set[str]]:
    """Account -> the ids of `firing` alerts received after `since` (monotonic)."""
    found: dict[str, set[str]] = defaultdict(set)
    for at, m in zip(collector.arrivals, collector.messages, strict=True):
        if m.topic.value.endswith("/alert") and at >= since:
            body = json.loads(payload(m))
            if body["kind"] == "firing":
                found[body["account"]].add(body["id"])
    return found


def payload(message: aiomqtt.Message) -> str:
    body = message.payload
    return body.decode() if isinstance(body, bytes | bytearray) else str(body)


def status(collector: Collector, root: str, pod: str) -> list[str]:
    """The payloads on a pod's own status topic, oldest first."""
    return [payload(m) for m in collector.on(f"{root}/{pod}/status")]


class _Stamped(list[aiomqtt.Message]):
    """A message list that notes when each message was appended."""

    def __init__(self, stamps: list[float]) -> None:
        super().__init__()
        self.stamps = stamps

    def append(self, item: aiomqtt.Message) -> None:
        self.stamps.append(time.monotonic())
        super().append(item)


class TimedCollector(Collector):
    """A Collector that also keeps each message's arrival time (monotonic)."""

    def __init__(self, broker: Mosquitto, topics: list[str]) -> None:
        super().__init__(broker, topics)
        self.arrivals: list[float] = []
        self.messages = _Stamped(self.arrivals)


class TestStatefulSetProcesses:
    @pytest.mark.timeout(60)
    async def test_three_pods_cover_each_account_once_and_resume_after_a_kill(
        self, tmp_path: Path, mosquitto: Mosquitto
    ) -> None:
        """Test that 3 pods own every account once and a killed pod resumes without re-firing."""
        assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT}: pip install -e ."
        expected = {a: f"margin-monitor-{shard_of(a, SHARDS) - 1}" for a in ACCOUNTS}
        assert set(expected.values()) == {f"margin-monitor-{k}" for k in range(SHARDS)}
        root = f"mm-sts-{uuid.uuid4().hex[:8]}"
        pods = Pods(tmp_path, write_config(tmp_path / "config.toml", mosquitto), root)
        victim = "margin-monitor-1"
        mine = {a for a, p in expected.items() if p == victim}
        collector = TimedCollector(mosquitto, [f"{root}/#"])
        task = asyncio.create_task(collector.run())
        try:
            async with asyncio.timeout(10):
                await collector.subscribed.wait()
            for k in range(SHARDS):
                pods.start(k)
            # every account's state arrives, each from exactly its own pod's prefix
            await collector.wait_for(lambda: set(owners(collector, root)) == set(ACCOUNTS), 25)
            await collector.wait_for(lambda: set(firings(collector)) == set(ACCOUNTS), 10)
            assert {a: p for a, ps in owners(collector, root).items() for p in ps} == expected
            assert all(len(ps) == 1 for ps in owners(collector, root).values())
            before = firings(collector)
            assert all(len(ids) == 1 for ids in before.values())
            for k in range(SHARDS):
                assert status(collector, root, f"margin-monitor-{k}")[-1] == "online"
            # each pod's probes and metrics: ready, alive, its shard of 3, its accounts only
            async with aiohttp.ClientSession() as http:
                for k, port in pods.ports.items():
                    base = f"http://127.0.0.1:{port}"
                    async with http.get(f"{base}/readyz") as resp:
                        assert resp.status == 200
                    async with http.get(f"{base}/livez") as resp:
                        assert (resp.status, await resp.text()) == (200, "alive\n")
                    async with http.get(f"{base}/metrics") as resp:
                        samples = [
                            x
                            for f in text_string_to_metric_families(await resp.text())
                            for x in f.samples
                        ]
                    shards = [x for x in samples if x.name == "margin_monitor_shards"]
                    assert [(x.labels, x.value) for x in shards] == [({"shard": str(k + 1)}, 3)]
                    fresh = {
                        x.labels["account"] for x in samples if x.name == "margin_monitor_fresh"
                    }
                    assert fresh == {a for a, p in expected.items() if p == f"margin-monitor-{k}"}

            # SIGKILL pod 1; its last will says offline; it comes back with its volume
            pods.kill(1)
            await collector.wait_for(lambda: status(collector, root, victim)[-1] == "offline")
            restarted = time.monotonic()
            pods.start(1)

            def resumed() -> bool:
                back = {a for a, ps in owners(collector, root, restarted).items() if victim in ps}
                return status(collector, root, victim)[-1] == "online" and mine <= back

            await collector.wait_for(resumed, 20)
            await asyncio.sleep(2.0)  # time for a wrongly re-announced alert to arrive
            # a redelivery of the old message (same id: at least once) is not a new firing
            again = firings(collector, since=restarted)
            refired = {a: again[a] - before[a] for a in mine if again[a] - before[a]}
            assert not refired, f"new firing after the restart: {refired}"

            # control: pod 2 back WITHOUT its volume announces its accounts anew
            fresh = {a for a, p in expected.items() if p == "margin-monitor-2"}
            pods.kill(2)
            replaced = time.monotonic()
            pods.start(2, state="state-new-volume")
            await collector.wait_for(lambda: fresh <= set(firings(collector, since=replaced)), 20)
            assert all(firings(collector, since=replaced)[a].isdisjoint(before[a]) for a in fresh)
        finally:
            codes = pods.stop_all()
            collector.stopping = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert codes == dict.fromkeys(range(SHARDS), 0), pods.errors()
        # the whole history: no account was ever published by two pods
        assert all(len(ps) == 1 for ps in owners(collector, root).values())


COMPONENT = Path(__file__).resolve().parent.parent / "deploy/kubernetes/components/mosquitto"


class BridgedBroker(Mosquitto):
    """The component's mosquitto.conf and bridge.conf.example, pointed at loopback brokers:
    the listener at a free 127.0.0.1 port, the bridge at `central`, no TLS or password."""

    def __init__(self, workdir: Path, central: Mosquitto, cluster: str) -> None:
        super().__init__(workdir)
        self.central, self.cluster = central, cluster

    def _config(self) -> Path:
        bridge_dir = self.workdir / "bridge"
        bridge_dir.mkdir(exist_ok=True)
        bridge = (COMPONENT / "bridge.conf.example").read_text()
        bridge = bridge.replace(
            "central-mqtt.example.org:8883", f"{self.central.host}:{self.central.port}"
        )
        bridge = bridge.replace("clusters/eu-1/", f"clusters/{self.cluster}/")
        skipped = ("remote_username", "remote_password", "bridge_cafile")
        lines = [x for x in bridge.splitlines() if not x.startswith(skipped)]
        (bridge_dir / "bridge.conf").write_text("\n".join(lines) + "\n")
        conf = (COMPONENT / "mosquitto.conf").read_text()
        conf = conf.replace("listener 1883 0.0.0.0", f"listener {self.port} {self.host}")
        conf = conf.replace("/mosquitto/data/", f"{self.workdir}/")
        conf = conf.replace("/mosquitto/bridge", str(bridge_dir))
        conf = conf.replace("log_dest stdout", f"log_dest file {self.workdir}/mosquitto.log")
        if os.geteuid() == 0:
            conf += "user root\n"  # as in tests/mqtt_broker.py: pytest's temp dirs are 0700
        path = self.workdir / "mosquitto.conf"
        path.write_text(conf)
        return path


class TestMosquittoBridge:
    @pytest.mark.timeout(60)
    async def test_each_pod_has_its_status_topic_on_the_central_broker(
        self, tmp_path: Path, mosquitto: Mosquitto
    ) -> None:
        """Test that the documented bridge carries each pod's status and state out, commands in."""
        cluster = f"c{uuid.uuid4().hex[:8]}"
        edge = BridgedBroker(tmp_path / "edge", mosquitto, cluster)
        edge.start()
        central = f"clusters/{cluster}/margin-monitor"
        collector = TimedCollector(mosquitto, [f"{central}/#", f"clusters/{cluster}/bridge/#"])
        task = asyncio.create_task(collector.run())
        pods = Pods(tmp_path, write_config(tmp_path / "config.toml", edge), "margin-monitor")
        try:
            async with asyncio.timeout(10):
                await collector.subscribed.wait()
            await collector.wait_for(lambda: bool(collector.on(f"clusters/{cluster}/bridge/state")))
            for k in range(SHARDS):
                pods.start(k)

            def all_online() -> bool:
                return all(
                    status(collector, central, f"margin-monitor-{k}")[-1:] == ["online"]
                    for k in range(SHARDS)
                )

            await collector.wait_for(all_online, 25)
            await collector.wait_for(lambda: set(owners(collector, central)) == set(ACCOUNTS), 20)
            expected = {a: f"margin-monitor-{shard_of(a, SHARDS) - 1}" for a in ACCOUNTS}
            assert {a: p for a, ps in owners(collector, central).items() for p in ps} == expected
            # a command published centrally reaches pod 1, whose reply comes back out
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                await client.publish(f"{central}/margin-monitor-1/command", b"{}", qos=1)
            reply = f"{central}/margin-monitor-1/reply"
            await collector.wait_for(lambda: bool(collector.on(reply)), 10)
            assert json.loads(payload(collector.on(reply)[0]))["ok"] is False  # unsigned
            assert not collector.on(f"{central}/margin-monitor-0/reply")
        finally:
            codes = pods.stop_all()
            collector.stopping = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            edge.stop()
        assert codes == dict.fromkeys(range(SHARDS), 0)
