"""Tests for monitor/logs.py: JSON off a terminal, console on one, no frame locals."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from monitor import logs

SECRET = "api-secret-in-a-local-variable"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    """Leave structlog as we found it."""
    yield
    structlog.reset_defaults()


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
