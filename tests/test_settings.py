"""Tests for monitor/config/settings.py: TOML, env overrides, credentials, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from monitor.config.settings import Settings, load_settings
from monitor.core.alert_config import AlertConfig
from monitor.errors import UserError

SECRET = "s3cr3t-KEY-do-not-print"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without our env vars or a credentials directory."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("MARGIN_MONITOR__") or name in (
            "CREDENTIALS_DIRECTORY",
            "STATE_DIRECTORY",
        ):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SIM = '[[accounts]]\nname = "demo"\nexchange = "sim"\n'
LIVE = """
[[accounts]]
name = "main"
exchange = "binanceusdm"
api_key = "from-file"
secret = "secret-from-file"
poll_interval = 7
[accounts.ccxt]
timeout = 5000
"""


class TestDefaults:
    def test_no_file_is_the_sim_demo(self) -> None:
        """Test that no configuration gives one sim account named demo."""
        settings = load_settings(None)
        assert [(a.name, a.exchange) for a in settings.accounts] == [("demo", "sim")]
        assert settings.accounts[0].sim is not None
        assert settings.accounts[0].sim.tick_rate == 10.0

    def test_demo_toml_equals_the_default(self) -> None:
        """Test that config/demo.toml spells out exactly the embedded default."""
        demo = Path(__file__).parent.parent / "config" / "demo.toml"
        assert load_settings(demo) == load_settings(None)

    def test_example_toml_is_valid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that the shipped example validates once its keys come from the environment."""
        example = Path(__file__).parent.parent / "config" / "example.toml"
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY", "k")
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__MAIN__SECRET", SECRET)
        names = [a.name for a in load_settings(example).accounts]
        assert names == ["main", "practice"]

    def test_state_dir_from_systemd(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that $STATE_DIRECTORY (first entry) is read at load time."""
        monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mm:/var/lib/other")
        assert load_settings(None).state_dir == Path("/var/lib/mm")

    def test_alerts_feed_the_rule_engine(self, tmp_path: Path) -> None:
        """Test that the alerts section becomes the AlertConfig with the same values."""
        path = _write(tmp_path, SIM + "[alerts]\nwarning = 0.4\nshock_emergency = 0.01\n")
        config = load_settings(path).alerts.to_config()
        assert isinstance(config, AlertConfig)
        assert (config.warning, config.critical, config.shock_emergency) == (0.4, 0.7, 0.01)


class TestSources:
    def test_toml_values(self, tmp_path: Path) -> None:
        """Test that TOML values reach the settings, including the ccxt table."""
        account = load_settings(_write(tmp_path, LIVE)).accounts[0]
        assert account.exchange == "binanceusdm"
        assert account.poll_interval == 7
        assert account.ccxt == {"timeout": 5000}
        assert account.api_key is not None
        assert account.api_key.get_secret_value() == "from-file"

    def test_env_overrides_sections(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that MARGIN_MONITOR__ALERTS__WARNING overrides the file."""
        monkeypatch.setenv("MARGIN_MONITOR__ALERTS__WARNING", "0.3")
        path = _write(tmp_path, SIM + "[alerts]\nwarning = 0.6\n")
        assert load_settings(path).alerts.warning == 0.3

    def test_env_overrides_an_account_by_name(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that MARGIN_MONITOR__ACCOUNTS__MAIN__* overrides that account only."""
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY", "from-env")
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__MAIN__POLL_INTERVAL", "2.5")
        other = '[[accounts]]\nname = "other"\nexchange = "bybit"\napi_key = "o"\nsecret = "s"\n'
        accounts = load_settings(_write(tmp_path, LIVE + "\n" + other)).accounts
        assert accounts[0].api_key is not None
        assert accounts[0].api_key.get_secret_value() == "from-env"
        assert accounts[0].poll_interval == 2.5
        assert accounts[1].api_key is not None
        assert accounts[1].api_key.get_secret_value() == "o"
        assert accounts[1].poll_interval == 5.0

    def test_credentials_directory(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that systemd credentials fill secrets and sections, trailing newline stripped."""
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "accounts__main__secret").write_text(SECRET + "\n")
        (creds / "alerts__band").write_text("0.02\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        settings = load_settings(_write(tmp_path, LIVE))
        assert settings.accounts[0].secret is not None
        assert settings.accounts[0].secret.get_secret_value() == SECRET
        assert settings.alerts.band == 0.02

    def test_precedence(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test init > env > credentials > TOML, for sections and for accounts."""
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "accounts__main__api_key").write_text("from-creds")
        (creds / "alerts__warning").write_text("0.45")
        (creds / "alerts__critical").write_text("0.75")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        alerts = "[alerts]\nwarning = 0.4\ncritical = 0.72\nemergency = 0.9\n"
        path = _write(tmp_path, LIVE + alerts)
        settings = load_settings(path)
        assert settings.accounts[0].api_key is not None
        assert settings.accounts[0].api_key.get_secret_value() == "from-creds"
        assert (settings.alerts.warning, settings.alerts.critical) == (0.45, 0.75)
        assert settings.alerts.emergency == 0.9
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY", "from-env")
        monkeypatch.setenv("MARGIN_MONITOR__ALERTS__WARNING", "0.5")
        settings = load_settings(path, shock_interval=0.0)
        assert settings.accounts[0].api_key is not None
        assert settings.accounts[0].api_key.get_secret_value() == "from-env"
        assert settings.alerts.warning == 0.5
        assert settings.shock_interval == 0.0
        assert load_settings(path, alerts={"warning": 0.1}).alerts.warning == 0.1

    def test_env_is_read_at_load_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that a change of environment after import is seen by the next load."""
        assert load_settings(None).alerts.critical == 0.7
        monkeypatch.setenv("MARGIN_MONITOR__ALERTS__CRITICAL", "0.8")
        assert load_settings(None).alerts.critical == 0.8


BAD = [
    (
        '[[accounts]]\nname = "a"\nexchange = "sim"\n'
        '[[accounts]]\nname = "b"\nexchange = "binanse"\n',
        "config.toml: accounts[1].exchange: 'binanse' is not a ccxt exchange id "
        "(did you mean 'binance'?)",
    ),
    (
        "[alerts]\nwarning = 0.8\n",
        "config.toml: alerts.critical (0.7) must be greater than alerts.warning (0.8)",
    ),
    (
        "[alerts]\nemergency = 0.6\n",
        "config.toml: alerts.emergency (0.6) must be greater than alerts.critical (0.7)",
    ),
    ("[alerts]\nwarn_ratoi = 0.5\n", "config.toml: alerts.warn_ratoi is not a known setting"),
    (
        '[[accounts]]\nname = "a"\napi_keyy = "x"\n',
        "config.toml: accounts[0].api_keyy is not a known setting (did you mean 'api_key'?)",
    ),
    (
        '[[accounts]]\nname = "a"\n[[accounts]]\nname = "a"\n',
        "config.toml: accounts: account name 'a' is used twice",
    ),
    ('[[accounts]]\nexchange = "sim"\n', "config.toml: accounts[0].name is required"),
    (
        '[[accounts]]\nname = "a"\npoll_interval = "soon"\n',
        "config.toml: accounts[0].poll_interval must be a number without quotes",
    ),
    (
        '[[accounts]]\nname = "a"\nexchange = "bybit"\n[accounts.sim]\nseed = 1\n',
        "config.toml: accounts[0]: the sim table only applies to exchange = 'sim'",
    ),
    (
        "[alerts]\nshock_critical = 0.2\n",
        "config.toml: alerts.shock_critical (0.2) must be smaller than",
    ),
    ("accounts = []\n", "config.toml: accounts: no account to watch: add an [[accounts]]"),
    ("[alerts\nwarning = 1\n", "config.toml: invalid TOML:"),
    (
        '[[accounts]]\nname = "a"\n[accounts.sim]\nspeed = 0\n',
        "config.toml: accounts[0].sim.speed must be greater than 0",
    ),
]


class TestErrors:
    @pytest.mark.parametrize(("text", "expected"), BAD)
    def test_bad_config_is_one_line(self, tmp_path: Path, text: str, expected: str) -> None:
        """Test that each bad configuration gives one line naming the field."""
        with pytest.raises(UserError) as info:
            load_settings(_write(tmp_path, text))
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(expected), message

    def test_missing_file(self, tmp_path: Path) -> None:
        """Test that a missing file names the path and the fix."""
        with pytest.raises(UserError, match=r"no such file; pass an existing TOML file"):
            load_settings(tmp_path / "nope.toml")

    def test_bad_env_names_the_field(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that a bad environment override is one line naming the field too."""
        monkeypatch.setenv("MARGIN_MONITOR__ALERTS__WARNING", "lots")
        with pytest.raises(UserError, match=r"^configuration: alerts\.warning must be a number"):
            load_settings(None)

    def test_several_problems_are_counted(self, tmp_path: Path) -> None:
        """Test that further errors are counted on the same line, not dumped."""
        path = _write(tmp_path, "[alerts]\nwarn = 1\nband = -1\n")
        with pytest.raises(UserError, match=r"\(and 1 more problem\)$"):
            load_settings(path)


class TestCredentials:
    """A live account is refused at load time when its venue's signing keys are missing."""

    @pytest.mark.parametrize(
        ("exchange", "keys", "missing"),
        [
            ("binanceusdm", {}, "api_key"),
            ("binanceusdm", {"api_key": "k"}, "secret"),
            ("bybit", {"secret": SECRET}, "api_key"),
            ("okx", {"api_key": "k", "secret": SECRET}, "password"),
            ("bitget", {"api_key": "k", "secret": SECRET, "password": ""}, "password"),
            ("hyperliquid", {"secret": SECRET}, "api_key"),
        ],
    )
    def test_missing_key_is_named(
        self, tmp_path: Path, exchange: str, keys: dict[str, str], missing: str
    ) -> None:
        """Test that the error names the missing key, the venue and all three ways to give it."""
        lines = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
        path = _write(tmp_path, f'[[accounts]]\nname = "Desk-1"\nexchange = "{exchange}"\n{lines}')
        with pytest.raises(UserError) as info:
            load_settings(path)
        message = str(info.value)
        assert f"accounts[0]: {missing} is not set: {exchange} needs its" in message
        assert f"MARGIN_MONITOR__ACCOUNTS__DESK_1__{missing.upper()}" in message
        assert f"accounts__desk_1__{missing}" in message
        assert "\n" not in message
        assert SECRET not in message

    def test_hyperliquid_reads_with_the_wallet_address_alone(self, tmp_path: Path) -> None:
        """Test that a Hyperliquid account without an agent key (read-only) is accepted."""
        path = _write(
            tmp_path,
            '[[accounts]]\nname = "hl"\nexchange = "hyperliquid"\n'
            'api_key = "0x0000000000000000000000000000000000000001"\n',
        )
        assert load_settings(path).accounts[0].secret is None

    def test_keys_from_every_source_are_accepted(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the ccxt table, the environment and credential files all satisfy it."""
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "accounts__c__secret").write_text(SECRET + "\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__C__API_KEY", "from-env")
        text = (
            '[[accounts]]\nname = "t"\nexchange = "bybit"\n'
            '[accounts.ccxt]\napiKey = "k"\nsecret = "s"\n'
            '[[accounts]]\nname = "c"\nexchange = "okx"\npassword = "p"\n'
        )
        accounts = load_settings(_write(tmp_path, text)).accounts
        assert [a.name for a in accounts] == ["t", "c"]
        assert accounts[1].secret is not None
        assert accounts[1].secret.get_secret_value() == SECRET

    def test_sim_needs_no_keys(self, tmp_path: Path) -> None:
        """Test that the embedded simulated venue is never asked for keys."""
        path = _write(tmp_path, '[[accounts]]\nname = "s"\nexchange = "sim"\n')
        assert load_settings(path).accounts[0].api_key is None


class TestSecrets:
    def test_secret_not_in_repr_or_dump(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that a secret never appears in repr, str or a JSON dump of the settings."""
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__MAIN__SECRET", SECRET)
        settings = load_settings(_write(tmp_path, LIVE))
        assert settings.accounts[0].secret is not None
        assert settings.accounts[0].secret.get_secret_value() == SECRET
        for text in (repr(settings), str(settings), settings.model_dump_json()):
            assert SECRET not in text

    def test_secret_not_in_logs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Test that logging the settings object does not reveal the secret."""
        monkeypatch.setenv("MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY", SECRET)
        settings = load_settings(_write(tmp_path, LIVE))
        with structlog.testing.capture_logs() as logs:
            structlog.get_logger().info("loaded", settings=settings)
        assert SECRET not in repr(logs)

    def test_secret_not_in_check_output(self, tmp_path: Path) -> None:
        """Test that `check --offline` says a key is set without printing it."""
        path = _write(tmp_path, LIVE.replace("from-file", SECRET))
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "check", "--config", str(path), "--offline"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "api_key set" in result.stdout
        assert SECRET not in result.stdout + result.stderr

    def test_secret_not_in_validation_error(self, tmp_path: Path) -> None:
        """Test that a wrongly typed secret is reported without its value."""
        path = _write(tmp_path, LIVE.replace('"from-file"', f'["{SECRET}"]'))
        with pytest.raises(UserError) as info:
            load_settings(path)
        assert "accounts[0].api_key" in str(info.value)
        assert SECRET not in str(info.value)


def test_settings_forbid_unknown_top_level(tmp_path: Path) -> None:
    """Test that an unknown top-level key is an error (Settings forbids extras)."""
    assert Settings.model_config.get("extra") == "forbid"
    with pytest.raises(UserError, match=r"^config.toml: stat_dir is not a known setting"):
        load_settings(_write(tmp_path, 'stat_dir = "/tmp"\n'))
