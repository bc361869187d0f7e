"""Tests for monitor/alerts/command_http.py: the endpoint a phone's button calls."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from monitor.alerts.command_http import decode_token, serve_commands
from tests.mqtt_broker import free_port


class TestCommandEndpoint:
    """POST /command with a token or a raw envelope."""

    def test_decode_token_without_padding(self) -> None:
        """Test that base64url tokens decode with or without '=' padding."""
        token = base64.urlsafe_b64encode(b'{"a": 1}').decode().rstrip("=")
        assert decode_token(token) == b'{"a": 1}'

    @pytest.mark.parametrize(("ok", "status"), [(True, 200), (False, 403)])
    async def test_token_and_body(self, ok: bool, status: int) -> None:
        """Test that the handler gets the token's bytes (query or body) or a JSON body, and
        undecodable tokens as they are; the status follows ok."""
        got: list[bytes] = []

        def handler(raw: bytes, source: str) -> dict[str, object]:
            assert source == "http:127.0.0.1"
            got.append(raw)
            return {"ok": ok}

        port = free_port()
        runner = await serve_commands(handler, f"127.0.0.1:{port}")
        try:
            token = base64.urlsafe_b64encode(b"envelope-1").decode().rstrip("=")
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}/command"
                async with http.post(f"{url}?token={token}") as resp:
                    assert resp.status == status
                async with http.post(url, data=token.encode()) as resp:
                    assert (await resp.json()) == {"ok": ok}
                async with http.post(url, data=b'{"x": 1}') as resp:
                    assert resp.status == status
                async with http.post(f"{url}?token=%25%25") as resp:
                    assert resp.status == status
                async with http.get(url) as resp:
                    assert resp.status == 405
        finally:
            await runner.cleanup()
        assert got == [b"envelope-1", b"envelope-1", b'{"x": 1}', b"%%"]
