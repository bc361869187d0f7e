"""Issue 13 §3: a flood of junk commands neither drowns a valid one nor fills the disk."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiomqtt
import pytest

from tests.mqtt_broker import Mosquitto, collecting
from tests.security.harness import Daemon, command, running_daemon

#: Junk messages per flood (the issue's probe).
FLOOD = 50_000
#: A valid command must take effect this soon after it is sent (seconds). Generous: the
#: suite shares the machine (STYLE: timing goals live in bench/); bench/security.py holds
#: the 2 s goal and prints the figures. Before issue 13 the command never took effect.
LIMIT = 15.0


def junk(i: int) -> bytes:
    """Three kinds of junk: not JSON, a forged signature, a wrong shape."""
    if i % 3 == 0:
        return b"not json %d" % i
    if i % 3 == 1:
        body = json.dumps({"action": "pause", "request_id": f"x{i}"})
        return json.dumps({"body": body, "ts": time.time(), "sig": "0" * 64}).encode()
    return b"[1, 2, 3]"


def request_id(raw: str) -> str:
    """The request_id inside an envelope."""
    return str(json.loads(json.loads(raw)["body"])["request_id"])


async def flood_latencies(broker: Mosquitto, daemon: Daemon) -> tuple[float, float]:
    """Flood `daemon`'s command topic with FLOOD junk messages; send a signed pause in the
    middle and a resume right after; seconds from sending each to its ok reply.

    The flood comes from another process (mosquitto_pub -l: a message per line), as an
    attacker's would; this process only sends the valid commands and times the replies.
    """
    topic = f"{daemon.prefix}/command"
    during = command("pause", account="demo", duration=600)
    after = command("resume", account="demo")
    ids = {request_id(c) for c in (during, after)}
    answered: dict[str, float] = {}
    sent: dict[str, float] = {}
    async with collecting(broker, [f"{daemon.prefix}/reply"]) as sub:

        def done() -> bool:
            for m in sub.on(f"{daemon.prefix}/reply"):
                reply = json.loads(m.payload)  # type: ignore[arg-type]
                rid = reply.get("request_id")
                if rid in ids and rid not in answered:
                    assert reply["ok"] is True, reply
                    answered[rid] = time.monotonic()
            return len(answered) == 2

        flood = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "0",
            "-t",
            topic,
            "-l",
            stdin=asyncio.subprocess.PIPE,
        )
        assert flood.stdin is not None
        lines = [junk(i) for i in range(FLOOD)]
        flood.stdin.write(b"\n".join(lines[: FLOOD // 2]) + b"\n")
        await flood.stdin.drain()
        async with aiomqtt.Client(broker.host, broker.port) as client:
            sent[request_id(during)] = time.monotonic()
            await client.publish(topic, during, qos=1)
            flood.stdin.write(b"\n".join(lines[FLOOD // 2 :]) + b"\n")
            flood.stdin.close()
            await flood.wait()
            sent[request_id(after)] = time.monotonic()
            await client.publish(topic, after, qos=1)
        await sub.wait_for(done, limit=60)
    return (
        answered[request_id(during)] - sent[request_id(during)],
        answered[request_id(after)] - sent[request_id(after)],
    )


class TestMqttFlood:
    """50 000 junk messages on the command topic of the real daemon."""

    @pytest.mark.timeout(180)
    async def test_valid_pause_during_and_after_flood(
        self, mosquitto: Mosquitto, tmp_path: Path
    ) -> None:
        """Test that a signed pause sent in the middle of the flood and one sent right after
        it are each answered ok (bound generous, goal 2 s: bench/security.py), and that the
        refusals left a handful of audit rows with the full count, not 50 000."""
        async with running_daemon(mosquitto, tmp_path) as daemon:
            during, after = await flood_latencies(mosquitto, daemon)
            print(
                f"valid command latency under a {FLOOD}-message flood: during "
                f"{during * 1000:.0f} ms, after {after * 1000:.0f} ms"
            )
            assert during < LIMIT
            assert after < LIMIT
        db = sqlite3.connect(daemon.state / "alerts.sqlite3")
        rows = db.execute("SELECT payload FROM audit WHERE kind = 'command_refused'").fetchall()
        assert 1 <= len(rows) <= 4  # one per source per minute
        assert sum(json.loads(p)["count"] for (p,) in rows) >= FLOOD * 0.99  # QoS 0: ~all


class TestRetention:
    """Every table of the state store is bounded (store.prune, run by the pipeline's tick)."""

    def test_prune_bounds_every_table(self, tmp_path: Path) -> None:
        """Test that old audit rows, rows past the cap, stale outbox rows, expired ids,
        silences and pauses go, and what is current stays."""
        from monitor import store as store_module

        store = store_module.Store(tmp_path / "a.db")
        db = store._db
        now = 100 * 86400.0
        cap = store_module.AUDIT_MAX_ROWS
        db.executemany(
            "INSERT INTO audit (at, account, kind, payload) VALUES (?, 'a', 'k', '{}')",
            [(now - 91 * 86400.0,)] + [(now,)] * (cap + 10),
        )
        db.executemany(
            "INSERT INTO outbox (message_id, sink, account, payload, created_at, next_attempt_at)"
            " VALUES (?, 's', 'a', '{}', ?, ?)",
            [("old", now - 8 * 86400, 0), ("new", now, 0)],
        )
        db.executemany(
            "INSERT INTO seen_request (request_id, until) VALUES (?, ?)",
            [("gone", now - 1), ("kept", now + 60)],
        )
        db.executemany(
            "INSERT INTO silence (id, until, body) VALUES (?, ?, '{}')",
            [("gone", now - 1), ("kept", now + 60)],
        )
        db.executemany(
            "INSERT INTO action_pause (account, until) VALUES (?, ?)",
            [("gone", now - 1), ("kept", now + 60)],
        )
        store.prune(now)
        assert db.execute("SELECT COUNT(*), MIN(at) FROM audit").fetchone() == (cap, now)
        assert [r.message_id for r in store.pending()] == ["new"]
        for table, key in (
            ("seen_request", "request_id"),
            ("silence", "id"),
            ("action_pause", "account"),
        ):
            assert db.execute(f"SELECT {key} FROM {table}").fetchall() == [("kept",)]


class TestHttpFlood:
    """Bad requests on the command port (the probe sent ~1 800 a second)."""

    async def test_refusals_aggregate_and_a_valid_command_applies(self, tmp_path: Path) -> None:
        """Test that 2 000 forged commands over HTTP leave one audit row with their count,
        and a signed pause sent after them is executed."""
        import aiohttp

        from monitor.alerts.command_http import serve_commands
        from monitor.alerts.pipeline import AlertPipeline
        from monitor.core.alert_config import AlertConfig
        from monitor.store import Store
        from tests.mqtt_broker import free_port
        from tests.security.harness import SECRET

        pipeline = AlertPipeline(
            Store(tmp_path / "a.db"), AlertConfig(), command_secret=SECRET.encode()
        )
        port = free_port()
        runner = await serve_commands(
            lambda raw, source: pipeline.handle_command(raw, source=source), f"127.0.0.1:{port}"
        )
        url = f"http://127.0.0.1:{port}/command"
        try:
            async with aiohttp.ClientSession() as http:
                for i in range(2000):
                    async with http.post(url, data=junk(i)) as resp:
                        assert resp.status == 403
                pause = command("pause", account="demo", duration=600)
                async with http.post(url, data=pause) as resp:
                    assert resp.status == 200
        finally:
            await runner.cleanup()
        pipeline.flush()
        rows = pipeline.store.audit_trail(kind="command_refused")
        assert len(rows) <= 2  # one per source per minute: two only across a minute's end
        assert sum(r.payload["count"] for r in rows) == 2000
        assert pipeline.switches.is_paused("demo", pipeline.clock() + 1)
