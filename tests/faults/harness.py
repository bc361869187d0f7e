"""The fault-matrix rig: the real daemon process, a fake venue and mosquitto, each behind a
FaultProxy, and a persistent MQTT subscriber that records every alert id (issue 7).

Everything is loopback. The daemon is `python -m monitor run --config FILE --no-tui` in a
subprocess (so SIGKILL, exit codes and tracebacks are real); its keys come from the
environment, as in production, so a leak into the logs can be searched for. Ground truth for
"every alert reached the sink" is the daemon's own `alert ... id=...` log lines plus whatever
is still in the SQLite outbox at the end.

With `actions=True` the daemon runs protective actions for real (`[actions] enabled = true`)
against the fake's order routes (tests/fakes/binance_orders.py), and the ground truth for
"0 duplicate orders, 0 orders that increase a position" is what the venue itself saw: every
order judged on arrival against the position it held at that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from aiohttp import web

from tests.fakes.base import Handler, json_response
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
from tests.fakes.binance_orders import BinanceOrders, install_orders
from tests.faults.fuzz_targets import to_toml
from tests.faults.proxy import FaultProxy
from tests.mqtt_broker import Mosquitto

#: The sell-off path: 6 000 USDT wallet, long 0.8 BTC from 60 000. Margin ratio crosses
#: warning (0.5) at 52 923, critical (0.7) at 52 802, emergency (0.85) at 52 748; the shock
#: levels (10 % / 5 % / 2 % to liquidation) fire on the way down.
SELL_OFF = [60_000.0 - i * 250.0 for i in range(29)] + [52_900.0, 52_790.0, 52_740.0]
SECRETS = (API_KEY, SECRET)
#: Past the sell-off, with actions on, the market keeps pressing: the mark slides 20 USDT a
#: step while the venue's ratio is under PRESS_CEILING and bounces 5 USDT above it. So
#: after each reduction (down to `target_ratio` 0.6) the ratio crosses the action level
#: (critical, 0.7) again about 50 USDT lower, and a daemon that cannot act (faults, killed)
#: faces a ratio held around the ceiling, not an account driven into bankruptcy. The mark
#: never repeats: the daemon recomputes only when something changed.
PRESS_DROP = 20.0
PRESS_BOUNCE = 5.0
PRESS_CEILING = 0.75
#: `[actions]` of the rows that trade (README "Protective actions"); small steps and a short
#: cooldown so one episode sends several orders.
ACTIONS: dict[str, Any] = {
    "enabled": True,
    "simulated": False,
    "action_level": "critical",
    "target_ratio": 0.6,
    "max_fraction_per_step": 0.25,
    "cooldown": 0.5,
    "order_timeout": 2.0,
    "min_order_interval": 0.2,
}
#: Audit kinds that end the daemon's wait for an order it sent (monitor/protect/sending.py).
SEEN = {"filled", "partial", "not_filled", "unconfirmed", "rejected", "recovered", "pending_absent"}


@dataclass
class Row:
    """One line of the matrix table."""

    fault: str
    alerts: int = 0
    delivered: int = 0
    lost: int = 0
    stale_s: float | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    tracebacks: int = 0
    secrets: int = 0
    orders: int | None = None  # orders received by the venue (None: actions off)
    ids: int = 0  # distinct client order ids among them
    dup: int = 0  # orders accepted under an already accepted client id
    refused: int = 0  # re-sends the venue refused as a duplicate id (not orders)
    incr: int = 0  # orders that would open or grow a position at their arrival
    over: int = 0  # closing orders larger than the position at their arrival
    ghosts: int = 0  # orders the daemon declared absent that the venue executed after all
    errors: int = 0  # log records carrying an exception (e.g. actions.step_failed)
    note: str = ""


class Subscriber:
    """A clean_session=False QoS-1 subscriber that reconnects through broker restarts."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.ids: dict[str, float] = {}
        self.kinds: list[tuple[float, dict[str, Any]]] = []
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"sub-{self.prefix}", clean_session=False
                ) as client:
                    await client.subscribe(f"{self.prefix}/+/alert", qos=1)
                    self.ready.set()
                    async for message in client.messages:
                        body = json.loads(bytes(message.payload))
                        self.ids.setdefault(str(body.get("id")), time.monotonic())
                        self.kinds.append((time.monotonic(), body))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def first(self, predicate: Any, after: float) -> float | None:
        return next((t for t, body in self.kinds if t >= after and predicate(body)), None)


class Rig:
    """Fake Binance + proxy, mosquitto + proxy, subscriber, and the daemon subprocess."""

    def __init__(
        self,
        workdir: Path,
        *,
        state_dir: Path | None = None,
        stale_after: float = 2.0,
        poll: float = 0.5,
        actions: bool = False,
    ) -> None:
        self.workdir = workdir
        self.state_dir = state_dir or workdir / "state"
        self.stale_after = stale_after
        self.poll = poll
        self.prefix = f"mm{os.getpid()}-{int(time.monotonic() * 1000) % 10**7}"
        self.venue = FakeBinanceUsdm()
        self.venue.account.wallet = 6_000.0
        self.venue.account.positions[("BTCUSDT", "BOTH")] = BinancePosition(
            "BTCUSDT", 0.8, 60_000.0
        )
        self.orders: BinanceOrders | None = install_orders(self.venue) if actions else None
        self.broker = Mosquitto(workdir / "broker")
        self.venue_proxy: FaultProxy | None = None
        self.broker_proxy: FaultProxy | None = None
        self.subscriber: Subscriber | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.note_hang = False
        self.logs: list[Path] = []

    async def __aenter__(self) -> Rig:
        (self.workdir / "broker").mkdir(parents=True, exist_ok=True)
        self.broker.start()
        await self.venue.start()
        port = int(self.venue.http.rsplit(":", 1)[1])
        self.venue_proxy = await FaultProxy("127.0.0.1", port).start()
        self.broker_proxy = await FaultProxy(self.broker.host, self.broker.port).start()
        self.subscriber = Subscriber(self.broker.host, self.broker.port, self.prefix)
        await self.subscriber.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
        if self.subscriber is not None:
            await self.subscriber.stop()
        for proxy in (self.venue_proxy, self.broker_proxy):
            if proxy is not None:
                await proxy.close()
        await self.venue.stop()
        self.broker.stop()

    def config(self) -> Path:
        assert self.venue_proxy is not None
        assert self.broker_proxy is not None
        port = int(self.venue.http.rsplit(":", 1)[1])
        ccxt = json.loads(
            json.dumps(self.venue.ccxt_config()).replace(
                f"127.0.0.1:{port}", f"127.0.0.1:{self.venue_proxy.port}"
            )
        )
        ccxt["timeout"] = 1500
        if self.orders is not None:
            # Binance recommends a recvWindow of 5 000 ms or less (General Info, "Timing
            # security"); the executor waits this long (+1 s) before it gives up on an
            # unanswered order, and the fake refuses an order arriving later (-1021).
            ccxt["options"] = {**ccxt.get("options", {}), "recvWindow": 5000}
        doc = {
            "state_dir": str(self.state_dir),
            "shock_interval": 0.2,
            "accounts": [
                {
                    "name": "main",
                    "exchange": "binanceusdm",
                    "poll_interval": self.poll,
                    "stale_after": self.stale_after,
                    "ccxt": ccxt,
                }
            ],
            "mqtt": {
                "host": "127.0.0.1",
                "port": self.broker_proxy.port,
                "prefix": self.prefix,
                "discovery": False,
                "timeout": 2.0,
                "keepalive": 5,
            },
        }
        if self.orders is not None:
            doc["actions"] = ACTIONS
        path = self.workdir / "config.toml"
        path.write_text(to_toml(doc))
        return path

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR__")}
        env["MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY"] = API_KEY
        env["MARGIN_MONITOR__ACCOUNTS__MAIN__SECRET"] = SECRET
        log = self.workdir / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "monitor",
                    "run",
                    "--config",
                    str(self.config()),
                    "--no-tui",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )

    async def kill(self, sig: int = signal.SIGKILL, within: float = 10.0) -> None:
        """Signal the daemon and wait for it (in a thread: the fakes share this loop)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, within)
            if proc.poll() is None:
                self.note_hang = True
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        if proc is not None:
            self.exit_codes.append(int(proc.returncode))
        self.proc = None
        # The dead process's websockets leave the venue once the proxy passes the close on;
        # a push to one still closing would fail in the fake (aiohttp: closing transport).
        for _ in range(150):  # at most 3 s
            if not self.venue.clients:
                break
            await asyncio.sleep(0.02)

    async def wait_streaming(self, within: float = 20.0) -> None:
        """Until the daemon has subscribed to the BTC mark stream."""
        await self.venue.wait_for_client("/market/ws", "btcusdt@markPrice@1s", within=within)

    def pressed_mark(self) -> float:
        """The next mark of the pressing market (down while under PRESS_CEILING, else up)."""
        mark = self.venue.account.marks["BTCUSDT"]
        under = self.venue.account.venue_margin_ratio() < PRESS_CEILING
        return mark - PRESS_DROP if under else mark + PRESS_BOUNCE

    async def sell_off(self, step: float = 0.25, between: Any = None, press: int = 0) -> None:
        """Push the scripted path, then `press` steps of the pressing market.

        `between(i)` runs after each step (a fault injector).
        """
        for i in range(len(SELL_OFF) + press):
            mark = SELL_OFF[i] if i < len(SELL_OFF) else self.pressed_mark()
            await self.venue.push_mark("BTCUSDT", mark)
            if between is not None:
                await between(i)
            await asyncio.sleep(step)

    async def press(self, until: Any = None, most: int = 1, step: float = 0.25) -> None:
        """Up to `most` steps of the pressing market, fewer once `until()` is true."""
        for _ in range(most):
            if until is not None and until():
                return
            await self.venue.push_mark("BTCUSDT", self.pressed_mark())
            await asyncio.sleep(step)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def records(self, log: Path | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log records (of one run, or of all)."""
        text = log.read_text(errors="replace") if log is not None else self.log_text()
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    def absent_ids(self) -> set[str]:
        """Client ids the daemon concluded never reached the venue (`pending_absent`)."""
        return {
            str(e.get("client_id"))
            for e in self.records()
            if e.get("event") == "actions.pending_absent"
        }

    def unseen_orders(self) -> set[str]:
        """Client ids the venue accepted whose outcome the last daemon run never saw.

        Read after a SIGKILL: the order was `sent` in that run's log, the venue has it, and
        no filled / unconfirmed / recovered record followed, so the kill landed between the
        order reaching the venue and the daemon seeing its fill (issue 7 §5).
        """
        assert self.orders is not None
        sent, seen = set(), set()
        for entry in self.records(self.logs[-1]):
            kind = str(entry.get("event", "")).removeprefix("actions.")
            if kind == "sent":
                sent.add(str(entry.get("client_id")))
            elif kind in SEEN:
                seen.add(str(entry.get("client_id")))
        accepted = {o.client_id for o in self.orders.seen if o.accepted}
        return (sent - seen) & accepted

    def alert_ids(self) -> set[str]:
        """Ids the daemon logged as sent alerts, plus any still waiting in the outbox.

        An alert logged with `suppressed` set (inhibited by a higher one, silenced) is by
        design not sent, so it is not expected at the subscriber.
        """
        ids = {
            str(entry["id"])
            for entry in self.records()
            if entry.get("event") == "alert" and not entry.get("suppressed")
        }
        db = self.state_dir / "alerts.sqlite3"
        if db.exists():
            with (
                contextlib.closing(sqlite3.connect(db)) as conn,
                contextlib.suppress(sqlite3.Error),
            ):
                ids |= {r[0] for r in conn.execute("SELECT message_id FROM outbox")}
        return ids

    async def settle(self, within: float = 10.0) -> None:
        """Give the outbox time to drain to the subscriber."""
        assert self.subscriber is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.alert_ids() <= set(self.subscriber.ids):
                return
            await asyncio.sleep(0.2)

    def row(self, fault: str, **extra: Any) -> Row:
        assert self.subscriber is not None
        ids = self.alert_ids()
        text = self.log_text()
        if self.orders is not None:
            book = self.orders
            extra = {
                "orders": len(book.seen),
                "ids": len({o.client_id for o in book.seen}),
                "dup": book.duplicates,
                "refused": book.resent_refused,
                "incr": book.increasing,
                "over": book.oversized,
                "ghosts": len(self.absent_ids() & {o.client_id for o in book.seen if o.accepted}),
                **extra,
            }
        return Row(
            fault=fault,
            alerts=len(ids),
            delivered=len(ids & set(self.subscriber.ids)),
            lost=len(ids - set(self.subscriber.ids)),
            exit_codes=self.exit_codes,
            tracebacks=text.count("Traceback"),
            secrets=sum(text.count(s) for s in SECRETS),
            errors=sum(1 for e in self.records() if "exception" in e or "exc_info" in e),
            **extra,
        )


_KINDS = ("429", "5xx", "late", "lost")


@dataclass
class Unreliable:
    """Per-request REST faults on every route a protective step uses (issue 7 §2).

    Each request independently, with probability `rate`, split in four: a 429 with Binance's
    body, a bare 5xx (a gateway), a slow request that reaches the venue only after the
    client's timeout (and is executed then), and an executed request whose answer comes
    after the timeout. So an order can be placed while the daemon believes it failed.

    The daemon sends only a handful of orders in an episode, so 20 % at random may miss the
    order route altogether; the first order POSTs therefore take each kind in turn
    (`order_script`, None: passed), and the random draw applies after them.
    """

    rate: float
    rng: Any
    late: float = 2.0  # past ccxt's 1.5 s timeout in the rig
    order_script: list[str | None] = field(default_factory=lambda: ["429", "5xx", "late", "lost"])
    requests: int = 0
    faults: int = 0
    orders_hit: dict[str, int] = field(default_factory=dict)  # fault kind -> order POSTs

    def install(self, rig: Rig) -> None:
        venue, book = rig.venue, rig.orders
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/fapi/v3/positionRisk"): venue.position_risk,
            ("GET", "/fapi/v3/account"): venue.account_info,
        }
        if book is not None:
            routes |= {
                ("POST", "/fapi/v1/order"): book.new_order,
                ("GET", "/fapi/v1/order"): book.query_order,
                ("DELETE", "/fapi/v1/order"): book.cancel_order,
                ("GET", "/fapi/v1/openOrders"): book.open_orders,
            }
        for (method, path), handler in routes.items():
            order = (method, path) == ("POST", "/fapi/v1/order")
            venue.add_route(method, path, venue.private(self._wrap(handler, order)))

    def _wrap(self, handler: Handler, order: bool) -> Handler:
        async def maybe_fail(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            r = self.rng.random() / self.rate if self.rate else 1.0
            if order and self.order_script:
                scripted = self.order_script.pop(0)
                r = 1.0 if scripted is None else _KINDS.index(scripted) / 4 + 0.125
            if r >= 1:
                return await handler(request)
            self.faults += 1
            if order:
                kind = _KINDS[min(3, int(r * 4))]
                self.orders_hit[kind] = self.orders_hit.get(kind, 0) + 1
            if r < 0.25:
                body = {"code": -1003, "msg": "Too many requests; current limit is 2400."}
                return json_response(body, status=429)
            if r < 0.5:
                return web.Response(status=self.rng.choice((500, 502, 503)), text="")
            if r < 0.75:
                # Delivered late, executed all the same. The body is read first (aiohttp
                # keeps it for the handler): once the client has timed out and closed the
                # connection an unread body is lost, and the order would never arrive.
                await request.read()
                await asyncio.sleep(self.late)
                return await handler(request)
            answer = await handler(request)
            await asyncio.sleep(self.late)  # executed, the answer is lost to the timeout
            return answer

        return maybe_fail


def table(rows: list[Row]) -> str:
    head = (
        f"{'fault':<38} {'alerts':>6} {'deliv':>5} {'lost':>4} {'stale s':>7} "
        f"{'restarts':>8} {'tracebk':>7} {'secrets':>7} {'orders':>6} {'dup':>3} {'incr':>4} "
        f"{'over':>4} {'ghost':>5}  exit codes / note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        stale = "-" if r.stale_s is None else f"{r.stale_s:.2f}"
        if r.orders is None:
            orders = f"{'-':>6} {'-':>3} {'-':>4} {'-':>4} {'-':>5}"
        else:
            orders = f"{r.orders:>6} {r.dup:>3} {r.incr:>4} {r.over:>4} {r.ghosts:>5}"
        codes = _codes(r.exit_codes)
        lines.append(
            f"{r.fault:<38} {r.alerts:>6} {r.delivered:>5} {r.lost:>4} {stale:>7} "
            f"{r.restarts:>8} {r.tracebacks:>7} {r.secrets:>7} {orders}  {codes} {r.note}"
        )
    return "\n".join(lines)


def _codes(codes: list[int]) -> str:
    """Exit codes, runs of one code folded (`[-9 x10, 0]`)."""
    out: list[str] = []
    for code in codes:
        if out and out[-1].split(" x")[0] == str(code):
            head, _, n = out[-1].partition(" x")
            out[-1] = f"{head} x{int(n or 1) + 1}"
        else:
            out.append(str(code))
    return "[" + ", ".join(out) + "]"
