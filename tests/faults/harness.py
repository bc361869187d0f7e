"""The fault-matrix rig: the real daemon process, a fake venue and mosquitto, each behind a
FaultProxy, and a persistent MQTT subscriber that records every alert id (issue 7).

Everything is loopback. The daemon is `python -m monitor run --config FILE --no-tui` in a
subprocess (so SIGKILL, exit codes and tracebacks are real); its keys come from the
environment, as in production, so a leak into the logs can be searched for. Ground truth for
"every alert reached the sink" is the daemon's own `alert ... id=...` log lines plus whatever
is still in the SQLite outbox at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
from tests.faults.fuzz_targets import to_toml
from tests.faults.proxy import FaultProxy
from tests.mqtt_broker import Mosquitto

#: The sell-off path: 6 000 USDT wallet, long 0.8 BTC from 60 000. Margin ratio crosses
#: warning (0.5) at 52 923, critical (0.7) at 52 802, emergency (0.85) at 52 748; the shock
#: levels (10 % / 5 % / 2 % to liquidation) fire on the way down.
SELL_OFF = [60_000.0 - i * 250.0 for i in range(29)] + [52_900.0, 52_790.0, 52_740.0]
SECRETS = (API_KEY, SECRET)


@dataclass
class Row:
    """One line of the matrix table."""

    fault: str
    alerts: int = 0
    delivered: int = 0
    lost: int = 0
    stale_s: float | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    tracebacks: int = 0
    secrets: int = 0
    note: str = ""


class Subscriber:
    """A clean_session=False QoS-1 subscriber that reconnects through broker restarts."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.ids: dict[str, float] = {}
        self.kinds: list[tuple[float, dict[str, Any]]] = []
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"sub-{self.prefix}", clean_session=False
                ) as client:
                    await client.subscribe(f"{self.prefix}/+/alert", qos=1)
                    self.ready.set()
                    async for message in client.messages:
                        body = json.loads(bytes(message.payload))
                        self.ids.setdefault(str(body.get("id")), time.monotonic())
                        self.kinds.append((time.monotonic(), body))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def first(self, predicate: Any, after: float) -> float | None:
        return next((t for t, body in self.kinds if t >= after and predicate(body)), None)


class Rig:
    """Fake Binance + proxy, mosquitto + proxy, subscriber, and the daemon subprocess."""

    def __init__(
        self,
        workdir: Path,
        *,
        state_dir: Path | None = None,
        stale_after: float = 2.0,
        poll: float = 0.5,
    ) -> None:
        self.workdir = workdir
        self.state_dir = state_dir or workdir / "state"
        self.stale_after = stale_after
        self.poll = poll
        self.prefix = f"mm{os.getpid()}-{int(time.monotonic() * 1000) % 10**7}"
        self.venue = FakeBinanceUsdm()
        self.venue.account.wallet = 6_000.0
        self.venue.account.positions[("BTCUSDT", "BOTH")] = BinancePosition(
            "BTCUSDT", 0.8, 60_000.0
        )
        self.broker = Mosquitto(workdir / "broker")
        self.venue_proxy: FaultProxy | None = None
        self.broker_proxy: FaultProxy | None = None
        self.subscriber: Subscriber | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.note_hang = False
        self.logs: list[Path] = []

    async def __aenter__(self) -> Rig:
        (self.workdir / "broker").mkdir(parents=True, exist_ok=True)
        self.broker.start()
        await self.venue.start()
        port = int(self.venue.http.rsplit(":", 1)[1])
        self.venue_proxy = await FaultProxy("127.0.0.1", port).start()
        self.broker_proxy = await FaultProxy(self.broker.host, self.broker.port).start()
        self.subscriber = Subscriber(self.broker.host, self.broker.port, self.prefix)
        await self.subscriber.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
        if self.subscriber is not None:
            await self.subscriber.stop()
        for proxy in (self.venue_proxy, self.broker_proxy):
            if proxy is not None:
                await proxy.close()
        await self.venue.stop()
        self.broker.stop()

    def config(self) -> Path:
        assert self.venue_proxy is not None
        assert self.broker_proxy is not None
        port = int(self.venue.http.rsplit(":", 1)[1])
        ccxt = json.loads(
            json.dumps(self.venue.ccxt_config()).replace(
                f"127.0.0.1:{port}", f"127.0.0.1:{self.venue_proxy.port}"
            )
        )
        ccxt["timeout"] = 1500
        doc = {
            "state_dir": str(self.state_dir),
            "shock_interval": 0.2,
            "accounts": [
                {
                    "name": "main",
                    "exchange": "binanceusdm",
                    "poll_interval": self.poll,
                    "stale_after": self.stale_after,
                    "ccxt": ccxt,
                }
            ],
            "mqtt": {
                "host": "127.0.0.1",
                "port": self.broker_proxy.port,
                "prefix": self.prefix,
                "discovery": False,
                "timeout": 2.0,
                "keepalive": 5,
            },
        }
        path = self.workdir / "config.toml"
        path.write_text(to_toml(doc))
        return path

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR__")}
        env["MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY"] = API_KEY
        env["MARGIN_MONITOR__ACCOUNTS__MAIN__SECRET"] = SECRET
        log = self.workdir / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "monitor",
                    "run",
                    "--config",
                    str(self.config()),
                    "--no-tui",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )

    async def kill(self, sig: int = signal.SIGKILL, within: float = 10.0) -> None:
        """Signal the daemon and wait for it (in a thread: the fakes share this loop)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, within)
            if proc.poll() is None:
                self.note_hang = True
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        if proc is not None:
            self.exit_codes.append(int(proc.returncode))
        self.proc = None

    async def wait_streaming(self, within: float = 20.0) -> None:
        """Until the daemon has subscribed to the BTC mark stream."""
        await self.venue.wait_for_client("/market/ws", "btcusdt@markPrice@1s", within=within)

    async def sell_off(self, step: float = 0.25, between: Any = None) -> None:
        """Push the scripted path; `between(i)` runs after each step (a fault injector)."""
        for i, mark in enumerate(SELL_OFF):
            await self.venue.push_mark("BTCUSDT", mark)
            if between is not None:
                await between(i)
            await asyncio.sleep(step)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def alert_ids(self) -> set[str]:
        """Ids the daemon logged as sent alerts, plus any still waiting in the outbox.

        An alert logged with `suppressed` set (inhibited by a higher one, silenced) is by
        design not sent, so it is not expected at the subscriber.
        """
        ids: set[str] = set()
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if (
                    isinstance(entry, dict)
                    and entry.get("event") == "alert"
                    and not entry.get("suppressed")
                ):
                    ids.add(str(entry["id"]))
        db = self.state_dir / "alerts.sqlite3"
        if db.exists():
            with (
                contextlib.closing(sqlite3.connect(db)) as conn,
                contextlib.suppress(sqlite3.Error),
            ):
                ids |= {r[0] for r in conn.execute("SELECT message_id FROM outbox")}
        return ids

    async def settle(self, within: float = 10.0) -> None:
        """Give the outbox time to drain to the subscriber."""
        assert self.subscriber is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.alert_ids() <= set(self.subscriber.ids):
                return
            await asyncio.sleep(0.2)

    def row(self, fault: str, **extra: Any) -> Row:
        assert self.subscriber is not None
        ids = self.alert_ids()
        text = self.log_text()
        return Row(
            fault=fault,
            alerts=len(ids),
            delivered=len(ids & set(self.subscriber.ids)),
            lost=len(ids - set(self.subscriber.ids)),
            exit_codes=self.exit_codes,
            tracebacks=text.count("Traceback"),
            secrets=sum(text.count(s) for s in SECRETS),
            **extra,
        )


def table(rows: list[Row]) -> str:
    head = (
        f"{'fault':<34} {'alerts':>6} {'deliv':>5} {'lost':>4} {'stale s':>7} "
        f"{'restarts':>8} {'tracebk':>7} {'secrets':>7}  exit codes / note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        stale = "-" if r.stale_s is None else f"{r.stale_s:.2f}"
        lines.append(
            f"{r.fault:<34} {r.alerts:>6} {r.delivered:>5} {r.lost:>4} {stale:>7} "
            f"{r.restarts:>8} {r.tracebacks:>7} {r.secrets:>7}  "
            f"{r.exit_codes} {r.note}"
        )
    return "\n".join(lines)
