"""Tests for systemd/*.service: `systemd-analyze verify` is silent, security scores <= 1.5,
and what the units promise (notify, watchdog, credentials) matches what the daemon reads."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli.app import build_parser
from monitor.config.settings import load_settings

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 1.5
INSTALLED_BINARY = "/opt/margin-monitor/bin/margin-monitor"

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze missing (.ci/deps installs it)"
)


def _console_script() -> str:
    """The margin-monitor of the venv running the tests: verify needs ExecStart to exist."""
    path = Path(sys.executable).parent / "margin-monitor"
    assert path.exists(), f"{path} missing: pip install -e . first"
    return str(path)


def render(unit: str, directory: Path, extra: str = "") -> Path:
    """A copy of `unit` whose ExecStart points at this venv (plus `extra` lines)."""
    text = (UNITS / unit).read_text()
    assert INSTALLED_BINARY in text
    target = directory / unit
    target.write_text(text.replace(INSTALLED_BINARY, _console_script()) + extra)
    return target


def instance_name(unit: str) -> str:
    return unit.replace("@.", "@demo.")


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def directives(unit: str) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit (comments and sections ignored)."""
    out: dict[str, list[str]] = {}
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("unit", ["margin-monitor.service", "margin-monitor@.service"])
class TestAnalyze:
    def test_verify_is_silent(self, unit: str, tmp_path: Path) -> None:
        """Test that `systemd-analyze verify` prints nothing (it exits 0 even on warnings)."""
        render(unit, tmp_path)
        result = analyze("verify", str(tmp_path / instance_name(unit)), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout + result.stderr == ""

    def test_verify_would_catch_a_typo(self, unit: str, tmp_path: Path) -> None:
        """Test that the silence check above can fail: a misspelt directive is reported."""
        render(unit, tmp_path, extra="[Service]\nWatchdogSecs=30s\n")
        result = analyze("verify", str(tmp_path / instance_name(unit)), cwd=tmp_path)
        assert "WatchdogSecs" in result.stdout + result.stderr

    def test_security_exposure_at_most_1_5(self, unit: str, tmp_path: Path) -> None:
        """Test that the offline security analysis scores the unit <= 1.5 ("OK")."""
        render(unit, tmp_path)
        path = str(tmp_path / instance_name(unit))
        result = analyze("security", "--offline=true", path, cwd=tmp_path)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert found, result.stdout + result.stderr
        assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout
        threshold = analyze(
            "security",
            "--offline=true",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            path,
            cwd=tmp_path,
        )
        assert threshold.returncode == 0

    def test_service_contract(self, unit: str) -> None:
        """Test the directives the daemon relies on: notify, watchdog, restart, sandbox dirs."""
        d = directives(unit)
        assert d["Type"] == ["notify"]
        assert d["NotifyAccess"] == ["main"]
        assert d["WatchdogSec"] == ["30s"]
        assert d["Restart"] == ["on-failure"]
        assert d["RestartPreventExitStatus"] == ["2"]  # cli.py: a UserError exits 2
        assert d["DynamicUser"] == ["yes"]
        assert d["StateDirectory"][0].startswith("margin-monitor")
        assert d["ConfigurationDirectory"] == ["margin-monitor"]
        assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]

    def test_exec_start_is_a_valid_command_line(self, unit: str) -> None:
        """Test that ExecStart parses with the real CLI: `run`, no TUI, a config under /etc."""
        argv = shlex.split(directives(unit)["ExecStart"][0])
        assert argv[0] == INSTALLED_BINARY
        args = build_parser().parse_args(argv[1:])
        assert args.command == "run"
        assert args.no_tui
        expected = (
            "/etc/margin-monitor/%i.toml" if "@" in unit else ("/etc/margin-monitor/config.toml")
        )
        assert args.config == expected


class TestCredentials:
    def test_credential_ids_are_what_settings_read(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that files named by the unit's LoadCredential= IDs fill the account's keys."""
        ids = [v.split(":", 1)[0] for v in directives("margin-monitor.service")["LoadCredential"]]
        assert ids == ["accounts__main__api_key", "accounts__main__secret"]
        creds = tmp_path / "credentials"
        creds.mkdir()
        for cred_id in ids:
            (creds / cred_id).write_text(f"value-of-{cred_id}\n")
        config = tmp_path / "config.toml"
        config.write_text('[[accounts]]\nname = "main"\nexchange = "binanceusdm"\n')
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        account = load_settings(config).accounts[0]
        assert account.api_key is not None
        assert account.secret is not None
        assert account.api_key.get_secret_value() == "value-of-accounts__main__api_key"
        assert account.secret.get_secret_value() == "value-of-accounts__main__secret"


class TestInstallComment:
    def test_unit_says_how_it_is_really_installed(self) -> None:
        """Test that the unit's install comment matches docs/service.md, not a PyPI install."""
        header = [
            ln
            for ln in (UNITS / "margin-monitor.service").read_text().splitlines()
            if ln.startswith("#")
        ]
        installs = [ln for ln in header if "pip install" in ln]
        assert installs, "the unit's comment no longer says how to install"
        assert not any(re.search(r"pip install margin-monitor\b", ln) for ln in installs)
        docs = (UNITS.parent / "docs" / "service.md").read_text()
        for line in installs:
            target = line.split("pip install", 1)[1].split()[0]
            assert f"pip install {target}" in docs
            assert f"git clone <your copy of this repository> {target}" in docs
