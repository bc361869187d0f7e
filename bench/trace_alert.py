"""Where the time of a mark frame -> alert goes: stage stamps through the shipped daemon.

Runs `alert_latency.py` (a warm daemon, one crossing after another), `vs_polling.py`'s
trial (the first crossing of a fresh daemon) or its running design (one daemon, crossings
seconds apart) with the product's own classes wrapped so that
each stage stamps `perf_counter` on entry (`>`) and exit (`<`), then prints, per stage, the
median and p90 of its first stamp after the crash frame was pushed (ms). Wrapping costs a
few microseconds per stamp, so figures run ~10 % above the plain benches; use them to see
the order and the gaps, the plain benches for the figure itself (issue 16).

    .venv/bin/python bench/trace_alert.py alert --count 60
    .venv/bin/python bench/trace_alert.py first --count 12 [--poll 5]
    .venv/bin/python bench/trace_alert.py running --count 12 [--poll 5]
    ... --show 3        # also print the whole stamp sequence of the first 3 samples
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho

from bench import alert_latency, vs_polling
from monitor.alerts.message import AlertMessage
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.sink import AlertsSink
from monitor.channels.mqtt import MqttSink
from monitor.core.margin.ledger import Ledger
from monitor.daemon.loop import AccountLoop
from monitor.ops import logs
from monitor.protect.executor import Executor
from monitor.protect.notes import ActionNotes
from monitor.protect.sink import ActionsSink
from monitor.store import Store
from tests.fakes.binance import BinancePosition, FakeBinanceUsdm
from tests.mqtt_broker import Mosquitto

#: the samples' stamps: (stage, perf_counter); a new list per crash frame
SAMPLES: list[list[tuple[str, float]]] = []
_current: list[list[tuple[str, float]] | None] = [None]


def stamp(stage: str) -> None:
    """Record `stage` in the current sample (none between a calm frame and the next crash)."""
    sample = _current[0]
    if sample is not None:
        sample.append((stage, time.perf_counter()))


def wrap(cls: type, name: str, stage: str, when: Callable[..., bool] | None = None) -> None:
    """Stamp `stage>` and `stage<` around `cls.name` (a coroutine function or a plain one)."""
    fn = getattr(cls, name)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def stamped_async(*args: Any, **kwargs: Any) -> Any:
            on = when is None or when(*args, **kwargs)
            if on:
                stamp(f"{stage}>")
            try:
                return await fn(*args, **kwargs)
            finally:
                if on:
                    stamp(f"{stage}<")

        setattr(cls, name, stamped_async)
        return

    @functools.wraps(fn)
    def stamped(*args: Any, **kwargs: Any) -> Any:
        on = when is None or when(*args, **kwargs)
        if on:
            stamp(f"{stage}>")
        try:
            return fn(*args, **kwargs)
        finally:
            if on:
                stamp(f"{stage}<")

    setattr(cls, name, stamped)


def instrument() -> None:
    """Wrap the stages of the tick -> alert path (and the dry-run step that may share it)."""
    wrap(Ledger, "tick", "ledger.tick")  # the frame is a PriceTick in the account's loop
    wrap(AccountLoop, "recompute", "recompute")
    wrap(ActionsSink, "on_report", "actions.on_report")
    wrap(ActionNotes, "note", "actions.note")  # the plan preview the alert message carries
    wrap(AlertsSink, "on_report", "alerts.on_report")
    wrap(AlertPipeline, "_commit", "pipeline.commit")
    wrap(AlertMessage, "to_json", "message.to_json")
    wrap(Store, "commit", "store.commit")
    wrap(Store, "due", "store.due")
    wrap(MqttSink, "send_now", "mqtt.send_now")
    wrap(MqttSink, "_states_round", "mqtt.state")
    wrap(paho.Client, "publish", "paho.publish", lambda _c, topic, *_a, **_k: "alert" in topic)
    wrap(Executor, "step", "executor.step")
    write = paho.Client.loop_write

    def loop_write(self: paho.Client) -> Any:
        pending = self.want_write()
        rc = write(self)
        if pending:
            stamp("paho.written")
        return rc

    paho.Client.loop_write = loop_write  # type: ignore[method-assign]
    push = FakeBinanceUsdm.push_mark

    async def push_mark(self: FakeBinanceUsdm, symbol: str, mark: float) -> int:
        crash = mark < 55_000.0  # both benches crash to 52 800 and calm at 60 000
        _current[0] = [] if crash else None
        if crash:
            SAMPLES.append(_current[0])  # type: ignore[arg-type]
            stamp("push")
        return await push(self, symbol, mark)

    FakeBinanceUsdm.push_mark = push_mark  # type: ignore[method-assign]


async def first_crossings(count: int, poll: float) -> list[float]:
    """`vs_polling.trial` `count` times: the first crossing of a fresh daemon (ms)."""
    return await _crossings(count, poll, running=False)


async def running_crossings(count: int, poll: float) -> list[float]:
    """`vs_polling.running`: `count` crossings of one running daemon, seconds apart (ms)."""
    return await _crossings(count, poll, running=True)


async def _crossings(count: int, poll: float, *, running: bool) -> list[float]:
    """vs_polling's venue (wallet 6 000, long 0.8 BTC at 60 000), broker and subscriber."""
    venue = FakeBinanceUsdm()
    venue.account.wallet = 6_000.0
    venue.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.8, 60_000.0)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            async with venue, vs_polling.subscriber(broker) as watch:
                # in this process: the stamps wrap the daemon's classes here
                phases = vs_polling.Phases(random.Random(1), poll, count, stratified=True)
                rig = vs_polling.Rig(venue, broker, watch, poll, phases, process=False)
                if running:
                    async for daemon, _ in vs_polling.running(count, rig):
                        out.append(float("nan") if daemon is None else daemon * 1000)
                else:
                    for n in range(count):
                        daemon, _ = await vs_polling.trial(n, rig)
                        out.append(float("nan") if daemon is None else daemon * 1000)
        finally:
            broker.stop()
    return out


def summary(latencies: list[float], samples: list[list[tuple[str, float]]]) -> None:
    """Median / p90 of each stage's first stamp after the push (ms)."""
    firsts: dict[str, list[float]] = {}
    for sample in samples:
        t0 = sample[0][1]
        seen: set[str] = set()
        for stage, at in sample:
            if stage not in seen:
                seen.add(stage)
                firsts.setdefault(stage, []).append((at - t0) * 1000)
    print(
        f"{len(samples)} samples; frame -> alert at the subscriber: median "
        f"{statistics.median(latencies):.3f} ms (with the stamps' own cost)"
    )
    for stage in sorted(firsts, key=lambda s: statistics.median(firsts[s])):
        values = sorted(firsts[stage])
        p90 = values[round(0.9 * (len(values) - 1))]
        print(
            f"  {stage:<22} n={len(values):>3}  p50 {statistics.median(values):7.3f}  "
            f"p90 {p90:7.3f} ms"
        )


def main() -> None:
    """Run one bench with the stages wrapped and print where the time goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["alert", "first", "running"])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--poll", type=float, default=5.0, help="first: the poller's period")
    parser.add_argument("--show", type=int, default=0, help="print the stamps of N samples")
    args = parser.parse_args()
    logs.configure(level="info", fmt="json", stream=open(os.devnull, "w"))  # noqa: SIM115
    instrument()
    if args.mode == "alert":
        with tempfile.TemporaryDirectory() as tmp:
            latencies = asyncio.run(alert_latency.measure_frames(args.count, Path(tmp)))
        samples = SAMPLES[5:]  # alert_latency's 5 warm-up crossings are not measured
    elif args.mode == "running":
        latencies = asyncio.run(running_crossings(args.count, args.poll))
        samples = SAMPLES
    else:
        latencies = asyncio.run(first_crossings(args.count, args.poll))
        samples = SAMPLES
    summary(latencies, samples)
    for sample, latency in list(zip(samples, latencies, strict=False))[: args.show]:
        t0 = sample[0][1]
        print(
            f"--- {latency:.3f} ms: " + "  ".join(f"{s} {(t - t0) * 1000:.2f}" for s, t in sample)
        )


if __name__ == "__main__":
    main()
