"""The HTTP door for signed commands: what a phone's notification button calls.

ntfy's `http` action sends a request from the phone straight to a URL (ntfy docs, "Action
buttons"), so the daemon listens on `notify.command_listen` (put it behind your reverse
proxy or VPN) and accepts `POST /command` with the base64url token (what the buttons send,
ntfy's `body=`) or a raw envelope as the request body, or `?token=` for older buttons. The
token is verified exactly like an MQTT command (HMAC, expiry, replay), so reaching this port
is no more enough than reaching the broker. Whatever the body holds, the answer is a 4xx
with a reason, audited, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from monitor.errors import UserError
from monitor.ops import http_guard

__all__ = ["command_app", "decode_token", "serve_commands"]

log = structlog.get_logger("monitor.command_http")


def decode_token(token: str) -> bytes:
    """The envelope bytes of a base64url token (padding optional)."""
    padded = token + "=" * (-len(token) % 4)
    # validate=True: stray characters are an error, not silently dropped (b64decode's default).
    return base64.b64decode(padded.encode(), altchars=b"-_", validate=True)


def command_app(handler: Callable[[bytes, str], Mapping[str, Any]]) -> web.Application:
    """An aiohttp app with `POST /command` calling `handler` (the pipeline's handle_command)."""

    async def command(request: web.Request) -> web.Response:
        token = request.query.get("token")
        body = await http_guard.read_body(request)
        raw = token.encode("utf-8", "surrogateescape") if token else body
        if token or body.lstrip()[:1] not in (b"{", b""):
            # a token (base64url); what does not decode goes on as is, refused as not JSON
            # by the handler, so it is audited like any other refusal
            with contextlib.suppress(binascii.Error, ValueError):
                raw = decode_token(raw.strip().decode("ascii"))
        reply = handler(raw, f"http:{request.remote}")
        return web.json_response(dict(reply), status=200 if reply.get("ok") else 403)

    app = web.Application(client_max_size=16 * 1024)
    app.router.add_post("/command", command)
    return app


async def serve_commands(
    handler: Callable[[bytes, str], Mapping[str, Any]], listen: str
) -> web.AppRunner:
    """Start listening on `host:port`; returns the runner (call `cleanup()` to stop)."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # "[::1]:8765": an IPv6 literal
    try:
        # timeouts and a connection cap against idle sockets (docs/hardening.md, http_guard.py)
        runner = await http_guard.serve(command_app(handler), host or "127.0.0.1", int(port))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"notify.command_listen {listen!r}: cannot listen there ({reason.lower()}); "
            "use a free host:port, e.g. 127.0.0.1:8765 or [::1]:8765"
        ) from None
    log.info("commands.listening", listen=listen)
    return runner
