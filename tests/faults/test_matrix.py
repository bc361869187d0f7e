"""The fault matrix (issue 7): the daemon process through a scripted sell-off under faults.

Each test is one row: the real `margin-monitor run` subprocess watches C's fake Binance
through a FaultProxy and publishes through B's pipeline to a real mosquitto (also behind a
proxy); a persistent subscriber collects alert ids. Every row asserts: 0 alerts lost, no
traceback, no secret in the logs; the blind row also that `stale` arrives within
`stale_after + 1 s`. The table is printed at the end (`pytest -s` shows it).

`TestActions` runs the same daemon with `[actions] enabled = true` against the fake's order
routes and asserts on what the venue itself saw (tests/fakes/binance_orders.py `OrderSeen`):
0 orders accepted twice under one client id, 0 orders that would open or grow a position,
0 closing orders larger than the position, 0 'ghosts' (an order the daemon gave up as absent
that the venue executed after all), no exception logged. `FAULT_MATRIX_KILLS` sets the
number of SIGKILLs in the kill rows (default 4; the issue's figure is 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import SELL_OFF, Rig, Row, Unreliable, table

pytestmark = pytest.mark.timeout(90)
ROWS: list[Row] = []
#: Steps of the pressing market after the sell-off in the rows with actions (0.25 s each).
PRESS = 40


@pytest.fixture(scope="module", autouse=True)
def _print_table() -> Iterator[None]:
    yield
    if ROWS:
        print("\n\nfault matrix\n" + table(ROWS))


def _check(row: Row) -> None:
    ROWS.append(row)
    assert row.alerts > 0, "the sell-off raised no alert at all"
    assert row.lost == 0
    assert row.tracebacks == 0
    assert row.secrets == 0


def _check_orders(row: Row) -> None:
    """The issue-7 order assertions, on what the venue saw."""
    _check(row)
    assert row.orders, "the sell-off made the daemon send no protective order"
    assert row.dup == 0, "an order was accepted twice under one client id"
    assert row.incr == 0, "an order would have opened or grown a position"
    assert row.over == 0, "a closing order was larger than the position it closed"
    assert row.errors == 0, "the daemon logged an exception"
    assert row.ghosts == 0, "an order the daemon gave up as absent was executed after all"


async def _episode(rig: Rig, between: object = None) -> None:
    rig.start()
    await rig.wait_streaming()
    await rig.sell_off(between=between)
    await rig.settle()


class TestMatrix:
    async def test_baseline(self, tmp_path: Path) -> None:
        """Test that with no fault the sell-off's alerts all reach the subscriber."""
        async with Rig(tmp_path) as rig:
            await _episode(rig)
            await rig.kill(2)
            _check(rig.row("none (baseline)"))

    async def test_ws_drops_and_half_open(self, tmp_path: Path) -> None:
        """Test that websocket drops lose nothing and a half-open link raises stale in time."""
        async with Rig(tmp_path, stale_after=2.0) as rig:

            async def drop(i: int) -> None:
                if i % 6 == 5:
                    await rig.venue.drop_websockets()

            await _episode(rig, drop)
            assert rig.venue_proxy is not None
            assert rig.subscriber is not None
            blind_at = time.monotonic()
            rig.venue_proxy.set_mode("half_open")
            await asyncio.sleep(rig.stale_after + 2.0)
            stale_at = rig.subscriber.first(lambda b: "stale" in json.dumps(b), blind_at)
            rig.venue_proxy.set_mode("pass")
            await rig.settle()
            await rig.kill(2)
            row = rig.row(
                "ws drop every 1.5 s + half-open",
                stale_s=None if stale_at is None else stale_at - blind_at,
            )
            _check(row)
            assert row.stale_s is not None, "no stale alert during a half-open blind period"
            assert row.stale_s <= rig.stale_after + 1.0

    async def test_rest_errors(self, tmp_path: Path) -> None:
        """Test that 20 % REST 429/5xx/timeouts and slow answers lose no alert."""
        rng = random.Random(3)
        async with Rig(tmp_path) as rig:
            assert rig.venue_proxy is not None

            async def faults(i: int) -> None:
                for path in ("/fapi/v3/positionRisk", "/fapi/v3/account"):
                    if rng.random() < 0.2:
                        status = rng.choice((429, 500, 502, 503))
                        rig.venue.fail(path, status, {"code": -1003, "msg": "fault matrix"})
                    if rng.random() < 0.1:
                        rig.venue.stall(path, 2.0)
                rig.venue_proxy.set_mode("latency" if i % 8 == 3 else "pass", latency=0.15)  # type: ignore[union-attr]

            await _episode(rig, faults)
            await rig.kill(2)
            _check(rig.row("REST 429/5xx/timeout 20 % + slow"))

    async def test_garbage_frames(self, tmp_path: Path) -> None:
        """Test that truncated, NaN, null, negative and unknown-symbol frames change nothing."""
        async with Rig(tmp_path) as rig:
            garbage = [
                '{"e":"markPriceUpdate","s":"BTCUSDT","p":"6',
                {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "NaN"},
                {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": None},
                {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "-5"},
                {"e": "markPriceUpdate", "E": 1, "s": "FOOUSDT", "p": "1"},
                "not json at all",
                [1, 2, 3],
            ]

            async def junk(i: int) -> None:
                await rig.venue.push(garbage[i % len(garbage)], path="/market/ws")

            await _episode(rig, junk)
            await rig.kill(2)
            row = rig.row("garbage / schema-violating frames")
            _check(row)
            assert rig.exit_codes == [130]  # SIGINT (Ctrl-C) exits 128 + 2, docs/commands.md

    async def test_broker_restarts(self, tmp_path: Path) -> None:
        """Test that 10 mosquitto restarts during the sell-off lose no alert (outbox, QoS 1)."""
        async with Rig(tmp_path) as rig:
            restarts = 0

            async def bounce(i: int) -> None:
                nonlocal restarts
                if i % 3 == 1 and restarts < 10:
                    await asyncio.to_thread(rig.broker.restart)
                    restarts += 1

            await _episode(rig, bounce)
            await rig.settle(15)
            await rig.kill(2)
            _check(rig.row("mosquitto restarted x10", restarts=restarts))
            assert restarts == 10

    async def test_sigkill_restarts(self, tmp_path: Path) -> None:
        """Test that SIGKILL at random points + restart from the same state dir loses nothing."""
        rng = random.Random(5)
        # 4 in the normal suite (each restart pays ccxt's import and load_markets, ~2 s);
        # FAULT_MATRIX_KILLS=10 is the full count (bench/RESULTS.md).
        kills = int(os.environ.get("FAULT_MATRIX_KILLS", "4"))
        async with Rig(tmp_path) as rig:
            rig.start()
            await rig.wait_streaming()
            done = 0

            async def chaos(i: int) -> None:
                nonlocal done
                if done < kills and i % max(1, len(SELL_OFF) // (kills + 1)) == 1:
                    await asyncio.sleep(rng.uniform(0, 0.2))
                    await rig.kill()
                    done += 1
                    rig.start()
                    await rig.wait_streaming()

            await rig.sell_off(between=chaos)
            await rig.settle(15)
            await rig.kill(2)
            _check(rig.row(f"SIGKILL x{kills} + restart", restarts=done, note="(-9 = killed)"))


class TestActions:
    """The same daemon with `[actions] enabled = true` against the fake's order routes."""

    async def test_baseline_with_actions(self, tmp_path: Path) -> None:
        """Test that the sell-off makes the daemon reduce, once per client id, only reducing."""
        async with Rig(tmp_path, actions=True) as rig:
            rig.start()
            await rig.wait_streaming()
            await rig.sell_off(press=PRESS)
            await rig.settle()
            await rig.kill(2)
            _check_orders(rig.row("actions: none (baseline)"))

    @pytest.mark.timeout(240)
    async def test_rest_errors_with_actions(self, tmp_path: Path) -> None:
        """Test that 20 % REST faults, the order routes included, never double or grow an order."""
        async with Rig(tmp_path, actions=True) as rig:
            assert rig.venue_proxy is not None
            faults = Unreliable(0.2, random.Random(11))
            faults.install(rig)

            async def slow(i: int) -> None:
                rig.venue_proxy.set_mode("latency" if i % 8 == 3 else "pass", latency=0.15)  # type: ignore[union-attr]

            rig.start()
            await rig.wait_streaming()
            await rig.sell_off(between=slow, press=3 * PRESS)  # faults slow the steps down
            # Until each scripted fault has hit an order POST (each costs the daemon up to its
            # in-flight window, 6 s), and 2 s more for the last order to settle. The 20 % draw
            # also fails fresh position reads, each costing a ~5 s retry, and how many chain
            # depends on timing: a quiet run drains the script ~10 s into this press, a loaded
            # CI run once needed more than the 20 s this allowed. 60 s is the bound now.
            await rig.press(until=lambda: not faults.order_script, most=6 * PRESS)
            await rig.press(most=8)
            faults.rate = 0.0
            faults.order_script.clear()
            await rig.settle()
            await rig.kill(2)
            share = faults.faults / max(1, faults.requests)
            row = rig.row(
                "actions: REST 429/5xx/timeout 20 %",
                note=f"{faults.faults} of {faults.requests} requests faulted ({share:.0%}); "
                f"order POSTs hit: {faults.orders_hit}",
            )
            _check_orders(row)
            assert set(faults.orders_hit) == {"429", "5xx", "late", "lost"}, "a fault kind missed"

    async def test_sigkill_with_order_in_flight(self, tmp_path: Path) -> None:
        """Test that SIGKILLs, half of them with an order in flight, never double or grow one."""
        rng = random.Random(7)
        kills = int(os.environ.get("FAULT_MATRIX_KILLS", "4"))
        async with Rig(tmp_path, actions=True) as rig:
            book = rig.orders
            assert book is not None
            # Every order is filled but answered only after ccxt's 1.5 s timeout, so the
            # daemon cannot have seen the fill when it is killed on the order's arrival.
            book.lose_response = True
            book.lose_for = 3.0
            marks = iter(SELL_OFF)

            async def step() -> None:
                await rig.venue.push_mark("BTCUSDT", next(marks, None) or rig.pressed_mark())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(book.arrived.wait(), 0.25)

            rig.start()
            await rig.wait_streaming()
            landed = 0
            for k in range(kills):
                book.arrived.clear()
                if k % 2 == 0:  # kill the moment the venue has the order
                    while not book.arrived.is_set():
                        await step()
                else:  # anywhere
                    for _ in range(rng.randint(1, 4)):
                        mark = next(marks, None) or rig.pressed_mark()
                        await rig.venue.push_mark("BTCUSDT", mark)
                        await asyncio.sleep(0.25)
                    await asyncio.sleep(rng.uniform(0, 0.25))
                await rig.kill()
                landed += bool(rig.unseen_orders())
                rig.start()  # same state dir: the pending order is looked up, not re-sent
                await rig.wait_streaming()
            book.arrived.clear()
            for _ in range(12):  # the last run settles its pending order and acts again
                await step()
            await rig.settle(15)
            await rig.kill(2)
            row = rig.row(
                f"actions: SIGKILL x{kills}, order in flight",
                restarts=kills,
                note=f"{landed} kills with an order in flight",
            )
            _check_orders(row)
            assert rig.exit_codes.count(-9) == kills
            assert landed >= (3 if kills >= 10 else 2), "too few kills with an order in flight"


class TestStateDir:
    @pytest.mark.parametrize("how", ["full", "read-only"])
    def test_unusable_state_dir(self, tmp_path: Path, how: str) -> None:
        """Test that a full or read-only state dir gives no traceback and no secret."""
        mnt = tmp_path / "state"
        mnt.mkdir()
        opts = "size=64k" if how == "full" else "size=64k,ro"
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.decode().strip()}")
        try:
            if how == "full":
                with open(mnt / "filler", "wb") as fh, contextlib.suppress(OSError):
                    fh.write(b"\0" * 128 * 1024)
            asyncio.run(self._run(tmp_path, mnt, how))
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)

    async def _run(self, tmp_path: Path, mnt: Path, how: str) -> None:
        async with Rig(tmp_path / "rig", state_dir=mnt) as rig:
            await _episode(rig)
            await rig.kill(2)
            assert rig.subscriber is not None
            degraded = [b for _, b in rig.subscriber.kinds if b.get("rule") == "state_store"]
            reason = next(
                (
                    json.loads(ln).get("reason", "")
                    for ln in rig.log_text().splitlines()
                    if "store.degraded" in ln
                ),
                "",
            )
            row = rig.row(f"state dir {how} (tmpfs 64k)", note=f"store: {reason[-40:]}")
            _check(row)
            assert degraded, "no state_store alert reached the subscriber"
