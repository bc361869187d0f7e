"""Issue 13's figures against the real daemon process and a real mosquitto on loopback.

    .venv/bin/python bench/security.py               # 5 floods, 200 probes, 50 replays
    .venv/bin/python bench/security.py --floods 2 --probes 50 --replays 10

- flood: 50 000 junk messages on the command topic (mosquitto_pub -l, another process), a
  signed pause in the middle and a resume right after; seconds from sending each to its ok
  reply (the goal: under 2 s).
- idle: the daemon with 256 descriptors, 500 idle sockets on the metrics port and 500 on the
  command port; /healthz latency over fresh connections (the goal: under 100 ms).
- replay: signed commands executed, the daemon restarted, each sent again over MQTT and over
  HTTP: how many were accepted (the goal: 0).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from tests.mqtt_broker import Mosquitto
from tests.security.harness import Daemon, command, running_daemon
from tests.security.test_flood import FLOOD, flood_latencies
from tests.security.test_idle import IDLE, healthz_latencies, open_idle


async def one_flood(broker: Mosquitto, workdir: Path) -> tuple[float, float]:
    """(during, after) seconds from sending a signed command to its ok reply."""
    async with running_daemon(broker, workdir) as daemon:
        return await flood_latencies(broker, daemon)


async def idle(broker: Mosquitto, workdir: Path, probes: int) -> list[float]:
    """/healthz latencies with 500 idle sockets per port on a 256-descriptor daemon."""
    daemon = Daemon(broker, workdir)
    await daemon.start(max_fds=256)
    try:
        socks = await open_idle(daemon.metrics_port, IDLE)
        socks += await open_idle(daemon.command_port, IDLE)
        latencies = await healthz_latencies(f"{daemon.metrics_url}/healthz", probes)
        for s in socks:
            s.close()
        return latencies
    finally:
        await daemon.stop()


async def replays(broker: Mosquitto, workdir: Path, count: int) -> tuple[int, int, int]:
    """(executed first, replays accepted over MQTT, replays accepted over HTTP)."""
    # valid for an hour (as a phone token): a replay is refused as a replay, not as stale
    sent = [
        command("silence", account="demo", duration=60, expires_at=time.time() + 3600)
        for _ in range(count)
    ]
    async with running_daemon(broker, workdir) as daemon:
        first = sum([(await daemon.send(raw))["ok"] for raw in sent])
    async with running_daemon(broker, workdir) as daemon:
        mqtt = 0
        for raw in sent:
            mqtt += (await daemon.send(raw))["ok"]
            await asyncio.sleep(0.11)  # refusals are answered at most 10 a second
        http = 0
        async with aiohttp.ClientSession() as session:
            for raw in sent:
                async with session.post(daemon.command_url, data=raw) as resp:
                    http += resp.status == 200
    return first, mqtt, http


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floods", type=int, default=5)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--replays", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        (work / "broker").mkdir()
        broker.start()
        try:
            floods = [await one_flood(broker, work / f"flood{i}") for i in range(args.floods)]
            during = [d for d, _ in floods]
            after = [a for _, a in floods]
            print(
                f"flood of {FLOOD} junk commands, {args.floods} runs: valid command answered "
                f"during: median {statistics.median(during):.2f} s, max {max(during):.2f} s; "
                f"after: median {statistics.median(after):.2f} s, max {max(after):.2f} s "
                f"(goal < 2 s)",
                flush=True,
            )
            lat = await idle(broker, work / "idle", args.probes)
            print(
                f"/healthz with {IDLE} idle sockets per port, 256 fds, {len(lat)} probes: "
                f"median {statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat, 0.99) * 1000:.1f}"
                f" ms, max {max(lat) * 1000:.1f} ms (goal < 100 ms)",
                flush=True,
            )
            first, mqtt, http = await replays(broker, work / "replay", args.replays)
            print(
                f"replay after restart: {first}/{args.replays} executed first; accepted again: "
                f"MQTT {mqtt}, HTTP {http} (goal 0)",
                flush=True,
            )
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
