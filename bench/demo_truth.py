"""The demo's protective story, judged against the sim's own book (issue 11 "Done when").

    .venv/bin/python bench/demo_truth.py [--runs 20] [--speed 20]

Each run plays the built-in sell-off (`margin-monitor run` with no configuration: the sim
account `demo`, actions simulated on the sim) through the same factories as `run`
(`load_settings`, then `assemble` and `Daemon.run`: bench/product.py), in a temporary
state directory, at `--speed` sim seconds per wall second. The sim instance records its
own margin ratio after every change of its book (each mark, each fill). Printed per run and
in total:

- impossible: reports whose margin ratio is no ratio the sim's book ever had (1e-9 relative);
- false resolved: level changes down to a lower level while the sim's ratio at that moment was
  still at or above the exit of the level left (its threshold minus the hysteresis band);
- steps: protective fills, and the sim's own ratio right after each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.product import build
from monitor.core.margin import report as margin
from monitor.core.model import AccountSnapshot, MarginReport
from monitor.sink import Sink
from monitor.sources.sim import SimVenue

REL = 1e-9


class Judge(Sink):
    """A sink holding each report and level change against the sim's history."""

    name = "judge"

    def __init__(self, venue: SimVenue, band: float, thresholds: dict[str, float]) -> None:
        self.venue = venue
        self.band = band
        self.thresholds = thresholds
        self.history: list[float] = [self.truth()]
        self.reports = 0
        self.impossible: list[float] = []
        self.false_resolved: list[tuple[str, str, float]] = []
        self.after_fills: list[float] = []

    def truth(self) -> float:
        return margin.report(self.venue.snapshot()).margin_ratio

    def had(self, ratio: float) -> bool:
        return any(abs(ratio - h) <= REL * abs(h) or ratio == h for h in self.history)

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        self.reports += 1
        ratio = report.margin_ratio if report.model_ratio is None else report.model_ratio
        if not self.had(ratio):
            self.impossible.append(ratio)

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        left = self.thresholds.get(previous)
        if left is None or level == previous:
            return
        order = ["ok", "warning", "critical", "emergency"]
        if order.index(level) < order.index(previous) and self.truth() >= left - self.band:
            self.false_resolved.append((previous, level, self.truth()))


def watch(venue: SimVenue, judge: Judge) -> None:
    """Record the sim's ratio after each of its own changes (a mark, a fill)."""
    set_mark, fill = venue._set_mark, venue._fill

    def on_mark(symbol: str, price: float) -> None:
        set_mark(symbol, price)
        judge.history.append(judge.truth())

    def on_fill(order: dict[str, Any], now: float) -> None:
        fill(order, now)
        judge.history.append(judge.truth())
        judge.after_fills.append(judge.history[-1])

    venue._set_mark = on_mark  # type: ignore[method-assign]
    venue._fill = on_fill  # type: ignore[method-assign]


async def one_run(speed: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        # the built-in demo, written as a file and built as `margin-monitor run` builds it
        product = build(
            Path(tmp), {"accounts": [{"name": "demo", "exchange": "sim", "sim": {"speed": speed}}]}
        )
        settings = product.settings
        account = settings.accounts[0]
        source = product.source(account.name)
        assert isinstance(source, SimVenue)
        alerts = settings.alerts
        judge = Judge(
            source,
            alerts.band,
            {"warning": alerts.warning, "critical": alerts.critical, "emergency": alerts.emergency},
        )
        watch(source, judge)
        duration = source.keyframes_duration / speed + 1.0
        await product.run(extra_sinks=[judge], duration=duration)
        return {
            "reports": judge.reports,
            "impossible": len(judge.impossible),
            "false_resolved": len(judge.false_resolved),
            "steps": source.fills,
            "after": judge.after_fills,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--speed", type=float, default=20.0)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    totals = {"reports": 0, "impossible": 0, "false_resolved": 0, "steps": 0}
    for run in range(1, args.runs + 1):
        result = asyncio.run(one_run(args.speed))
        for key in totals:
            totals[key] += result[key]
        print(
            f"run {run:2d}: reports {result['reports']:4d}  impossible {result['impossible']}"
            f"  false resolved {result['false_resolved']}  steps {result['steps']}"
            f"  sim ratio after each step {[round(r, 4) for r in result['after']]}",
            flush=True,
        )
    print(f"total over {args.runs} runs: {totals}")


if __name__ == "__main__":
    main()
