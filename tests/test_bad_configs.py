"""The corpus of bad configurations in config/bad/: each is one clear line, exit code 2.

Every file is run through the real command line (`margin-monitor check --config FILE
--offline`); the expected text names the field and what is wrong with it (issue 7, "a corpus
of bad configs").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli.app import main

BAD = Path(__file__).resolve().parent.parent / "config" / "bad"

# file stem -> a fragment the one-line error must contain
EXPECTED: dict[str, str] = {
    "bad_account_name": "accounts[0].name: use letters, digits, '_', '.' and '-' only",
    "bad_command_listen": "notify.command_listen: 'localhost' must be host:port",
    "bad_command_url": "notify.command_url: 'monitor.example.org/command' must be an absolute",
    "bad_mqtt_port": "mqtt.port must be 65535 or less",
    "bad_mqtt_prefix": "mqtt.prefix: an MQTT topic prefix cannot hold the wildcards",
    "bad_notify_url": "notify.channels[0].url: is not an Apprise URL",
    "bad_sim_scenario": "accounts[0].sim.scenario must be 'selloff' or 'calm'",
    "duplicate_account": "account name 'main' is used twice",
    "invalid_toml": "invalid TOML",
    "missing_credentials": "accounts[0]: api_key is not set: binanceusdm needs its api_key",
    "missing_secret": "accounts[0]: secret is not set: bybit needs its secret",
    "missing_account_name": "accounts[0].name is required",
    "negative_stale_after": "accounts[0].stale_after must be greater than 0",
    "no_accounts": "accounts: no account to watch: add an [[accounts]] table",
    "no_accounts_table": "no [[accounts]] table: add one per account to watch",
    "sim_table_on_venue": "the sim table only applies to exchange = 'sim'",
    "thresholds_band_too_wide": "alerts.band (0.3) must be smaller than alerts.warning",
    "thresholds_critical_below_warning": "alerts.critical (0.7) must be greater than",
    "thresholds_emergency_above_one": "alerts.emergency must be 1 or less",
    "thresholds_emergency_below_critical": "alerts.emergency (0.85) must be greater than",
    "thresholds_shock_out_of_order": "alerts.shock_critical (0.1) must be smaller than",
    "unknown_exchange": "did you mean 'binanceusdm'?",
    "unknown_key_account": "accounts[0].stale_afer is not a known setting (did you mean "
    "'stale_after'?)",
    "unknown_key_alerts": "alerts.warn is not a known setting (did you mean 'warning'?)",
    "unknown_key_top": "shock_intervall is not a known setting (did you mean 'shock_interval'?)",
    "wrong_type_accounts": "accounts must be a list of tables: write each entry as [[accounts]]",
    "wrong_type_api_key": "accounts[0].api_key must be text: put the value in double quotes",
    "wrong_type_poll_interval": "accounts[0].poll_interval must be a number without quotes",
}

SECRETS = ("123456789012345", "s3cr3t-never-printed", "k-never-printed", "mytopic-never-printed")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or overrides from the environment running the tests."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for name in list(os.environ):
        if name.startswith("MARGIN_MONITOR__"):
            monkeypatch.delenv(name)


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(path), "--offline"])
    return code, capsys.readouterr().err


class TestCorpus:
    def test_every_file_is_listed(self) -> None:
        """Test that every config/bad file has an expected error (no silent additions)."""
        stems = {p.stem for p in BAD.glob("*.toml")}
        assert stems == set(EXPECTED)
        assert len(stems) >= 20

    @pytest.mark.parametrize("stem", sorted(EXPECTED))
    def test_one_line_error(self, stem: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Test that the file is refused with exit 2 and one line naming the problem."""
        code, err = _check(BAD / f"{stem}.toml", capsys)
        assert code == 2
        assert err.count("\n") == 1, err
        assert err.startswith(f"margin-monitor: {stem}.toml: ")
        assert EXPECTED[stem] in err
        assert not any(secret in err for secret in SECRETS)

    def test_no_library_wording(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Test that no error of the corpus is pydantic's default wording without a fix."""
        defaults = ("Input should be", "String should match", "List should have", "Value error")
        for path in sorted(BAD.glob("*.toml")):
            err = _check(path, capsys)[1]
            assert not any(d in err for d in defaults), err


class TestCommandLine:
    @pytest.mark.parametrize("stem", ["wrong_type_api_key", "thresholds_shock_out_of_order"])
    def test_real_process(self, stem: str) -> None:
        """Test that the installed entry point exits 2 with one stderr line and no traceback."""
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "monitor",
                "check",
                "--config",
                str(BAD / f"{stem}.toml"),
                "--offline",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1
        assert EXPECTED[stem] in proc.stderr
        assert not any(secret in proc.stderr for secret in SECRETS)
