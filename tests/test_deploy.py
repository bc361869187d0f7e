"""Tests for deploy/: no container engine runs here, so the files are checked against what
the daemon actually reads (settings, CLI, topics, alert fields) and by promtool."""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.alerts.message import AlertMessage
from monitor.cli.app import build_parser
from monitor.config.settings import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    out: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            out = []  # only the final stage is the image
        out.append((word.upper(), rest.strip()))
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in containerfile():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


class TestContainerfile:
    def test_runs_as_a_numeric_non_root_user(self) -> None:
        """Test that the final stage switches to a fixed non-root uid before the entrypoint."""
        users = [rest for word, rest in containerfile() if word == "USER"]
        assert users == ["10001:10001"]

    def test_healthcheck_hits_healthz_on_the_metrics_port(self) -> None:
        """Test that the health check asks /healthz on the port the image enables metrics on."""
        env = image_env()
        checks = [rest for word, rest in containerfile() if word == "HEALTHCHECK"]
        assert len(checks) == 1
        assert f"http://127.0.0.1:{env['MARGIN_MONITOR__METRICS__PORT']}/healthz" in checks[0]
        assert env["MARGIN_MONITOR__METRICS__ENABLED"] == "true"

    def test_command_is_the_daemon_without_tui(self) -> None:
        """Test that ENTRYPOINT + CMD parse with the real CLI as `run --no-tui --config`."""
        instructions = dict(containerfile())
        argv = [*_json_list(instructions["ENTRYPOINT"]), *_json_list(instructions["CMD"])]
        assert argv[0] == "margin-monitor"
        args = build_parser().parse_args(argv[1:])
        assert (args.command, args.no_tui, args.config) == (
            "run", True, "/etc/margin-monitor/config.toml",
        )  # fmt: skip


def _json_list(text: str) -> list[str]:
    value = yaml.safe_load(text)  # exec form is a JSON array, which YAML reads too
    assert isinstance(value, list)
    return [str(v) for v in value]


CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the compose-spec schema it ships (no network)."""
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


class TestCompose:
    def test_valid_against_the_compose_spec(self) -> None:
        """Test that compose.yaml validates against the official compose-spec JSON schema."""
        result = check_compose_schema(DEPLOY / "compose.yaml")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_schema_check_would_catch_a_typo(self, tmp_path: Path) -> None:
        """Test that the schema check can fail: a misspelt service key is rejected."""
        broken = tmp_path / "compose.yaml"
        broken.write_text(
            (DEPLOY / "compose.yaml").read_text().replace("depends_on:", "depend_on:")
        )
        result = check_compose_schema(broken)
        assert result.returncode != 0
        assert "depend_on" in result.stdout + result.stderr

    def test_services_and_ordering(self) -> None:
        """Test that the daemon waits for a healthy broker and restarts on its own."""
        services = compose()["services"]
        assert set(services) == {"mosquitto", "margin-monitor"}
        daemon = services["margin-monitor"]
        assert daemon["depends_on"] == {"mosquitto": {"condition": "service_healthy"}}
        assert "healthcheck" in services["mosquitto"]
        assert daemon["restart"] == "unless-stopped"
        assert daemon["read_only"] is True
        assert daemon["cap_drop"] == ["ALL"]

    def test_ports_stay_on_loopback(self) -> None:
        """Test that neither the broker nor the metrics endpoint is published beyond loopback."""
        for service in compose()["services"].values():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), port

    def test_secrets_are_declared_and_read_by_settings(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the compose secrets, image env and config.toml load as the daemon would."""
        data = compose()
        daemon = data["services"]["margin-monitor"]
        assert set(daemon["secrets"]) == set(data["secrets"])
        creds = tmp_path / "run-secrets"
        creds.mkdir()
        for name in daemon["secrets"]:
            (creds / name).write_text(f"value-of-{name}\n")
        env = {**image_env(), **daemon["environment"]}
        assert env["CREDENTIALS_DIRECTORY"] == "/run/secrets"
        env["CREDENTIALS_DIRECTORY"] = str(creds)
        env["STATE_DIRECTORY"] = str(tmp_path / "state")
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = load_settings(DEPLOY / "config.toml")
        account = settings.accounts[0]
        assert account.api_key is not None
        assert account.api_key.get_secret_value() == "value-of-accounts__main__api_key"
        assert settings.mqtt is not None
        assert (settings.mqtt.host, settings.mqtt.port) == ("mosquitto", 1883)
        assert settings.metrics.enabled
        assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9464)
        mounts = daemon["volumes"]
        assert "./config.toml:/etc/margin-monitor/config.toml:ro" in mounts
        assert f"state:{image_env()['STATE_DIRECTORY']}" in mounts


class TestHomeAssistant:
    def test_topics_and_fields_exist(self) -> None:
        """Test that the automations use the daemon's topics and real alert message fields."""
        text = (DEPLOY / "home-assistant.yaml").read_text()
        automations = yaml.safe_load(text)["automation"]
        topics = {t["topic"] for a in automations for t in a["trigger"]}
        assert topics == {"margin-monitor/+/alert", "margin-monitor/status"}
        fields = {f.name for f in dataclasses.fields(AlertMessage)}
        used = set(re.findall(r"payload_json\.(\w+)", text))
        assert used
        assert used <= fields, used - fields


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
class TestPrometheus:
    @pytest.mark.parametrize(
        ("what", "file"), [("config", "prometheus.yml"), ("rules", "margin-monitor-rules.yml")]
    )
    def test_promtool_accepts(self, what: str, file: str) -> None:
        """Test that promtool validates the scrape config and the alerting rules."""
        result = subprocess.run(
            ["promtool", "check", what, file], cwd=DEPLOY, capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def test_rules_use_exported_metric_names(self) -> None:
        """Test that every margin_monitor_* series in the rules is one metrics.py exports."""
        rules = (DEPLOY / "margin-monitor-rules.yml").read_text()
        metrics_source = (DEPLOY.parent / "monitor" / "ops" / "metrics.py").read_text()
        names = set(re.findall(r"margin_monitor_(\w+)", rules))
        assert names
        for name in names:
            assert f'"{name}"' in metrics_source, name
