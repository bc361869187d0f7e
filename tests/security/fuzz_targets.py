"""Fuzz targets of issue 13: signed-command envelopes and raw HTTP on the daemon's ports.

Used by bench/fuzz.py (`--only envelope`, `--only http`) and tests/security/test_fuzz.py.
A check returns "accepted" or "rejected"; anything else it raises is a crash.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from hypothesis import strategies as st

from monitor.alerts.command_http import command_app
from monitor.alerts.pipeline import AlertPipeline
from monitor.alerts.signed_commands import Command, envelope, signature
from monitor.core.alert_config import AlertConfig
from monitor.ops import http_guard
from monitor.store import Store

__all__ = ["EnvelopeChecker", "HttpChecker", "envelope_inputs", "http_inputs"]

KEY = b"fuzz-key"
NOW = 1_000_000.0
ACTIONS = ["ack", "silence", "unsilence", "pause", "resume", "status", "liquidate", ""]

_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.just("\ud800"),
    st.just("é" * 70),
)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"action": draw(st.sampled_from(ACTIONS) | st.text(max_size=8))}
    for key, value in (
        ("request_id", st.text(max_size=200) | _scalar),
        ("account", st.sampled_from(["acct", "other", ""]) | _scalar),
        ("rule", st.sampled_from(["margin_ratio", "x"]) | _scalar),
        ("duration", st.floats(allow_nan=True) | st.integers() | _scalar),
        ("up_to", st.sampled_from(["warning", "critical", "emergency", "ok"]) | _scalar),
        ("silence_id", st.text(max_size=20) | _scalar),
        ("expires_at", st.floats(allow_nan=True) | st.integers(max_value=10**30) | _scalar),
        ("episode", st.text(max_size=20) | _scalar),
    ):
        if draw(st.booleans()):
            body[key] = draw(value)
    return body


@st.composite
def envelope_inputs(draw: st.DrawFn) -> bytes:
    """Raw command messages: signed mutations of valid ones, forged and broken envelopes."""
    kind = draw(st.integers(0, 5))
    if kind == 0:  # a valid command, fresh request id
        cmd = Command(
            draw(st.sampled_from(ACTIONS[:6])),
            account="acct",  # type: ignore[arg-type]
            duration=60.0,
            silence_id="s",
            request_id=draw(st.uuids()).hex,
        )
        return envelope(cmd, KEY, NOW).encode()
    if kind == 1:  # a signed body of anything
        text = json.dumps(draw(_body() | _json), allow_nan=True)
        ts = draw(st.sampled_from([NOW, NOW - 30, NOW - 61, NOW + 10]))
        return json.dumps({"body": text, "ts": ts, "sig": signature(KEY, ts, text)}).encode()
    if kind == 2:  # envelope fields of any type
        outer = {k: draw(_json) for k in ("body", "ts", "sig") if draw(st.booleans())}
        return json.dumps(outer, allow_nan=True).encode()
    if kind == 3:  # deep nesting
        depth = draw(st.integers(10, 5000))
        return b"[" * depth + b"]" * depth
    if kind == 4:  # signature edge cases
        text = json.dumps({"action": "status", "request_id": "r"})
        sig = draw(
            st.sampled_from(["é" * 64, "0" * 63, "G" * 64, "", "\ud800" * 64])
            | st.text(max_size=70)
        )
        raw = json.dumps({"body": text, "ts": NOW, "sig": sig})
        return raw.encode("utf-8", "surrogatepass")
    return draw(st.binary(max_size=300))


class EnvelopeChecker:
    """One pipeline (in-memory store) takes every input, as the daemon's would."""

    def __init__(self) -> None:
        self.pipeline = AlertPipeline(
            Store(None), AlertConfig(), command_secret=KEY, clock=lambda: NOW, accounts=["acct"]
        )

    def __call__(self, raw: bytes) -> str:
        reply = self.pipeline.handle_command(raw, now=NOW)
        json.dumps(reply)  # the reply must be publishable
        if not reply["ok"]:
            error = str(reply["error"])
            if "\n" in error or len(error) > 400:
                raise AssertionError(f"refusal is not one short line: {error[:100]!r}")
            return "rejected"
        return "accepted"

    def close(self) -> None:
        self.pipeline.flush()
        self.pipeline.store.close()


_TOKEN = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)


@st.composite
def http_inputs(draw: st.DrawFn) -> bytes:
    """Raw HTTP/1.1 requests: methods, paths, headers and bodies, well- and ill-formed."""
    method = draw(
        st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "TRACE", "\x00"]) | _TOKEN
    )
    path = draw(
        st.sampled_from(
            [
                "/command",
                "/metrics",
                "/healthz",
                "/command?token=%%",
                "/command?token=" + "A" * 5000,
                "//",
                "*",
            ]
        )
        | _TOKEN
    )
    headers = [("Host", "127.0.0.1")]
    body = draw(st.binary(max_size=200) | envelope_inputs())
    if draw(st.booleans()):
        headers.append(
            (
                "Content-Length",
                draw(
                    st.sampled_from(
                        [str(len(body)), "-1", "99999999999999999999", "abc", str(len(body) + 5)]
                    )
                ),
            )
        )
    if draw(st.booleans()):
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "gzip", "x"]))))
    for _ in range(draw(st.integers(0, 3))):
        headers.append((draw(_TOKEN), draw(st.text(max_size=30))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8", "surrogatepass") + b"Connection: close\r\n\r\n" + body


class HttpChecker:
    """The command endpoint behind http_guard, served from a thread; each input is one
    connection. A crash: a 5xx, or the connection closed with no answer at all."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def start() -> None:
            # built in the server's thread: SQLite objects stay in their thread
            self.pipeline = AlertPipeline(
                Store(None), AlertConfig(), command_secret=KEY, clock=lambda: NOW
            )
            app = command_app(
                lambda raw, source: self.pipeline.handle_command(raw, now=NOW, source=source)
            )
            self.runner = await http_guard.serve(app, "127.0.0.1", 0)
            self.port = self.runner.addresses[0][1]
            ready.set()

        self.thread = threading.Thread(
            target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()),
            daemon=True,
        )
        self.thread.start()
        ready.wait(10)

    def __call__(self, request: bytes) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as s:
            try:
                s.sendall(request)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may answer and close before reading it all
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        status_line = data.split(b"\r\n", 1)[0]
        if not status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
            if not data:  # closed without a word: aiohttp does so only for a dead request
                return "rejected"
            raise AssertionError(f"not an HTTP answer: {data[:80]!r}")
        status = int(status_line.split()[1])
        if status >= 500:
            raise AssertionError(f"HTTP {status}: {data[-200:]!r}")
        return "accepted" if status == 200 else "rejected"

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
