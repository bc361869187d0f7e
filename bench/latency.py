"""Mark-price latency: fake venue frame -> new margin report, vs a bare ccxt.pro loop.

Both paths read the same `markPriceUpdate` frames from the loopback fake Binance USDⓈ-M
server (tests/fakes/binance.py) through the real ccxt.pro parser:

- **daemon**: the shipped daemon (`Daemon.run` with the sinks `run` builds: console, alerts
  with its SQLite store, actions) and a probe sink; the clock stops when a report built on
  the pushed mark reaches the sinks;
- **floor**: `while True: await exchange.watch_mark_price(symbol)`, nothing else, on the
  same ccxt instance the product builds.

Both build the account from a TOML file as `margin-monitor run` does (bench/product.py);
only the URLs point at the fake.

Closed loop: a frame is sent only after the previous one produced its result, so the
figure is per-frame latency, not queueing. Time is `perf_counter` in one process, taken
just before the server writes the frame and just after the report exists.

Run: `.venv/bin/python bench/latency.py [--frames 10000]`. Goal (issue 3): p99 <= 5 ms and
<= 2x the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from bench.product import Product, binance_account, build
from monitor.core.model import AccountSnapshot, MarginReport
from monitor.sink import Sink
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm

SYMBOL = "BTC/USDT:USDT"


def _fake() -> FakeBinanceUsdm:
    fake = FakeBinanceUsdm()
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.8, 59_000.0)
    fake.account.positions[("ETHUSDT", "BOTH")] = BinancePosition("ETHUSDT", -4.0, 3_100.0)
    return fake


def _price(i: int) -> float:
    return 60_000.0 + (i % 2000) * 0.5 + 0.25  # unique within any two consecutive frames


def _product(fake: FakeBinanceUsdm, workdir: Path, sinks: bool) -> Product:
    """The account as `run` builds it; long intervals: only the price path runs meanwhile.
    `report_spacing = 0` is the documented setting for a report per change (the default
    spaces routine reports 0.5 s apart, which would measure the spacing, not the path)."""
    account = binance_account(fake, API_KEY, SECRET, poll_interval=30.0, stale_after=600.0)
    return build(workdir, {"accounts": [account], "report_spacing": 0}, sinks=sinks)


class _Probe(Sink):
    """Stops the clock when a report built on the pushed mark reaches the sinks."""

    name = "probe"

    def __init__(self) -> None:
        self.pending: dict[float, float] = {}
        self.latencies: list[float] = []
        self.ready = asyncio.Event()

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        for position in snapshot.positions:
            sent = self.pending.pop(position.mark_price, None)
            if sent is not None:
                self.latencies.append(time.perf_counter() - sent)
                self.ready.set()


async def daemon_path(frames: int) -> list[float]:
    """The shipped daemon (`Daemon.run` with the product's sinks) plus a probe sink."""
    fake = _fake()
    async with fake:
        with tempfile.TemporaryDirectory() as tmp:
            product = _product(fake, Path(tmp), sinks=True)
            probe = _Probe()
            daemon = asyncio.create_task(product.run(extra_sinks=[probe]))
            try:
                await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s", within=10.0)
                await asyncio.sleep(0.5)  # let the start-up read's report go by
                for i in range(frames):
                    price = _price(i)
                    probe.ready.clear()
                    probe.pending[price] = time.perf_counter()
                    await fake.push_mark("BTCUSDT", price)
                    await asyncio.wait_for(probe.ready.wait(), 5.0)
            finally:
                daemon.cancel()
                await asyncio.gather(daemon, return_exceptions=True)
            return probe.latencies


async def floor_path(frames: int) -> list[float]:
    fake = _fake()
    async with fake:
        with tempfile.TemporaryDirectory() as tmp:
            source = _product(fake, Path(tmp), sinks=False).source("main")
        exchange = await source.open()  # the product's own ccxt instance, used bare
        try:
            await exchange.load_markets()
            latencies: list[float] = []
            pending: dict[float, float] = {}
            ready = asyncio.Event()

            async def consume() -> None:
                while True:
                    ticker = await exchange.watch_mark_price(SYMBOL)
                    sent = pending.pop(ticker["markPrice"], None)
                    if sent is not None:
                        latencies.append(time.perf_counter() - sent)
                        ready.set()

            consumer = asyncio.create_task(consume())
            await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s", within=10.0)
            for i in range(frames):
                price = _price(i)
                ready.clear()
                pending[price] = time.perf_counter()
                await fake.push_mark("BTCUSDT", price)
                await asyncio.wait_for(ready.wait(), 5.0)
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            return latencies
        finally:
            await source.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<8} n={len(ms):>6}  p50={statistics.median(ms):.3f} ms  "
        f"p99={_pct(ms, 0.99):.3f} ms  max={max(ms):.3f} ms"
    )


async def main(frames: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    floor = await floor_path(frames)
    daemon = await daemon_path(frames)
    print(_line("floor", floor))
    print(_line("daemon", daemon))
    p50 = statistics.median(daemon) / statistics.median(floor)
    p99 = _pct(daemon, 0.99) / _pct(floor, 0.99)
    print(f"ratio    p50 {p50:.2f}x  p99 {p99:.2f}x  (goal: p99 <= 5 ms and <= 2x floor)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().frames))
