"""Tests for the protective-order executor (monitor/protect/executor.py) and its daemon consumer.

Exchange cases go through the REAL ccxt `create_order` path: an `ExchangeSource` pointed at
engineer C's fake Binance USDⓈ-M server with the order routes of tests/fakes/binance_orders.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from monitor.alerts.message import AlertMessage
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.sink import AlertsSink, build_alerts_sink
from monitor.config.actions import ActionsSettings
from monitor.config.alerts import MqttSettings
from monitor.config.settings import SimSettings, load_settings
from monitor.core.alert_config import AlertConfig
from monitor.core.margin.report import report
from monitor.core.model import MarginReport
from monitor.core.plan import ActionHistory, ActionPlan
from monitor.daemon.supervisor import run_daemon
from monitor.daemon.wiring import build_sinks
from monitor.protect import notes as notes_module
from monitor.protect import sink as sink_module
from monitor.protect.audit import ActionHooks
from monitor.protect.executor import Executor
from monitor.protect.notes import ActionNotes
from monitor.protect.sink import ActionsSink, action_hooks
from monitor.protect.state import (
    AccountLock,
    ActionState,
    StateFile,
    kill_switch_file,
    kill_switch_files,
)
from monitor.protect.switches import ActionSwitches
from monitor.sink import Sink
from monitor.sources.exchange import ExchangeSource
from monitor.sources.sim import SimVenue
from monitor.sources.sim_book import DEMO_BOOK, selloff_keyframes
from monitor.store import Store
from tests.desks import BTC, DESKS, Desk, open_desk
from tests.fakes.account import account_for
from tests.fakes.binance import (
    API_KEY,
    SECRET,
    BinancePosition,
    FakeBinanceUsdm,
    use_production_errors,
)
from tests.fakes.binance_orders import BinanceOrders, install_orders
from tests.fakes.bybit import API_KEY as BYBIT_KEY
from tests.fakes.bybit import SECRET as BYBIT_SECRET
from tests.fakes.bybit import BybitPosition, FakeBybit
from tests.fakes.bybit_orders import BybitOrders
from tests.fakes.bybit_orders import install_orders as install_bybit_orders
from tests.mqtt_broker import Mosquitto, collecting

ORDER = "/fapi/v1/order"


class Trail:
    """Collects audit records and alerts the executor emits."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.alerts: list[str] = []

    def audit(self, account: str, kind: str, payload: Mapping[str, Any], at: float) -> None:
        del account, at
        self.records.append((kind, dict(payload)))

    def alert(self, account: str, text: str) -> None:
        del account
        self.alerts.append(text)

    def kinds(self) -> list[str]:
        return [k for k, _ in self.records]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [p for k, p in self.records if k == kind]


@pytest.fixture
async def venue() -> AsyncIterator[tuple[FakeBinanceUsdm, BinanceOrders]]:
    fake = FakeBinanceUsdm()
    fake.account.wallet = 700.0  # 2 BTC long at 60k: MM 550, ratio 0.786
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 2.0, 60_000.0)
    book = install_orders(fake)
    async with fake:
        yield fake, book


async def _source(fake: FakeBinanceUsdm, timeout_ms: int = 2000) -> ExchangeSource:
    account = account_for(fake, API_KEY, SECRET)
    account.ccxt["timeout"] = timeout_ms
    src = ExchangeSource(account)
    await src.fetch_snapshot()  # load markets
    use_production_errors(src.exchange)  # ccxt.md §0.6: -2022 as InvalidOrder, not ExchangeError
    return src


def _executor(
    src: Any,
    state_dir: Path,
    trail: Trail,
    *,
    live: bool = True,
    venue: str | None = "binanceusdm",
    switches: ActionSwitches | None = None,
    hooks: ActionHooks | None = None,
    fresh_read: Any = None,
    action_ratio: float = 0.7,
    **settings: Any,
) -> Executor:
    base: dict[str, Any] = {
        "max_fraction_per_step": 1.0,
        "cooldown": 0.0,
        "order_timeout": 0.5,
        "min_order_interval": 0.0,
    }
    base.update(settings)
    return Executor(
        "acct",
        src,
        fresh_read or src.fetch_snapshot,
        settings=ActionsSettings(**base),
        action_ratio=action_ratio,
        state_dir=state_dir,
        live=live,
        venue=venue,
        switches=switches,
        hooks=hooks or ActionHooks(audit=trail.audit, alert=trail.alert),
    )


async def _report(src: Any) -> MarginReport:
    return report(await src.fetch_snapshot())


@pytest.fixture(params=DESKS)
async def desk(request: pytest.FixtureRequest) -> AsyncIterator[Desk]:
    """The account of the order-path tests on each desk: 2 BTC long at 60k, ratio 0.786."""
    async with open_desk(request.param, wallet=700.0, btc=2.0) as opened:
        yield opened


def _on(desk: Desk, state_dir: Path, trail: Trail, **kw: Any) -> Executor:
    """An executor trading on `desk`, reading fresh through it (counted)."""
    return _executor(
        desk.desk, state_dir, trail, venue=desk.venue, fresh_read=desk.fresh_read, **kw
    )


async def _one_step(desk: Desk, state_dir: Path, now: float) -> Trail:
    """One step of a new executor on `state_dir` (after another's: a restart), its trail."""
    trail = Trail()
    ex = _on(desk, state_dir, trail)
    try:
        await ex.step(await _report(desk.desk), now)
    finally:
        ex.close()
    return trail


def _safe(desk: Desk) -> None:
    """Every order the venue executed closed part of a position, never more than it held
    when the order arrived (a refused one did not move money)."""
    for order in (o for o in desk.arrived() if o.accepted):
        assert not order.increases, order
        assert not order.oversize, order


class TestOrderPath:
    """The executor's order paths, the same on the ccxt venue and on the sim (OrderDesk)."""

    async def test_fill_brings_the_ratio_to_target(self, desk: Desk, tmp_path: Path) -> None:
        """Test that a critical account gets one reduce-only order on the market's step,
        under its client id, and ends at the target."""
        trail = Trail()
        plan = await _on(desk, tmp_path, trail).step(await _report(desk.desk), 1_000.0)
        assert plan is not None
        (order,) = desk.arrived()
        assert order.accepted
        assert order.reduce_only
        assert (order.symbol, order.side) == (BTC, "sell")
        assert order.amount <= 2.0
        assert float(desk.desk.amount_to_precision(BTC, order.amount)) == order.amount
        assert order.client_id == trail.of("sent")[0]["client_id"]
        assert trail.kinds() == ["planned", "sent", "filled", "result"]
        result = trail.of("result")[0]
        assert result["improved"] is True
        assert result["reached"] is True
        assert (await _report(desk.desk)).margin_ratio <= 0.4
        _safe(desk)

    async def test_step_is_audited_once_the_order_has_left(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that `planned` and `sent` are audited after the venue has the order (only the
        write-ahead client id precedes it), in decision order, under the order's client id."""
        trail = Trail()
        venue_had: dict[str, int] = {}
        state_file = tmp_path / "actions" / "acct.json"

        def audit(account: str, kind: str, payload: Mapping[str, Any], at: float) -> None:
            venue_had.setdefault(kind, len(desk.arrived()))
            trail.audit(account, kind, payload, at)

        ex = _on(desk, tmp_path, trail, hooks=ActionHooks(audit=audit, alert=trail.alert))
        await ex.step(await _report(desk.desk), 1_000.0)
        (order,) = desk.arrived()
        assert trail.kinds() == ["planned", "sent", "filled", "result"]
        assert venue_had["planned"] == venue_had["sent"] == 1
        assert trail.of("sent")[0]["client_id"] == order.client_id
        assert json.loads(state_file.read_text())["pending"] == []  # settled after the fill

    async def test_capped_steps_continue_until_the_target(self, desk: Desk, tmp_path: Path) -> None:
        """Test that capped steps go on below the action level until the target, then stop."""
        trail = Trail()
        ex = _on(desk, tmp_path, trail, max_fraction_per_step=0.25, cooldown=10.0)
        now = 1_000.0
        await ex.step(await _report(desk.desk), now)
        assert 0.4 < (await _report(desk.desk)).margin_ratio < 0.7  # under the level
        assert await ex.step(await _report(desk.desk), now + 5) is None  # cooldown
        for _ in range(6):
            now += 10
            await ex.step(await _report(desk.desk), now)
        assert (await _report(desk.desk)).margin_ratio <= 0.4
        assert 2 <= len(desk.arrived()) <= 6
        assert trail.kinds()[-1] == "resolved"
        held = 2.0
        for order in desk.arrived():
            assert order.amount <= 0.25 * held + 1e-9
            held -= order.amount
        _safe(desk)

    async def test_amount_is_truncated_to_the_market_step(self, desk: Desk, tmp_path: Path) -> None:
        """Test that a capped amount off the market's step (a third of 2 BTC) goes out
        truncated to the step the desk reports (0.001), never rounded up past the cap."""
        trail = Trail()
        ex = _on(desk, tmp_path, trail, max_fraction_per_step=1 / 3)
        await ex.step(await _report(desk.desk), 1_000.0)
        (order,) = desk.arrived()
        assert order.amount == pytest.approx(0.666, abs=1e-12)
        assert desk.desk.amount_to_precision(BTC, order.amount) == "0.666"
        assert trail.of("filled")[0]["filled"] == pytest.approx(0.666, abs=1e-12)
        _safe(desk)

    async def test_acts_on_the_fresh_read_not_the_stale_report(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a position shrunk since the report is re-read and never over-sold."""
        stale = await _report(desk.desk)
        desk.hand_position(0.5)  # closed by hand meanwhile
        desk.hand_wallet(120.0)  # still critical on the fresh read
        await _on(desk, tmp_path, Trail()).step(stale, 1_000.0)
        (order,) = desk.arrived()
        assert order.amount <= 0.5
        _safe(desk)

    async def test_rejection_alerts_and_halts_without_retry(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a rejection alerts, halts the next reports, and a restart clears it."""
        desk.refuse_next("margin")
        trail = Trail()
        ex = _on(desk, tmp_path, trail)
        await ex.step(await _report(desk.desk), 1_000.0)
        (rejected,) = trail.of("rejected")
        assert "InsufficientFunds" in rejected["error"]
        assert any("rejected by the venue" in a for a in trail.alerts)
        await ex.step(await _report(desk.desk), 1_010.0)
        assert len(desk.arrived()) == 1
        assert trail.of("skipped")[-1]["reason"].startswith("halted")
        ex.close()
        restarted = _on(desk, tmp_path, Trail())  # a person fixed it and restarted
        await restarted.step(await _report(desk.desk), 1_020.0)
        assert len(desk.arrived()) == 2
        restarted.close()
        _safe(desk)

    async def test_reduce_only_refusal_is_an_invalid_order(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that the venue's reduce-only refusal (Binance -2022; on the sim, the position
        closed by hand as the order lands) is audited as InvalidOrder and never retried."""
        desk.refuse_next("reduce_only")
        trail = Trail()
        ex = _on(desk, tmp_path, trail)
        await ex.step(await _report(desk.desk), 1_000.0)
        assert "InvalidOrder" in trail.of("rejected")[0]["error"]
        await ex.step(await _report(desk.desk), 1_010.0)
        assert [o.accepted for o in desk.arrived()] == [False]
        _safe(desk)

    async def test_lost_answer_is_found_by_client_id_not_resent(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that an order whose answer was lost is found by its client id in the same
        step and followed, never sent a second time."""
        desk.set_timeout(0.3)
        desk.lose_next_answer()
        trail = await _one_step(desk, tmp_path, 1_000.0)
        assert trail.kinds() == ["planned", "sent", "filled", "result"]
        assert desk.lookups() >= 1  # found by its client id, after the answer was lost
        (order,) = desk.arrived()
        assert trail.of("filled")[0]["client_id"] == order.client_id
        _safe(desk)

    async def test_timeout_after_accept_then_restart_sends_no_second_order(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a lost answer is found by client id on restart and never re-sent."""
        desk.set_timeout(0.3)
        desk.lose_next_answer()  # the venue fills, the answer never comes back in time
        trail = Trail()
        first = _on(desk, tmp_path, trail)
        try:
            step = asyncio.create_task(first.step(await _report(desk.desk), 1_000.0))
            await desk.order_arrived()
            desk.fail_lookups(5)  # and every lookup by client id fails as well
            await step
        finally:
            first.close()
        assert trail.kinds() == ["planned", "sent", "unconfirmed"]
        assert any("not re-sent" in a for a in trail.alerts)
        desk.link_ok()
        trail2 = await _one_step(desk, tmp_path, 2_000.0)
        cids = [o.client_id for o in desk.arrived()]
        assert len(cids) == len(set(cids)) == 1  # the same client id never went out twice
        assert trail2.of("recovered")[0]["status"] == "closed"
        assert (await _report(desk.desk)).margin_ratio <= 0.4
        _safe(desk)

    async def test_killed_mid_send_restart_finds_the_order_written_ahead(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that a step stopped while its order is in flight (nothing saved after the
        journal's write-ahead) leaves the client id a restart looks up instead of re-sending."""
        desk.set_timeout(0.3)
        desk.lose_next_answer()
        trail = Trail()
        first = _on(desk, tmp_path, trail)
        step = asyncio.create_task(first.step(await _report(desk.desk), 1_000.0))
        await desk.order_arrived()
        step.cancel()  # the process dies with the order at the venue, its answer unseen
        with pytest.raises(asyncio.CancelledError):
            await step
        first.close()
        assert not (tmp_path / "actions" / "acct.json").exists()  # only the journal has it
        (order,) = desk.arrived()
        pending = StateFile(tmp_path / "actions" / "acct.json", "acct").load().pending
        assert [p["client_id"] for p in pending] == [order.client_id]
        desk.link_ok()
        trail2 = await _one_step(desk, tmp_path, 2_000.0)
        assert trail2.of("recovered")[0]["client_id"] == order.client_id
        cids = [o.client_id for o in desk.arrived()]
        assert len(cids) == len(set(cids)) == 1  # never sent a second time
        _safe(desk)

    async def test_position_below_minimum_is_flagged_once_not_polled(
        self, desk: Desk, tmp_path: Path
    ) -> None:
        """Test that an unreducible position raises one alert and is not re-read every tick."""
        desk.hand_position(0.0005)  # below the minimum amount 0.001
        desk.hand_wallet(0.15)
        trail = Trail()
        ex = _on(desk, tmp_path, trail)
        rep = await _report(desk.desk)
        assert rep.margin_ratio >= 0.7
        reads = desk.reads
        plan = await ex.step(rep, 1_000.0)
        assert plan is not None
        assert plan.flags
        assert await ex.step(rep, 1_001.0) is None  # quiet: no second fresh read
        assert desk.reads == reads + 1
        assert desk.arrived() == []
        assert len(trail.alerts) == 1
        assert "minimum" in trail.alerts[0]


class TestStateFile:
    """The state file and its write-ahead journal (monitor/protect/state.py)."""

    def test_write_ahead_is_loaded_and_a_save_outranks_it(self, tmp_path: Path) -> None:
        """Test that a state appended to the journal is what a restart loads, and that a later
        save is what loads after it."""
        path = tmp_path / "actions" / "acct.json"
        files = StateFile(path, "acct")
        files.save(ActionState(episode="e1", step=1))
        files.write_ahead(ActionState(episode="e1", step=2, seq=1, pending=[{"client_id": "c"}]))
        loaded = StateFile(path, "acct").load()
        assert (loaded.step, loaded.pending) == (2, [{"client_id": "c"}])
        files.save(replace(loaded, pending=[]))
        assert StateFile(path, "acct").load().pending == []
        files.write_ahead(ActionState(episode="e1", step=3, seq=5, pending=[{"client_id": "d"}]))
        assert StateFile(path, "acct").load().pending == [{"client_id": "d"}]
        files.close()
        assert oct(files.journal.stat().st_mode & 0o777) == "0o600"
        assert oct(files.path.stat().st_mode & 0o777) == "0o600"

    def test_newer_state_file_outranks_a_journal_left_by_a_crash(self, tmp_path: Path) -> None:
        """Test that a journal older than the state file (a crash between the replace and the
        journal's removal) does not bring back a settled pending order."""
        files = StateFile(tmp_path / "acct.json", "acct")
        state = ActionState(episode="e1", step=1, pending=[{"client_id": "c"}])
        files.write_ahead(state)
        old_journal = files.journal.read_bytes()
        state.pending.clear()
        files.save(state)
        files.close()
        files.journal.write_bytes(old_journal)  # the journal's own line, older than the save
        assert StateFile(tmp_path / "acct.json", "acct").load().pending == []

    def test_a_removed_journal_is_opened_again(self, tmp_path: Path) -> None:
        """Test that a journal deleted while open is recreated, not written into the void."""
        files = StateFile(tmp_path / "actions" / "acct.json", "acct")
        files.write_ahead(ActionState(step=1))
        files.journal.unlink()
        files.write_ahead(ActionState(step=2, pending=[{"client_id": "e"}]))
        files.close()
        assert StateFile(files.path, "acct").load().pending == [{"client_id": "e"}]

    def test_torn_last_line_falls_back_to_the_line_before(self, tmp_path: Path) -> None:
        """Test that a journal whose last line was cut off loads its last whole line."""
        files = StateFile(tmp_path / "acct.json", "acct")
        files.write_ahead(ActionState(episode="e1", step=1, pending=[{"client_id": "a"}]))
        files.close()
        with files.journal.open("a") as fh:
            fh.write('{"episode": "e1", "step": 2, "pend')
        assert StateFile(tmp_path / "acct.json", "acct").load().pending == [{"client_id": "a"}]


class TestBinanceWire:
    """What ccxt puts on the wire to Binance USDⓈ-M, and what only a ccxt venue does."""

    async def test_one_way_order_is_a_reduce_only_market_order_with_client_id(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path
    ) -> None:
        """Test that one-way mode sends MARKET, SELL, reduceOnly, no positionSide, the id."""
        fake, book = venue
        src = await _source(fake)
        trail = Trail()
        try:
            await _executor(src, tmp_path, trail).step(await _report(src), 1_000.0)
            (sent,) = book.received
            assert sent["reduceOnly"] == "true"
            assert sent["side"] == "SELL"
            assert sent["type"] == "MARKET"
            assert "positionSide" not in sent
            assert sent["newClientOrderId"] == trail.of("sent")[0]["client_id"]
        finally:
            await src.close()

    async def test_partial_fill_is_cancelled_after_the_timeout(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path
    ) -> None:
        """Test that a half-filled order is cancelled at order_timeout and audited as partial.

        ccxt only: the sim fills a market order in full or refuses it."""
        fake, book = venue
        book.fill_fraction = 0.5
        src = await _source(fake)
        trail = Trail()
        try:
            await _executor(src, tmp_path, trail, order_timeout=0.3).step(
                await _report(src), 1_000.0
            )
            (partial,) = trail.of("partial")
            assert partial["status"] == "canceled"
            assert 0 < partial["filled"] < partial["amount"]
            assert fake.count(ORDER) >= 1
            assert [o["status"] for o in book.orders.values()] == ["CANCELED"]
            assert len(book.received) == 1  # never topped up by a second order in the step
        finally:
            await src.close()


class TestBinanceHedgeMode:
    async def test_hedged_legs_carry_position_side_without_reduce_only(
        self, tmp_path: Path
    ) -> None:
        """Test that hedge mode sends positionSide LONG (ccxt drops reduceOnly, -1106)."""
        fake = FakeBinanceUsdm()
        fake.account.wallet = 800.0
        fake.account.positions[("BTCUSDT", "LONG")] = BinancePosition(
            "BTCUSDT", 2.0, 60_000.0, side="LONG"
        )
        fake.account.positions[("BTCUSDT", "SHORT")] = BinancePosition(
            "BTCUSDT", -0.3, 60_000.0, side="SHORT"
        )
        book = install_orders(fake)
        trail = Trail()
        async with fake:
            src = await _source(fake)
            try:
                await _executor(src, tmp_path, trail).step(await _report(src), 1_000.0)
            finally:
                await src.close()
        assert book.received
        for sent in book.received:
            assert "reduceOnly" not in sent
            assert sent["positionSide"] == ("LONG" if sent["side"] == "SELL" else "SHORT")
        assert trail.of("result")[0]["improved"] is True


class TestSwitchesAndLock:
    async def test_dry_run_sends_nothing(self, desk: Desk, tmp_path: Path) -> None:
        """Test that actions.enabled = false audits 'would_have' and sends no order."""
        trail = Trail()
        await _on(desk, tmp_path, trail, live=False).step(await _report(desk.desk), 1_000.0)
        assert desk.arrived() == []
        (would,) = trail.of("would_have")
        assert "dry run" in would["reason"]

    @pytest.mark.parametrize("how", ["file", "account_file", "command", "config"])
    async def test_kill_switches_stop_orders(self, desk: Desk, tmp_path: Path, how: str) -> None:
        """Test that the PAUSE file, the pause command and the config switch each stop orders."""
        switches = ActionSwitches()
        extra: dict[str, Any] = {}
        if how == "file":
            (tmp_path / "PAUSE").touch()
        elif how == "account_file":
            (tmp_path / "PAUSE.acct").touch()
        elif how == "command":
            switches.pause("acct", until=5_000.0)
        else:
            extra["paused"] = True
        trail = Trail()
        ex = _on(desk, tmp_path, trail, switches=switches, **extra)
        await ex.step(await _report(desk.desk), 1_000.0)
        assert desk.arrived() == []
        assert trail.of("would_have")[0]["reason"].startswith(("kill switch", "paused"))

    async def test_note_reads_the_kill_switch_off_path_the_order_path_at_once(
        self, desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that an alert's note takes the PAUSE file from the sink's periodic look (not
        on the tick -> alert path), while the step that would send checks the disk itself."""
        monkeypatch.setattr(sink_module, "KILL_SWITCH_LOOK", 0.05)
        notes = ActionNotes()
        ex = _on(desk, tmp_path, Trail(), hooks=ActionHooks(alert=notes.tell))
        actions = ActionsSink({"acct": ex}, notes=notes)
        snapshot = await desk.desk.fetch_snapshot()
        rep = report(snapshot)
        notes.saw("acct", rep, snapshot, 1_000.0)
        before = notes.note("acct")
        assert before is not None
        assert before.startswith("reducing (live)")
        (tmp_path / "PAUSE.acct").touch()
        assert notes.note("acct") == before  # no file lookup while an alert is built
        assert ex.pause_reason(1_000.0) == f"kill switch: {tmp_path / 'PAUSE.acct'} exists"
        runner = asyncio.create_task(_serve(actions))
        try:
            (tmp_path / "PAUSE.acct").unlink()
            ex.kill_switch_seen = None
            (tmp_path / "PAUSE").touch()
            await _until(lambda: ex.kill_switch_seen is not None, 5.0)
            paused = notes.note("acct")
            assert paused is not None
            assert paused.startswith(f"would reduce, but kill switch: {tmp_path / 'PAUSE'}")
            ex.kill_switch_seen = None  # what the last look found: not what an order reads
            await ex.step(rep, 1_000.0)  # the order path looks for itself
            assert desk.arrived() == []
            (tmp_path / "PAUSE").unlink()
            await _until(lambda: ex.kill_switch_seen is None, 5.0)
            assert notes.note("acct") != paused
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            ex.close()

    def test_kill_switch_files_agree_with_one_lookup_per_account(self, tmp_path: Path) -> None:
        """Test that one listing finds what `kill_switch_file` finds per account: the global
        file first, an account's own, nothing for the others, no dangling link."""
        accounts = ["a", "b", "c"]

        def each() -> dict[str, Path | None]:
            return {account: kill_switch_file(tmp_path, account) for account in accounts}

        assert kill_switch_files(tmp_path, accounts) == each() == dict.fromkeys(accounts)
        (tmp_path / "PAUSE.b").touch()
        (tmp_path / "PAUSE.c").symlink_to(tmp_path / "nowhere")
        assert kill_switch_files(tmp_path, accounts) == each()
        assert each() == {"a": None, "b": tmp_path / "PAUSE.b", "c": None}
        (tmp_path / "PAUSE").touch()
        assert kill_switch_files(tmp_path, accounts) == each()
        assert set(each().values()) == {tmp_path / "PAUSE"}
        missing = tmp_path / "gone"
        assert kill_switch_files(missing, accounts) == dict.fromkeys(accounts)

    async def test_two_instances_only_one_acts(self, desk: Desk, tmp_path: Path) -> None:
        """Test that a second executor on the same account and state dir sends nothing."""
        one, two = Trail(), Trail()
        first = _on(desk, tmp_path, one)
        assert first.lock.acquire()
        second = _on(desk, tmp_path, two)
        rep = await _report(desk.desk)
        await asyncio.gather(second.step(rep, 1_000.0), first.step(rep, 1_000.0))
        assert len(desk.arrived()) == 1
        assert "writer lock" in two.of("skipped")[0]["reason"]
        first.close()
        second.close()

    def test_lock_is_respected_across_processes(self, tmp_path: Path) -> None:
        """Test that a lock held by another process makes acquire() fail, and frees on exit."""
        path = tmp_path / "actions" / "acct.lock"
        path.parent.mkdir()
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
                "fcntl.flock(fd,fcntl.LOCK_EX);print('held',flush=True);sys.stdin.read()",
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            assert not AccountLock(path).acquire()
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=5)
        lock = AccountLock(path)
        assert lock.acquire()
        assert path.read_text().strip() == str(os.getpid())
        lock.release()


class _Held:
    """An alert sink that never acknowledges: what reaches the outbox stays visible there."""

    name = "held"

    def wants(self, message: AlertMessage) -> bool:
        """Test helper: takes everything."""
        return True

    async def deliver(self, messages: object) -> set[str]:
        """Test helper: acknowledges nothing."""
        return set()


async def _serve(*sinks: Any) -> None:
    """Run sinks' tasks until cancelled, as the daemon's TaskGroup does."""
    async with asyncio.TaskGroup() as tg:
        for sink in sinks:
            await sink.start(tg)


async def _until(condition: Any, limit: float = 10.0) -> None:
    for _ in range(int(limit / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def _wired(src: ExchangeSource, state_dir: Path, alerts: AlertsSink) -> ActionsSink:
    """The actions sink of one executor, connected to `alerts` as build_actions_sink does."""
    notes = ActionNotes()
    ex = _executor(
        src,
        state_dir,
        Trail(),
        switches=alerts.switches,
        hooks=action_hooks(alerts, notes, "critical"),
    )
    return ActionsSink({"acct": ex}, alerts=alerts, notes=notes)


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


class TestNotesWarmUp:
    """ActionNotes runs the planner once at start-up, on the real snapshot (issue 16)."""

    async def test_first_report_solves_once_and_changes_nothing(
        self,
        venue: tuple[FakeBinanceUsdm, BinanceOrders],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that the first report runs one throw-away solve and leaves every state alone."""
        _, book = venue
        src = await _source(venue[0])
        notes = ActionNotes()
        ex = _executor(src, tmp_path, Trail(), live=False, hooks=ActionHooks(alert=notes.tell))
        notes.executors["acct"] = ex
        plans: list[tuple[ActionHistory, ActionPlan]] = []
        real = notes_module.plan_step

        def spy(*args: Any, **kwargs: Any) -> ActionPlan:
            plan = real(*args, **kwargs)
            plans.append((args[3], plan))
            return plan

        monkeypatch.setattr(notes_module, "plan_step", spy)
        try:
            snapshot = await src.fetch_snapshot()
            rep = report(snapshot)
            state = replace(ex.state)
            files = _files(tmp_path)
            notes.saw("acct", rep, snapshot, 1_000.0)
            assert notes.warmed
            assert len(plans) == 1
            history, plan = plans[0]
            assert history == ActionHistory()  # not the executor's
            assert plan.orders  # the solve and the rounding ran
            assert ex.state == state
            assert _files(tmp_path) == files  # the state file and journal as they were
            assert notes.seen["acct"].preview is None  # nothing kept for the note
            assert notes.told == {}
            assert book.received == []
            notes.saw("acct", rep, snapshot, 1_001.0)
            assert len(plans) == 1  # once per process
            unwarmed = ActionNotes(executors={"acct": ex}, warmed=True)
            unwarmed.saw("acct", rep, snapshot, 1_001.0)
            assert notes.note("acct") == unwarmed.note("acct")
        finally:
            ex.close()
            await src.close()


class TestRejectionAlert:
    """A venue rejection through the daemon's sinks: an alert via the outbox, no retry."""

    async def _feed(self, actions: ActionsSink, src: ExchangeSource, now: float) -> None:
        snapshot = await src.fetch_snapshot()
        await actions.on_report("acct", report(snapshot), snapshot, now)

    async def test_rejection_is_one_action_rejected_alert_in_the_outbox(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path
    ) -> None:
        """Test that a rejection queues one action_rejected alert, sends no retry, resolves."""
        fake, book = venue
        book.reject = (-2019, "Margin is insufficient.")
        src = await _source(fake)
        store = Store(tmp_path / "alerts.sqlite3")
        alerts = AlertsSink(lambda: AlertPipeline(store, AlertConfig(), [_Held()]))
        actions = _wired(src, tmp_path, alerts)
        ex = actions.executors["acct"]
        runner = asyncio.create_task(_serve(actions))

        def queued() -> list[tuple[str, str, str]]:
            messages = [AlertMessage.from_json(r.payload) for r in store.pending()]
            return [(m.rule, m.kind, m.detail) for m in messages]

        try:
            await self._feed(actions, src, 1_000.0)
            await _until(lambda: store.audit_trail(kind="rejected"))
            for i in range(3):  # more critical reports: halted, skipped, never re-sent
                await self._feed(actions, src, 1_010.0 + i)
                await _until(
                    lambda: (
                        ex.state.last_step_at == 1_000.0
                        and not ex.busy
                        and not actions._wake["acct"].is_set()
                    )
                )
            assert store.audit_trail(kind="skipped")[-1].payload["reason"].startswith("halted")
            assert len(book.received) == 1
            ((rule, kind, detail),) = queued()
            assert (rule, kind) == ("action_rejected", "firing")
            assert "InsufficientFunds" in detail
            assert actions.notes.note("acct") == detail  # the action line of other alerts says so
            fake.account.wallet = 10_000.0  # a person added margin: back under the target
            await self._feed(actions, src, 1_100.0)
            assert [(r, k) for r, k, _ in queued()] == [
                ("action_rejected", "firing"),
                ("action_rejected", "resolved"),
            ]
            assert len(book.received) == 1
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await actions.close()
            store.close()
            await src.close()

    async def test_rejection_alert_reaches_mqtt(
        self,
        venue: tuple[FakeBinanceUsdm, BinanceOrders],
        tmp_path: Path,
        mosquitto: Mosquitto,
    ) -> None:
        """Test that the action_rejected alert is published on the alert topic (real broker)."""
        fake, book = venue
        book.reject = (-2022, "ReduceOnly Order is rejected.")
        src = await _source(fake)
        prefix = f"mmtest-rejected-{os.getpid()}"
        mqtt = MqttSettings.model_validate(
            {"host": mosquitto.host, "port": mosquitto.port, "prefix": prefix, "timeout": 2.0}
        )
        alerts = build_alerts_sink(tmp_path, AlertConfig(), mqtt, None)
        actions = _wired(src, tmp_path, alerts)
        try:
            async with collecting(mosquitto, [f"{prefix}/acct/alert"]) as sub:
                runner = asyncio.create_task(_serve(alerts, actions))
                try:
                    await self._feed(actions, src, 1_000.0)
                    await _until(lambda: sub.messages)
                    await self._feed(actions, src, 1_010.0)
                    await _until(lambda: alerts.pipeline.store.audit_trail(kind="skipped"))
                    await _until(lambda: not alerts.pipeline.store.pending())
                finally:
                    runner.cancel()
                    await asyncio.gather(runner, return_exceptions=True)
                got = [json.loads(m.payload) for m in sub.messages]  # type: ignore[arg-type]
            assert {(g["rule"], g["kind"], g["level"]) for g in got} == {
                ("action_rejected", "firing", "critical")
            }
            assert len({g["id"] for g in got}) == 1
            assert "InvalidOrder" in got[0]["detail"]
            assert len(book.received) == 1
        finally:
            await actions.close()
            await alerts.close()
            await src.close()


class TestSim:
    async def test_sim_fills_and_audits_to_the_store(self, tmp_path: Path) -> None:
        """Test that the sim venue fills the reduce-only order and the store keeps the trail."""
        m = selloff_keyframes(DEMO_BOOK)[4].m  # the sell-off's critical keyframe
        book = replace(
            DEMO_BOOK,
            markets=tuple(replace(mk, price0=mk.price0 * m**mk.beta) for mk in DEMO_BOOK.markets),
        )
        sim = SimVenue("demo", SimSettings(scenario="calm"), book=book)
        store = Store(tmp_path / "audit.sqlite3")
        ex = Executor(
            "demo",
            sim,
            sim.fetch_snapshot,
            settings=ActionsSettings(cooldown=0),
            action_ratio=0.5,
            state_dir=tmp_path,
            live=True,
            venue="sim",
            hooks=ActionHooks(audit=store.audit),
        )
        rep = report(sim.snapshot())
        assert rep.margin_ratio >= 0.5
        await ex.step(rep, 1_000.0)
        assert sim.fills >= 1
        kinds = [r.kind for r in store.audit_trail("demo")]
        assert kinds[:2] == ["planned", "sent"]
        assert "filled" in kinds
        assert report(sim.snapshot()).margin_ratio < rep.margin_ratio
        store.close()


class TestDaemonDemo:
    async def test_demo_shows_warning_critical_reduction_and_resolve(
        self, tmp_path: Path, mosquitto: Mosquitto
    ) -> None:
        """Test that the demo with actions on goes critical, reduces, resolves, on MQTT too."""
        prefix = f"mmtest-actions-{os.getpid()}"
        settings = load_settings(
            None,
            state_dir=tmp_path,
            accounts=[{"name": "demo", "exchange": "sim", "sim": {"speed": 20}}],
            mqtt={"host": mosquitto.host, "port": mosquitto.port, "prefix": prefix, "timeout": 2.0},
        )
        assert settings.actions.enabled is False  # live venues stay dry by default
        sources = {a.name: SimVenue(a.name, a.sim) for a in settings.accounts}
        sinks = build_sinks(settings, tui=False, sources=sources)
        levels: list[str] = []

        class Levels(Sink):
            name = "levels"

            async def start(self, tg: asyncio.TaskGroup) -> None: ...
            async def on_report(self, *a: object) -> None: ...
            async def on_event(self, event: object) -> None: ...
            async def on_level(self, account: str, level: str, *a: object) -> None:
                levels.append(level)

            async def close(self) -> None: ...

        async with collecting(mosquitto, [f"{prefix}/demo/action"]) as mqtt:
            await asyncio.wait_for(
                run_daemon(
                    settings,
                    settings.accounts,
                    [*sinks, Levels()],
                    sources=list(sources.values()),
                    duration=4.5,
                    handle_signals=False,
                ),
                30,
            )
            published = [json.loads(m.payload) for m in mqtt.messages]  # type: ignore[arg-type]
        assert [p["kind"] for p in published][:3] == ["planned", "sent", "filled"]
        store = Store(tmp_path / "alerts.sqlite3")
        kinds = [r.kind for r in store.audit_trail("demo")]
        store.close()
        assert levels[:2] == ["warning", "critical"]
        assert "emergency" not in levels  # the reduction kept the account out of it
        assert levels[-1] == "ok"
        assert sources["demo"].fills >= 1
        assert "filled" in kinds
        assert "resolved" in kinds
        assert kinds.index("filled") < kinds.index("resolved")


@pytest.fixture
async def bybit() -> AsyncIterator[tuple[FakeBybit, BybitOrders, ExchangeSource]]:
    fake = FakeBybit()
    fake.account.wallet = 1_000.0  # 2 BTC long at 60k: MM 600 (0.5 % tier), ratio 0.6
    fake.account.positions[("BTCUSDT", 0)] = BybitPosition("BTCUSDT", "Buy", 2.0, 60_000.0)
    book = install_bybit_orders(fake)
    async with fake:
        src = ExchangeSource(account_for(fake, BYBIT_KEY, BYBIT_SECRET))
        await src.fetch_snapshot()
        try:
            yield fake, book, src
        finally:
            await src.close()


class TestBybit:
    """Bybit v5 (UTA) through ccxt's create_order: orderLinkId, reduceOnly, positionIdx."""

    async def test_fill_with_order_link_id(
        self, bybit: tuple[FakeBybit, BybitOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that Bybit gets reduceOnly + orderLinkId and the fill is followed to 'closed'."""
        _, book, src = bybit
        trail = Trail()
        fee = 0.00055  # Bybit's taker fee
        ex = _executor(src, tmp_path, trail, venue="bybit", fee_rate=fee, action_ratio=0.5)
        await ex.step(await _report(src), 1_000.0)
        (sent,) = book.received
        assert sent["reduceOnly"] is True
        assert sent["side"] == "Sell"
        assert sent["orderType"] == "Market"
        assert sent["orderLinkId"] == trail.of("sent")[0]["client_id"]
        assert trail.of("filled")[0]["status"] == "closed"
        assert (await _report(src)).margin_ratio <= 0.4

    async def test_rejection_is_an_alert_not_a_retry(
        self, bybit: tuple[FakeBybit, BybitOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that Bybit 110017 (reduce-only qty) is audited, alerted and not retried."""
        _, book, src = bybit
        book.reject = (110017, "current position is zero, cannot fix reduce-only order qty")
        trail = Trail()
        ex = _executor(src, tmp_path, trail, venue="bybit", action_ratio=0.5)
        await ex.step(await _report(src), 1_000.0)
        await ex.step(await _report(src), 1_010.0)
        assert len(book.received) == 1
        assert trail.of("rejected")
        assert trail.alerts

    async def test_lost_answer_is_found_by_order_link_id(
        self, bybit: tuple[FakeBybit, BybitOrders, ExchangeSource], tmp_path: Path
    ) -> None:
        """Test that after a timeout the order is found by orderLinkId and not re-sent."""
        fake, book, src = bybit
        book.lose_response = True  # filled at the venue, the answer comes after the timeout
        src.exchange.timeout = 300
        trail = Trail()
        ex = _executor(src, tmp_path, trail, venue="bybit", action_ratio=0.5)
        await ex.step(await _report(src), 1_000.0)
        assert len(book.received) == 1
        assert trail.kinds() == ["planned", "sent", "filled", "result"]
        assert trail.of("filled")[0]["order_id"] == next(iter(book.orders))
        assert fake.count("/v5/order/realtime") >= 1  # found by orderLinkId, not re-sent

    async def test_hedge_mode_uses_position_idx(self, tmp_path: Path) -> None:
        """Test that a hedge-mode long is closed with positionIdx 1 and no reduceOnly flag."""
        fake = FakeBybit()
        fake.account.wallet = 1_000.0
        fake.account.positions[("BTCUSDT", 1)] = BybitPosition(
            "BTCUSDT", "Buy", 2.0, 60_000.0, idx=1
        )
        book = install_bybit_orders(fake)
        trail = Trail()
        async with fake:
            src = ExchangeSource(account_for(fake, BYBIT_KEY, BYBIT_SECRET))
            try:
                snap = await src.fetch_snapshot()
                assert snap.positions[0].hedged
                ex = _executor(src, tmp_path, trail, venue="bybit", action_ratio=0.5)
                await ex.step(report(snap), 1_000.0)
            finally:
                await src.close()
        (sent,) = book.received
        assert sent["positionIdx"] == 1
        assert "reduceOnly" not in sent
        assert trail.of("filled")
