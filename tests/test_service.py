"""The service lifecycle end to end: the installed `margin-monitor` under a fake systemd.

The test plays systemd: it owns the `NOTIFY_SOCKET` (a unix datagram socket it reads), sets
`WATCHDOG_USEC` and `$CREDENTIALS_DIRECTORY`, and drives the process with SIGHUP and SIGTERM;
a real mosquitto (tests/conftest.py) stands in for the user's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config.settings import load_settings
from monitor.core.model import AccountSnapshot, Event, MarginReport
from monitor.daemon.supervisor import run_daemon
from monitor.ops.sdnotify import Notifier
from monitor.sink import Sink
from tests.mqtt_broker import Mosquitto, free_port

CONSOLE_SCRIPT = Path(sys.executable).parent / "margin-monitor"
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
SECRETS = {
    "accounts__demo__api_key": "demo-api-key-7c1e55d0a9",
    "mqtt__command_secret": "hmac-command-secret-41f9b2",
}
ENV_SECRET = "mqtt-password-from-env-93ad"
PING_TOKEN = "5d1f0c7e-ping-token-b2"  # checked absent from every log line


class NotifyListener:
    """systemd's side of sd_notify: collects every datagram on a background thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self.times: list[float] = []  # time.monotonic() of each message
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._sock.recv(4096).decode()
                self.times.append(time.monotonic())
                self.messages.append(message)
            except TimeoutError:
                continue

    def count(self, field: str, since: float = 0.0) -> int:
        pairs = list(zip(self.times, self.messages, strict=False))
        return sum(field in m.splitlines() for t, m in pairs if t >= since)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def retained(broker: Mosquitto, topic: str) -> str:
    """The retained message on `topic` (mosquitto_sub returns it at once)."""
    result = subprocess.run(
        [
            MOSQUITTO_SUB,
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "5",
            "-q",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout.strip()


def write_config(
    path: Path,
    broker: Mosquitto,
    *,
    prefix: str,
    metrics_port: int,
    accounts: list[str],
    heartbeat: str | None = None,
) -> None:
    """A config with metrics on `metrics_port`, MQTT to `broker`, and calm sim accounts."""
    lines = [
        f'state_dir = "{path.parent / "state"}"',
        "[metrics]",
        "enabled = true",
        f"port = {metrics_port}",
        "[mqtt]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        f'prefix = "{prefix}"',
        'username = "monitor"',
        "discovery = false",
    ]
    if heartbeat is not None:
        lines += ["[heartbeat]", f'url = "{heartbeat}"', "interval = 0.3"]
    for name in accounts:
        lines += [
            "[[accounts]]",
            f'name = "{name}"',
            'exchange = "sim"',
            'sim = { scenario = "calm" }',
        ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def ping_service() -> Iterator[tuple[str, list[str]]]:
    """A dead-man's-switch service on 127.0.0.1: (base URL, paths pinged so far)."""
    pings: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            pings.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pings
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


class TestService:
    def test_notify_metrics_reload_and_clean_stop(
        self,
        tmp_path: Path,
        mosquitto: Mosquitto,
        notify: NotifyListener,
        ping_service: tuple[str, list[str]],
    ) -> None:
        """Test READY/WATCHDOG, metrics, health, heartbeat, SIGHUP, SIGTERM -> exit 0 + offline."""
        assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT}: install the package (pip install -e .)"
        prefix = f"mm-test-{uuid.uuid4().hex[:8]}"
        port = free_port()
        config = tmp_path / "config.toml"
        ping_base, pings = ping_service
        heartbeat = f"{ping_base}/ping/{PING_TOKEN}"
        write_config(
            config,
            mosquitto,
            prefix=prefix,
            metrics_port=port,
            accounts=["demo"],
            heartbeat=heartbeat,
        )
        creds = tmp_path / "credentials"
        creds.mkdir()
        for name, value in SECRETS.items():
            (creds / name).write_text(value + "\n")
        inherited = ("MARGIN_MONITOR", "WATCHDOG_", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")
        env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        env.update(
            NOTIFY_SOCKET=str(notify.path),
            WATCHDOG_USEC="1000000",  # WatchdogSec=1s: a ping every 0.5 s
            CREDENTIALS_DIRECTORY=str(creds),
            MARGIN_MONITOR__MQTT__PASSWORD=ENV_SECRET,
        )
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "run", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for("READY=1", lambda: notify.count("READY=1") >= 1)
            assert proc.poll() is None
            wait_for("3 watchdog pings", lambda: notify.count("WATCHDOG=1") >= 3, timeout=10)
            base = f"http://127.0.0.1:{port}"
            wait_for("/healthz 200", lambda: http_get(f"{base}/healthz")[0] == 200)
            status, text = http_get(f"{base}/metrics")
            assert status == 200
            names = {
                (s.name, s.labels.get("account"))
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            for metric in (
                "margin_ratio",
                "margin_balance",
                "maintenance_margin",
                "free_collateral",
                "fresh",
                "data_age_seconds",
                "level",
            ):
                assert (f"margin_monitor_{metric}", "demo") in names
            assert ("margin_monitor_events_total", "demo") in names
            wait_for("status online", lambda: retained(mosquitto, f"{prefix}/status") == "online")
            wait_for("2 heartbeat pings", lambda: len(pings) >= 2, timeout=10)
            assert set(pings) == {f"/ping/{PING_TOKEN}"}

            # SIGHUP: a second account joins without a restart, and is vouched for
            write_config(
                config,
                mosquitto,
                prefix=prefix,
                metrics_port=port,
                accounts=["demo", "second"],
                heartbeat=heartbeat,
            )
            proc.send_signal(signal.SIGHUP)
            wait_for("READY after reload", lambda: notify.count("READY=1") >= 2)
            wait_for(
                "second account healthy",
                lambda: http_get(f"{base}/healthz") == (200, "ok: 2 accounts fresh\n"),
            )
            assert notify.count("RELOADING=1") == 1

            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        logs = out.decode() + err.decode()
        assert proc.returncode == 0, logs[-3000:]
        assert notify.count("STOPPING=1") == 1
        assert retained(mosquitto, f"{prefix}/status") == "offline"
        assert http_get(f"{base}/healthz")[0] == 0  # nothing listens any more

        # logs: one JSON object per stdout line (no TTY), and never a configured secret
        lines = out.decode().splitlines()
        assert lines
        events = [json.loads(line)["event"] for line in lines]
        assert "daemon stopped" in events
        assert "configuration reloaded" in events
        for secret in [*SECRETS.values(), ENV_SECRET, PING_TOKEN]:
            assert secret not in logs

    def test_broken_reload_keeps_running(
        self, tmp_path: Path, mosquitto: Mosquitto, notify: NotifyListener
    ) -> None:
        """Test that SIGHUP with a broken config logs one error and keeps the accounts running."""
        port = free_port()
        config = tmp_path / "config.toml"
        write_config(
            config,
            mosquitto,
            prefix=f"mm-{uuid.uuid4().hex[:8]}",
            metrics_port=port,
            accounts=["demo"],
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR")}
        env["NOTIFY_SOCKET"] = str(notify.path)
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "run", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for("READY=1", lambda: notify.count("READY=1") >= 1)
            config.write_text(config.read_text().replace('exchange = "sim"', 'exchange = "simm"'))
            proc.send_signal(signal.SIGHUP)
            wait_for("READY after reload", lambda: notify.count("READY=1") >= 2)
            wait_for("/healthz 200", lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
            proc.send_signal(signal.SIGTERM)
            out, _err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert proc.returncode == 0
        failed = [json.loads(x) for x in out.decode().splitlines() if "reload failed" in x]
        assert len(failed) == 1
        assert "accounts[0].exchange: 'simm' is not a ccxt exchange id" in failed[0]["error"]
        assert '"configuration reloaded"' not in out.decode()  # nothing was changed

    def test_metrics_port_taken_is_one_line(self, tmp_path: Path, mosquitto: Mosquitto) -> None:
        """Test that a taken metrics port ends the start with one stderr line and exit 2."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            config = tmp_path / "config.toml"
            write_config(config, mosquitto, prefix="mm-busy", metrics_port=taken, accounts=["demo"])
            result = subprocess.run(
                [str(CONSOLE_SCRIPT), "run", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.splitlines() == [
            f"margin-monitor: metrics: cannot listen on 127.0.0.1:{taken} "
            "(address already in use); pick another metrics.port or stop the other process"
        ]


class WedgedSink(Sink):
    """A sink whose third report never returns: the recompute task is stuck inside it."""

    name = "wedged"

    def __init__(self) -> None:
        self.reports = 0
        self.stuck_at: float | None = None

    async def start(self, tg: asyncio.TaskGroup) -> None:
        del tg

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        del account, report, snapshot, now
        self.reports += 1
        if self.reports == 3:
            self.stuck_at = time.monotonic()
            await asyncio.Event().wait()  # a hang, e.g. a blocking call that never returns

    async def on_event(self, event: Event) -> None:
        del event

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        del account, level, previous, report, now

    async def close(self) -> None:
        pass


class TestWatchdog:
    async def test_a_wedged_recompute_stops_the_pings(
        self, tmp_path: Path, notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the daemon pings while recomputing and stops once a recompute hangs."""
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        settings = load_settings(None, state_dir=tmp_path)
        sink = WedgedSink()
        daemon = asyncio.create_task(
            run_daemon(
                settings,
                settings.accounts,
                [sink],
                handle_signals=False,
                notifier=Notifier(str(notify.path)),
            )
        )
        await asyncio.sleep(3.5)
        daemon.cancel()  # what systemd's SIGABRT would do; not a clean stop (it is stuck)
        with contextlib.suppress(asyncio.CancelledError):
            await daemon
        assert sink.stuck_at is not None
        assert notify.count("READY=1") == 1
        assert notify.count("WATCHDOG=1") >= 1  # pinged before the hang
        # the probe allows 1 s of waiting work without progress, then the pings stop
        assert notify.count("WATCHDOG=1", since=sink.stuck_at + 1.5) == 0
        wait_for("STOPPING=1", lambda: notify.count("STOPPING=1") == 1, timeout=5)
