"""Speed of the pure core: full report, all liquidation prices, shock to liquidation.

Prints the median of several runs for 10 / 100 / 1 000 / 10 000 positions: a full report
(with every liquidation price), the pool totals alone, the liquidation prices (difference),
shock to liquidation, a tick followed by a full report, the incremental path the daemon
takes on every tick (`Ledger.tick` + `Ledger.ratio`, the threshold check), and the daemon's
routine report (a tick, then `Ledger.report`: the same report from the figures the ledger
keeps). Targets (issue 2, 16): a 1 000-position report ≤ 2 ms (aim 1.5 ms); a single-tick
incremental update ≤ 50 µs.

    .venv/bin/python bench/engine.py [--repeat 7] [--sizes 10,100,1000,10000]
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time
from collections.abc import Callable

from monitor.core.margin.ledger import Ledger
from monitor.core.margin.report import report, surplus
from monitor.core.model import AccountSnapshot, Collateral, Position, Tier
from monitor.core.stress import shock_to_liquidation, with_prices

TIERS = (
    Tier(50_000, 0.004, 0),
    Tier(250_000, 0.005, 50),
    Tier(1_000_000, 0.01, 1_300),
    Tier(10_000_000, 0.025, 16_300),
    Tier(math.inf, 0.05, 266_300),
)


def account(n: int, seed: int = 7) -> AccountSnapshot:
    """n cross positions on n symbols, mixed sides, tiered, ~5x account leverage."""
    rng = random.Random(seed)
    positions = []
    notional = 0.0
    for i in range(n):
        price = rng.uniform(1, 50_000)
        size = rng.uniform(1_000, 200_000) / price
        notional += size * price
        positions.append(
            Position(
                symbol=f"S{i}/USDT:USDT",
                side=rng.choice(("long", "short")),
                contracts=size,
                entry_price=price * rng.uniform(0.9, 1.1),
                mark_price=price,
                leverage=20,
                tiers=TIERS,
            )
        )
    return AccountSnapshot(
        "bench", "USDT", (Collateral("USDT", notional / 5),), tuple(positions), venue="binanceusdm"
    )


def median_time(fn: Callable[[], object], repeat: int, min_seconds: float = 0.2) -> float:
    """Median seconds per call over `repeat` batches sized to run ≥ min_seconds/repeat each."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= min_seconds / repeat:
            break
        calls *= 2
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def ticking(
    ledger: Ledger, symbol: str, price: float, then: Callable[[Ledger], object]
) -> Callable[[], object]:
    """A step that moves `symbol`'s mark between `price` and a hair above, then `then`."""
    flip = [price * 1.0001, price]

    def step() -> object:
        flip.reverse()
        ledger.tick(symbol, flip[0])
        return then(ledger)

    return step


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:9.1f} µs"
    return f"{seconds * 1e3:9.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    args = parser.parse_args()
    print(
        f"# {platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}, median of {args.repeat} runs"
    )
    print(
        f"{'positions':>9} | {'report':>12} | {'surplus only':>12} | {'liq. prices':>12} | "
        f"{'shock→liq':>12} | {'tick+report':>12} | {'ledger tick':>12} | {'ledger report':>13}"
    )
    for n in (int(x) for x in args.sizes.split(",")):
        s = account(n)
        full = median_time(lambda s=s: report(s), args.repeat)
        base = median_time(lambda s=s: surplus(s), args.repeat)
        shock = median_time(lambda s=s: shock_to_liquidation(s), max(3, args.repeat // 2))
        symbol = s.positions[0].symbol
        price = s.positions[0].mark_price

        def tick(s: AccountSnapshot = s, symbol: str = symbol, price: float = price) -> object:
            return report(with_prices(s, {symbol: price * 1.0001}))

        update = median_time(tick, args.repeat)
        # the same tick flipping one mark back and forth, then the threshold check (the
        # daemon's every tick) or the full report from the ledger (its routine report)
        incremental = median_time(ticking(Ledger(s), symbol, price, Ledger.ratio), args.repeat)
        routine = median_time(ticking(Ledger(s), symbol, price, Ledger.report), args.repeat)
        print(
            f"{n:>9} | {fmt(full)} | {fmt(base)} | {fmt(full - base)} | {fmt(shock)} | "
            f"{fmt(update)} | {fmt(incremental)} | {fmt(routine):>13}"
        )


if __name__ == "__main__":
    main()
