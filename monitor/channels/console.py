"""The terminal view: a live rich dashboard on a TTY, summary log lines everywhere else.

The live view redraws at a few Hz from the newest report of each account, whatever the tick
rate: reports arrive up to hundreds of times a second, a person reads a couple of frames a
second. Without a terminal (systemd, a pipe, `--no-tui`) the same facts go out as one
structured log line per account every `summary_every` seconds; level changes are logged by
the daemon itself, in both modes.

The screen tells the same story as the alerts (docs/alerts.md): the headline is the worst
ACTIVE alert of any rule (what MQTT and Home Assistant show), read from the alert sink at
each frame, not the margin-ratio level alone; every configured account has a row even
before its first report, with its source state (up, stale, down and why); a last panel
lists the active alerts and the newest protective-action decisions.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor.core.alert_config import RULE_MARGIN, RULE_SHOCK
from monitor.core.alert_state import AlertState
from monitor.core.collateral_risk import describe
from monitor.core.levels import level_rank
from monitor.core.model import (
    AccountSnapshot,
    CollateralRisk,
    Event,
    MarginReport,
    PriceTick,
    ShockToLiquidation,
    SourceDown,
    SourceStale,
    SourceUp,
)
from monitor.sink import Sink

if TYPE_CHECKING:
    from monitor.sources.base import Source

__all__ = ["MODEL_LABELS", "ConsoleSink", "fmt_money", "fmt_move", "fmt_pct", "fmt_price"]

log = structlog.get_logger("monitor.console")

_LEVEL_STYLE = {
    "ok": "green",
    "warning": "yellow",
    "critical": "bold red",
    "emergency": "bold white on red",
}


#: Where the margin ratio comes from, in words (MarginReport.model, docs/collateral.md).
MODEL_LABELS = {
    "cross": "cross margin, computed",
    "venue": "venue figure (portfolio margin; what-ifs are estimates)",
    "estimate": "ESTIMATE: portfolio margin, no venue figure",
}


class AlertView(Protocol):
    """The alert side as the screen reads it (sinks/alerts.py `AlertsSink`)."""

    @property
    def recent_actions(self) -> Sequence[tuple[float, str, str, str]]:
        """The newest protective-action decisions: (at, account, kind, text)."""
        ...

    def active_alerts(self) -> list[AlertState]:
        """Every firing alert, worst first."""
        ...

    def account_level(self, account: str) -> str:
        """The account's worst alert level over all rules."""
        ...


@dataclass
class _View:
    """What the console knows about one account."""

    report: MarginReport | None = None
    shock: ShockToLiquidation | None = None
    collateral: CollateralRisk | None = None
    level: str = "ok"
    events: int = 0
    reports: int = 0
    updated: float = 0.0
    down: str | None = None  # why the source gave up (SourceDown), until data flows again
    stale: dict[str, float] = field(default_factory=dict)  # kind -> silent for (s)

    def source_state(self) -> tuple[str, str]:
        """(`up`/`stale`/`down`/`waiting`, why) for the account row."""
        if self.down is not None:
            return "down", self.down
        if self.stale:
            silent = sorted(self.stale.items())
            return "stale", ", ".join(f"no {kind} for {age:.0f} s" for kind, age in silent)
        if self.report is None:
            return "waiting", "no data yet"
        return "up", ""


class ConsoleSink(Sink):
    """Shows every account's margin state; `live` selects the dashboard over log lines."""

    name = "console"

    def __init__(
        self,
        live: bool,
        refresh_per_second: float = 4.0,
        summary_every: float = 5.0,
        console: Console | None = None,
        accounts: Sequence[str] = (),
        *,
        alerts: AlertView | None = None,
    ) -> None:
        """`console` defaults to rich's stdout console (tests pass a recording one);
        `accounts`: every configured account, shown before (or without) any report;
        `alerts`: the alert side, whose worst active alert heads the screen."""
        self.live = live
        self.refresh_per_second = refresh_per_second
        self.summary_every = summary_every
        self._console = console or Console()
        self._views: dict[str, _View] = {name: _View() for name in accounts}
        self._live: Live | None = None
        self.alerts = alerts

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Start the live view or the summary loop as task `sink[console]`."""
        if self.live:
            self._live = Live(
                self.render(),
                console=self._console,
                refresh_per_second=self.refresh_per_second,
                transient=False,
                redirect_stdout=True,
                redirect_stderr=False,
            )
            self._live.start()
            tg.create_task(self._redraw_forever(), name="sink[console]")
        else:
            tg.create_task(self._summarise_forever(), name="sink[console]")

    def set_accounts(
        self, accounts: Mapping[str, float], sources: Mapping[str, Source] | None = None
    ) -> None:
        """A SIGHUP reload changed the accounts: a row for each new one, none for the gone."""
        del sources
        for name in list(self._views):
            if name not in accounts:
                del self._views[name]
        for name in accounts:
            self._views.setdefault(name, _View())

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        """Keep the newest report (and the newest shock solve, which may be skipped)."""
        view = self._views.setdefault(account, _View())
        view.report = report
        view.reports += 1
        view.updated = now
        if report.shock_to_liquidation is not None:
            view.shock = report.shock_to_liquidation
        if report.collateral_risk is not None:
            view.collateral = report.collateral_risk  # solved with the shock

    async def on_event(self, event: Event) -> None:
        """Count events per account (events vs reports shows the coalescing at work);
        follow the source state from stale, down and up events."""
        view = self._views.get(event.account)
        if view is None:  # not setdefault: that builds a _View per tick (20 000/s)
            view = self._views[event.account] = _View()
        view.events += 1
        if isinstance(event, SourceStale):
            view.stale[event.kind] = event.age
        elif isinstance(event, SourceDown):
            view.down = event.reason
        elif isinstance(event, SourceUp):
            view.stale.pop(event.kind, None)
            view.down = None

    def on_tick(self, tick: PriceTick) -> None:
        """Count a tick as `on_event` would, without a coroutine per tick (monitor/sink.py)."""
        view = self._views.get(tick.account)
        if view is None:
            view = self._views[tick.account] = _View()
        view.events += 1

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        """Colour the account by its level."""
        self._views.setdefault(account, _View()).level = level

    async def close(self) -> None:
        """Leave the last frame on screen, or write one last summary."""
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None
        elif not self.live:
            self.summarise()

    # --- rendering ---------------------------------------------------------------------------

    async def _redraw_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0 / self.refresh_per_second)
            if self._live is not None:
                self._live.update(self.render())

    async def _summarise_forever(self) -> None:
        while True:
            await asyncio.sleep(self.summary_every)
            self.summarise()

    def summarise(self) -> None:
        """One log line per account with its headline figures."""
        for account, view in sorted(self._views.items()):
            r = view.report
            if r is None:
                continue
            log.info(
                "account summary",
                account=account,
                alert_level=self._level(account, view),
                margin_ratio=_num(r.margin_ratio),
                model=r.model,
                margin_balance=round(r.margin_balance, 2),
                free_collateral=round(r.free_collateral, 2),
                shock_down=None if view.shock is None else _num(view.shock.down),
                shock_up=None if view.shock is None else _num(view.shock.up),
                positions=len(r.positions),
                events=view.events,
                reports=view.reports,
            )

    def _level(self, account: str, view: _View) -> str:
        """The account's worst alert level over all rules; the ratio level without alerts."""
        return view.level if self.alerts is None else self.alerts.account_level(account)

    def headline(self) -> Text:
        """The worst active alert of any rule and account (or the ratio levels, no alerts)."""
        if self.alerts is not None:
            active = self.alerts.active_alerts()
            if not active:
                return Text("OK  no active alert", style=_LEVEL_STYLE["ok"])
            worst = active[0]
            more = f"  (+{len(active) - 1} more active)" if len(active) > 1 else ""
            return Text(
                f"{worst.level.upper()}  {_alert_line(worst)}{more}",
                style=_LEVEL_STYLE.get(worst.level, ""),
            )
        worst_view = max(self._views.items(), key=lambda kv: level_rank(kv[1].level), default=None)
        if worst_view is None or worst_view[1].level == "ok":
            return Text("OK", style=_LEVEL_STYLE["ok"])
        account, view = worst_view
        return Text(
            f"{view.level.upper()}  {account}: margin ratio", style=_LEVEL_STYLE.get(view.level, "")
        )

    def render(self) -> Group:
        """The dashboard: headline, one panel per account, active alerts and actions."""
        parts: list[Table | Text | Panel] = [self.headline()]
        if not self._views:
            parts.append(Text("waiting for the first report ...", style="dim"))
        for account, view in sorted(self._views.items()):
            view.level = self._level(account, view)
            r = view.report
            if r is None:
                state, why = view.source_state()
                parts.append(
                    Text(
                        f"{account}  {view.level.upper()}  source {state}: {why}",
                        style=_LEVEL_STYLE.get(view.level, ""),
                    )
                )
                continue
            parts.append(_summary_table(account, view, r))
            parts.append(_positions_table(r))
        if self.alerts is not None:
            parts.append(_alerts_panel(self.alerts))
        return Group(*parts)


def _alert_line(a: AlertState) -> str:
    """`demo: shock to liquidation 1.1 %`: account, what fired, its value."""
    what = a.rule.replace("_", " ")
    if a.value is None or a.rule not in (RULE_MARGIN, RULE_SHOCK):
        return f"{a.account}: {what}" + (f" ({a.detail[:60]})" if a.detail else "")
    value = "inf" if math.isinf(a.value) else f"{a.value:.1%}"
    return f"{a.account}: {what} {value}"


def _alerts_panel(alerts: AlertView) -> Panel:
    """Active alerts (worst first, with how long) and the newest protective actions."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column()
    table.add_column()
    active = alerts.active_alerts()
    for a in active:
        since = time.strftime("%H:%M:%S", time.localtime(a.started_at))
        table.add_row(
            Text(a.level.upper(), style=_LEVEL_STYLE.get(a.level, "")),
            f"{_alert_line(a)}, since {since}",
        )
    if not active:
        table.add_row(Text("OK", style=_LEVEL_STYLE["ok"]), "no active alert")
    actions = list(alerts.recent_actions)
    for at, account, kind, text in reversed(actions):
        stamp = time.strftime("%H:%M:%S", time.localtime(at))
        table.add_row(Text(f"action {kind}", style="cyan"), f"{stamp} {account}: {text}")
    if not actions:
        table.add_row(Text("actions", style="dim"), "no protective action taken or planned")
    return Panel(table, title="active alerts and last protective actions", title_align="left")


def _summary_table(account: str, view: _View, r: MarginReport) -> Table:
    style = _LEVEL_STYLE.get(view.level, "")
    state, why = view.source_state()
    source = f"  source {state}" + (f": {why}" if why else "")
    table = Table(
        title=Text(f"{account}  {view.level.upper()}{source}", style=style),
        show_header=False,
        box=None,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row(
        "margin ratio",
        Text(fmt_pct(r.margin_ratio), style=style),
        f"margin balance ({r.currency})",
        fmt_money(r.margin_balance),
    )
    table.add_row("model", MODEL_LABELS[r.model], "", "")
    for line in describe(view.collateral) if view.collateral is not None else []:
        table.add_row("collateral", line, "", "")
    table.add_row(
        "maintenance margin",
        fmt_money(r.maintenance_margin),
        "free collateral",
        fmt_money(r.free_collateral),
    )
    table.add_row(
        "shock to liq. down",
        fmt_move(None if view.shock is None else view.shock.down),
        "shock to liq. up",
        fmt_move(None if view.shock is None else view.shock.up),
    )
    table.add_row("events", str(view.events), "recomputes", str(view.reports))
    return table


def _positions_table(r: MarginReport) -> Table:
    table = Table(box=None, pad_edge=False)
    for name in ("symbol", "side", "size", "mark", "liq. price", "uPnL", "MM"):
        table.add_column(name, justify="left" if name in ("symbol", "side") else "right")
    for p in r.positions:
        table.add_row(
            p.symbol,
            p.side if p.margin_mode == "cross" else f"{p.side} (isolated)",
            f"{p.contracts:g}",
            fmt_price(p.mark_price),
            fmt_price(p.liquidation_price),
            fmt_money(p.unrealized_pnl),
            fmt_money(p.maintenance_margin),
        )
    return table


def _num(value: float | None) -> float | str | None:
    if value is None:
        return None
    return "inf" if math.isinf(value) else round(value, 6)


def fmt_pct(value: float) -> str:
    """A ratio as a percentage, `inf` when the balance is gone (the console and `report`)."""
    return "inf" if math.isinf(value) else f"{value:.2%}"


def fmt_move(value: float | None) -> str:
    """A signed relative price move, `none` where no move liquidates."""
    return "none" if value is None else f"{value:+.2%}"


def fmt_money(value: float) -> str:
    """A money figure with thousands separators and cents."""
    return f"{value:,.2f}"


def fmt_price(value: float | None) -> str:
    """A price: six significant digits below 1, cents above; `none` / `inf` where none is."""
    if value is None:
        return "none"
    if math.isinf(value):
        return "inf"
    return f"{value:,.6g}" if value < 1 else f"{value:,.2f}"
