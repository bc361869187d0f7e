"""Alert fired -> notification at a local Apprise receiver, for escalations (issue 14).

The alert side is built exactly as `margin-monitor run` builds it, from a TOML file
(bench/product.py: `load_settings`, `build_sinks`) with a `[notify]` channel whose URL is a
real Apprise `json://` URL at a local aiohttp receiver and an `[mqtt]` section at a
mosquitto this script starts on a free 127.0.0.1 port; its alerts sink is started in a
TaskGroup. The clock starts
when the rules fire the alert (`on_report` returns it) and stops when the receiver's handler
sees a notification naming it. Apprise's own per-service wait is inside the figure.

- idle: the channel has not sent for longer than its `min_interval`; goal p99 <= 1 s.
- busy: the channel sent a warning (another account) a random 0..min_interval earlier and
  a second warning already waits out the pacing when the escalation fires; goal p99 <= one
  `min_interval` (before issue 14 the waiting batch was picked before the pacing sleep, so
  the escalation went one round later: up to two intervals).

    .venv/bin/python bench/notify_latency.py [--samples 40] [--interval 5.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alert_latency import log_to_devnull, percentile
from bench.product import build
from monitor.alerts.sink import AlertsSink
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, MarginReport, Position
from tests.mqtt_broker import Mosquitto
from tests.test_notify import serving

#: 10 BTC long on 10 000 USDT, mmr 1 %: ratio 0.91 at 9 100 (emergency), 0.055 at 11 000.
ACCOUNT = AccountSnapshot(
    account="bench",
    currency="USDT",
    collateral=(Collateral("USDT", 10_000.0),),
    positions=(Position("BTC/USDT:USDT", "long", 10.0, 10_000.0, 10_000.0, leverage=10, mmr=0.01),),
)

#: Mark prices of the bench account.
WARNING_PRICE = 9_170.0  # ratio 0.54
EMERGENCY_PRICE = 9_100.0  # ratio 0.91


def at_price(account: str, price: float) -> MarginReport:
    """The bench account, renamed, at one mark price."""
    position = replace(ACCOUNT.positions[0], mark_price=price)
    return report(replace(ACCOUNT, account=account, positions=(position,)))


class Receiver:
    """What the phone service would get: (arrival time, title, message) per request."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str, str]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        """Record one notification (Apprise's json:// body: title, message, type)."""
        body = json.loads(await request.read())
        self.got.append((time.perf_counter(), body["title"], body["message"]))
        self.arrived.set()
        return web.json_response({})

    async def wait_for(self, headline: str, limit: float = 60.0) -> float:
        """Arrival time of the first notification whose text has `headline`."""
        async with asyncio.timeout(limit):
            while True:
                for at, title, message in self.got:
                    if headline in title or headline in message:
                        return at
                self.arrived.clear()
                await self.arrived.wait()


async def measure(samples: int, interval: float, workdir: Path) -> dict[str, list[float]]:
    """Latencies (s) of idle and busy escalations."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    try:
        async with serving(app) as base:
            return await _measure(samples, interval, workdir, broker, receiver, base)
    finally:
        broker.stop()


async def _measure(  # noqa: PLR0917 - the scenario's own fixtures, passed once
    samples: int, interval: float, workdir: Path, broker: Mosquitto, receiver: Receiver, base: str
) -> dict[str, list[float]]:
    # `run`'s wiring from a TOML file (bench/product.py); the alerts sink is the one used
    product = build(
        workdir / "product",
        {
            "accounts": [{"name": "bench", "exchange": "sim"}],
            "actions": {"accounts": []},
            "mqtt": {"host": broker.host, "port": broker.port, "prefix": "bench"},
            "notify": {
                "channels": [
                    {
                        "name": "phone",
                        "url": f"{base.replace('http', 'json', 1)}/hook",
                        "min_interval": interval,
                    }
                ]
            },
        },
    )
    sink: AlertsSink = product.sink("alerts")
    out: dict[str, list[float]] = {"idle": [], "busy": []}

    async def fire(account: str, price: float) -> float:
        events = sink.pipeline.on_report(at_price(account, price))
        assert any(e.delivered for e in events), events
        return time.perf_counter()

    async def tasks() -> None:
        async with asyncio.TaskGroup() as tg:
            await sink.start(tg)

    group = asyncio.create_task(tasks())
    try:
        assert sink.mqtt is not None
        async with asyncio.timeout(10):
            await sink.mqtt.wait_connected()
        for i in range(samples):  # idle: the pacing interval has long passed
            await asyncio.sleep(interval + 0.05)
            fired = await fire(f"idle{i}", EMERGENCY_PRICE)
            out["idle"].append(await receiver.wait_for(f"EMERGENCY idle{i}:") - fired)
        for i in range(samples):  # busy: a send just went out; the escalation must wait
            await asyncio.sleep(interval + 0.05)
            await fire(f"warm{i}", WARNING_PRICE)
            await receiver.wait_for(f"WARNING warm{i}:")
            first, second = sorted(random.uniform(0, interval) for _ in range(2))
            await asyncio.sleep(first)
            await fire(f"queued{i}", WARNING_PRICE)  # lesser news, already waiting
            await asyncio.sleep(second - first)
            fired = await fire(f"busy{i}", EMERGENCY_PRICE)
            out["busy"].append(await receiver.wait_for(f"EMERGENCY busy{i}:") - fired)
    finally:
        group.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await group
        await sink.close()
    return out


def main() -> None:
    """Run both scenarios and print p50/p99/max against the goals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--interval", type=float, default=5.5, help="channel min_interval (s)")
    args = parser.parse_args()
    log_to_devnull()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args.samples, args.interval, Path(tmp)))
    print(
        f"python {platform.python_version()}, {platform.machine()}, Apprise json:// to a local "
        f"aiohttp receiver, mosquitto alongside, min_interval {args.interval} s"
    )
    goals = {"idle": 1.0, "busy": args.interval}
    for name, values in result.items():
        p99 = percentile(values, 0.99)
        print(
            f"  {name:4} {len(values)} escalations: p50 {statistics.median(values) * 1000:.0f} ms"
            f"   p99 {p99 * 1000:.0f} ms   max {max(values) * 1000:.0f} ms"
            f"   goal p99 <= {goals[name]:g} s: {'met' if p99 <= goals[name] else 'NOT met'}"
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
