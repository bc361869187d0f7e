"""Request budgets: a protective step is not queued behind the rate limiter (issue 16).

Time never decides these tests: the budget's clock is stopped (`budget.monotonic`), so a
request that had to wait for tokens would wait forever and the test would time out, and
what is asserted is ordering and counts (which class of request was granted at once,
which order the venue saw requests in), never a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import pytest
from aiohttp import web
from pydantic import SecretStr

from monitor.config.actions import ActionsSettings
from monitor.core.margin.report import report
from monitor.protect.executor import Executor
from monitor.sources import budget
from monitor.sources.budget import (
    VENUE_LIMITS,
    BudgetSpec,
    RequestBudget,
    budget_of,
    urgent_requests,
)
from monitor.sources.exchange import ExchangeSource
from tests.fakes.account import FakeAccount
from tests.fakes.binance import API_KEY, SECRET, BinancePosition, FakeBinanceUsdm
from tests.fakes.binance_orders import BinanceOrders, install_orders


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    stopped = Clock()
    monkeypatch.setattr(budget, "monotonic", stopped)
    return stopped


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class TestRequestBudget:
    """The bucket itself: burst, reserve, urgent first."""

    async def test_a_burst_up_to_capacity_goes_at_once(self, clock: Clock) -> None:
        """Test that requests up to the capacity are granted without waiting, the next waits."""
        bucket = RequestBudget(BudgetSpec(capacity=10, rate=1, reserve=0))
        for _ in range(10):
            await asyncio.wait_for(bucket.take(1), 1)
        late = asyncio.create_task(bucket.take(1))
        await _settle()
        assert bucket.granted == {(False, False): 10}
        assert not late.done()
        assert bucket.waiting == 1
        clock.now += 1.0
        await asyncio.wait_for(late, 2)
        assert bucket.granted[(False, True)] == 1

    async def test_background_leaves_the_reserve_to_urgent_requests(self, clock: Clock) -> None:
        """Test that background requests stop at the reserve while an urgent one still goes."""
        bucket = RequestBudget(BudgetSpec(capacity=10, rate=1, reserve=4))
        for _ in range(6):
            await asyncio.wait_for(bucket.take(1), 1)
        poll = asyncio.create_task(bucket.take(1))
        await _settle()
        assert not poll.done()
        with urgent_requests():
            for _ in range(4):
                await asyncio.wait_for(bucket.take(1), 1)
        assert bucket.granted == {(False, False): 6, (True, False): 4}
        poll.cancel()

    async def test_urgent_waiters_go_before_queued_background(self, clock: Clock) -> None:
        """Test that an urgent request queued after background ones is granted first."""
        bucket = RequestBudget(BudgetSpec(capacity=1, rate=1000, reserve=0))
        await bucket.take(2)  # in debt: even an urgent request must wait
        order: list[str] = []

        async def take(name: str, urgent: bool) -> None:
            await bucket.take(1, urgent=urgent)
            order.append(name)

        tasks = [asyncio.create_task(take(n, n.startswith("u"))) for n in ("b1", "b2", "u1")]
        await _settle()
        assert order == []
        for _ in range(10):
            clock.now += 0.001
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
        assert order == ["u1", "b1", "b2"]

    async def test_a_cancelled_waiter_leaves_the_queue(self, clock: Clock) -> None:
        """Test that cancelling a queued request removes it and lets the next one through."""
        bucket = RequestBudget(BudgetSpec(capacity=1, rate=1000, reserve=0))
        await bucket.take(1)
        first = asyncio.create_task(bucket.take(1))
        second = asyncio.create_task(bucket.take(1))
        await _settle()
        first.cancel()
        await _settle()
        assert bucket.waiting == 1
        clock.now += 0.001
        await asyncio.wait_for(second, 2)
        assert bucket.waiting == 0


class TestVenueLimits:
    """The budgets stay inside what each venue publishes."""

    @pytest.mark.parametrize("venue", sorted(VENUE_LIMITS))
    def test_burst_and_refill_fit_the_published_window(self, venue: str) -> None:
        """Test that capacity + refill over the venue's window never exceeds its allowance."""
        limits = VENUE_LIMITS[venue]
        spec = limits.spec()
        assert spec.capacity + spec.rate * limits.window <= limits.allowed + 1e-9
        assert 0 < spec.reserve < spec.capacity
        assert limits.source


# --- through real ccxt against the fake Binance USDⓈ-M ---------------------------------------


@pytest.fixture
async def venue() -> AsyncIterator[tuple[FakeBinanceUsdm, BinanceOrders]]:
    fake = FakeBinanceUsdm()
    fake.account.wallet = 700.0  # 2 BTC long at 60k: ratio 0.786, above the 0.7 action level
    fake.account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 2.0, 60_000.0)
    book = install_orders(fake)
    async with fake:
        yield fake, book


def _shipped_account(fake: FakeBinanceUsdm) -> FakeAccount:
    """The account as a user configures it: only the URLs point elsewhere (no ccxt knobs)."""
    return FakeAccount(
        name="main",
        exchange=fake.venue,
        api_key=SecretStr(API_KEY),
        secret=SecretStr(SECRET),
        ccxt=fake.urls_config(),
    )


def _executor(src: ExchangeSource, state_dir: Path) -> Executor:
    settings = ActionsSettings(
        max_fraction_per_step=1.0, cooldown=0.0, order_timeout=2.0, min_order_interval=0.0
    )
    return Executor(
        "main",
        src,
        src.fetch_snapshot,
        settings=settings,
        action_ratio=0.7,
        state_dir=state_dir,
        live=True,
        venue="binanceusdm",
    )


def _paths(fake: FakeBinanceUsdm) -> list[str]:
    return [f"{method} {path}" for method, path, _ in fake.requests]


class TestProtectiveStepThroughCcxt:
    """The shipped ccxt configuration (rate limiting on) against the fake Binance."""

    async def test_step_requests_are_not_spaced_and_reads_overlap(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path, clock: Clock
    ) -> None:
        """Test that the step's reads and order go without waiting and the two reads overlap."""
        fake, book = venue
        src = ExchangeSource(_shipped_account(fake))
        try:
            before = await asyncio.wait_for(src.fetch_snapshot(), 10)  # markets, tiers
            assert src.exchange.enableRateLimit is True  # ccxt calls the throttle
            # the positions read is answered only once the account read has arrived: two
            # reads made one after the other would never finish
            account_seen = asyncio.Event()
            positions, account = fake.position_risk, fake.account_info

            async def held_positions(request: web.Request) -> web.StreamResponse:
                await asyncio.wait_for(account_seen.wait(), 5)
                return await positions(request)

            async def seen_account(request: web.Request) -> web.StreamResponse:
                account_seen.set()
                return await account(request)

            fake.add_route("GET", "/fapi/v3/positionRisk", fake.private(held_positions))
            fake.add_route("GET", "/fapi/v3/account", fake.private(seen_account))
            ex = _executor(src, tmp_path)
            start = len(fake.requests)
            plan = await asyncio.wait_for(ex.step(report(before), 0.0), 10)
            assert plan is not None
            assert plan.orders
            assert len(book.orders) == 1
            step = _paths(fake)[start:]
            assert step[:3] == [
                "GET /fapi/v3/positionRisk",
                "GET /fapi/v3/account",
                "POST /fapi/v1/order",
            ] or step[:3] == [
                "GET /fapi/v3/account",
                "GET /fapi/v3/positionRisk",
                "POST /fapi/v1/order",
            ]
            granted = budget_of(src.exchange).granted
            assert granted.get((True, False), 0) >= 3  # reads, order, follow-up, re-read
            assert granted.get((True, True), 0) == 0  # none of them waited for tokens
        finally:
            await src.close()

    async def test_a_poll_burst_cannot_delay_the_order(
        self, venue: tuple[FakeBinanceUsdm, BinanceOrders], tmp_path: Path, clock: Clock
    ) -> None:
        """Test that with polling queued for tokens, the step's order still reaches the venue."""
        fake, book = venue
        src = ExchangeSource(_shipped_account(fake))
        try:
            before = await asyncio.wait_for(src.fetch_snapshot(), 10)
            bucket = budget_of(src.exchange)
            spec = bucket.spec
            # more background reads than the bucket holds above its reserve (5 units each)
            n = int((spec.capacity - spec.reserve) / 5) + 10
            polls: list[asyncio.Task[Any]] = [
                asyncio.create_task(src.exchange.fetch_positions()) for _ in range(n)
            ]
            async with asyncio.timeout(10):
                while bucket.waiting < 10:  # noqa: ASYNC110 - waits on the bucket, not a clock
                    await asyncio.sleep(0.01)
            queued = bucket.waiting
            ex = _executor(src, tmp_path)
            plan = await asyncio.wait_for(ex.step(report(before), 0.0), 10)
            assert plan is not None
            assert len(book.orders) == 1
            # the polls queued before the step are still queued: the order went ahead of them
            assert bucket.waiting == queued
            assert bucket.level >= -5  # the step spent the reserve, not more than one request
            clock.now += 60.0  # time passes: the polls get their tokens and finish
            await asyncio.wait_for(asyncio.gather(*polls), 10)
            assert bucket.waiting == 0
            order_at = _paths(fake).index("POST /fapi/v1/order")
            assert _paths(fake)[order_at + 1 :].count("GET /fapi/v3/positionRisk") >= queued
        finally:
            await src.close()

    async def test_other_venues_keep_ccxt_pace_with_urgent_first(self, clock: Clock) -> None:
        """Test that a venue without published figures gets ccxt's own pace, no burst."""
        exchange = ccxtpro.kraken({})
        try:
            budget.install(exchange, "k")
            spec = budget_of(exchange).spec
            assert spec == BudgetSpec(capacity=1.0, rate=1000.0 / exchange.rateLimit, reserve=0)
        finally:
            await exchange.close()
