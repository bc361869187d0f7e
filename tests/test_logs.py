"""Tests for monitor/ops/logs.py: JSON off a terminal, console on one, no frame locals."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from monitor.config.settings import load_settings
from monitor.ops import logs

SECRET = "api-secret-in-a-local-variable"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    """Leave structlog and the stdlib root logger as we found them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    logs.set_secrets(())
    root.handlers[:] = handlers
    root.setLevel(level)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fail_with_secret_local() -> None:
    api_secret = SECRET
    raise ValueError(f"bad response ({len(api_secret)} chars)")


class TestConfigure:
    def test_json_off_a_terminal(self) -> None:
        """Test that a pipe gets one JSON object per line with level and UTC timestamp."""
        out = io.StringIO()
        assert logs.configure(stream=out) == "json"
        structlog.get_logger().warning("level changed", account="demo", margin_ratio=0.7)
        line = json.loads(out.getvalue())
        assert (line["event"], line["level"]) == ("level changed", "warning")
        assert line["account"] == "demo"
        assert line["timestamp"].endswith("Z")

    def test_console_on_a_terminal(self) -> None:
        """Test that a terminal gets the human-readable renderer."""
        out = _Tty()
        assert logs.configure(stream=out) == "console"
        structlog.get_logger().info("daemon starting", accounts=["demo"])
        assert "daemon starting" in out.getvalue()
        assert not out.getvalue().lstrip().startswith("{")

    def test_level_filter(self) -> None:
        """Test that records below the configured level are dropped."""
        out = io.StringIO()
        logs.configure(level="warning", stream=out)
        structlog.get_logger().info("quiet")
        structlog.get_logger().error("loud")
        assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["loud"]

    @pytest.mark.parametrize("fmt", ["json", "console"])
    def test_tracebacks_never_show_locals(self, fmt: logs.Format) -> None:
        """Test that an exception log carries the traceback but no frame locals."""
        out = _Tty() if fmt == "console" else io.StringIO()
        logs.configure(fmt=fmt, stream=out)
        try:
            _fail_with_secret_local()
        except ValueError:
            structlog.get_logger().exception("source failed")
        text = out.getvalue()
        assert "_fail_with_secret_local" in text
        assert SECRET not in text


class TestStdlibRouting:
    def test_library_records_render_as_json_lines(self) -> None:
        """Test that stdlib records (aiomqtt's `mqtt`, ccxt, apprise) come out as our JSON."""
        out = io.StringIO()
        logs.configure(stream=out)
        structlog.contextvars.bind_contextvars(account="main")
        try:
            logging.getLogger("mqtt").warning("Connection lost: %s", "timeout")
            logging.getLogger("apprise").info("Sent ntfy notification.")
        finally:
            structlog.contextvars.clear_contextvars()
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
        assert [(x["logger"], x["level"], x["event"]) for x in lines] == [
            ("mqtt", "warning", "Connection lost: timeout"),
            ("apprise", "info", "Sent ntfy notification."),
        ]
        assert all(x["account"] == "main" and x["timestamp"].endswith("Z") for x in lines)

    def test_reconfigure_keeps_one_handler(self) -> None:
        """Test that configuring twice (a reload) does not print every line twice."""
        first, second = io.StringIO(), io.StringIO()
        logs.configure(stream=first)
        logs.configure(stream=second)
        logging.getLogger("ccxt.base.exchange").warning("once")
        structlog.get_logger("monitor.daemon").warning("twice?")
        assert first.getvalue() == ""
        assert len(second.getvalue().splitlines()) == 2


class TestRedaction:
    @pytest.mark.parametrize("fmt", ["json", "console"])
    def test_secrets_never_reach_the_output(self, fmt: logs.Format) -> None:
        """Test that a secret is redacted from structlog fields, stdlib messages and tracebacks."""
        secret = 'k3y"with\\quotes-and-backslash'
        out = _Tty() if fmt == "console" else io.StringIO()
        logs.configure(fmt=fmt, stream=out, secrets=[secret])
        log = structlog.get_logger("monitor.test")
        log.warning("request", url=f"https://api.example/x?signature={secret}")
        logging.getLogger("ccxt").error("GET /fapi?apiKey=%s 401", secret)
        try:
            raise ValueError(f"venue said: {secret!r} is invalid")
        except ValueError:
            log.exception("source failed")
        text = out.getvalue()
        assert logs.REDACTED in text
        assert "source failed" in text
        for form in (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]):
            assert form not in text

    def test_url_secret_parts_are_redacted(self) -> None:
        """Test that the password and token path of a secret Apprise URL are hidden alone too."""
        url = "ntfys://alice:hunter2hunter2@ntfy.example.org/margin-7f3a9c2b41"
        out = io.StringIO()
        logs.configure(stream=out, secrets=[url])
        logging.getLogger("apprise").info("Sending to ntfy topic margin-7f3a9c2b41")
        logging.getLogger("apprise").info("auth hunter2hunter2 rejected")
        text = out.getvalue()
        assert "margin-7f3a9c2b41" not in text
        assert "hunter2hunter2" not in text
        assert text.count(logs.REDACTED) == 2

    def test_short_values_are_left_alone(self) -> None:
        """Test that a 3-character 'secret' does not garble every line."""
        out = io.StringIO()
        logs.configure(stream=out, secrets=["abc"])
        structlog.get_logger().info("abc stays")
        assert json.loads(out.getvalue())["event"] == "abc stays"

    def test_set_secrets_replaces_the_set(self) -> None:
        """Test that a reload's new secrets are redacted and old ones no longer matter."""
        out = io.StringIO()
        logs.configure(stream=out, secrets=["old-secret-1"])
        logs.set_secrets(["new-secret-2"])
        structlog.get_logger().info("x", a="old-secret-1", b="new-secret-2")
        line = json.loads(out.getvalue())
        assert (line["a"], line["b"]) == ("old-secret-1", logs.REDACTED)


class TestSecretsOf:
    def test_every_secret_of_the_settings(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that API keys from credentials, env and the file are all collected."""
        config = tmp_path / "config.toml"
        config.write_text(
            '[[accounts]]\nname = "main"\nexchange = "binanceusdm"\nsecret = "file-secret"\n'
            '[mqtt]\nhost = "127.0.0.1"\n'
        )
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "accounts__main__api_key").write_text("cred-api-key\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        monkeypatch.setenv("MARGIN_MONITOR__MQTT__PASSWORD", "env-mqtt-password")
        found = logs.secrets_of(load_settings(config))
        assert sorted(found) == ["cred-api-key", "env-mqtt-password", "file-secret"]
