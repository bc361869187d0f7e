"""Issue 13 §2: a venue that echoes the API key leaks it nowhere.

The fake Binance answers every account read with an error quoting the key (raw and
URL-encoded) and a credential put in the `[accounts.ccxt]` table; the real daemon runs with
MQTT, a phone channel (Apprise json:// to a local receiver), the metrics port and its SQLite
state, and then `check` and `snapshot` run against the same venue. Every surface is grepped.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from monitor.config.settings import load_settings
from monitor.ops.logs import secrets_of
from tests.fakes.binance import FakeBinanceUsdm
from tests.faults.fuzz_targets import to_toml
from tests.mqtt_broker import Mosquitto, collecting
from tests.security.harness import Daemon, script

KEY = "Kx9+/=api-key-0123456789"
VENUE_SECRET = "venue-signing-secret-9876"
UID = "uid-in-ccxt-table-4242"
FORMS = (KEY, quote(KEY, safe=""), UID, VENUE_SECRET)


def leaks(text: str | bytes) -> list[str]:
    """The secret spellings found in `text`."""
    body = text.decode(errors="replace") if isinstance(text, bytes) else text
    return [form for form in FORMS if form in body]


class Phone:
    """A local HTTP receiver for Apprise's json:// channel."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.port = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.arrived.set()
        return web.Response(text="ok")


@asynccontextmanager
async def phone() -> AsyncIterator[Phone]:
    """A running Phone on a free loopback port."""
    rec = Phone()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        await runner.cleanup()


def account_toml(venue: FakeBinanceUsdm) -> str:
    """The live account, pointed at the fake, with a credential in its ccxt table."""
    ccxt = {**venue.ccxt_config(), "timeout": 2000, "uid": UID}
    return (
        '\n[[accounts]]\nname = "main"\nexchange = "binanceusdm"\npoll_interval = 0.5\n'
        "stale_after = 2.0\n" + to_toml({"ccxt": ccxt})
    )


class TestSecretEcho:
    """Redaction by value where venue text enters, on every surface."""

    def test_ccxt_table_credentials_are_secrets(self, tmp_path: Path) -> None:
        """Test that a credential in [accounts.ccxt] is among the redacted secrets."""
        config = tmp_path / "c.toml"
        config.write_text(
            '[[accounts]]\nname = "a"\nexchange = "binanceusdm"\n'
            'api_key = "k"\nsecret = "s"\n[accounts.ccxt]\n'
            f'uid = "{UID}"\ntimeout = 5000\n'
        )
        assert UID in secrets_of(load_settings(config))

    @pytest.mark.timeout(120)
    async def test_no_surface_shows_the_key(self, mosquitto: Mosquitto, tmp_path: Path) -> None:
        """Test that stdout, /healthz, /metrics, MQTT, the phone, SQLite, `check` and
        `snapshot` never show the key (raw or URL-encoded) or the ccxt-table credential,
        while each of them did report the venue's error."""
        async with FakeBinanceUsdm() as venue, phone() as rec:
            echo = {
                "code": -2015,
                "msg": f"Invalid API-key {KEY} (key={quote(KEY, safe='')}, "
                f"uid {UID}, secret {VENUE_SECRET})",
            }
            for path in ("/fapi/v3/account", "/fapi/v3/positionRisk", "/fapi/v1/leverageBracket"):
                venue.fail(path, status=401, body=echo, times=10**6)
            extra = (
                f'\n[[notify.channels]]\nname = "phone"\n'
                f'url = "json://127.0.0.1:{rec.port}/hook"\nmin_level = "warning"\n'
                f"min_interval = 0\n"
            )
            env = {
                "MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY": KEY,
                "MARGIN_MONITOR__ACCOUNTS__MAIN__SECRET": VENUE_SECRET,
            }
            daemon = Daemon(mosquitto, tmp_path, extra, env=env, accounts=account_toml(venue))
            surfaces: dict[str, bytes] = {}
            async with collecting(mosquitto, [f"{daemon.prefix}/#"]) as sub:
                await daemon.start()
                try:
                    async with asyncio.timeout(30):
                        await rec.arrived.wait()
                    async with aiohttp.ClientSession() as http:
                        for name in ("healthz", "metrics"):
                            async with http.get(f"{daemon.metrics_url}/{name}") as resp:
                                surfaces[name] = await resp.read()
                finally:
                    surfaces["stdout"] = (await daemon.stop()).encode()
                surfaces["mqtt"] = b"\n".join(bytes(m.payload) for m in sub.messages)  # type: ignore[arg-type]
            surfaces["phone"] = b"\n".join(rec.bodies)
            surfaces["sqlite"] = b"".join(p.read_bytes() for p in daemon.state.iterdir())
            for command in (["check"], ["snapshot", "--account", "main"]):
                proc = await asyncio.create_subprocess_exec(
                    str(script()),
                    *command,
                    "--config",
                    str(daemon.config),
                    env={**os.environ, **env},
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
                surfaces[command[0]] = out
        # each surface carried the venue's error (the test is not vacuous) ...
        assert b"-2015" in surfaces["healthz"], surfaces["healthz"]
        for name in ("stdout", "mqtt", "phone", "sqlite", "check", "snapshot"):
            assert b"Invalid API-key" in surfaces[name], (name, surfaces[name][-2000:])
        assert json.loads(rec.bodies[0])  # the phone got JSON
        # ... and none of them a secret
        found = {name: leaks(text) for name, text in surfaces.items() if leaks(text)}
        assert found == {}
