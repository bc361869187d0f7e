"""The terminal view: a live rich dashboard on a TTY, summary log lines everywhere else.

The live view redraws at a few Hz from the newest report of each account, whatever the tick
rate: reports arrive up to hundreds of times a second, a person reads a couple of frames a
second. Without a terminal (systemd, a pipe, `--no-tui`) the same facts go out as one
structured log line per account every `summary_every` seconds; level changes are logged by
the daemon itself, in both modes.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from monitor.collateral_risk import describe
from monitor.model import (
    AccountSnapshot,
    CollateralRisk,
    Event,
    MarginReport,
    ShockToLiquidation,
)

__all__ = ["ConsoleSink"]

log = structlog.get_logger("monitor.console")

_LEVEL_STYLE = {
    "ok": "green",
    "warning": "yellow",
    "critical": "bold red",
    "emergency": "bold white on red",
}


#: Where the margin ratio comes from, in words (MarginReport.model, issue 12).
MODEL_LABELS = {
    "cross": "cross margin, computed",
    "venue": "venue figure (portfolio margin; what-ifs are estimates)",
    "estimate": "ESTIMATE: portfolio margin, no venue figure",
}


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


class ConsoleSink:
    """Shows every account's margin state; `live` selects the dashboard over log lines."""

    name = "console"

    def __init__(
        self,
        live: bool,
        refresh_per_second: float = 4.0,
        summary_every: float = 5.0,
        console: Console | None = None,
    ) -> None:
        """`console` defaults to rich's stdout console (tests pass a recording one)."""
        self.live = live
        self.refresh_per_second = refresh_per_second
        self.summary_every = summary_every
        self._console = console or Console()
        self._views: dict[str, _View] = {}
        self._live: Live | None = None

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
        """Count events per account (events vs reports shows the coalescing at work)."""
        self._views.setdefault(event.account, _View()).events += 1

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
                alert_level=view.level,
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

    def render(self) -> Group:
        """The dashboard: one panel per account."""
        parts: list[Table | Text] = []
        if not self._views:
            parts.append(Text("waiting for the first report ...", style="dim"))
        for account, view in sorted(self._views.items()):
            r = view.report
            if r is None:
                continue
            parts.append(_summary_table(account, view, r))
            parts.append(_positions_table(r))
        return Group(*parts)


def _summary_table(account: str, view: _View, r: MarginReport) -> Table:
    style = _LEVEL_STYLE.get(view.level, "")
    table = Table(
        title=Text(f"{account}  {view.level.upper()}", style=style),
        show_header=False,
        box=None,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row(
        "margin ratio", Text(_pct(r.margin_ratio), style=style),
        f"margin balance ({r.currency})", _money(r.margin_balance),
    )  # fmt: skip
    table.add_row("model", MODEL_LABELS[r.model], "", "")
    for line in describe(view.collateral) if view.collateral is not None else []:
        table.add_row("collateral", line, "", "")
    table.add_row(
        "maintenance margin", _money(r.maintenance_margin),
        "free collateral", _money(r.free_collateral),
    )  # fmt: skip
    table.add_row(
        "shock to liq. down", _shock(None if view.shock is None else view.shock.down),
        "shock to liq. up", _shock(None if view.shock is None else view.shock.up),
    )  # fmt: skip
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
            _price(p.mark_price),
            _price(p.liquidation_price),
            _money(p.unrealized_pnl),
            _money(p.maintenance_margin),
        )
    return table


def _num(value: float | None) -> float | str | None:
    if value is None:
        return None
    return "inf" if math.isinf(value) else round(value, 6)


def _pct(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2%}"


def _shock(value: float | None) -> str:
    return "none" if value is None else f"{value:+.2%}"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _price(value: float | None) -> str:
    if value is None:
        return "none"
    if math.isinf(value):
        return "inf"
    return f"{value:,.6g}" if value < 1 else f"{value:,.2f}"
