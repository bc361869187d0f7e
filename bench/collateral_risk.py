"""Cost of the collateral-risk solve (issue 12) next to the shock solve it rides with.

`stress.assess` (what the daemon runs at the shock budget's pace) now also solves, per
non-stable collateral asset, the fall of that asset alone that liquidates. Prints the median
time of `shock_to_liquidation`, `collateral_risk` and the whole `assess` for accounts of
10 / 100 / 1 000 positions holding USDT plus BTC, ETH and SOL collateral (haircut 5-10 %,
one banded), so the extra share of the shock budget is visible.

    .venv/bin/python bench/collateral_risk.py [--repeat 7] [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import account, fmt, median_time
from monitor.collateral_risk import collateral_risk
from monitor.margin import report
from monitor.model import AccountSnapshot, Collateral, CollateralTier, Position
from monitor.stress import assess, shock_to_liquidation


def collateralised(n: int) -> AccountSnapshot:
    """The engine bench's account with a BTC position and BTC/ETH/SOL collateral."""
    base = account(n)
    wallet = base.collateral[0].amount
    btc = Position("BTC/USDT:USDT", "long", wallet / 60_000, 62_000.0, 60_000.0, leverage=10,
                   tiers=base.positions[0].tiers)
    collateral = (
        Collateral("USDT", wallet * 0.4),
        Collateral("BTC", wallet * 0.3 / 60_000, 60_000.0, haircut=0.05, liability_markup=0.05),
        Collateral("ETH", wallet * 0.2 / 3_000, 3_000.0, haircut=0.1),
        Collateral("SOL", wallet * 0.1 / 150, 150.0, haircut_tiers=(
            CollateralTier(1_000.0, 0.9), CollateralTier(float("inf"), 0.7))),
    )
    return replace(base, collateral=collateral, positions=(*base.positions, btc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    print(f"# {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.machine()}, median of {args.repeat} runs; 3 non-stable collateral assets")
    print(f"{'positions':>9} | {'shock→liq':>12} | {'collateral':>12} | {'assess':>12} | "
          f"{'collateral / shock':>18}")
    for n in (int(x) for x in args.sizes.split(",")):
        s = collateralised(n)
        balance = report(s).margin_balance
        shock = median_time(lambda s=s: shock_to_liquidation(s), max(3, args.repeat // 2))
        risk = median_time(lambda s=s, b=balance: collateral_risk(s, b),
                           max(3, args.repeat // 2))
        whole = median_time(lambda s=s: assess(s), max(3, args.repeat // 2))
        print(f"{n + 1:>9} | {fmt(shock)} | {fmt(risk)} | {fmt(whole)} | "
              f"{risk / shock:>17.2f}x")


if __name__ == "__main__":
    main()
