"""Tick -> alert received by an MQTT subscriber, through the real pipeline and a real broker.

Each step applies a mark price that moves a one-position account across the emergency
threshold (or back below it), computes the margin report, runs the rules, commits the alert
to the SQLite outbox (WAL, a real file), lets the `sink[mqtt]` task publish it with QoS 1 to a
mosquitto this script starts on a free 127.0.0.1 port, and stops the clock when a separate
aiomqtt subscriber (QoS 1) receives that alert id. One alert in flight at a time, so the
figure is latency, not throughput. Goal (issue 4): p50 <= 2 ms, p99 <= 10 ms.

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
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.alerts.pipeline import AlertPipeline
from monitor.channels.mqtt import MqttSink
from monitor.config.alerts import MqttSettings
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, Position
from monitor.core.rules import AlertConfig
from monitor.store import Store
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
        settings = MqttSettings.model_validate(
            {"host": broker.host, "port": broker.port, "prefix": "bench", "discovery": False}
        )
        sink = MqttSink(settings)
        config = AlertConfig(
            repeat_every=0, shock_warning=None, shock_critical=None, shock_emergency=None
        )
        pipeline = AlertPipeline(Store(workdir / "alerts.sqlite3"), config, [sink])
        arrived: dict[str, float] = {}
        waiting: dict[str, asyncio.Future[None]] = {}

        async def subscriber(ready: asyncio.Event) -> None:
            async with aiomqtt.Client(broker.host, broker.port, identifier="bench-sub") as sub:
                await sub.subscribe("bench/+/alert", qos=1)
                ready.set()
                async for message in sub.messages:
                    t = time.perf_counter()
                    mid = json.loads(message.payload)["id"]  # type: ignore[arg-type]
                    arrived.setdefault(mid, t)
                    fut = waiting.pop(mid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)

        ready = asyncio.Event()
        tasks = [
            asyncio.create_task(subscriber(ready), name="bench.subscriber"),
            asyncio.create_task(sink.run(), name="mqtt"),
            asyncio.create_task(pipeline.run(), name="pipeline"),
        ]
        try:
            async with asyncio.timeout(30):
                await ready.wait()
                await sink.wait_connected()
            latencies = []
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(max(60.0, alerts * 0.02)):
                for i in range(alerts):
                    price = 9_100.0 if i % 2 == 0 else 11_000.0
                    position = replace(ACCOUNT.positions[0], mark_price=price)
                    t0 = time.perf_counter()
                    snapshot = replace(ACCOUNT, positions=(position,))
                    events = pipeline.on_report(report(snapshot), now=1_000.0 + i)
                    (event,) = [e for e in events if e.delivered]
                    fut: asyncio.Future[None] = loop.create_future()
                    waiting[event.id] = fut
                    await fut
                    latencies.append((arrived[event.id] - t0) * 1000)
            return latencies
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            pipeline.store.close()
    finally:
        broker.stop()


def log_to_devnull() -> None:
    """Log as the daemon would (JSON), but to /dev/null, not the screen."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(devnull),
    )


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
