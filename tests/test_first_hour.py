"""A new user's first hour (issue 15 §2 and `notify-test`): what they type, what they get.

Everything runs through the real command line (`monitor.cli.app.main` or the installed script);
phone channels go through Apprise to a local HTTP receiver, MQTT to the real mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import ccxt
import pytest

from monitor.cli.app import main
from monitor.cli.notify_test import notify_test_command
from monitor.config.exchange_ids import COMMON_NAMES
from monitor.config.settings import load_settings
from monitor.errors import UserError
from tests.mqtt_broker import Mosquitto
from tests.test_notify import receiver

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "margin-monitor"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or overrides from the environment running the tests."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for name in list(os.environ):
        if name.startswith("MARGIN_MONITOR__"):
            monkeypatch.delenv(name)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR__")}
    return env | extra


class TestDemoOverrides:
    def test_env_reaches_the_builtin_demo(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that MARGIN_MONITOR__ACCOUNTS__DEMO__SIM__SPEED changes the demo with no file."""
        assert load_settings().accounts[0].sim is not None
        assert load_settings().accounts[0].sim.speed == 1.0  # type: ignore[union-attr]
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__DEMO__SIM__SPEED", "10")
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__DEMO__SIM__SCENARIO", "calm")
        sim = load_settings().accounts[0].sim
        assert sim is not None
        assert (sim.speed, sim.scenario) == (10.0, "calm")

    def test_check_shows_the_override(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that `check` without --config prints the overridden demo speed."""
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__DEMO__SIM__SPEED", "10")
        assert main(["check"]) == 0
        assert "demo: sim (scenario selloff, seed 7, 10 ticks/s, speed x10)" in (
            capsys.readouterr().out
        )

    def test_bad_override_is_one_line(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that a wrong demo override is refused like a wrong file value."""
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__DEMO__SIM__SPEED", "fast")
        assert main(["check"]) == 2
        assert capsys.readouterr().err == (
            "margin-monitor: configuration: accounts[0].sim.speed must be a number without "
            "quotes, e.g. speed = 5\n"
        )


class TestNoAccounts:
    def test_file_without_accounts_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Test that a config with no [[accounts]] exits 2 instead of running the demo."""
        config = tmp_path / "mine.toml"
        config.write_text("[alerts]\nwarning = 0.4\ncritical = 0.6\n")
        assert main(["run", "--config", str(config), "--no-tui", "--duration", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("margin-monitor: mine.toml: no [[accounts]] table: add one")
        assert err.count("\n") == 1


class TestCheckChannels:
    def test_every_channel_with_its_target(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that `check` names every channel's target and its secrets only as set/not set."""
        config = tmp_path / "c.toml"
        config.write_text(
            f'state_dir = "{tmp_path}"\n[[accounts]]\nname = "demo"\nexchange = "sim"\n'
            '[mqtt]\nhost = "broker.lan"\nport = 8883\ntls = true\nusername = "mm"\n'
            '[notify]\ncommand_listen = "127.0.0.1:8765"\n'
            "[metrics]\nenabled = true\nport = 9464\n"
        )
        topic, token = "topic-never-printed", "tok-never-printed-1234567890123"
        monkeypatch.setenv("MARGIN_MONITOR__MQTT__PASSWORD", "pw-never-printed")
        monkeypatch.setenv(
            "MARGIN_MONITOR__NOTIFY__CHANNELS",
            json.dumps(
                [
                    {"name": "phone", "url": f"ntfys://ntfy.example.org/{topic}"},
                    {
                        "name": "oncall",
                        "url": f"pover://{token}@{token}",
                        "min_level": "critical",
                        "send_resolved": False,
                    },
                ]
            ),
        )
        monkeypatch.setenv("MARGIN_MONITOR__HEARTBEAT__URL", f"https://hc-ping.com/{token}")
        assert main(["check", "--config", str(config), "--offline"]) == 0
        out = capsys.readouterr().out
        assert "never-printed" not in out
        assert "sinks:" not in out
        assert (
            "  - mqtt: mqtts://broker.lan:8883, topics margin-monitor/..., Home Assistant "
            "discovery on (homeassistant/...); username set, password set, command_secret "
            "not set\n"
        ) in out
        assert (
            "  - notify[phone]: ntfy at ntfy.example.org, from warning (and resolves); "
            "url set (secret)\n" in out
        )
        assert "  - notify[oncall]: Pushover, from critical; url set (secret)\n" in out
        assert (
            "  - command endpoint: listens on 127.0.0.1:8765, ntfy buttons off "
            "(command_url not set)\n" in out
        )
        base = "http://127.0.0.1:9464"
        assert f"  - metrics: status page {base}/, {base}/metrics, {base}/healthz\n" in out
        assert "  - heartbeat: every 60 s to hc-ping.com; url set, fail_url not set\n" in out

    def test_nothing_configured_says_off(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Test that the demo's check says each channel is off and why."""
        assert main(["check"]) == 0
        out = capsys.readouterr().out
        for line in (
            "mqtt: off (no [mqtt] section)",
            "notify: off (no [[notify.channels]])",
            "metrics: off",
            "heartbeat: off",
        ):
            assert f"  - {line}" in out


class TestCtrlC:
    def test_sigint_exits_130(self) -> None:
        """Test that Ctrl-C (SIGINT) stops `run` cleanly with exit code 130, SIGTERM with 0."""
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
            proc = subprocess.Popen(
                [str(EXE), "run", "--no-tui"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(STATE_DIRECTORY=os.environ.get("TMPDIR", "/tmp")),
            )
            try:
                assert proc.stdout is not None
                assert json.loads(proc.stdout.readline())["event"] == "daemon starting"
                time.sleep(0.3)
                proc.send_signal(sig)
                out, err = proc.communicate(timeout=20)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == code, err
            assert json.loads(out.splitlines()[-1])["event"] == "daemon stopped"
            assert "Traceback" not in err


class TestExchangeNames:
    @pytest.mark.parametrize(
        ("written", "ccxt_id"),
        [
            ("binance-futures", "binanceusdm"),
            ("bybit-futures", "bybit"),
            ("mexc-futures", "mexc"),
            ("Binance_COINM", "binancecoinm"),
            ("okex", "okx"),
            ("kucoin futures", "kucoinfutures"),
            ("gateio", "gate"),
        ],
    )
    def test_common_names_point_to_the_ccxt_id(
        self, tmp_path: Path, written: str, ccxt_id: str
    ) -> None:
        """Test that a common futures name is answered with the right ccxt id, not a lookalike."""
        config = tmp_path / "c.toml"
        config.write_text(f'[[accounts]]\nname = "m"\nexchange = "{written}"\n')
        with pytest.raises(UserError) as err:
            load_settings(config)
        assert f"'{written}' is not a ccxt exchange id; write exchange = \"{ccxt_id}\"" in str(
            err.value
        )

    def test_table_names_real_ids_only(self) -> None:
        """Test that every suggestion is a ccxt id and no key is itself a ccxt id."""
        known = set(ccxt.exchanges)
        assert {ccxt_id for ccxt_id, _ in COMMON_NAMES.values()} <= known
        assert not set(COMMON_NAMES) & known


class TestNotifyTest:
    async def test_push_to_every_channel_and_mqtt(
        self,
        tmp_path: Path,
        mosquitto: Mosquitto,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that notify-test reaches an ntfy and a JSON receiver and the broker, per channel."""
        prefix = f"mm-nt-{os.getpid()}"
        async with receiver() as rec, aiomqtt.Client(mosquitto.host, mosquitto.port) as sub:
            await sub.subscribe(f"{prefix}/#", qos=1)
            config = tmp_path / "c.toml"
            config.write_text(
                '[[accounts]]\nname = "demo"\nexchange = "sim"\n'
                f'[mqtt]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
                f'prefix = "{prefix}"\n'
            )
            monkeypatch.setenv(
                "MARGIN_MONITOR__NOTIFY__CHANNELS",
                json.dumps(
                    [
                        {"name": "phone", "url": f"ntfy://127.0.0.1:{rec.port}/my-topic"},
                        {"name": "hook", "url": f"json://127.0.0.1:{rec.port}/hook"},
                    ]
                ),
            )
            code = await asyncio.to_thread(
                notify_test_command, argparse.Namespace(config=str(config))
            )
            async with asyncio.timeout(10):
                message = await anext(aiter(sub.messages))
        out = capsys.readouterr().out
        assert code == 0, out
        assert message.topic.value == f"{prefix}/test"
        assert json.loads(bytes(message.payload))["test"] is True  # type: ignore[arg-type]
        paths = sorted(path for path, _, _ in rec.requests)
        assert paths == ["/", "/hook"]  # ntfy's JSON publish goes to the root, topic inside
        ntfy = json.loads(next(body for path, _, body in rec.requests if path == "/"))
        assert ntfy["topic"] == "my-topic"
        assert "channel 'phone' works" in ntfy["message"]
        lines = out.splitlines()
        assert (
            f"mqtt (mqtt://127.0.0.1:{mosquitto.port}): ok: published on {prefix}/test, "
            "the broker acknowledged it (QoS 1)" in lines
        )
        assert (
            f"notify[phone] (ntfy at 127.0.0.1:{rec.port}): ok: delivered (the service "
            "accepted it; check the phone)" in lines
        )
        assert lines[-1] == "3 of 3 channel(s) delivered the test push"

    async def test_failures_are_said_per_channel(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Test that a refusing service and an absent broker are each FAILED, exit code 1."""
        async with receiver() as rec:
            rec.status = 403
            config = tmp_path / "c.toml"
            config.write_text(
                '[[accounts]]\nname = "demo"\nexchange = "sim"\n'
                '[mqtt]\nhost = "127.0.0.1"\nport = 9\ntimeout = 1\n'
            )
            monkeypatch.setenv(
                "MARGIN_MONITOR__NOTIFY__CHANNELS",
                json.dumps(
                    [{"name": "phone", "url": f"ntfy://127.0.0.1:{rec.port}/t", "timeout": 5}]
                ),
            )
            code = await asyncio.to_thread(
                notify_test_command, argparse.Namespace(config=str(config))
            )
        lines = capsys.readouterr().out.splitlines()
        assert code == 1
        assert any(ln.startswith("mqtt (mqtt://127.0.0.1:9): FAILED: ") for ln in lines)
        assert any(
            ln.startswith(f"notify[phone] (ntfy at 127.0.0.1:{rec.port}): FAILED: not delivered")
            for ln in lines
        )
        assert lines[-1] == "0 of 2 channel(s) delivered the test push"

    def test_no_channel_is_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Test that notify-test on a config without channels exits 2 saying what to add."""
        assert main(["notify-test"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("margin-monitor: no channel to test: add [[notify.channels]]")
        assert err.count("\n") == 1
