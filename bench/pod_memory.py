"""Memory of a daemon process with live-venue accounts: the figure a Kubernetes pod's memory
request is sized from (deploy/kubernetes, docs/kubernetes.md; the soak measures sim accounts,
which never import ccxt).

    .venv/bin/python bench/pod_memory.py [--accounts 1 10 30] [--symbols 400] [--seconds 20]

For each account count, `margin-monitor run` (the installed console script, as a pod runs it)
watches that many Binance USD-M accounts on the loopback fake (tests/fakes/binance.py: real
ccxt/ccxt.pro parsing), each account its own ccxt.pro instance with `--symbols` markets loaded
(Binance USD-M lists ~500 perpetuals). The accounts hold a BTC and an ETH position. Once
`/healthz` says every account is fresh, RSS (/proc/<pid>/status VmRSS) is sampled for
`--seconds` and its maximum printed, with the CPU share over that window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.product import binance_account, write_config
from tests.fakes.binance import (
    API_KEY,
    ETH_BRACKETS,
    SECRET,
    BinanceAccount,
    BinancePosition,
    FakeBinanceUsdm,
)

EXE = Path(sys.executable).with_name("margin-monitor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


async def measure(venue: FakeBinanceUsdm, accounts: int, seconds: float, work: Path) -> None:
    port = free_port()
    doc = {
        "state_dir": str(work / f"state-{accounts}"),
        "metrics": {"enabled": True, "port": port},
        # only the URLs point at the fake; ccxt's options are the shipped ones
        "accounts": [
            binance_account(venue, API_KEY, SECRET, name=f"live-{i}") for i in range(accounts)
        ],
    }
    config = write_config(work / f"config-{accounts}.toml", doc)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR__")}
    errors = work / f"stderr-{accounts}.txt"
    with errors.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(EXE),
            "run",
            "--no-tui",
            "--config",
            str(config),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        started = time.monotonic()
        while not await asyncio.to_thread(healthy, port):
            if proc.returncode is not None or time.monotonic() - started > 120:
                tail = errors.read_text()[-2000:]
                raise SystemExit(f"{accounts} accounts never became fresh: {tail}")
            await asyncio.sleep(0.5)
        ready = time.monotonic() - started
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - t0 < seconds:
            peak = max(peak, rss_mb(proc.pid))
            await asyncio.sleep(1.0)
        share = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        print(
            f"  {accounts:>3} live accounts: RSS max {peak:6.1f} MB  CPU {share:5.1%}  "
            f"all fresh after {ready:4.1f} s",
            flush=True,
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--symbols", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    account = BinanceAccount(wallet=6_000.0)
    for i in range(args.symbols - len(account.marks)):
        account.marks[f"X{i:03d}USDT"] = 1.0 + i
        account.brackets[f"X{i:03d}USDT"] = ETH_BRACKETS
    account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.1, 60_000.0)
    account.positions[("ETHUSDT", "BOTH")] = BinancePosition("ETHUSDT", -1.0, 3_000.0)
    venue = FakeBinanceUsdm(account)
    await venue.start()
    print(
        f"pod memory: margin-monitor run, Binance USD-M fake with {len(account.marks)} "
        f"markets, {args.seconds:g} s per row"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.accounts:
                await measure(venue, n, args.seconds, Path(tmp))
    finally:
        await venue.stop()


if __name__ == "__main__":
    asyncio.run(main())
