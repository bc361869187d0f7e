"""Issue 19 §1: an empty cross pool (no cross MM) is no risk, on every surface.

An account with only isolated positions, or nothing open, and an empty (or negative) cross
wallet owes no maintenance margin in the cross pool: margin ratio 0, never liquidated, no
shock that liquidates, no alert and no protective action (`valuation.margin_ratio`).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from monitor.channels.console import ConsoleSink
from monitor.channels.mqtt_payloads import state_payload
from monitor.config.monitoring import MetricsSettings
from monitor.config.settings import load_settings
from monitor.core import stress
from monitor.core.alert_config import AlertConfig, shock_fraction
from monitor.core.alert_state import RulesState
from monitor.core.margin import report as margin
from monitor.core.margin.ledger import Ledger
from monitor.core.margin.valuation import margin_ratio
from monitor.core.model import AccountSnapshot, Collateral, Event, Position, PriceTick
from monitor.core.plan import ActionHistory, ActionPolicy, MarketRules, plan_step
from monitor.core.rules import evaluate
from monitor.daemon.supervisor import run_daemon
from monitor.daemon.wiring import build_sinks
from monitor.ops.metrics import MetricsSink
from monitor.report_json import report_to_dict
from monitor.sources.normalize import venue_figures
from tests.mqtt_broker import Mosquitto, collecting
from tests.strategies import accounts

BTC = "BTC/USDT:USDT"
EXE = Path(sys.executable).with_name("margin-monitor")
#: an isolated long: 600 USDT of its own margin, liquidated near 54,240
ISO = Position(
    BTC,
    "long",
    0.1,
    60_000.0,
    60_000.0,
    margin_mode="isolated",
    leverage=10,
    mmr=0.004,
    isolated_margin=600.0,
)


def isolated_only(wallet: float = 0.0, *positions: Position) -> AccountSnapshot:
    """An account whose cross wallet holds `wallet` USDT and whose positions are isolated."""
    return AccountSnapshot(
        "iso", "USDT", (Collateral("USDT", wallet),), positions or (ISO,), "binanceusdm"
    )


class TestMarginRatio:
    @pytest.mark.parametrize(
        ("mm", "balance", "expected"),
        [
            (0.0, 0.0, 0.0),
            (0.0, -50.0, 0.0),
            (0.0, 100.0, 0.0),
            (10.0, 100.0, 0.1),
            (10.0, 0.0, math.inf),
            (10.0, -1.0, math.inf),
        ],
    )
    def test_rule(self, mm: float, balance: float, expected: float) -> None:
        """Test that no MM is ratio 0 whatever the balance, and MM with no balance is inf."""
        assert margin_ratio(mm, balance) == expected

    def test_open_position_with_unknown_mm(self) -> None:
        """Test that an open position with no MM schedule and no balance still reads inf."""
        assert margin_ratio(0.0, 0.0, exposed=True) == math.inf
        assert margin_ratio(0.0, 10.0, exposed=True) == 0.0


class TestReport:
    def test_isolated_only_with_empty_cross_wallet(self) -> None:
        """Test that an isolated-only account with an empty cross wallet is not liquidated."""
        r = margin.report(isolated_only())
        assert (r.margin_ratio, r.margin_level, r.liquidated) == (0.0, math.inf, False)
        (pos,) = r.positions
        assert pos.margin_ratio == pytest.approx(24 / 600)  # the isolated one keeps its own
        assert pos.liquidation_price == pytest.approx((6_000 - 600) / (0.1 * (1 - 0.004)))

    @pytest.mark.parametrize("wallet", [0.0, -25.0])
    def test_nothing_open(self, wallet: float) -> None:
        """Test that an account with nothing open is ratio 0, even with a negative wallet."""
        s = AccountSnapshot("empty", "USDT", (Collateral("USDT", wallet),), ())
        r = margin.report(s)
        assert (r.margin_ratio, r.margin_level, r.liquidated) == (0.0, math.inf, False)

    def test_owed_margin_with_no_balance_is_still_liquidated(self) -> None:
        """Test that a cross position whose balance is gone still reads inf and liquidated."""
        cross = replace(ISO, margin_mode="cross", isolated_margin=None, mark_price=50_000.0)
        r = margin.report(isolated_only(500.0, cross))
        assert (r.margin_ratio, r.liquidated) == (math.inf, True)

    def test_json_report(self) -> None:
        """Test that report --json's dict says ratio 0 and not liquidated (strict JSON)."""
        out = report_to_dict(stress.assess(isolated_only()))
        assert (out["margin_ratio"], out["liquidated"]) == (0.0, False)
        assert out["shock_to_liquidation"] == {"down": None, "up": None}
        json.dumps(out, allow_nan=False)

    def test_report_command(self, tmp_path: Path) -> None:
        """Test that `margin-monitor report --json` on an isolated-only snapshot file is safe."""
        path = tmp_path / "iso.json"
        path.write_text(
            json.dumps(
                {
                    "account": "iso",
                    "currency": "USDT",
                    "venue": "binanceusdm",
                    "collateral": [{"asset": "USDT", "amount": 0.0, "price": 1.0}],
                    "positions": [
                        {
                            "symbol": BTC,
                            "side": "long",
                            "contracts": 0.1,
                            "entry_price": 60_000.0,
                            "mark_price": 60_000.0,
                            "margin_mode": "isolated",
                            "leverage": 10,
                            "mmr": 0.004,
                            "isolated_margin": 600.0,
                        }
                    ],
                }
            )
        )
        done = subprocess.run(
            [str(EXE), "report", "--snapshot", str(path), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert (out["margin_ratio"], out["liquidated"]) == (0.0, False)
        assert out["positions"][0]["margin_ratio"] == pytest.approx(0.04)


class TestLedger:
    def test_ticks_keep_ratio_zero(self) -> None:
        """Test that the per-tick ratio of an isolated-only account stays 0 as prices move."""
        ledger = Ledger(isolated_only())
        for price in (59_000.0, 55_000.0, 40_000.0):
            assert ledger.tick(BTC, price)
            assert ledger.ratio() == 0.0


class TestShock:
    def test_no_move_liquidates_an_empty_pool(self) -> None:
        """Test that no shock liquidates an account owing no cross MM (shock rule stays ok)."""
        r = stress.assess(isolated_only())
        assert r.shock_to_liquidation is not None
        assert (r.shock_to_liquidation.down, r.shock_to_liquidation.up) == (None, None)
        assert shock_fraction(r) == math.inf

    def test_debt_without_positions_is_not_liquidation(self) -> None:
        """Test that BTC debt with no position, driven under water by a rise, never liquidates."""
        s = AccountSnapshot(
            "debt", "USDT", (Collateral("USDT", 1_000.0), Collateral("BTC", -0.01, 60_000.0)), ()
        )
        shock = stress.shock_to_liquidation(s)
        assert (shock.down, shock.up) == (None, None)


class TestRules:
    def test_no_alert_along_a_crash(self) -> None:
        """Test that an isolated-only account never alerts on ratio or shock as prices crash."""
        config = AlertConfig()
        state = RulesState()
        s = isolated_only()
        for i, price in enumerate((60_000.0, 55_000.0, 50_000.0, 30_000.0)):
            report = stress.assess(stress.with_prices(s, {BTC: price}))
            state, events = evaluate(state, report, float(i), config)
            assert events == ()


class TestActions:
    def test_planner_stays_idle(self) -> None:
        """Test that the protective planner does nothing for an empty cross pool."""
        policy = ActionPolicy(action_ratio=0.85, target_ratio=0.6)
        step = plan_step(
            isolated_only(), policy, {BTC: MarketRules(amount_step=0.001)}, ActionHistory(), 0.0
        )
        assert step.decision == "below_level"
        assert step.orders == ()


class TestMetrics:
    async def test_gauges(self) -> None:
        """Test that /metrics exports margin ratio 0 for an isolated-only account."""
        metrics = MetricsSink(MetricsSettings(), {"iso": 60.0})
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        try:
            s = isolated_only()
            await metrics.on_report("iso", stress.assess(s), s, 0.0)
            got = {
                (x.name, tuple(sorted(x.labels.items()))): x.value
                for family in text_string_to_metric_families(metrics.exposition().decode())
                for x in family.samples
            }
        finally:
            await metrics.close()
        assert got[("margin_monitor_margin_ratio", (("account", "iso"),))] == 0.0
        assert (
            got[("margin_monitor_maintenance_margin", (("account", "iso"), ("currency", "USDT")))]
            == 0.0
        )


class TestVenueFigures:
    def test_binance_zero_over_zero_is_zero(self) -> None:
        """Test that Binance's own figures with no MM and no balance read ratio 0, not inf."""
        info = {"totalMaintMargin": "0.00000000", "totalMarginBalance": "0.00000000"}
        figures = venue_figures("binanceusdm", {"info": info})
        assert figures is not None
        assert figures.margin_ratio == 0.0

    def test_hyperliquid_zero_over_zero_is_zero(self) -> None:
        """Test that Hyperliquid's cross figures with nothing open read ratio 0, not inf."""
        info = {"crossMaintenanceMarginUsed": "0.0", "crossMarginSummary": {"accountValue": "0.0"}}
        figures = venue_figures("hyperliquid", {"info": info})
        assert figures is not None
        assert figures.margin_ratio == 0.0


def _isolated(p: Position) -> Position:
    return replace(p, margin_mode="isolated", isolated_margin=p.settle_notional(p.entry_price) / 10)


class TestProperties:
    @settings(max_examples=150, deadline=None)
    @given(
        accounts(),
        st.floats(min_value=-1e6, max_value=1e6),
        st.lists(st.floats(min_value=0.05, max_value=5.0), min_size=1, max_size=4),
    )
    def test_zero_cross_mm_never_liquidates_nor_alerts(
        self, s: AccountSnapshot, wallet: float, moves: list[float]
    ) -> None:
        """Test that any account with zero cross MM is never liquidated and never alerts."""
        s = replace(
            s,
            collateral=(Collateral("USDT", wallet), *s.collateral[1:]),
            positions=tuple(_isolated(p) for p in s.positions),
        )
        ledger = Ledger(s)
        state = RulesState()
        for i, move in enumerate(moves):
            prices = {p.symbol: p.mark_price * move for p in s.positions}
            report = stress.assess(stress.with_prices(s, prices))
            assert report.maintenance_margin == 0.0
            assert (report.margin_ratio, report.liquidated) == (0.0, False)
            assert shock_fraction(report) == math.inf
            state, events = evaluate(state, report, float(i), AlertConfig())
            assert events == ()
            for symbol, price in prices.items():
                ledger.tick(symbol, price)
            assert ledger.ratio() == 0.0


class _IsolatedOnly:
    """A finite source: an isolated-only account whose position crashes toward its LP."""

    account = "iso"

    def __init__(self) -> None:
        self.prices = [60_000.0 - 100.0 * i for i in range(40)]
        self.gate = asyncio.Event()  # opened once the broker has the daemon connected

    async def fetch_snapshot(self) -> AccountSnapshot:
        return isolated_only()

    async def events(self) -> AsyncIterator[Event]:
        await self.gate.wait()
        for price in self.prices:
            yield PriceTick("iso", BTC, price, time.time())  # newer than the read
            await asyncio.sleep(0)

    async def close(self) -> None:
        return None


class TestDaemonSurfaces:
    async def test_state_alerts_metrics_and_console(
        self, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """Test that the running daemon publishes ratio 0, level ok, no alert, gauge 0."""
        prefix = f"mm-i19-{tmp_path.name}"
        settings = load_settings(
            None,
            state_dir=str(tmp_path),
            shock_interval=0.0,
            mqtt={
                "host": mosquitto.host,
                "port": mosquitto.port,
                "prefix": prefix,
                "timeout": 2.0,
                "state_interval": 0.0,
                "discovery": False,
            },
        )
        sinks = build_sinks(settings, tui=False)
        async with collecting(mosquitto, [f"{prefix}/#"]) as sub:
            source = _IsolatedOnly()

            async def open_when_online() -> None:
                await sub.wait_for(lambda: sub.on(f"{prefix}/status") != [])
                source.gate.set()

            loops, _ = await asyncio.gather(
                run_daemon(
                    settings,
                    [],
                    sinks,
                    sources=[source],
                    finite=True,
                    handle_signals=False,
                    duration=30,
                ),
                open_when_online(),
            )
            await sub.wait_for(lambda: len(sub.on(f"{prefix}/iso/state")) >= 1)
        assert loops[0].events == 40
        assert loops[0].ratio_level == "ok"
        assert sub.on(f"{prefix}/iso/alert") == []
        state = json.loads(sub.on(f"{prefix}/iso/state")[-1].payload)  # type: ignore[arg-type]
        assert (state["margin_ratio"], state["liquidated"], state["level"]) == (0.0, False, "ok")
        assert state["margin_ratio_pct"] == 0.0
        assert state == state_payload(
            margin.report(stress.with_prices(isolated_only(), {BTC: 56_100.0})), "ok"
        ) | {
            "shock_to_liquidation": state["shock_to_liquidation"],
            "shock_to_liquidation_pct": state["shock_to_liquidation_pct"],
            "collateral_risk": state["collateral_risk"],
        }
        # the shock solve's figures: no fall of any collateral liquidates an empty pool
        assert state["collateral_risk"] == {"non_stable_share": None, "assets": []}
        console = next(s for s in sinks if isinstance(s, ConsoleSink))
        out = Console(record=True, width=140, file=io.StringIO())
        out.print(console.render())
        text = out.export_text()
        assert "iso  OK" in text
        assert "0.00%" in text
        assert "inf" not in text
