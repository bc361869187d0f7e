"""Protective-action latency: a tick crossing the action level -> the order at the venue.

The path measured is what the daemon runs on a live account, minus the websocket parse:
the new mark is folded into the account snapshot (`stress.with_prices`, as `state.apply`
does), the report is computed (`margin.report`), handed to the actions sink (`ActionsSink.
on_report`, whose per-account task wakes), the executor re-reads the account FRESH over REST
(`ExchangeSource.fetch_snapshot`: positionRisk + account through ccxt), plans and proves the
step (`actions.plan_step`), writes the client id ahead (state file, fsync-free os.replace),
and sends `create_order` through ccxt; the clock stops when the fake Binance USDⓈ-M server
(tests/fakes/binance.py + binance_orders.py, loopback) receives the POST /fapi/v1/order.

Closed loop: each iteration resets the fake account to the same critical book and waits for
the step to finish (fill, confirming re-read) before the next tick. Time is `perf_counter`
in one process.

Run: `.venv/bin/python bench/action_latency.py [--iterations 300]`. Goal (issue 5): p99 <= 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from monitor.config.actions import ActionsSettings
from monitor.core import stress
from monitor.core.margin import report as margin
from monitor.core.model import AccountSnapshot
from monitor.protect.executor import Executor
from monitor.protect.sink import ActionsSink
from monitor.sources.exchange import ExchangeSource
from tests.fakes.account import account_for
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
from tests.fakes.binance_orders import BinanceOrders, install_orders

SYMBOL = "BTC/USDT:USDT"
CALM, CRITICAL = 61_000.0, 60_000.0  # with 700 USDT on 2 BTC: ratio ~0.40 -> 0.79


def _reset(fake: FakeBinanceUsdm, mark: float) -> None:
    fake.account.wallet = 700.0
    fake.account.marks["BTCUSDT"] = mark
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 2.0, 60_000.0)


async def run(iterations: int) -> list[float]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    fake = FakeBinanceUsdm()
    _reset(fake, CALM)
    book = install_orders(fake)
    samples: list[float] = []
    async with fake:
        source = ExchangeSource(account_for(fake, API_KEY, SECRET))
        snapshot = await source.fetch_snapshot()  # the daemon's streamed state
        with tempfile.TemporaryDirectory() as state_dir:
            settings = ActionsSettings(max_fraction_per_step=1.0, cooldown=0.0,
                                       min_order_interval=0.0, order_timeout=2.0)  # fmt: skip
            ex = Executor("bench", source, source.fetch_snapshot, settings=settings,
                          action_ratio=0.7, state_dir=Path(state_dir), live=True,
                          venue="binanceusdm")  # fmt: skip
            assert ex.lock.acquire()  # the daemon holds it from its first step on
            sink = ActionsSink({"bench": ex})
            try:
                async with asyncio.TaskGroup() as tg:
                    await sink.start(tg)
                    await _loop(fake, book, snapshot=snapshot, sink=sink, ex=ex,
                                iterations=iterations, samples=samples)  # fmt: skip
                    raise _Done  # ends the sink's task (the TaskGroup way to cancel all)
            except* _Done:
                pass
            await source.close()
    return samples


class _Done(Exception):
    """Raised inside the TaskGroup when the measurements are complete."""


async def _loop(fake: FakeBinanceUsdm, book: BinanceOrders, *, snapshot: AccountSnapshot,
                sink: ActionsSink, ex: Executor, iterations: int,
                samples: list[float]) -> None:  # fmt: skip
    done = asyncio.Event()

    def audit(account: str, kind: str, payload: Mapping[str, Any], at: float) -> None:
        del account, payload, at
        if kind == "result":
            done.set()

    ex.audit_hook = audit
    for i in range(iterations + 10):
        _reset(fake, CRITICAL)
        book.arrived.clear()
        t0 = time.perf_counter()
        moved = stress.with_prices(snapshot, {SYMBOL: CRITICAL})
        rep = margin.report(moved)
        await sink.on_report("bench", rep, moved, time.time())
        await asyncio.wait_for(book.arrived.wait(), 5)
        if i >= 10:  # warm-up: ccxt caches, first TCP connection
            samples.append(book.arrived_at - t0)
        await asyncio.wait_for(done.wait(), 5)  # the step ends with its confirming re-read
        done.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    samples = asyncio.run(run(args.iterations))
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(f"tick -> reduce-only order at the venue (fresh REST re-read included), "
          f"{len(ms)} steps")  # fmt: skip
    print(f"  p50 {p50:.2f} ms   p90 {ms[int(0.9 * len(ms))]:.2f} ms   p99 {p99:.2f} ms   "
          f"max {ms[-1]:.2f} ms")  # fmt: skip
    print(f"  goal p99 <= 25 ms: {'met' if p99 <= 25 else 'NOT met'}")


if __name__ == "__main__":
    main()
