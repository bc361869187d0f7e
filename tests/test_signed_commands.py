"""Tests for monitor/alerts/signed_commands.py: HMAC envelopes, expiry and replay windows."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from monitor.alerts.signed_commands import Command, CommandRefused, envelope, signature, verify

KEY = b"secret"


class TestVerify:
    """What is accepted and what is refused, with the reason."""

    def test_round_trip(self) -> None:
        """Test that a fresh signed command comes back field for field."""
        cmd = Command(
            "silence",
            account="a",
            rule="margin_ratio",
            duration=600.0,
            up_to="critical",
            silence_id="s",
            request_id="r",
        )
        got = verify(envelope(cmd, KEY, 100.0), KEY, now=130.0)
        assert got == Command(
            "silence",
            account="a",
            rule="margin_ratio",
            duration=600.0,
            up_to="critical",
            silence_id="s",
            request_id="r",
            issued_at=100.0,
        )

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            ("nope", "not JSON"),
            ("[1]", "JSON object"),
            ('{"body": "{}", "ts": "x", "sig": "00"}', "numeric 'ts'"),
            ('{"body": 1, "ts": 1, "sig": "00"}', "'body' (string)"),
            ('{"body": "{}", "ts": 100, "sig": "00"}', "bad signature"),
        ],
    )
    def test_malformed(self, raw: str, reason: str) -> None:
        """Test that malformed envelopes are refused with a reason naming the problem."""
        with pytest.raises(CommandRefused, match=re.escape(reason)):
            verify(raw, KEY, now=100.0)

    def test_wrong_key_and_tampered_body(self) -> None:
        """Test that a different key or a changed body fails the signature."""
        raw = envelope(Command("resume", account="a"), KEY, 100.0)
        with pytest.raises(CommandRefused, match="bad signature"):
            verify(raw, b"other", now=100.0)
        data = json.loads(raw)
        data["body"] = data["body"].replace('"a"', '"b"')
        with pytest.raises(CommandRefused, match="bad signature"):
            verify(json.dumps(data), KEY, now=100.0)

    def test_replay_window(self) -> None:
        """Test that a command older than 60 s, or from the future, is refused."""
        raw = envelope(Command("resume", request_id="r"), KEY, 100.0)
        assert verify(raw, KEY, now=160.0).action == "resume"
        with pytest.raises(CommandRefused, match="61 s old"):
            verify(raw, KEY, now=161.0)
        with pytest.raises(CommandRefused, match="future"):
            verify(raw, KEY, now=90.0)

    def test_expiring_token(self) -> None:
        """Test that a token with expires_at works past a minute and stops at expiry."""
        raw = envelope(Command("ack", account="a", expires_at=3700.0, request_id="r"), KEY, 100.0)
        assert verify(raw, KEY, now=3000.0).action == "ack"
        with pytest.raises(CommandRefused, match="token expired"):
            verify(raw, KEY, now=3700.0)

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            ({"action": "liquidate"}, "unknown action"),
            ({"action": "silence"}, "needs a 'duration'"),
            ({"action": "silence", "duration": -1}, "between 0 and 30 days"),
            ({"action": "silence", "duration": 60, "up_to": "ok"}, "up_to"),
            ({"action": "ack", "account": 7}, "'account' must be a str"),
        ],
    )
    def test_bad_fields(self, body: dict[str, object], reason: str) -> None:
        """Test that a signed but invalid body is refused with the field named."""
        text = json.dumps({"request_id": "r", **body})
        raw = json.dumps({"body": text, "ts": 100.0, "sig": signature(KEY, 100.0, text)})
        with pytest.raises(CommandRefused, match=reason):
            verify(raw, KEY, now=100.0)


class TestInterop:
    """Signing without Python."""

    def test_openssl_signature_verifies(self) -> None:
        """Test that `openssl dgst -hmac` over "<ts>\\n<body>" produces an accepted command."""
        body = '{"action":"status","request_id":"sh"}'
        out = subprocess.run(
            ["openssl", "dgst", "-sha256", "-hmac", KEY.decode(), "-hex"],
            input=f"100\n{body}".encode(),
            capture_output=True,
            check=True,
        ).stdout.decode()
        sig = out.strip().split()[-1]
        raw = json.dumps({"body": body, "ts": 100, "sig": sig})
        assert verify(raw, KEY, now=101.0).request_id == "sh"
