"""Tick -> alert received by an MQTT subscriber, through the real pipeline and a real broker.

Each step applies a mark price that moves a one-position account across the emergency
threshold (or back below it), computes the margin report, runs the rules, commits the alert
to the SQLite outbox (WAL, a real file), lets the `sink[mqtt]` task publish it with QoS 1 to a
mosquitto this script starts on a free 127.0.0.1 port, and stops the clock when a separate
aiomqtt subscriber (QoS 1) receives that alert id. One alert in flight at a time, so the
figure is latency, not throughput. Goal (issue 4): p50 <= 2 ms, p99 <= 10 ms.

Built as `margin-monitor run` builds it, from a TOML file this script writes
(bench/product.py): `build_sinks` gives the console, the alerts sink (rules, the SQLite
store and outbox, `MqttSink`) and the rest; each report goes through every sink in the
daemon's order, and the daemon's JSON logging runs (to /dev/null).

    .venv/bin/python bench/alert_latency.py [--alerts 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.product import build
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, Position
from monitor.ops import logs
from tests.mqtt_broker import Mosquitto

#: 10 BTC long on 10 000 USDT, mmr 1 %: ratio 0.91 at 9 100 (emergency), 0.055 at 11 000.
ACCOUNT = AccountSnapshot(
    account="bench",
    currency="USDT",
    collateral=(Collateral("USDT", 10_000.0),),
    positions=(
        Position("BTC/USDT:USDT", "long", 10.0, 10_000.0, 10_000.0, leverage=10, mmr=0.01),
    ),
)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(alerts: int, workdir: Path) -> list[float]:
    """Latencies in milliseconds of `alerts` tick-to-subscriber alerts."""
    broker = Mosquitto(workdir / "broker")
    broker.start()
    try:
        # `run`'s wiring from a TOML file (bench/product.py): every sink build_sinks makes,
        # in the daemon's order; the account is the sim venue's (never started: the bench
        # moves the mark itself), and actions cover no account, so only alerts react.
        product = build(workdir / "product", {
            "accounts": [{"name": ACCOUNT.account, "exchange": "sim"}],
            "alerts": {"repeat_every": 0},
            "actions": {"accounts": []},
            "mqtt": {"host": broker.host, "port": broker.port, "prefix": "bench",
                     "discovery": False},
        })  # fmt: skip
        arrived: list[float] = []
        next_alert: asyncio.Future[None] | None = None

        async def subscriber(ready: asyncio.Event) -> None:
            nonlocal next_alert
            async with aiomqtt.Client(broker.host, broker.port, identifier="bench-sub") as sub:
                await sub.subscribe("bench/+/alert", qos=1)
                ready.set()
                async for message in sub.messages:
                    t = time.perf_counter()
                    json.loads(message.payload)  # type: ignore[arg-type]
                    if next_alert is not None and not next_alert.done():
                        arrived.append(t)
                        next_alert.set_result(None)

        ready = asyncio.Event()
        alerts_sink = product.sink("alerts")
        try:
            async with asyncio.TaskGroup() as tg:
                for sink in product.sinks:
                    await sink.start(tg)
                tg.create_task(subscriber(ready), name="bench.subscriber")
                async with asyncio.timeout(30):
                    await ready.wait()
                    await alerts_sink.mqtt.wait_connected()
                latencies = []
                loop = asyncio.get_running_loop()
                async with asyncio.timeout(max(60.0, alerts * 0.02)):
                    for i in range(alerts):
                        price = 9_100.0 if i % 2 == 0 else 11_000.0
                        position = replace(ACCOUNT.positions[0], mark_price=price)
                        next_alert = loop.create_future()
                        t0 = time.perf_counter()
                        snapshot = replace(ACCOUNT, positions=(position,))
                        rep = report(snapshot)
                        for sink in product.sinks:  # the daemon's fan-out, in its order
                            await sink.on_report(ACCOUNT.account, rep, snapshot, 1_000.0 + i)
                        await next_alert
                        latencies.append((arrived[-1] - t0) * 1000)
                raise _Done
        except* _Done:
            pass
        finally:
            for sink in product.sinks:
                await sink.close()
        return latencies
    finally:
        broker.stop()


class _Done(Exception):
    """Raised inside the TaskGroup when the measurements are complete."""


def log_to_devnull() -> None:
    """Log as the daemon would (`run`'s JSON logging), but to /dev/null, not the screen."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    logs.configure(level="info", fmt="json", stream=devnull)


def main() -> None:
    """Run and print p50/p90/p99/max."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5000)
    args = parser.parse_args()
    log_to_devnull()
    with tempfile.TemporaryDirectory() as tmp:
        latencies = asyncio.run(measure(args.alerts, Path(tmp)))
    print(f"python {platform.python_version()}, {platform.machine()}, mosquitto, aiomqtt QoS 1")
    print(f"tick -> alert at subscriber, {len(latencies)} alerts (SQLite outbox, WAL):")
    print(
        f"  p50 {statistics.median(latencies):.3f} ms   p90 {percentile(latencies, 0.9):.3f} ms"
        f"   p99 {percentile(latencies, 0.99):.3f} ms   max {max(latencies):.3f} ms"
    )
    goal = statistics.median(latencies) <= 2.0 and percentile(latencies, 0.99) <= 10.0
    print(f"  goal p50 <= 2 ms, p99 <= 10 ms: {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
