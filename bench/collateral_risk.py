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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import account, fmt, median_time
from monitor.core.collateral_risk import collateral_risk
from monitor.core.margin.report import report
from monitor.core.model import AccountSnapshot, Collateral, CollateralTier, Position
from monitor.core.stress import assess, shock_to_liquidation


def collateralised(n: int) -> AccountSnapshot:
    """The engine bench's account with a BTC position and BTC/ETH/SOL collateral."""
    base = account(n)
    wallet = base.collateral[0].amount
    btc = Position(
        "BTC/USDT:USDT",
        "long",
        wallet / 60_000,
        62_000.0,
        60_000.0,
        leverage=10,
        tiers=base.positions[0].tiers,
    )
    collateral = (
        Collateral("USDT", wallet * 0.4),
        Collateral("BTC", wallet * 0.3 / 60_000, 60_000.0, haircut=0.05, liability_markup=0.05),
        Collateral("ETH", wallet * 0.2 / 3_000, 3_000.0, haircut=0.1),
        Collateral(
            "SOL",
            wallet * 0.1 / 150,
            150.0,
            haircut_tiers=(CollateralTier(1_000.0, 0.9), CollateralTier(float("inf"), 0.7)),
        ),
    )
    return replace(base, collateral=collateral, positions=(*base.positions, btc))


#: (column, what is timed) for an account and its margin balance
COLUMNS: tuple[tuple[str, Callable[[AccountSnapshot, float], object]], ...] = (
    ("shock→liq", lambda s, _b: shock_to_liquidation(s)),
    ("collateral", collateral_risk),
    ("assess", lambda s, _b: assess(s)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    runs = max(3, args.repeat // 2)
    title = f"{platform.python_implementation()} {platform.python_version()}"
    print(
        f"# {title} on {platform.machine()}, median of {runs} runs; 3 non-stable collateral assets"
    )
    print(
        " | ".join(
            [
                f"{'positions':>9}",
                *(f"{name:>12}" for name, _ in COLUMNS),
                f"{'collateral / shock':>18}",
            ]
        )
    )
    for size in map(int, args.sizes.split(",")):
        account_ = collateralised(size)
        balance = report(account_).margin_balance
        times = [median_time(lambda f=f, a=account_, b=balance: f(a, b), runs) for _, f in COLUMNS]
        print(
            " | ".join(
                [f"{size + 1:>9}", *(fmt(t) for t in times), f"{times[1] / times[0]:>17.2f}x"]
            )
        )


if __name__ == "__main__":
    main()
