"""Mark-price latency: fake venue frame -> new margin report, vs a bare ccxt.pro loop.

Both paths read the same `markPriceUpdate` frames from the loopback fake Binance USDⓈ-M
server (tests/fakes/binance.py) through the real ccxt.pro parser:

- **daemon**: `ExchangeSource.events()` -> `state.apply` -> `margin.report` (what the daemon
  does per tick, minus sinks);
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
from monitor.core import state
from monitor.core.margin import report as margin
from monitor.core.model import PriceTick
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm

SYMBOL = "BTC/USDT:USDT"


def _fake() -> FakeBinanceUsdm:
    fake = FakeBinanceUsdm()
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.8, 59_000.0)
    fake.account.positions[("ETHUSDT", "BOTH")] = BinancePosition("ETHUSDT", -4.0, 3_100.0)
    return fake


def _price(i: int) -> float:
    return 60_000.0 + (i % 2000) * 0.5 + 0.25  # unique within any two consecutive frames


def _product(fake: FakeBinanceUsdm, workdir: Path) -> Product:
    """The account as `run` builds it; long intervals: only the price path runs meanwhile."""
    account = binance_account(fake, API_KEY, SECRET, poll_interval=30.0, stale_after=600.0)
    return build(workdir, {"accounts": [account]}, sinks=False)


async def daemon_path(frames: int) -> list[float]:
    fake = _fake()
    async with fake:
        with tempfile.TemporaryDirectory() as tmp:
            source = _product(fake, Path(tmp)).source("main")
        try:
            snapshot = await source.fetch_snapshot()
            current = state.initial_state(snapshot, time.time())
            events = source.events()
            latencies: list[float] = []
            pending: dict[float, float] = {}
            ready = asyncio.Event()

            async def consume() -> None:
                nonlocal current
                async for event in events:
                    current, changed = state.apply(current, event)
                    if isinstance(event, PriceTick) and changed:
                        margin.report(current.snapshot)
                        sent = pending.pop(event.mark_price, None)
                        if sent is not None:
                            latencies.append(time.perf_counter() - sent)
                            ready.set()

            consumer = asyncio.create_task(consume())
            await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s", within=10.0)
            await asyncio.sleep(0.2)  # let the first reconciliation's events drain
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


async def floor_path(frames: int) -> list[float]:
    fake = _fake()
    async with fake:
        with tempfile.TemporaryDirectory() as tmp:
            source = _product(fake, Path(tmp)).source("main")
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
