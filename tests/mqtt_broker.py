"""A real mosquitto on a free 127.0.0.1 port, for tests and bench scripts.

Persistence is on, so a restart keeps retained messages and the sessions of clients that
connected with clean_session=False, exactly like a production broker restart; that is what
lets a test prove "every alert id still arrives" across a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt

__all__ = ["MOSQUITTO", "Collector", "Mosquitto", "collecting", "free_port"]

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process; `start`, `stop` and `restart` keep the same port and data dir.

    Args:
        workdir: where the config, the persistence file and the log go.
        users: username -> password; when given, anonymous access is refused.
        tls: serve MQTT over TLS with a fresh self-signed certificate for 127.0.0.1
            (`ca_file` is what a client must trust).
    """

    def __init__(
        self, workdir: Path, users: dict[str, str] | None = None, tls: bool = False
    ) -> None:
        if shutil.which(MOSQUITTO) is None:
            msg = f"mosquitto not found at {MOSQUITTO}: apt-get install -y mosquitto"
            raise RuntimeError(msg)
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.users = users or {}
        self.tls = tls
        self.ca_file = workdir / "server.crt"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        """The broker's log so far (for failure messages)."""
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.workdir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            # as the brokers deploy/ ships (docs/mqtt-and-commands.md, "Broker settings")
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to user `mosquitto`, which cannot read pytest's 0700
            # temp dirs (password file, log, persistence): stay the invoking user.
            lines.append("user root")
        if self.users:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["/usr/bin/mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            key = self.workdir / "server.key"
            if not self.ca_file.exists():
                subprocess.run(
                    [
                        "openssl",
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "2",
                        "-keyout",
                        str(key),
                        "-out",
                        str(self.ca_file),
                        "-subj",
                        "/CN=127.0.0.1",
                        "-addext",
                        "subjectAltName=IP:127.0.0.1",
                    ],
                    check=True,
                    capture_output=True,
                )
            lines += [f"certfile {self.ca_file}", f"keyfile {key}"]
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self._config())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"mosquitto exited with {self._proc.returncode}: {self.log[-2000:]}"
                raise RuntimeError(msg)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        msg = f"mosquitto did not listen on {self.port} within {timeout} s"
        raise RuntimeError(msg)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), then SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read (a broker that takes no bytes)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause` (harmless otherwise)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None


class Collector:
    """A real subscriber that reconnects and keeps its session (clean_session=False)."""

    def __init__(self, broker: Mosquitto, topics: list[str]) -> None:
        self.broker = broker
        self.topics = topics
        self.messages: list[aiomqtt.Message] = []
        self.client_id = f"collector-{secrets.token_hex(4)}"
        self.subscribed = asyncio.Event()
        self.stopping = False
        self._arrived = asyncio.Event()

    async def run(self) -> None:
        """Receive forever, reconnecting after broker restarts."""
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=self.client_id,
            clean_session=False,
            timeout=2,
            keepalive=5,
        )
        while True:
            try:
                async with client:
                    await client.subscribe([(t, 1) for t in self.topics])
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError  # a cancel lost in aiomqtt (3.11)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
                        self._arrived.set()
            except aiomqtt.MqttError:
                if self.stopping:
                    raise asyncio.CancelledError from None  # aiomqtt masked our cancel
                await asyncio.sleep(0.1)

    def on(self, topic: str) -> list[aiomqtt.Message]:
        """Messages received on exactly `topic`."""
        return [m for m in self.messages if m.topic.value == topic]

    async def wait_for(self, done: Callable[[], bool], limit: float = 10.0) -> None:
        """Wait until `done()` holds (fails the test after `limit` seconds)."""
        async with asyncio.timeout(limit):
            while not done():
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def collecting(broker: Mosquitto, topics: list[str]) -> AsyncIterator[Collector]:
    """A running Collector, subscribed before the block starts."""
    collector = Collector(broker, topics)
    task = asyncio.create_task(collector.run())
    try:
        async with asyncio.timeout(10):
            await collector.subscribed.wait()
        yield collector
    finally:
        collector.stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
