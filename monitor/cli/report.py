"""`margin-monitor report` and `margin-monitor stress`: the pure core on a snapshot file.

These are the commands a trader runs before a sell-off ("what if BTC falls to support?") and
the ones a bug report reproduces with; they never touch the network.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from monitor.channels.console import MODEL_LABELS, fmt_money, fmt_move, fmt_pct, fmt_price
from monitor.core.collateral_risk import describe
from monitor.core.model import AccountSnapshot, MarginReport, ShockToLiquidation
from monitor.core.stress import assess, shock_to_liquidation, shocked, with_prices
from monitor.errors import UserError
from monitor.report_json import report_to_dict, shock_to_dict
from monitor.snapshot import load_snapshot

__all__ = ["parse_price", "parse_shock", "report_command", "stress_command"]

_SHOCK = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_shock(text: str) -> float:
    """`-10%` or `-0.1` → −0.1; a move below −100 % is refused (prices cannot go negative)."""
    match = _SHOCK.match(text)
    if not match:
        raise UserError(f"--shock '{text}' is not a move like -10% or -0.1")
    value = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
    if value <= -1.0:
        raise UserError(f"--shock '{text}' moves prices to zero or below; use a move above -100%")
    return value


def parse_price(text: str, snapshot: AccountSnapshot) -> tuple[str, float]:
    """`BTC/USDT:USDT=52000` → (symbol, price); the symbol must be in the snapshot."""
    symbol, sep, raw = text.rpartition("=")
    if not sep or not symbol:
        raise UserError(f"--price '{text}' is not SYMBOL=PRICE (e.g. BTC/USDT:USDT=52000)")
    try:
        price = float(raw)
    except ValueError:
        raise UserError(f"--price '{text}': '{raw}' is not a number") from None
    if not math.isfinite(price) or price <= 0:
        raise UserError(f"--price '{text}': a price must be a positive number")
    known = {p.symbol for p in snapshot.positions} | {c.asset for c in snapshot.collateral}
    if symbol not in known:
        names = ", ".join(sorted(known)) or "none"
        raise UserError(f"--price '{text}': {symbol} is not in the snapshot (it has: {names})")
    return symbol, price


@dataclass(frozen=True, slots=True)
class _Scenario:
    name: str
    report: MarginReport
    shock: float | None = None
    prices: dict[str, float] | None = None


def report_command(args: argparse.Namespace) -> int:
    """Print the margin report of a snapshot file (table, or JSON with --json)."""
    snapshot = load_snapshot(args.snapshot)
    result = assess(snapshot)
    if args.json:
        _print_json(report_to_dict(result))
    else:
        _render(_console(), result, title=f"{snapshot.account} ({snapshot.venue or 'generic'})")
    return 0


def stress_command(args: argparse.Namespace) -> int:
    """The report under each scenario, plus the shock that liquidates."""
    snapshot = load_snapshot(args.snapshot)
    shocks = [parse_shock(s) for s in args.shock]
    prices = dict(parse_price(p, snapshot) for p in args.price)
    scenarios: list[_Scenario] = []
    for move in shocks:
        moved = shocked(snapshot, move, beta_weighted=args.beta)
        scenarios.append(_Scenario(f"{move:+.2%}", assess(moved), shock=move))
    if prices:
        moved = with_prices(snapshot, prices)
        label = ", ".join(f"{k}={v:g}" for k, v in prices.items())
        scenarios.append(_Scenario(label, assess(moved), prices=prices))
    base = assess(snapshot)
    weighted = shock_to_liquidation(snapshot, beta_weighted=True) if args.beta else None
    if args.json:
        _print_json(
            {
                "base": report_to_dict(base),
                "shock_to_liquidation": shock_to_dict(base.shock_to_liquidation),
                "beta_weighted_shock_to_liquidation": shock_to_dict(weighted),
                "scenarios": [
                    {
                        "name": s.name,
                        "shock": s.shock,
                        "beta_weighted": bool(args.beta) if s.shock is not None else None,
                        "prices": s.prices,
                        "report": report_to_dict(s.report),
                    }
                    for s in scenarios
                ],
            }
        )
        return 0
    console = _console()
    _render(console, base, title=f"{snapshot.account}: now")
    for s in scenarios:
        _render(console, s.report, title=f"{snapshot.account}: {s.name}")
    if weighted is not None:
        console.print(f"beta-weighted shock to liquidation: {_shock_text(weighted)}")
    return 0


def _console() -> Console:
    """A terminal-sized console, or a wide one when piped (so nothing is cut to '…').

    A closed pipe (`| head`) raises BrokenPipeError for the CLI's one line, where rich
    would exit 1 without a word (its documented `on_broken_pipe` hook)."""
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.on_broken_pipe = _broken_pipe  # type: ignore[method-assign]
    return console


def _broken_pipe() -> None:
    raise BrokenPipeError


def _print_json(data: dict[str, Any]) -> None:
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError:
        # finite inputs whose products overflow (1e300 contracts at 1e300): no JSON number
        raise UserError(
            "the snapshot's figures overflow to infinity (a size or price near 1e308?); "
            "check its numbers"
        ) from None
    sys.stdout.write(text + "\n")


def _shock_text(shock: ShockToLiquidation | None) -> str:
    if shock is None:
        return "not computed"
    return f"down {fmt_move(shock.down)}, up {fmt_move(shock.up)}"


def _render(console: Console, r: MarginReport, title: str) -> None:
    state = "LIQUIDATED" if r.liquidated else "ok"
    summary = Table(title=title, show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("margin ratio", f"{fmt_pct(r.margin_ratio)} ({state})")
    summary.add_row(f"margin balance ({r.currency})", fmt_money(r.margin_balance))
    summary.add_row("wallet balance", fmt_money(r.wallet_balance))
    summary.add_row("unrealized PnL", fmt_money(r.unrealized_pnl))
    summary.add_row("initial margin", fmt_money(r.initial_margin))
    summary.add_row("maintenance margin", fmt_money(r.maintenance_margin))
    summary.add_row("free collateral", fmt_money(r.free_collateral))
    summary.add_row("shock to liquidation", _shock_text(r.shock_to_liquidation))
    summary.add_row("model", MODEL_LABELS[r.model])
    if r.collateral_risk is not None:
        for line in describe(r.collateral_risk):
            summary.add_row("collateral risk", line)
    console.print(summary)
    if not r.positions:
        return
    table = Table(show_lines=False)
    for name in ("symbol", "side", "mode", "size", "mark", "notional", "uPnL", "MM", "liq. price"):
        table.add_column(name, justify="left" if name in ("symbol", "side", "mode") else "right")
    for p in r.positions:
        table.add_row(
            p.symbol,
            p.side + (" (hedge)" if p.hedged else ""),
            p.margin_mode if p.margin_ratio is None else f"isolated {fmt_pct(p.margin_ratio)}",
            f"{p.contracts:g}",
            fmt_price(p.mark_price),
            fmt_money(p.notional),
            fmt_money(p.unrealized_pnl),
            fmt_money(p.maintenance_margin),
            fmt_price(p.liquidation_price),
        )
    console.print(table)
