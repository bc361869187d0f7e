"""Issue 13 §5: protective actions that cannot run say so everywhere a person looks."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.mqtt_broker import Mosquitto, collecting
from tests.security.harness import Daemon, script

#: The sim's scripted sell-off, fast, with simulated reduce-only orders (the default).
SELLOFF = """
[[accounts]]
name = "demo"
exchange = "sim"

[accounts.sim]
seed = 7
tick_rate = 10
speed = 8.0
scenario = "selloff"
"""


class TestProtectionDisabled:
    """A state directory nobody can write: /proc/<name> (mkdir fails there, root or not)."""

    @pytest.mark.timeout(120)
    async def test_alert_mqtt_state_healthz_and_check(
        self, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """Test that the sell-off raises `protection_disabled` at the action level on MQTT,
        the retained state carries the reason, /healthz answers 503 naming it, and `check`
        says protection is disabled."""
        state = Path("/proc") / f"mm-sec-{secrets.token_hex(4)}"
        daemon = Daemon(mosquitto, tmp_path, accounts=SELLOFF, state=state)
        async with collecting(mosquitto, [f"{daemon.prefix}/#"]) as sub:
            await daemon.start()
            try:

                def alerts() -> list[dict[str, object]]:
                    return [json.loads(m.payload) for m in sub.on(f"{daemon.prefix}/demo/alert")]  # type: ignore[arg-type]

                await sub.wait_for(
                    lambda: any(a["rule"] == "protection_disabled" for a in alerts()), limit=60
                )
                [alert] = [a for a in alerts() if a["rule"] == "protection_disabled"]
                assert alert["kind"] == "firing"
                assert alert["level"] == "critical"  # actions step in at critical by default
                assert "not writable" in str(alert["detail"])

                def states() -> list[dict[str, object]]:
                    return [json.loads(m.payload) for m in sub.on(f"{daemon.prefix}/demo/state")]  # type: ignore[arg-type]

                await sub.wait_for(lambda: any("protection_disabled" in s for s in states()))
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"{daemon.metrics_url}/healthz") as resp,
                ):
                    assert resp.status == 503
                    text = await resp.text()
                assert text.startswith("protection_disabled\ndemo: state directory")
            finally:
                await daemon.stop()
        check = await asyncio.to_thread(
            subprocess.run,
            [str(script()), "check", "--offline", "--config", str(daemon.config)],
            capture_output=True,
            timeout=60,
            env=dict(os.environ),
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert b"actions: DISABLED (protection_disabled" in check.stdout, check.stdout

    def test_check_writable_state_dir(self, tmp_path: Path) -> None:
        """Test that `check` with a writable state directory does not say disabled, and
        leaves nothing behind."""
        config = tmp_path / "c.toml"
        state = tmp_path / "state"
        config.write_text(f'state_dir = "{state}"\n' + SELLOFF)
        check = subprocess.run(
            [str(script()), "check", "--offline", "--config", str(config)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert b"DISABLED" not in check.stdout
        assert b"actions: simulated" in check.stdout
        assert not state.exists()


class TestTerminal:
    """The TUI lists protection turning off and on among the protective-action decisions."""

    def test_dashboard_shows_protection_disabled(self, tmp_path: Path) -> None:
        """Test that the dashboard's action list names protection_disabled with its reason,
        then protection_enabled, and the audit trail holds both."""
        from rich.console import Console

        from monitor.alerts.sink import build_alerts_sink
        from monitor.channels.console import ConsoleSink
        from monitor.core.alert_config import AlertConfig

        alerts = build_alerts_sink(tmp_path, AlertConfig(), None, None)
        alerts.disable_protection("demo", "state directory /x is not writable", "critical")
        screen = Console(record=True, width=160)
        console = ConsoleSink(live=False, console=screen, accounts=["demo"])
        console.alerts = alerts
        screen.print(console.render())
        text = screen.export_text()
        assert "action protection_disabled" in text
        assert "demo: state directory /x is not writable" in text
        alerts.disable_protection("demo", None, "critical")
        kinds = [r.kind for r in alerts.pipeline.store.audit_trail(account="demo")]
        assert kinds == ["protection_disabled", "protection_enabled"]
