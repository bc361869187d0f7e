"""Every interleaving of stream frames, late REST reads, fills and transfers yields only
ratios the venue had (issue 11: "One true account view").

Invariant, checked on every report the daemon's `AccountLoop` sends to its sinks (urgent ones
inside an event's handling, and the coalesced one at each `report` step): the reported ratio
equals, to 1e-9 relative, the venue's own ratio (Binance's formula over the venue's own
brackets, computed here independently of monitor/) over the newest data the loop had
received:

- the book (positions AND wallet) of one read, exactly as the venue held it at the instant it
  processed that read: never positions of one instant with the wallet of another;
- for each symbol, the mark stamped latest (a stream frame's venue time, a read's sending
  time): never an older price after a newer one arrived, whichever path brought it.

Each of those values was the venue's own at an instant inside the window spanned by the data
used, and the venue records its history to say so. What the invariant does not (cannot)
demand: that the venue's book has not changed since the loop's last read when no read told
it (between a fill and the read that reports it, the loop values the book it knows at the
newest marks: latency, not a mixed state).

The bulk (`TestScheduledInterleavings`, >= 2 000 hypothesis schedules) drives the real
`AccountLoop` (state.apply/merge_read, Ledger, recompute) through a scripted source without
sockets, so it runs in seconds; `TestWireInterleavings` replays a smaller set through real
ccxt parsing against the fake Binance (tests/fakes/binance.py) over loopback.

This invariant fails on commit 26de929, where a read reached the loop as `PositionsUpdate`
then `BalanceUpdate` (a report between the two met new positions with the old wallet) and a
read's marks replaced newer streamed ones wholesale: `old_path=True` below replays exactly
those two behaviours through today's loop, and `TestTheCheckerBites` shows the checker
catching them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config.settings import load_settings
from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Collateral,
    Event,
    MarginReport,
    Position,
    PriceTick,
    Tier,
)
from monitor.daemon.loop import AccountLoop
from tests.fakes.binance import BTC_BRACKETS, ETH_BRACKETS
from tests.sinks import QuietSink

SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")
BRACKETS = {SYMBOLS[0]: BTC_BRACKETS, SYMBOLS[1]: ETH_BRACKETS}
TIERS = {s: tuple(Tier(cap, mmr, cum) for cap, mmr, cum, _ in rows) for s, rows in BRACKETS.items()}
FEE = 0.0005
ACCOUNT = "acct"
REL = 1e-9

Book = tuple[float, tuple[tuple[str, float, float], ...]]  # wallet, (symbol, amount, entry)


def venue_ratio(book: Book, marks: dict[str, float]) -> float:
    """Binance's figure over its own brackets: Σ(|notional|·mmr − cum) / (wallet + Σ uPnL)."""
    wallet, positions = book
    mm = upnl = 0.0
    for symbol, amount, entry in positions:
        notional = abs(amount) * marks[symbol]
        cap_mmr_cum = next((r for r in BRACKETS[symbol] if notional <= r[0]), BRACKETS[symbol][-1])
        mm += notional * cap_mmr_cum[1] - cap_mmr_cum[2]
        upnl += amount * (marks[symbol] - entry)
    balance = wallet + upnl
    return mm / balance if balance > 0 else math.inf


@dataclass
class Venue:
    """The fake venue's truth and its history (time, book, marks) of every change."""

    wallet: float = 1_300.0
    positions: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {SYMBOLS[0]: (0.5, 61_000.0), SYMBOLS[1]: (-6.0, 2_950.0)}
    )
    marks: dict[str, float] = field(
        default_factory=lambda: {SYMBOLS[0]: 60_000.0, SYMBOLS[1]: 3_000.0}
    )
    t: float = 0.0
    history: list[tuple[float, Book, dict[str, float]]] = field(default_factory=list)

    def book(self) -> Book:
        return self.wallet, tuple((s, a, e) for s, (a, e) in sorted(self.positions.items()))

    def step(self) -> float:
        self.t += 1.0
        return self.t

    def changed(self) -> None:
        self.history.append((self.t, self.book(), dict(self.marks)))

    def read(self, sent: float) -> AccountUpdate:
        """The account as the venue holds it now, as one read sent at `sent`."""
        positions = tuple(
            Position(
                s,
                "long" if a > 0 else "short",
                abs(a),
                e,
                self.marks[s],
                tiers=TIERS[s],
                leverage=20.0,
            )
            for s, (a, e) in sorted(self.positions.items())
        )
        return AccountUpdate(
            ACCOUNT,
            positions,
            (Collateral("USDT", self.wallet),),
            sent,
            tuple(sorted(self.marks.items())),
            venue_ratio(self.book(), self.marks),
        )


@dataclass
class Oracle:
    """What the loop must be showing: the newest book it was told, the latest-stamped mark
    per symbol (ties: the later arrival), maintained independently of monitor/."""

    book: Book
    marks: dict[str, tuple[float, float]]
    book_sent: float

    def tick(self, symbol: str, price: float, ts: float) -> None:
        if ts >= self.marks[symbol][1]:
            self.marks[symbol] = (price, ts)

    def read(self, update: AccountUpdate) -> None:
        if update.ts < self.book_sent:
            return
        self.book_sent = update.ts
        self.book = (
            update.collateral[0].amount,
            tuple((p.symbol, p.contracts * p.sign, p.entry_price) for p in update.positions),
        )
        for symbol, price in update.marks:
            self.tick(symbol, price, update.ts)

    def ratio(self) -> float:
        return venue_ratio(self.book, {s: p for s, (p, _) in self.marks.items()})


def same(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= REL * max(abs(b), 1e-12)


class Checker(QuietSink):
    """A sink holding every report against the oracle at the moment it is sent."""

    name = "checker"

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.reports = 0
        self.violations: list[str] = []

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        self.reports += 1
        want = self.oracle.ratio()
        if not same(report.margin_ratio, want):
            self.violations.append(f"reported {report.margin_ratio!r}, venue had {want!r}")


class ScriptedSource:
    """One connection's life: the start-up read, then the schedule's events. The loop has
    handled an event completely when the generator resumes (it never yields meanwhile)."""

    def __init__(
        self, venue: Venue, ops: list[tuple[Any, ...]], oracle: Oracle, old_path: bool
    ) -> None:
        self.account = ACCOUNT
        self.venue = venue
        self.ops = ops
        self.oracle = oracle
        self.old_path = old_path
        self.loop: AccountLoop | None = None
        self.frames: dict[str, list[tuple[float, float]]] = {s: [] for s in SYMBOLS}

    async def fetch_snapshot(self) -> AccountSnapshot:
        update = self.venue.read(self.venue.t)
        return AccountSnapshot(ACCOUNT, "USDT", update.collateral, update.positions, "binanceusdm")

    async def close(self) -> None:
        return None

    def _update(self, update: AccountUpdate) -> list[Event]:
        self.oracle.read(update)
        if not self.old_path:
            return [update]
        # 26de929: positions first (with the wallet the loop held), then the balance, and
        # the read's marks stamped with its arrival, replacing newer streamed ones
        assert self.loop is not None
        assert self.loop.state is not None
        held = self.loop.state.snapshot.collateral
        arrival = self.venue.step()
        # (26de929 had no venue figure either: with it, "worst" would mask the half)
        return [
            replace(update, collateral=held, ts=arrival, marks=(), venue_ratio=None),
            replace(update, ts=arrival, marks=(), venue_ratio=None),
        ]

    async def events(self) -> AsyncIterator[Event]:
        venue, oracle = self.venue, self.oracle
        read: dict[str, Any] | None = None
        for op in self.ops:
            kind = op[0]
            out: list[Event] = []
            if kind == "move":
                symbol = SYMBOLS[op[1]]
                venue.marks[symbol] *= 1.0 + op[2]
                venue.changed()
                self.frames[symbol].append((venue.marks[symbol], venue.step()))
            elif kind in ("frame", "lose"):
                frames = self.frames[SYMBOLS[op[1]]]
                if frames:
                    price, ts = frames.pop(0)
                    if kind == "frame":
                        oracle.tick(SYMBOLS[op[1]], price, ts)
                        stamp = venue.step() if self.old_path else ts
                        out.append(PriceTick(ACCOUNT, SYMBOLS[op[1]], price, stamp))
            elif kind == "send" and read is None:
                read = {"sent": venue.step(), "answer": None}
            elif kind == "process" and read is not None and read["answer"] is None:
                read["answer"] = venue.read(read["sent"])
                venue.step()
            elif kind == "deliver" and read is not None and read["answer"] is not None:
                out.extend(self._update(read["answer"]))
                read = None
            elif kind == "fill":
                symbol = SYMBOLS[op[1]]
                amount, entry = venue.positions[symbol]
                qty = abs(amount) * op[2]
                mark = venue.marks[symbol]
                venue.wallet += math.copysign(qty, amount) * (mark - entry) - FEE * qty * mark
                venue.positions[symbol] = (amount - math.copysign(qty, amount), entry)
                venue.step()
                venue.changed()
            elif kind == "transfer":
                venue.wallet += op[1]
                venue.step()
                venue.changed()
            elif kind == "report" and self.loop is not None:
                await self.loop.recompute(shock=False)
            for i, event in enumerate(out):
                if i and self.loop is not None:
                    # the recompute task may run between any two events (it did between
                    # 26de929's two halves of a read)
                    await self.loop.recompute(shock=False)
                yield event


_ARGS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "move": st.tuples(st.integers(0, 1), st.floats(-0.02, 0.02)),
    "frame": st.tuples(st.integers(0, 1)),
    "lose": st.tuples(st.integers(0, 1)),
    "fill": st.tuples(st.integers(0, 1), st.floats(0.05, 0.6)),
    "transfer": st.tuples(st.floats(-300.0, 300.0)),
}
#: weighted by repetition: moves, frames, read steps and reports often; fills, transfers,
#: lost frames and restarts now and then
_KINDS = (
    ["move"] * 4
    + ["frame"] * 5
    + ["send", "process", "deliver"] * 3
    + ["report"] * 3
    + ["lose", "fill", "fill", "transfer", "restart"]
)
OP = st.sampled_from(_KINDS).flatmap(
    lambda kind: _ARGS.get(kind, st.just(())).map(lambda args: (kind, *args))
)
SCHEDULES = st.lists(OP, min_size=15, max_size=60)


async def run_schedule(ops: list[tuple[Any, ...]], old_path: bool = False) -> Checker:
    """Run `ops` through fresh `AccountLoop`s (a new one at each `restart`)."""
    venue = Venue()
    venue.changed()
    alerts = load_settings(None).alerts
    start = venue.read(0.0)
    oracle = Oracle(book=venue.book(), marks={}, book_sent=0.0)
    checker = Checker(oracle)
    segment: list[tuple[Any, ...]] = []
    for op in [*ops, ("restart",)]:
        if op[0] != "restart":
            segment.append(op)
            continue
        # a (re)start reads the venue afresh, sent now: the oracle starts over from it
        start = venue.read(venue.t)
        oracle.book, oracle.book_sent = venue.book(), venue.t
        oracle.marks = {s: (p, venue.t) for s, p in start.marks}
        source = ScriptedSource(venue, segment, oracle, old_path)
        loop = AccountLoop(source, [checker], alerts, 3600.0, clock=lambda: venue.t, finite=True)  # type: ignore[arg-type]
        source.loop = loop
        await loop.run_source()
        await loop.recompute(shock=False)
        venue.step()
        segment = []
    return checker


class TestScheduledInterleavings:
    @settings(max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(SCHEDULES)
    def test_every_report_is_a_ratio_the_venue_had(self, ops: list[tuple[Any, ...]]) -> None:
        """Test that over any schedule of frames (late, lost), reads (sent, answered and
        delivered late), fills, transfers and restarts every report equals the venue's
        ratio over the newest book and marks received (see the module docstring)."""
        checker = asyncio.run(run_schedule(ops))
        assert checker.violations == []


class TestTheCheckerBites:
    def test_old_event_path_is_caught(self) -> None:
        """Test that the checker finds violations when reads arrive as two halves stamped
        with their arrival (26de929's event path): the losing fill and the in-flight read."""
        losing_fill = [("report",), ("fill", 0, 0.5), ("send",), ("process",), ("deliver",)]
        in_flight = [
            ("send",),
            ("move", 0, -0.01),
            ("process",),
            ("move", 0, 0.015),
            ("frame", 0),
            ("frame", 0),
            ("deliver",),
            ("report",),
        ]
        for ops in (losing_fill, in_flight):
            assert asyncio.run(run_schedule(ops)).violations == [], ops
            assert asyncio.run(run_schedule(ops, old_path=True)).violations, ops


# --- the wire: the same invariant through real ccxt and the fake Binance --------------------


@pytest.mark.parametrize("seed", range(8))
async def test_wire_interleavings(seed: int) -> None:
    """Test that through real ccxt against the fake Binance (streamed marks, reads answered
    late while marks move, losing and winning fills, transfers), every report equals the
    venue's ratio for one of its books at marks it held inside the report's data window."""
    import random

    from monitor.daemon.supervisor import run_daemon
    from monitor.sources.exchange import ExchangeSource
    from tests.fakes.account import account_for
    from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
    from tests.fakes.binance_orders import install_orders
    from tests.test_account_view import Recorder

    rng = random.Random(seed)
    fake = FakeBinanceUsdm()
    fake.account.wallet = 1_300.0
    fake.account.marks.update({"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0})
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.5, 61_000.0)
    fake.account.positions[("ETHUSDT", "BOTH")] = BinancePosition("ETHUSDT", -6.0, 2_950.0)
    install_orders(fake)
    books: list[Book] = []
    marks: list[dict[str, float]] = []

    def record() -> None:
        books.append(
            (
                fake.account.wallet,
                tuple(
                    sorted(
                        (f"{p.symbol.removesuffix('USDT')}/USDT:USDT", p.amount, p.entry)
                        for p in fake.account.positions.values()
                    )
                ),
            )
        )
        marks.append(
            {f"{s.removesuffix('USDT')}/USDT:USDT": m for s, m in fake.account.marks.items()}
        )

    wire = Recorder()
    async with fake:
        record()
        account = account_for(fake, API_KEY, SECRET, poll_interval=0.3, stale_after=60.0)
        source = ExchangeSource(account, backoff_cap=0.2, reconcile_every=0.3, debounce=0.01)
        config = load_settings(None, shock_interval=3600.0, report_spacing=0.0)
        task = asyncio.create_task(
            run_daemon(config, [], [wire], sources=[source], handle_signals=False, duration=60)
        )
        try:
            await fake.wait_for_client("/market/ws", topic="btcusdt@markPrice@1s", within=10)
            await fake.wait_for_client("/market/ws", topic="ethusdt@markPrice@1s", within=10)
            for _ in range(12):
                action = rng.choice(["mark", "mark", "late_mark", "fill", "transfer"])
                if action in ("mark", "late_mark"):
                    if action == "late_mark":
                        fake.late("/fapi/v3/positionRisk", 0.15)
                        await fake.set_position(
                            "ETHUSDT", fake.account.positions[("ETHUSDT", "BOTH")].amount, 2_950.0
                        )  # trigger a read
                        await asyncio.sleep(0.05)
                    symbol = rng.choice(["BTCUSDT", "ETHUSDT"])
                    await fake.push_mark(
                        symbol, fake.account.marks[symbol] * (1 + rng.uniform(-0.01, 0.01))
                    )
                    record()
                elif action == "fill":
                    symbol, side = rng.choice([("BTCUSDT", "sell"), ("ETHUSDT", "buy")])
                    qty = 0.1 if symbol == "BTCUSDT" else 1.0
                    await source.create_order(
                        f"{symbol.removesuffix('USDT')}/USDT:USDT",
                        "market",
                        side,
                        qty,
                        None,
                        {"reduceOnly": True},
                    )
                    record()
                else:
                    # a transfer: the wallet moves and ACCOUNT_UPDATE announces it
                    fake.account.wallet += rng.uniform(-200.0, 200.0)
                    btc = fake.account.positions[("BTCUSDT", "BOTH")]
                    await fake.set_position("BTCUSDT", btc.amount, btc.entry)
                    record()
                await asyncio.sleep(rng.uniform(0.0, 0.2))
            await asyncio.sleep(0.5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await source.close()
    ratios = [r.margin_ratio for r in wire.reports]
    assert ratios
    # every report: the ratio of a book the venue had, at per-symbol marks it had from that
    # book's time on (a later book's marks never meet an older book, nor the reverse halves)
    possible = []
    for i, b in enumerate(books):
        later = marks[i:]
        for btc in {m[SYMBOLS[0]] for m in later}:
            for eth in {m[SYMBOLS[1]] for m in later}:
                possible.append(venue_ratio(b, {SYMBOLS[0]: btc, SYMBOLS[1]: eth}))
    bad = [r for r in ratios if not any(same(r, p) for p in possible)]
    assert bad == []
