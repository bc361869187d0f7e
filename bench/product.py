"""The product as `margin-monitor run` builds it, for benchmarks (issue 16).

A benchmark that does not run what ships is not a measurement of the product: issue 16
found the tick -> order figure measured with ccxt's rate limiter off while the daemon always
turns it on. So every benchmark writes a TOML configuration, loads it with the same
`load_settings` as `run`, and gets its sources (`open_source` -> `build_exchange`: ccxt
options, request budget, credentials, the state directory) and sinks (`build_sinks`:
console, alerts with the SQLite store and MQTT, actions with the executor, metrics) from
`monitor.daemon.assembly.assemble`, the function `run` calls, and runs them through its
`Daemon.run`. Only URLs point at the loopback fakes (`FakeBinanceUsdm.urls_config`).
`tests/test_bench_product.py` fails if a bench script constructs ccxt, a sink, a store or
settings by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.config.settings import AccountSettings, Settings, load_settings
from monitor.daemon.assembly import Daemon, assemble
from monitor.daemon.loop import AccountLoop
from monitor.daemon.wiring import open_source
from monitor.sink import Sink
from monitor.sources.base import Source
from tests.faults.fuzz_targets import to_toml

__all__ = ["Product", "binance_account", "build", "write_config"]


class Product:
    """Settings, sources and sinks of one configuration file, built by `run`'s own
    `assemble` (monitor/daemon/assembly.py); `run` runs them as `margin-monitor run` does."""

    def __init__(
        self, path: Path, *, sinks: bool = True, sources: Sequence[Source] | None = None
    ) -> None:
        self.path = path
        self.settings: Settings = load_settings(path)
        # `sources` stands in for the venue of an in-process load generator (throughput):
        # no ccxt there, the venue is the fake itself
        self.daemon: Daemon | None = None
        if sinks:
            self.daemon = assemble(self.settings, sources=sources)
            self.sources: list[Source] = list(self.daemon.sources)
        else:  # the product's own sources, used bare (a poller's or a floor's ccxt instance)
            self.sources = (
                list(sources)
                if sources is not None
                else [open_source(a, None, self.settings.state_dir) for a in self.accounts]
            )

    @property
    def accounts(self) -> list[AccountSettings]:
        return list(self.settings.accounts)

    @property
    def sinks(self) -> list[Sink]:
        return [] if self.daemon is None else list(self.daemon.sinks)

    async def run(self, *, extra_sinks: Sequence[Sink] = (), **options: Any) -> list[AccountLoop]:
        """The daemon as `run` runs it, without taking the process's signals; `extra_sinks`
        (a probe) come after the product's."""
        assert self.daemon is not None, "built with sinks=False: nothing to run"
        options.setdefault("handle_signals", False)
        return await self.daemon.run(extra_sinks=extra_sinks, **options)

    def sink(self, name: str) -> Any:
        """The sink called `name` (alerts, actions, console, metrics)."""
        return next(s for s in self.sinks if s.name == name)

    def source(self, account: str) -> Any:
        return next(s for s in self.sources if s.account == account)


def build(
    directory: Path,
    doc: Mapping[str, Any],
    *,
    sinks: bool = True,
    sources: Sequence[Source] | None = None,
) -> Product:
    """Write `doc` as `<directory>/config.toml` and build the product from that file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_config(directory / "config.toml", {"state_dir": str(directory / "state"), **doc})
    return Product(path, sinks=sinks, sources=sources)


def write_config(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write `doc` as the TOML file `margin-monitor run --config` reads (for a bench that runs
    the real process, not the in-process product)."""
    path.write_text(to_toml(dict(doc)))
    return path


def binance_account(
    fake: Any, key: str, secret: str, name: str = "main", **fields: Any
) -> dict[str, Any]:
    """An `[[accounts]]` entry for a running fake Binance: the URLs are all that differ."""
    return {
        "name": name,
        "exchange": "binanceusdm",
        "api_key": key,
        "secret": secret,
        "ccxt": fake.urls_config(),
        **fields,
    }
