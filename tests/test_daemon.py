"""Tests for monitor/daemon/loop.py: the loop, coalescing, sinks, signals, shards, commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from monitor.cli.check import check_command
from monitor.config.settings import AccountSettings, AlertsSettings, Settings, load_settings
from monitor.core.alert_config import ratio_level
from monitor.core.model import (
    AccountSnapshot,
    Collateral,
    Event,
    MarginReport,
    Position,
    PriceTick,
    SourceDown,
)
from monitor.daemon import supervisor
from monitor.daemon.loop import AccountLoop
from monitor.daemon.shards import parse_shard, select_shard, shard_of
from monitor.daemon.supervisor import run_daemon
from monitor.daemon.wiring import build_sinks, open_source
from monitor.errors import UserError
from monitor.protect.sink import ActionsSink
from monitor.sink import Sink
from monitor.sources.sim import SimVenue

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).with_name("margin-monitor")
BTC = "BTC/USDT:USDT"

FAST_CONFIG = """
shock_interval = 0.2
[[accounts]]
name = "demo"
exchange = "sim"
[accounts.sim]
speed = 25
[actions]
simulated = false  # the plain alert ladder; tests/test_executor.py runs the demo with actions
"""


def _cli(
    *args: str, timeout: float = 60, keys: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed entry point, with only the `MARGIN_MONITOR__` variables in `keys`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR__")}
    env |= keys or {}
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class _Recorder(Sink):
    """A sink that keeps everything it is told."""

    name = "recorder"

    def __init__(self) -> None:
        self.reports: list[MarginReport] = []
        self.snapshots: list[AccountSnapshot] = []
        self.events: list[Event] = []
        self.levels: list[tuple[str, str]] = []
        self.started = self.closed = False

    async def start(self, tg: asyncio.TaskGroup) -> None:
        self.started = True

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        self.reports.append(report)
        self.snapshots.append(snapshot)

    async def on_event(self, event: Event) -> None:
        self.events.append(event)

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        self.levels.append((previous, level))

    async def close(self) -> None:
        self.closed = True


class _Broken(_Recorder):
    """A sink that fails on every call."""

    name = "broken"

    async def on_report(self, *args: Any) -> None:
        raise RuntimeError("sink bug")

    async def on_event(self, event: Event) -> None:
        raise RuntimeError("sink bug")


def _book() -> AccountSnapshot:
    return AccountSnapshot(
        "burst",
        "USDT",
        (Collateral("USDT", 1000.0),),
        (Position(BTC, "long", 0.1, 60000.0, 60000.0, leverage=10, mmr=0.004),),
    )


class _Burst:
    """A finite source: `count` ticks in chunks, yielding to the loop only between chunks."""

    def __init__(self, count: int, chunk: int, fail_first: bool = False) -> None:
        self.account = "burst"
        self.count = count
        self.chunk = chunk
        self.fail_first = fail_first
        self.closed = False
        self.prices = [60000.0 - i * 0.5 for i in range(count)]

    async def fetch_snapshot(self) -> AccountSnapshot:
        if self.fail_first:
            self.fail_first = False
            raise ConnectionError("venue unreachable")
        return _book()

    async def events(self) -> AsyncIterator[Event]:
        t0 = time.time()  # after the start-up read: an older tick would be dropped
        for i, price in enumerate(self.prices):
            yield PriceTick("burst", BTC, price, t0 + i * 1e-3)
            if (i + 1) % self.chunk == 0:
                await asyncio.sleep(0)

    async def close(self) -> None:
        self.closed = True


def _settings(**kw: Any) -> Settings:
    return load_settings(None, **kw)


class TestCoalescing:
    async def test_burst_gives_few_recomputes_on_the_last_price(self) -> None:
        """Test that 10 000 ticks cost few recomputes and the last report has the last price."""
        source = _Burst(10_000, chunk=500)
        recorder = _Recorder()
        loops = await run_daemon(
            _settings(shock_interval=0.0),
            [],
            [recorder],
            sources=[source],
            finite=True,
            handle_signals=False,
            duration=30,
        )
        loop = loops[0]
        assert loop.events == 10_000
        assert loop.recomputes <= 25
        assert loop.recomputes == len(recorder.reports)
        assert recorder.snapshots[-1].positions[0].mark_price == source.prices[-1]
        assert recorder.reports[-1].positions[0].mark_price == source.prices[-1]
        assert recorder.reports[-1].shock_to_liquidation is not None
        assert source.closed
        assert recorder.started
        assert recorder.closed

    async def test_shock_solve_is_throttled_but_final(self) -> None:
        """Test that a long shock_interval skips shock solves yet the final report has one."""
        source = _Burst(2_000, chunk=1)
        recorder = _Recorder()
        loops = await run_daemon(
            _settings(shock_interval=3600.0),
            [],
            [recorder],
            sources=[source],
            finite=True,
            handle_signals=False,
            duration=30,
        )
        assert loops[0].shock_solves == 2  # the first report and the final settle
        assert recorder.reports[-1].shock_to_liquidation is not None
        skipped = [r for r in recorder.reports if r.shock_to_liquidation is None]
        assert len(skipped) == len(recorder.reports) - 2


class TestResilience:
    async def test_broken_sink_does_not_stop_the_others(self) -> None:
        """Test that a sink raising on every call is logged while the others still get reports."""
        recorder = _Recorder()
        loops = await run_daemon(
            _settings(),
            [],
            [_Broken(), recorder],
            sources=[_Burst(100, chunk=10)],
            finite=True,
            handle_signals=False,
            duration=30,
        )
        assert loops[0].events == 100
        assert recorder.reports
        assert len(recorder.events) == 100

    async def test_stuck_sink_does_not_block_the_final_settle(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that a sink blocking in on_report bounds the final settle and it is logged."""

        class Stuck(_Recorder):
            name = "stuck"

            async def on_report(self, *args: Any) -> None:
                await asyncio.Event().wait()  # never returns (until cancelled)

        monkeypatch.setattr(supervisor, "SETTLE_LIMIT", 0.3)
        stuck = Stuck()
        with capture_logs() as logs:
            loops = await asyncio.wait_for(
                run_daemon(
                    _settings(),
                    [],
                    [stuck],
                    sources=[_Burst(20, chunk=5)],
                    finite=True,
                    handle_signals=False,
                    duration=30,
                ),
                20,
            )
        assert loops[0].events == 20
        (timed_out,) = [e for e in logs if e["event"].startswith("settle timed out")]
        assert timed_out["accounts"] == ["burst"]
        assert stuck.closed

    async def test_failing_source_reports_down_and_retries(self) -> None:
        """Test that a source failure becomes a SourceDown event, then the source is read again."""
        recorder = _Recorder()
        loops = await run_daemon(
            _settings(),
            [],
            [recorder],
            sources=[_Burst(50, chunk=10, fail_first=True)],
            finite=True,
            handle_signals=False,
            duration=30,
        )
        down = [e for e in recorder.events if isinstance(e, SourceDown)]
        assert len(down) == 1
        assert "venue unreachable" in down[0].reason
        assert loops[0].events == 50
        assert recorder.reports

    async def test_levels_reach_the_sinks(self) -> None:
        """Test that level changes of the sim's sell-off reach on_level in order."""
        settings = load_settings(
            None, accounts=[{"name": "demo", "exchange": "sim", "sim": {"speed": 10_000}}]
        )
        recorder = _Recorder()
        loop_task = run_daemon(
            settings, settings.accounts, [recorder], duration=3, handle_signals=False
        )
        await asyncio.wait_for(loop_task, 20)
        reached = [level for _, level in recorder.levels]
        assert reached[:3] == ["warning", "critical", "emergency"]
        assert reached[-1] == "ok"


async def _until(condition: Any, limit: float = 20.0) -> None:
    for _ in range(int(limit / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


class TestReloadActions:
    async def test_sighup_attaches_restarts_and_drops_executors(self, tmp_path: Path) -> None:
        """Test that SIGHUP gives added accounts an executor, restarts changed ones, drops gone."""
        settings = load_settings(None, state_dir=tmp_path, accounts=[{"name": "a"}])
        first = settings.accounts[0]
        added = AccountSettings.model_validate({"name": "b", "sim": {"speed": 100}})
        changed = AccountSettings.model_validate({"name": "a", "sim": {"seed": 8}})
        plan = [[first, added], [changed, added], [changed]]
        sources = [open_source(first)]
        sinks = build_sinks(settings, tui=False, sources={first.name: sources[0]})
        actions = next(s for s in sinks if isinstance(s, ActionsSink))

        def reload() -> list[AccountSettings]:
            return plan.pop(0)

        def task_names() -> set[str]:
            return {t.get_name() for t in asyncio.all_tasks() if not t.done()}

        async def drive() -> None:
            try:
                await _until(lambda: "sink[actions[a]]" in task_names())
                old_a = actions.executors["a"]
                os.kill(os.getpid(), signal.SIGHUP)  # b joins: it gets an executor that acts
                await _until(lambda: "b" in actions.executors)
                assert "sink[actions[b]]" in task_names()
                await _until(lambda: actions.executors["b"].orders_sent >= 1)
                desk = actions.executors["b"].desk
                assert isinstance(desk, SimVenue)
                assert desk.fills >= 1
                os.kill(os.getpid(), signal.SIGHUP)  # a changed: restarted on its new source
                await _until(lambda: actions.executors.get("a", old_a) is not old_a)
                assert not old_a.lock.held
                assert actions.executors["a"].desk is not old_a.desk
                old_b = actions.executors["b"]
                os.kill(os.getpid(), signal.SIGHUP)  # b removed: its executor and lock go
                await _until(lambda: "b" not in actions.executors)
                assert not old_b.lock.held
                assert "sink[actions[b]]" not in task_names()
            finally:
                os.kill(os.getpid(), signal.SIGTERM)

        driver = asyncio.create_task(drive())
        await asyncio.wait_for(
            run_daemon(settings, settings.accounts, sinks, sources=sources, reload=reload), 60
        )
        await driver  # re-raises an assertion of the driver


class TestLevelsFromSettings:
    @pytest.mark.parametrize(
        ("ratio", "previous", "expected"),
        [
            (0.1, "ok", "ok"),
            (0.5, "ok", "warning"),
            (0.72, "ok", "critical"),
            (0.9, "warning", "emergency"),
            (0.47, "warning", "warning"),  # inside the band: hold
            (0.44, "warning", "ok"),
            (0.66, "critical", "critical"),
            (0.6, "critical", "warning"),
            (0.3, "emergency", "ok"),
            (0.81, "emergency", "emergency"),
            (0.78, "emergency", "critical"),
            (float("inf"), "ok", "emergency"),
        ],
    )
    def test_hysteresis(self, ratio: float, previous: str, expected: str) -> None:
        """Test that levels are entered at a threshold and left only below it minus the band."""
        assert ratio_level(ratio, previous, AlertsSettings().to_config()) == expected


class TestShards:
    def test_parse(self) -> None:
        """Test that K/N parses and anything else is a one-line error."""
        assert parse_shard("2/3") == (2, 3)
        for bad in ("0/3", "4/3", "a/b", "3", "1/0", "-1/2"):
            with pytest.raises(UserError, match=r"^--shard .*expected K/N"):
                parse_shard(bad)

    def test_shards_partition_the_accounts(self) -> None:
        """Test that the shards of N are disjoint, cover every account and are stable."""
        accounts = [AccountSettings(name=f"acct-{i}") for i in range(40)]
        shards = [select_shard(accounts, f"{k}/4") for k in range(1, 5)]
        names = [a.name for shard in shards for a in shard]
        assert sorted(names) == sorted(a.name for a in accounts)
        assert len(names) == len(set(names))
        assert all(shards)  # 40 names spread over 4 shards
        assert shard_of("acct-7", 4) == shard_of("acct-7", 4)
        assert select_shard(accounts, None) == accounts


class TestRunCommand:
    def test_runs_the_sell_off_and_exits_cleanly(self, tmp_path: Path) -> None:
        """Test that `run --duration --no-tui` logs each level crossing and exits 0."""
        config = tmp_path / "fast.toml"
        config.write_text(FAST_CONFIG)
        result = _cli("run", "--config", str(config), "--duration", "4", "--no-tui")
        assert result.returncode == 0, result.stderr
        lines = _json_lines(result.stdout)
        changes = [ln["alert_level"] for ln in lines if ln["event"] == "level changed"]
        assert changes[:3] == ["warning", "critical", "emergency"]
        summaries = [ln for ln in lines if ln["event"] == "account summary"]
        assert summaries
        assert summaries[-1]["account"] == "demo"
        assert summaries[-1]["reports"] < summaries[-1]["events"]
        assert lines[-1]["event"] == "daemon stopped"
        assert "Traceback" not in result.stderr

    def test_sigterm_stops_cleanly(self, tmp_path: Path) -> None:
        """Test that SIGTERM closes the sources and exits 0 with a final summary."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR__")}
        proc = subprocess.Popen(
            [str(EXE), "run", "--no-tui"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert json.loads(first)["event"] == "daemon starting"
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        lines = _json_lines(out)
        stopping = [ln for ln in lines if ln["event"] == "daemon stopping"]
        assert stopping[0]["reason"] == "signal"
        assert lines[-1]["event"] == "daemon stopped"
        assert "Traceback" not in err

    def test_replay_ends_by_itself(self, tmp_path: Path) -> None:
        """Test that `run --replay` streams the file, reports the last prices and exits 0."""
        csv = tmp_path / "prices.csv"
        rows = ["ts,symbol,price"]
        for i in range(20):
            ts = i * 0.01
            rows += [f"{ts},BTC/USDT:USDT,{64000 - i * 100}", f"{ts},ETH/USDT:USDT,3400"]
        csv.write_text("\n".join(rows) + "\n")
        result = _cli("run", "--replay", str(csv), "--no-tui", "--duration", "30")
        assert result.returncode == 0, result.stderr
        lines = _json_lines(result.stdout)
        assert [ln["reason"] for ln in lines if ln["event"] == "daemon stopping"] == [
            "replay finished"
        ]
        summary = [ln for ln in lines if ln["event"] == "account summary"][-1]
        assert summary["events"] == 40

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--shard", "5/2"], "margin-monitor: --shard '5/2': expected K/N"),
            (["--replay", "/nonexistent.csv"], "margin-monitor: /nonexistent.csv: no such file"),
            (["--config", "/nonexistent.toml"], "margin-monitor: /nonexistent.toml: no such file"),
            (["--duration", "-1"], "margin-monitor: --duration -1.0: must be a positive"),
        ],
    )
    def test_bad_arguments_are_one_line(self, args: list[str], message: str) -> None:
        """Test that bad run arguments exit 2 with one line on stderr."""
        result = _cli("run", "--no-tui", *args)
        assert result.returncode == 2
        assert result.stderr.startswith(message), result.stderr
        assert result.stderr.count("\n") == 1


class TestCheckCommand:
    def test_prints_what_would_run(self) -> None:
        """Test that `check` lists accounts, thresholds and sinks of the example config.

        The example keeps its keys out of the file, as its header says: they come from the
        environment; without them `check` refuses it (tests/test_bad_configs.py).
        """
        example = str(ROOT / "config" / "example.toml")
        keys = {
            "MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY": "key-do-not-print",
            "MARGIN_MONITOR__ACCOUNTS__MAIN__SECRET": "secret-do-not-print",
        }
        result = _cli("check", "--config", example, "--offline", keys=keys)
        assert result.returncode == 0, result.stderr
        assert "do-not-print" not in result.stdout + result.stderr
        refused = _cli("check", "--config", example, "--offline")
        assert refused.returncode == 2
        assert "accounts[0]: api_key is not set" in refused.stderr
        out = result.stdout
        assert "main: binanceusdm (production" in out
        assert "practice: sim (scenario selloff, seed 42" in out
        assert "warning 0.5, critical 0.7, emergency 0.85" in out
        assert "  - console: the live view on a terminal" in out

    @pytest.mark.parametrize(
        ("actions", "pause_file", "expected"),
        [
            ("", None, {"practice": "simulated", "main": "dry-run", "other": "off"}),
            ("enabled = true", None, {"practice": "simulated", "main": "live", "other": "off"}),
            (
                "enabled = true",
                "PAUSE.main",
                {"practice": "simulated", "main": "paused", "other": "off"},
            ),
            (
                "enabled = true\npaused = true",
                None,
                {"practice": "paused", "main": "paused", "other": "off"},
            ),
            (
                "simulated = false",
                "PAUSE",
                {"practice": "paused", "main": "paused", "other": "off"},
            ),
            ("simulated = false", None, {"practice": "dry-run", "main": "dry-run", "other": "off"}),
        ],
    )
    def test_prints_each_accounts_action_mode(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        actions: str,
        pause_file: str | None,
        expected: dict[str, str],
    ) -> None:
        """Test that `check` says per account whether actions are live/dry-run/paused/simulated."""
        config = tmp_path / "c.toml"
        config.write_text(
            f'state_dir = "{tmp_path}"\n'
            '[[accounts]]\nname = "practice"\nexchange = "sim"\n'
            '[[accounts]]\nname = "main"\nexchange = "binanceusdm"\n'
            'api_key = "key-do-not-print"\nsecret = "secret-do-not-print"\n'
            '[[accounts]]\nname = "other"\nexchange = "bybit"\n'
            'api_key = "key-do-not-print"\nsecret = "secret-do-not-print"\n'
            f'[actions]\naccounts = ["practice", "main"]\n{actions}\n'
        )
        if pause_file is not None:
            (tmp_path / pause_file).touch()
        args = argparse.Namespace(config=config, offline=True)
        assert check_command(args) == 0
        out = capsys.readouterr().out
        modes = {
            line.split(":", 1)[0].removeprefix("  - "): line.rsplit("; actions: ", 1)[1].split()[0]
            for line in out.splitlines()
            if "; actions: " in line
        }
        assert modes == expected
        assert "do-not-print" not in out
        if pause_file is not None:
            assert str(tmp_path / pause_file) in out

    def test_bad_config_exits_2(self, tmp_path: Path) -> None:
        """Test that `check` on a bad config prints one line and exits 2."""
        config = tmp_path / "bad.toml"
        config.write_text('[[accounts]]\nname = "x"\nexchange = "bybitt"\n')
        result = _cli("check", "--config", str(config))
        assert result.returncode == 2
        assert result.stderr == (
            "margin-monitor: bad.toml: accounts[0].exchange: 'bybitt' is not a ccxt exchange id "
            "(did you mean 'bybit'?)\n"
        )


def test_account_loop_has_no_report_before_data() -> None:
    """Test that a loop without state recomputes to nothing rather than failing."""

    async def go() -> None:
        loop = AccountLoop(_Burst(1, 1), [], AlertsSettings(), 1.0)
        assert await loop.recompute() is None
        assert loop.recomputes == 0

    asyncio.run(go())
