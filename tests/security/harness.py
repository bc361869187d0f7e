"""The real daemon process for the security suite: `margin-monitor run` with a real broker.

Every test here attacks the process from outside, as issue 13's probes did: the console
script, the configuration a user writes, the broker on loopback, the HTTP ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiomqtt

from monitor.alerts.signed_commands import Command, envelope
from tests.mqtt_broker import Mosquitto, collecting, free_port

__all__ = ["SECRET", "SIM_ACCOUNT", "Daemon", "command", "running_daemon", "script"]

SECRET = "s3cr3t-command-key"


def script() -> Path:
    """The installed console script next to this interpreter."""
    return Path(sys.executable).parent / "margin-monitor"


def command(action: str, **fields: Any) -> str:
    """A signed envelope of `action` with a fresh request_id, signed now."""
    fields.setdefault("request_id", secrets.token_hex(8))
    return envelope(Command(action, **fields), SECRET.encode(), time.time())  # type: ignore[arg-type]


#: The default account: the sim, calm (nothing fires on its own).
SIM_ACCOUNT = """
[[accounts]]
name = "demo"
exchange = "sim"

[accounts.sim]
seed = 7
tick_rate = 5
scenario = "calm"
"""

CONFIG = """
state_dir = "{state}"
shock_interval = 0.5
{accounts}

[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "{prefix}"
discovery = false
timeout = 5.0

[notify]
command_listen = "127.0.0.1:{command_port}"
command_url = "http://127.0.0.1:{command_port}/command"

[metrics]
enabled = true
host = "127.0.0.1"
port = {metrics_port}
"""


class Daemon:
    """One `margin-monitor run` process; start, stop (SIGINT) and start again on one state."""

    def __init__(
        self,
        broker: Mosquitto,
        workdir: Path,
        extra: str = "",
        *,
        env: Mapping[str, str] | None = None,
        accounts: str = SIM_ACCOUNT,
        state: Path | None = None,
    ) -> None:
        self.broker = broker
        self.prefix = f"mmsec-{secrets.token_hex(3)}"
        self.state = state or workdir / "state"
        self.command_port = free_port()
        self.metrics_port = free_port()
        self.config = workdir / "config.toml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            CONFIG.format(
                state=self.state,
                port=broker.port,
                prefix=self.prefix,
                accounts=accounts,
                command_port=self.command_port,
                metrics_port=self.metrics_port,
            )
            + extra
        )
        self.env = {**os.environ, "MARGIN_MONITOR__MQTT__COMMAND_SECRET": SECRET, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    @property
    def command_url(self) -> str:
        """The HTTP command endpoint."""
        return f"http://127.0.0.1:{self.command_port}/command"

    @property
    def metrics_url(self) -> str:
        """The metrics port's base URL."""
        return f"http://127.0.0.1:{self.metrics_port}"

    async def start(self, max_fds: int | None = None) -> None:
        """Start (with at most `max_fds` descriptors) and wait until the broker says it is
        online and the ports answer."""

        def limit() -> None:
            if max_fds is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

        async with collecting(self.broker, [f"{self.prefix}/status"]) as sub:
            self.proc = await asyncio.create_subprocess_exec(
                str(script()),
                "run",
                "--config",
                str(self.config),
                "--no-tui",
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=limit,
            )
            await sub.wait_for(
                lambda: any(m.payload == b"online" for m in sub.on(f"{self.prefix}/status")),
                limit=30,
            )
        for port in (self.command_port, self.metrics_port):
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(OSError):
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                        writer.close()
                        break
                    await asyncio.sleep(0.05)

    async def stop(self) -> str:
        """SIGINT, wait, and return everything it printed."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(self.proc.communicate(), 30)
        self.output += out
        return self.output.decode(errors="replace")

    async def send(self, raw: str | bytes, limit: float = 10.0) -> dict[str, Any]:
        """Publish a raw command on `<prefix>/command` and return the daemon's reply to it."""
        request_id = _request_id(raw)
        async with collecting(self.broker, [f"{self.prefix}/reply"]) as sub:
            async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
                await client.publish(f"{self.prefix}/command", raw, qos=1)

            def replies() -> list[dict[str, Any]]:
                out = [json.loads(m.payload) for m in sub.on(f"{self.prefix}/reply")]  # type: ignore[arg-type]
                return [r for r in out if r.get("request_id") == request_id]

            await sub.wait_for(lambda: bool(replies()), limit)
            return replies()[0]


def _request_id(raw: str | bytes) -> str:
    try:
        return str(json.loads(json.loads(raw)["body"]).get("request_id", ""))
    except (ValueError, KeyError, TypeError):
        return ""


@contextlib.asynccontextmanager
async def running_daemon(
    broker: Mosquitto,
    workdir: Path,
    extra: str = "",
    env: Mapping[str, str] | None = None,
    accounts: str = SIM_ACCOUNT,
) -> AsyncIterator[Daemon]:
    """A started daemon, stopped at the end of the block."""
    daemon = Daemon(broker, workdir, extra, env=env, accounts=accounts)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
