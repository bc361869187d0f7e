"""What `margin-monitor run` runs: one configuration's sources and sinks, built in one place.

`run` (cli/run.py) and every benchmark (bench/product.py) build the daemon here, so a
benchmark measures the sources, sinks and options `run` ships rather than a copy of their
wiring: a copy had drifted (the benchmarks opened their sources without the state
directory that keeps a venue's collateral rules, issue 16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.config.settings import AccountSettings, Settings
from monitor.daemon.loop import AccountLoop, ShockSolver
from monitor.daemon.supervisor import run_daemon
from monitor.daemon.wiring import build_sinks, open_source
from monitor.ops.sdnotify import Notifier
from monitor.sink import Sink
from monitor.sources.base import Source
from monitor.sources.sim_prices import ReplayStep

__all__ = ["Daemon", "assemble"]


@dataclass(frozen=True, slots=True)
class Daemon:
    """The accounts to watch, their sources and the sinks, ready to `run`."""

    settings: Settings
    accounts: tuple[AccountSettings, ...]
    sources: tuple[Source, ...]
    sinks: tuple[Sink, ...]
    replay: Sequence[ReplayStep] | None = None

    async def run(
        self,
        *,
        extra_sinks: Sequence[Sink] = (),
        duration: float | None = None,
        handle_signals: bool = True,
        notifier: Notifier | None = None,
        reload: Callable[[], Sequence[AccountSettings]] | None = None,
        received: list[int] | None = None,
        shocks: ShockSolver | None = None,
    ) -> list[AccountLoop]:
        """`run_daemon` on this assembly; `extra_sinks` come after the product's (a
        benchmark's probe sees a report after every real sink has)."""
        return await run_daemon(
            self.settings,
            self.accounts,
            [*self.sinks, *extra_sinks],
            duration=duration,
            replay=self.replay,
            sources=self.sources,
            handle_signals=handle_signals,
            notifier=notifier,
            reload=reload,
            received=received,
            shocks=shocks,
        )


def assemble(
    settings: Settings,
    accounts: Sequence[AccountSettings] | None = None,
    *,
    replay: Sequence[ReplayStep] | None = None,
    tui: bool = False,
    shard: tuple[int, int] | None = None,
    sources: Sequence[Source] | None = None,
) -> Daemon:
    """Open a source per account (default: every configured one) and build the sinks.

    `sources` stands in for the venues (a benchmark's in-process load generator); `shard`
    is exported by the metrics sink (docs/kubernetes.md).
    """
    chosen = tuple(settings.accounts if accounts is None else accounts)
    opened = (
        tuple(sources)
        if sources is not None
        else tuple(open_source(a, replay, settings.state_dir) for a in chosen)
    )
    sinks = build_sinks(settings, tui, {s.account: s for s in opened}, shard=shard)
    return Daemon(settings, chosen, opened, tuple(sinks), replay)
