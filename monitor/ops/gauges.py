"""The per-account gauges of `/metrics`, built from the metrics sink's state at each scrape.

Computed on scrape, not set on events: a removed account (SIGHUP reload) simply disappears,
and "data age" is the age *now*, not when the last event happened to set a gauge
(ops/metrics.py `MetricsSink` keeps the state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor import __version__
from monitor.core.levels import level_rank

if TYPE_CHECKING:
    from monitor.ops.metrics import Drift, MetricsSink

__all__ = ["AccountCollector"]

log = structlog.get_logger("monitor.metrics")


class AccountCollector(Collector):
    """Builds the per-account families from the sink's state at each scrape."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink

    def describe(self) -> Iterable[Metric]:
        # Empty: names are only known per scrape; describing nothing skips the registry's
        # duplicate check, which cannot collide because every name here is ours.
        return ()

    def collect(self) -> Iterator[Metric]:
        sink = self.sink
        now = sink.clock()
        g = _Families()
        for name, health in sorted(sink.accounts.items()):
            reason = health.blind_reason(now)
            g.add(
                "fresh",
                "1 while the account's data is fresh, 0 while blind.",
                ["account"],
                [name],
                0.0 if reason else 1.0,
            )
            for kind, at in sorted(health.seen.items()):
                g.add(
                    "data_age_seconds",
                    "Seconds since the last data of each kind arrived.",
                    ["account", "kind"],
                    [name, kind],
                    max(0.0, now - at),
                )
            g.add(
                "level",
                "Alert level on the margin ratio: 0 ok, 1 warning, 2 critical, 3 emergency.",
                ["account"],
                [name],
                float(level_rank(health.level)),
            )
            drift = sink.drift.get(name)
            value = _safe(drift)
            if value is not None:
                g.add(
                    "venue_drift_ratio",
                    "Our margin ratio minus the venue's own figure from "
                    "the same read (0 when our model of the venue is right).",
                    ["account"],
                    [name],
                    value,
                )
            report = health.report
            if report is None:
                continue
            cur = [name, report.currency]
            g.add(
                "margin_ratio",
                "Maintenance margin / margin balance (1 = liquidation; "
                "+Inf when the balance is gone): the figure alerts and actions use "
                "(settings ratio_source).",
                ["account"],
                [name],
                report.margin_ratio,
            )
            model = report.margin_ratio if report.model_ratio is None else report.model_ratio
            g.add("model_margin_ratio", "Our model's margin ratio.", ["account"], [name], model)
            if report.venue_ratio is not None:
                g.add(
                    "venue_margin_ratio",
                    "The venue's own margin ratio from its last read, "
                    "carried forward by our model's change since.",
                    ["account"],
                    [name],
                    report.venue_ratio,
                )
            g.add(
                "margin_balance",
                "Collateral value plus unrealised PnL, in the report currency.",
                ["account", "currency"],
                cur,
                report.margin_balance,
            )
            g.add(
                "maintenance_margin",
                "Maintenance margin of the cross pool.",
                ["account", "currency"],
                cur,
                report.maintenance_margin,
            )
            g.add(
                "free_collateral",
                "Margin balance minus total initial margin.",
                ["account", "currency"],
                cur,
                report.free_collateral,
            )
            g.add("positions", "Open positions.", ["account"], [name], float(len(report.positions)))
            if health.shock is not None:
                for direction, move in zip(("down", "up"), health.shock, strict=True):
                    if move is not None:
                        g.add(
                            "shock_to_liquidation",
                            "Smallest uniform relative move of all "
                            "prices that liquidates (down < 0 < up); absent if none does.",
                            ["account", "direction"],
                            [name, direction],
                            move,
                        )
        if sink.outbox_depth is not None:
            depth = _safe_depth(sink.outbox_depth)
            for sink_name in sorted(depth):
                g.add(
                    "outbox_depth",
                    "Alert messages queued for delivery, per sink.",
                    ["sink"],
                    [sink_name],
                    float(depth[sink_name]),
                )
        g.add("build_info", "Version of the running daemon.", ["version"], [__version__], 1.0)
        if sink.shard is not None:
            g.add(
                "shards",
                "N of --shard K/N, labelled with this process's K: fewer series "
                "than the value means a shard runs nowhere.",
                ["shard"],
                [str(sink.shard[0])],
                float(sink.shard[1]),
            )
        yield from g.families()


class _Families:
    """Gauge families by name, created on first use so an empty one is never exported."""

    def __init__(self) -> None:
        self._by_name: dict[str, GaugeMetricFamily] = {}

    def add(
        self, name: str, doc: str, labels: Sequence[str], values: Sequence[str], value: float
    ) -> None:
        family = self._by_name.get(name)
        if family is None:
            family = GaugeMetricFamily(f"margin_monitor_{name}", doc, labels=list(labels))
            self._by_name[name] = family
        family.add_metric(list(values), value)

    def families(self) -> Iterator[GaugeMetricFamily]:
        yield from self._by_name.values()


def _safe(drift: Drift | None) -> float | None:
    if drift is None:
        return None
    try:
        value = drift()
    except Exception:  # a scrape must never fail because one source misbehaves
        return None
    return value if value is not None and not math.isnan(value) else None


def _safe_depth(depth: Callable[[], Mapping[str, int]]) -> Mapping[str, int]:
    try:
        return depth()
    except Exception as exc:  # the store may be closed during shutdown
        log.warning("outbox depth unavailable", error=str(exc))
        return {}
