"""Soak: the embedded sim with 100 accounts for a while; watch memory, CPU, latency, leaks.

    .venv/bin/python bench/soak.py [--minutes 30] [--accounts 100] [--sample 30]

Runs the daemon as `run` does (`Daemon.run`, bench/product.py) in this process with 100
`SimVenue` accounts (calm
scenario, 10 ticks/s each) and the sinks `margin-monitor run` builds from a TOML file this
script writes (bench/product.py: console, the alerts sink with the SQLite outbox/store in a
temp state dir, actions on the sim; no MQTT or phone channels). A monitor task samples
every `--sample` seconds: RSS
(/proc/self/status VmRSS), CPU share since the previous sample, asyncio task count, open
file descriptors and sockets (/proc/self/fd). Recompute latency is the wall time of each
`Ledger.report` / `stress.assess` call (timed by wrapping the functions the daemon calls;
tick->report latency under load is bench/throughput.py's figure).

Prints RSS at start (after a 10 s warm-up), at 5 and at 30 minutes (when run that long),
the RSS growth rate (least squares over samples after minute 1), and percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.product import build
from monitor.core.margin.ledger import Ledger
from monitor.daemon import loop as daemon

# A bounded reservoir (Algorithm R), not a list of every call: an unbounded list of 180 000
# floats in 5 minutes was itself the ~1.5 MB/min "growth" the first runs reported.
RESERVOIR = 20_000
RECOMPUTE_MS: list[float] = []
RECOMPUTES = [0]
_RNG = random.Random(1)


def record(ms: float) -> None:
    RECOMPUTES[0] += 1
    if len(RECOMPUTE_MS) < RESERVOIR:
        RECOMPUTE_MS.append(ms)
    else:
        slot = _RNG.randrange(RECOMPUTES[0])
        if slot < RESERVOIR:
            RECOMPUTE_MS[slot] = ms


def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record((time.perf_counter() - t) * 1000)

    return wrapper


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds() -> tuple[int, int]:
    total = sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        total += 1
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                sockets += 1
        except OSError:
            pass
    return total, sockets


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def sampler(
    every: float, rows: list[dict[str, float]], start: float, *, once: bool = False
) -> None:
    cpu = time.process_time()
    wall = time.perf_counter()
    while True:
        await asyncio.sleep(every)
        now_cpu, now_wall = time.process_time(), time.perf_counter()
        total, sockets = fds()
        row = {
            "min": (now_wall - start) / 60,
            "rss": rss_mb(),
            "cpu": rows[-1]["cpu"] if once and rows else (now_cpu - cpu) / (now_wall - wall),
            "tasks": len(asyncio.all_tasks()),
            "fds": total,
            "sockets": sockets,
            "recomputes": RECOMPUTES[0],
        }
        cpu, wall = now_cpu, now_wall
        rows.append(row)
        if once:
            return
        print(
            f"  t={row['min']:6.2f} min  RSS {row['rss']:6.1f} MB  CPU {row['cpu']:5.1%}  "
            f"tasks {row['tasks']:4.0f}  fds {row['fds']:3.0f}  sockets {row['sockets']:2.0f}  "
            f"recomputes {row['recomputes']:,.0f}",
            flush=True,
        )


async def trace_growth(top: int) -> None:
    """With --trace N: the N source lines whose live allocations grew most after minute 1."""
    tracemalloc.start(8)
    await asyncio.sleep(60)
    first = tracemalloc.take_snapshot()
    try:
        await asyncio.Event().wait()
    finally:
        stats = tracemalloc.take_snapshot().compare_to(first, "lineno")
        print(f"tracemalloc: top {top} growth since minute 1")
        for stat in stats[:top]:
            print(f"  {stat}")


def slope_mb_per_hour(rows: list[dict[str, float]]) -> float:
    pts = [(r["min"], r["rss"]) for r in rows if r["min"] >= 1.0]
    if len(pts) < 3:
        return float("nan")
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    num = sum((x - mx) * (y - my) for x, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return num / den * 60 if den else float("nan")


async def main_async(args: argparse.Namespace) -> None:
    Ledger.report = timed(Ledger.report)  # type: ignore[method-assign]
    daemon.stress.assess = timed(daemon.stress.assess)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        accounts = [
            {
                "name": f"soak{i:03d}",
                "exchange": "sim",
                "sim": {"seed": i, "scenario": "calm", "tick_rate": 10.0},
            }
            for i in range(args.accounts)
        ]
        # as `run` builds it from a TOML file (bench/product.py): sim sources from
        # open_source, every sink from build_sinks (console, alerts, sim actions)
        product = build(Path(tmp), {"accounts": accounts})
        rows: list[dict[str, float]] = []
        start = time.perf_counter()
        print(
            f"soak: {args.accounts} sim accounts for {args.minutes:g} min; RSS before start "
            f"{rss_mb():.1f} MB",
            flush=True,
        )
        task = asyncio.create_task(sampler(args.sample, rows, start))
        traced = asyncio.create_task(trace_growth(args.trace)) if args.trace else None
        await product.run(duration=args.minutes * 60)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if traced is not None:
            traced.cancel()
            await asyncio.gather(traced, return_exceptions=True)
        await sampler(0.0, rows, start, once=True)  # the end of the run is a sample too
        print(f"  t={rows[-1]['min']:6.2f} min  RSS {rows[-1]['rss']:6.1f} MB (end)")

    def at(minute: float) -> str:
        near = [r for r in rows if r["min"] >= minute - args.sample / 120]
        return (
            f"{near[0]['rss']:.1f} MB" if near and rows[-1]["min"] >= minute - 0.01 else "not run"
        )

    first = rows[0] if rows else {}
    print(
        f"RSS: start {first.get('rss', float('nan')):.1f} MB, 5 min {at(5)}, 30 min {at(30)}, "
        f"end {rows[-1]['rss']:.1f} MB; growth {slope_mb_per_hour(rows):+.2f} MB/h "
        f"(least squares after minute 1)"
    )
    cpu = [r["cpu"] for r in rows]
    print(f"CPU share: median {statistics.median(cpu):.1%}, max {max(cpu):.1%}")
    print(
        f"recompute (Ledger.report / stress.assess wall time) over {RECOMPUTES[0]:,} "
        f"(reservoir of {len(RECOMPUTE_MS):,}): "
        f"p50 {pct(RECOMPUTE_MS, 0.5):.3f} ms, p99 {pct(RECOMPUTE_MS, 0.99):.3f} ms, "
        f"max {max(RECOMPUTE_MS):.3f} ms"
    )
    t = [r["tasks"] for r in rows]
    s = [r["sockets"] for r in rows]
    f = [r["fds"] for r in rows]
    print(
        f"tasks first/last/max {t[0]:.0f}/{t[-1]:.0f}/{max(t):.0f}; fds {f[0]:.0f}/{f[-1]:.0f}/"
        f"{max(f):.0f}; sockets {s[0]:.0f}/{s[-1]:.0f}/{max(s):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument(
        "--trace", type=int, default=0, metavar="N", help="print N top tracemalloc growths"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
