"""Tests for deploy/: no container engine runs here, so the files are checked against what
the daemon actually reads (settings, CLI, topics, alert fields) and by promtool."""

from __future__ import annotations

import dataclasses
import json
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


def _metrics_source() -> str:
    """Every module of monitor/ops, where the exported series are declared (gauges, metrics)."""
    return "\n".join(
        p.read_text() for p in sorted((DEPLOY.parent / "monitor" / "ops").glob("*.py"))
    )


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
            "run",
            True,
            "/etc/margin-monitor/config.toml",
        )


def _json_list(text: str) -> list[str]:
    value = yaml.safe_load(text)  # exec form is a JSON array, which YAML reads too
    assert isinstance(value, list)
    return [str(v) for v in value]


CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the compose-spec schema it ships (no network)."""
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
        assert set(services) == {
            "mosquitto",
            "margin-monitor",
            "prometheus",
            "alertmanager",
            "grafana",
        }
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
        used = {name for svc in data["services"].values() for name in svc.get("secrets", [])}
        assert used == set(data["secrets"])
        assert set(daemon["secrets"]) == {
            n for n in data["secrets"] if n.startswith(("accounts__", "mqtt__"))
        }
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
        # the broker admits no anonymous client (issue 13): the daemon logs in
        assert settings.mqtt.username == "margin-monitor"
        assert settings.mqtt.password is not None
        assert settings.mqtt.password.get_secret_value() == "value-of-mqtt__password"
        assert settings.metrics.enabled
        assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9464)
        mounts = daemon["volumes"]
        assert "./config.toml:/etc/margin-monitor/config.toml:ro" in mounts
        assert f"state:{image_env()['STATE_DIRECTORY']}" in mounts


class TestBrokerConfigs:
    """The mosquitto configurations deploy/ ships (docs/mqtt-and-commands.md, "Broker settings")."""

    @pytest.mark.parametrize(
        "conf", ["mosquitto.conf", "kubernetes/components/mosquitto/mosquitto.conf"]
    )
    def test_small_messages_are_not_held_for_an_ack(self, conf: str) -> None:
        """Test that the broker sets TCP_NODELAY: without it an alert forwarded right after a
        subscriber's PINGRESP waited ~40 ms for a delayed ACK (bench/alert_latency.py)."""
        lines = [line.strip() for line in (DEPLOY / conf).read_text().splitlines()]
        assert "set_tcp_nodelay true" in lines


class TestHomeAssistant:
    def test_topics_and_fields_exist(self) -> None:
        """Test that the automations use the daemon's topics and real alert message fields."""
        text = (DEPLOY / "home-assistant.yaml").read_text()
        automations = yaml.safe_load(text)["automation"]
        topics = {t["topic"] for a in automations for t in a["trigger"]}
        assert topics == {"margin-monitor/+/alert", "margin-monitor/status"}
        fields = {f.name for f in dataclasses.fields(AlertMessage)}
        used = set(re.findall(r"payload_json\.(\w+)", text))
        used |= set(re.findall(r"\bp\.(\w+)", text))
        assert used
        assert used <= fields, used - fields

    def test_push_text_says_what_happened(self) -> None:
        """Test the push text for real alerts: margin and shock alerts (empty detail) too."""
        automations = yaml.safe_load((DEPLOY / "home-assistant.yaml").read_text())["automation"]
        data = automations[0]["action"][0]["data"]
        texts = {}
        for name, message in _messages().items():
            trigger = {"payload_json": message.to_dict()}
            texts[name] = _render(data["message"], trigger=trigger)
            assert _render(data["title"], trigger=trigger).startswith("main: ")
        assert texts["margin"].startswith("Margin ratio 75.2 % (liquidation at 100 %).")
        assert "Margin balance 2731.9 USDT, free -912.4 USDT." in texts["margin"]
        assert texts["shock"].startswith("A 4.1 % move of all prices liquidates.")
        assert "Margin ratio 75.2 %." in texts["shock"]
        assert texts["down"] == "binanceusdm rejected the API key"

    def test_blueprint_filters_by_level_and_writes_the_text(self) -> None:
        """Test the blueprint: inputs, trigger on the alert topic, level filter, push text."""
        bp = yaml.load((DEPLOY / "home-assistant-blueprint.yaml").read_text(), Loader=_Blueprint)
        assert bp["blueprint"]["domain"] == "automation"
        assert set(bp["blueprint"]["input"]) == {
            "min_level",
            "notify_device",
            "send_resolved",
            "prefix",
        }
        prefix = bp["blueprint"]["input"]["prefix"]["default"]
        topic = _render(bp["trigger"][0]["topic"], prefix=prefix)
        assert topic == "margin-monitor/+/alert"
        variables = bp["variables"]
        action = bp["action"][0]
        messages = _messages()
        for min_level, expected in (
            ("warning", {"margin", "shock", "down", "resolved"}),
            ("critical", {"margin", "down", "resolved"}),
            ("emergency", set()),
        ):
            wanted = {
                name
                for name, m in messages.items()
                if _render(
                    variables["wanted"],
                    p=m.to_dict(),
                    ranks=variables["ranks"],
                    min_level=min_level,
                    send_resolved=True,
                )
                == "True"
            }
            assert wanted == expected, min_level
        margin = messages["margin"].to_dict()
        assert _render(action["title"], p=margin) == "CRITICAL main"
        assert _render(action["message"], p=margin).startswith("Margin ratio 75.2 %")
        resolved = messages["resolved"].to_dict()
        assert _render(action["title"], p=resolved) == "RESOLVED main"
        assert _render(action["message"], p=resolved).startswith(
            "margin ratio back to normal after 61"
        )


def _messages() -> dict[str, AlertMessage]:
    """One real alert per kind of text: margin, shock, source down (with detail), resolved."""
    base = {
        "episode": "e",
        "started_at": 1.0,
        "at": 2.0,
        "duration": 61.0,
        "previous_value": None,
        "currency": "USDT",
        "margin_balance": 2731.9,
        "free_collateral": -912.4,
        "margin_ratio": 0.7523,
    }
    return {
        "margin": AlertMessage(
            id="e.1",
            fingerprint="main/margin_ratio",
            account="main",
            rule="margin_ratio",
            kind="firing",
            level="critical",
            previous_level="warning",
            value=0.7523,
            worst_value=0.7523,
            worst_level="critical",
            threshold=0.7,
            **base,
        ),
        "shock": AlertMessage(
            id="e.2",
            fingerprint="main/shock_to_liquidation",
            account="main",
            rule="shock_to_liquidation",
            kind="firing",
            level="warning",
            previous_level="ok",
            value=0.0412,
            worst_value=0.0412,
            worst_level="warning",
            threshold=0.05,
            **base,
        ),
        "down": AlertMessage(
            id="e.3",
            fingerprint="main/source_down",
            account="main",
            rule="source_down",
            kind="firing",
            level="critical",
            previous_level="ok",
            value=None,
            worst_value=None,
            worst_level="critical",
            detail="binanceusdm rejected the API key",
            episode="d",
            started_at=1.0,
            at=2.0,
            duration=0.0,
            previous_value=None,
        ),
        "resolved": AlertMessage(
            id="e.4",
            fingerprint="main/margin_ratio",
            account="main",
            rule="margin_ratio",
            kind="resolved",
            level="ok",
            previous_level="critical",
            value=0.41,
            worst_value=0.7523,
            worst_level="critical",
            **base,
        ),
    }


def _render(template: str, **context: Any) -> str:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    return " ".join(env.from_string(template).render(**context).split())


class _Blueprint(yaml.SafeLoader):
    """Home Assistant's `!input` tag, kept as its name."""


_Blueprint.add_constructor("!input", lambda loader, node: f"!input {loader.construct_scalar(node)}")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
class TestPrometheus:
    @pytest.mark.parametrize(
        ("what", "file"),
        [
            ("config", "prometheus.yml"),
            ("config", "prometheus-compose.yml"),
            ("rules", "margin-monitor-rules.yml"),
        ],
    )
    def test_promtool_accepts(self, what: str, file: str) -> None:
        """Test that promtool validates the scrape config and the alerting rules."""
        result = subprocess.run(
            ["promtool", "check", what, file],
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_rules_use_exported_metric_names(self) -> None:
        """Test that every margin_monitor_* series in the rules is one monitor/ops exports."""
        rules = (DEPLOY / "margin-monitor-rules.yml").read_text()
        metrics_source = _metrics_source()
        names = set(re.findall(r"margin_monitor_(\w+)", rules))
        assert names
        for name in names:
            assert f'"{name}"' in metrics_source, name


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "margin-monitor.json").read_text()
    )
    return data


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


class TestGrafana:
    def test_dashboard_loads_and_is_well_formed(self) -> None:
        """Test the dashboard JSON: uid, unique panel ids, no overlapping panels, the variable."""
        d = _dashboard()
        assert (d["uid"], d["title"]) == ("margin-monitor", "margin-monitor")
        assert isinstance(d["schemaVersion"], int)
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not mine & cells, f"{p['title']} overlaps another panel"
            cells |= mine
            assert p["targets"], p["title"]
            assert all(t["refId"] for t in p["targets"])
        titles = {p["title"] for p in d["panels"]}
        for wanted in (
            "Margin ratio",
            "Distance to liquidation (move of all prices)",
            "Alert level",
            "Source health",
            "Tick → report latency",
            "Alerts sent and queued",
        ):
            assert wanted in titles
        assert [v["name"] for v in d["templating"]["list"]] == ["account"]

    def test_datasource_and_provisioning_match_compose(self) -> None:
        """Test that panels use the provisioned datasource uid and compose mounts both dirs."""
        source = yaml.safe_load(
            (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
        )["datasources"][0]
        uids = {t["datasource"]["uid"] for p in _dashboard()["panels"] for t in p["targets"]}
        assert uids == {source["uid"]}
        assert source["url"] == "http://prometheus:9090"
        provider = yaml.safe_load(
            (DEPLOY / "grafana" / "provisioning" / "dashboards" / "margin-monitor.yaml").read_text()
        )["providers"][0]
        grafana = compose()["services"]["grafana"]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"] if m.startswith(".")}
        assert (DEPLOY / mounts[provider["options"]["path"]] / "margin-monitor.json").exists()
        assert (DEPLOY / mounts["/etc/grafana/provisioning"]).is_dir()
        prometheus = compose()["services"]["prometheus"]
        for mount in prometheus["volumes"]:
            if mount.startswith("."):
                assert (DEPLOY / mount.split(":")[0]).exists(), mount

    def test_queries_use_exported_metrics(self) -> None:
        """Test that every margin_monitor_* series a panel queries is one monitor/ops exports."""
        metrics_source = _metrics_source()
        names = {n for e in _exprs(_dashboard()) for n in re.findall(r"margin_monitor_(\w+)", e)}
        assert len(names) >= 10
        for name in names:
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            quoted = (f'"{base}"', f'"margin_monitor_{base}"')
            assert any(q in metrics_source for q in quoted), name

    @pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
    def test_queries_are_valid_promql(self, tmp_path: Path) -> None:
        """Test every panel query with promtool, as recording rules (Grafana variables filled)."""
        rules = [
            {
                "record": f"panel:query{i}",
                "expr": e.replace("$__rate_interval", "1m").replace("$account", "demo"),
            }
            for i, e in enumerate(_exprs(_dashboard()))
        ]
        path = tmp_path / "panels.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
        result = subprocess.run(
            ["promtool", "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        broken = tmp_path / "broken.yml"
        broken.write_text(path.read_text().replace("sum by (le)", "sum by (le", 1))
        failed = subprocess.run(
            ["promtool", "check", "rules", str(broken)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert failed.returncode != 0


class TestAlertmanager:
    def test_routes_name_real_rules(self) -> None:
        """Test that every alert name the routes and inhibitions match is one our rules raise."""
        text = (DEPLOY / "alertmanager.yml").read_text()
        rules = yaml.safe_load((DEPLOY / "margin-monitor-rules.yml").read_text())
        alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
        matched = set()
        for expr in re.findall(r"alertname\s*=~?\s*\"?([\w|]+)", text):
            matched |= set(expr.split("|"))
        assert matched
        assert matched <= alerts, matched - alerts
        assert {"MarginMonitorDown", "MarginMonitorBlind"} <= matched
        prom = yaml.safe_load((DEPLOY / "prometheus-compose.yml").read_text())
        targets = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
        assert targets == ["alertmanager:9093"]

    @pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed")
    def test_amtool_accepts(self) -> None:
        """Test that amtool validates the Alertmanager example."""
        result = subprocess.run(
            ["amtool", "check-config", "alertmanager.yml"],
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
