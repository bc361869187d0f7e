"""Wiring: the sources and the sinks of a configuration, built the one way `run` builds them.

Benchmarks and end-to-end tests build through these factories too (bench/product.py), so
what they measure is what `margin-monitor run` runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from monitor.alerts.sink import build_alerts_sink
from monitor.channels.console import ConsoleSink
from monitor.config.settings import AccountSettings, Settings
from monitor.errors import UserError
from monitor.protect.notes import ActionNotes
from monitor.protect.sink import action_ratio, build_actions_sink
from monitor.sink import Sink
from monitor.sources.base import Source
from monitor.sources.sim import SimVenue
from monitor.sources.sim_prices import ReplayStep

__all__ = ["action_ratios", "build_sinks", "open_source"]


def open_source(
    account: AccountSettings,
    replay: Sequence[ReplayStep] | None = None,
    state_dir: Path | None = None,
) -> Source:
    """The source of one configured account (the sim, or a live ccxt account); `state_dir`
    keeps the venue's collateral rules across restarts (docs/collateral.md)."""
    if account.is_sim:
        return SimVenue(account.name, account.sim, replay=replay)
    try:
        from monitor.sources.exchange import ExchangeSource  # noqa: PLC0415 - ccxt.pro is heavy
    except ImportError as exc:  # pragma: no cover - a build without ccxt.pro
        raise UserError(
            f"accounts.{account.name}: live exchanges are not available in this build ({exc})"
        ) from None
    source: Source = ExchangeSource(account, state_dir=state_dir)
    return source


def build_sinks(
    settings: Settings,
    tui: bool,
    sources: Mapping[str, Source] | None = None,
    *,
    shard: tuple[int, int] | None = None,
) -> list[Sink]:
    """Every consumer of reports: console, alerts, actions, metrics (docs/ has a page for each).

    `sources` maps account names to their sources: the order desks (protect/desk.py
    `OrderDesk`) that protective actions trade through; empty for `check`. `shard`: (K, N)
    under `--shard K/N`, exported by the metrics sink (docs/kubernetes.md).
    """
    # Alerts show the action state (`notes.note`) and protective actions audit and alert
    # through the alert side: the notes are built first and handed to both (protect/notes.py).
    notes = ActionNotes()
    alerts = build_alerts_sink(
        settings.state_dir,
        settings.alerts.to_config(),
        settings.mqtt,
        settings.notify,
        action_note=notes.note,
        accounts=[a.name for a in settings.accounts],
    )
    actions = build_actions_sink(settings, sources, alerts, notes)  # docs/actions.md
    # the screen's headline is the worst active alert (docs/alerts.md)
    console = ConsoleSink(
        live=tui,
        accounts=[a.name for a in settings.accounts if sources is None or a.name in sources],
        alerts=alerts,
    )
    sinks: list[Sink] = [console]
    if actions is not None:
        # before the alerts: an alert then carries the action state of its own report
        sinks.append(actions)
    sinks.append(alerts)
    if settings.metrics.enabled or settings.heartbeat.url is not None:
        # docs/monitoring.md: Prometheus /metrics and /healthz; the heartbeat pings only while the
        # metrics sink's freshness says every account is seen (it tracks it either way)
        from monitor.ops.heartbeat import HeartbeatSink  # noqa: PLC0415
        from monitor.ops.metrics import build_metrics_sink  # noqa: PLC0415

        watched = {
            a.name: a.stale_after for a in settings.accounts if sources is None or a.name in sources
        }
        status = None
        if settings.metrics.status_page:
            from monitor.channels.web import StatusSink  # noqa: PLC0415 - docs/status-page.md

            # on the metrics listener, with the metrics sink's freshness (built next)
            status = StatusSink(watched, lambda: health.blind(), lambda: alerts.pipeline)  # noqa: PLW0108
        health = build_metrics_sink(
            settings.metrics,
            watched,
            sources,
            shard=shard,
            outbox=lambda: alerts.pipeline.store.pending(),  # noqa: PLW0108 - store opens late
            protection=actions.protection_disabled if actions is not None else None,
            routes=[status.install] if status is not None else [],
        )
        sinks.append(health)
        if status is not None:
            sinks.append(status)
        if settings.heartbeat.url is not None:
            sinks.append(HeartbeatSink(settings.heartbeat, health.blind))
    return sinks


def action_ratios(settings: Settings, account: str) -> tuple[float, ...]:
    """The ratio at which protective actions step in, if they cover `account`: crossing it
    must reach the actions sink at once, like an alert threshold (docs/benchmarks.md)."""
    if not settings.actions.covers(account):
        return ()
    return (action_ratio(settings),)
