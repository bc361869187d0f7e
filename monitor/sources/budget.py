"""Request budgets per venue: a burst for protective steps, a reserve that polling cannot take.

ccxt's own throttler (`async_support/base/throttler.py`) is a leaky bucket of capacity 1
refilled every `rateLimit` ms: every request after the first waits its turn, one at a time,
in arrival order. On Binance USDⓈ-M (`rateLimit` 50 ms) that spaced a protective step's
position read, account read and order ~50 ms apart (~165 ms tick -> order; docs/rate-limits.md)
while the venue's published limit (2 400 weight per minute) had room for all three at once, and a
burst of reconciliation reads queued ahead of an order delayed the order.

`RequestBudget` replaces ccxt's `throttle` on the instance (ccxt calls it from `fetch2` with
the endpoint's cost whenever `enableRateLimit` is on): a token bucket whose capacity lets a
step's requests go together, refilled so that the bucket plus its refill over the venue's
counting window never exceed the venue's published allowance (`VenueLimits`), and a
`reserve` of tokens only urgent requests (the executor's, marked with `urgent_requests()`)
may spend. Urgent requests also go ahead of every waiting background request. Figures and
sources per venue: docs/rate-limits.md.

No ccxt import here: the executor marks its requests urgent on the sim as well, and a sim
daemon must not load ccxt (venue_errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "VENUE_LIMITS",
    "BudgetSpec",
    "RequestBudget",
    "VenueLimits",
    "budget_of",
    "install",
    "urgent_requests",
]

_URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent_requests", default=False)

#: Rounding allowance on the bucket's level (refill is elapsed seconds x rate).
_EPSILON = 1e-9
#: The clock budgets refill by (module level so tests can stop time).
monotonic: Callable[[], float] = time.monotonic


def _now() -> float:
    return monotonic()  # looked up at each call: tests replace the module's clock


@contextlib.contextmanager
def urgent_requests() -> Iterator[None]:
    """Requests made inside (and in tasks started inside, e.g. `asyncio.gather`) are urgent."""
    token = _URGENT.set(True)
    try:
        yield
    finally:
        _URGENT.reset(token)


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A bucket: `capacity` units at most, `rate` units/s refill, `reserve` for urgent use."""

    capacity: float
    rate: float
    reserve: float


@dataclass(frozen=True, slots=True)
class VenueLimits:
    """A venue's published allowance and the share of it this process budgets.

    Units are ccxt's per-endpoint `cost` (`weights` replaces it where ccxt's cost is below
    the venue's published weight). In any `window` seconds the bucket can let through at
    most capacity + rate x window = `allowed` x `share` units: the burst is carved out of the
    window's allowance, never added to it.
    """

    window: float  # seconds over which the venue counts
    allowed: float  # units per window the venue publishes
    share: float  # share of `allowed` this process may use (the rest: other programs, margin)
    burst: float  # share of the budgeted window that may go at once (the bucket's capacity)
    reserve: float  # units background requests leave for urgent ones
    per_ip: bool  # the venue counts per IP (every account of the process shares one bucket)
    source: str
    weights: Mapping[str, float] = field(default_factory=dict)  # "api:METHOD:path" -> weight

    def spec(self) -> BudgetSpec:
        budgeted = self.allowed * self.share
        return BudgetSpec(
            budgeted * self.burst, budgeted * (1 - self.burst) / self.window, self.reserve
        )


#: Published limits (docs/rate-limits.md has the citations and the arithmetic).
VENUE_LIMITS: dict[str, VenueLimits] = {
    # REQUEST_WEIGHT 2 400 / minute per IP. ccxt's fapi costs are the published weights,
    # except the v3 reads ccxt prices at 1 (Binance: weight 5 each).
    "binanceusdm": VenueLimits(
        window=60.0,
        allowed=2400.0,
        share=0.5,
        burst=0.25,
        reserve=40.0,
        per_ip=True,
        source="developers.binance.com/docs/derivatives/usds-margined-futures/general-info",
        weights={"fapiPrivateV3:GET:positionRisk": 5.0, "fapiPrivateV3:GET:account": 5.0},
    ),
    # Per UID and endpoint, per rolling second; ccxt's costs are 50 / (the endpoint's
    # requests per second), so 50 units a second is every endpoint's own limit.
    "bybit": VenueLimits(
        window=1.0,
        allowed=50.0,
        share=0.8,
        burst=0.5,
        reserve=10.0,
        per_ip=False,
        source="bybit-exchange.github.io/docs/v5/rate-limit",
    ),
    # Per UID and endpoint, per 2 s; ccxt's costs are 20 / (the endpoint's requests per 2 s).
    "okx": VenueLimits(
        window=2.0,
        allowed=20.0,
        share=0.8,
        burst=0.5,
        reserve=5.0,
        per_ip=False,
        source="www.okx.com/docs-v5/en/#overview-rate-limits",
    ),
}


class RequestBudget:
    """A token bucket with two classes of request: urgent ones first, and a reserve.

    A background request goes when the bucket keeps `reserve` after paying its cost; an
    urgent one goes as soon as the bucket is not in debt (like ccxt's own bucket, a request
    dearer than what is left may take it below zero, so a single expensive request is never
    stuck). Within a class, requests go in arrival order.
    """

    def __init__(self, spec: BudgetSpec, clock: Callable[[], float] | None = None) -> None:
        self.spec = spec
        self._clock = clock or _now
        self._level = spec.capacity
        self._at = self._clock()
        self._waiting: list[tuple[bool, float, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        #: requests granted at once / after waiting, by class (tests, metrics)
        self.granted: dict[tuple[bool, bool], int] = {}

    @property
    def level(self) -> float:
        """Tokens in the bucket now (negative: in debt)."""
        now = self._clock()
        self._level = min(self.spec.capacity, self._level + (now - self._at) * self.spec.rate)
        self._at = now
        return self._level

    @property
    def waiting(self) -> int:
        """Requests queued for tokens."""
        return len(self._waiting)

    def _need(self, cost: float) -> float:
        """What a background request needs above the reserve: its cost, but never more than
        the bucket can hold above the reserve."""
        return min(cost, max(self.spec.capacity - self.spec.reserve, 0.0))

    def _fits(self, urgent: bool, cost: float) -> bool:
        if urgent:
            return self.level >= -_EPSILON
        return self.level - self._need(cost) >= self.spec.reserve - _EPSILON

    def _grant(self, urgent: bool, cost: float, waited: bool) -> None:
        self._level -= cost
        key = (urgent, waited)
        self.granted[key] = self.granted.get(key, 0) + 1

    async def take(self, cost: float | None = None, *, urgent: bool | None = None) -> None:
        """Wait until `cost` units may be spent (ccxt's `throttle(cost)` signature)."""
        urgent = _URGENT.get() if urgent is None else urgent
        units = 1.0 if cost is None else float(cost)
        ahead = any(u for u, _, _ in self._waiting) if urgent else bool(self._waiting)
        if not ahead and self._fits(urgent, units):
            self._grant(urgent, units, waited=False)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (urgent, units, future)
        if urgent:  # behind the urgent ones already waiting, ahead of every background one
            at = next((i for i, (u, _, _) in enumerate(self._waiting) if not u), len(self._waiting))
            self._waiting.insert(at, entry)
        else:
            self._waiting.append(entry)
        self._pump()
        try:
            await future
        except asyncio.CancelledError:
            if entry in self._waiting:
                self._waiting.remove(entry)
            elif future.done() and not future.cancelled():
                self._level += units  # granted, but the request will not be made
            self._pump()
            raise

    def _pump(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            urgent, units, future = self._waiting[0]
            if future.done():  # cancelled while queued
                self._waiting.pop(0)
                continue
            if not self._fits(urgent, units):
                floor = 0.0 if urgent else self.spec.reserve + self._need(units)
                delay = (floor - self.level) / self.spec.rate if self.spec.rate > 0 else 1.0
                self._timer = asyncio.get_running_loop().call_later(
                    min(max(delay, 0.001), 1.0), self._pump
                )
                return
            self._waiting.pop(0)
            self._grant(urgent, units, waited=True)
            future.set_result(None)


_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, RequestBudget]] = (
    weakref.WeakKeyDictionary()
)


def _shared(key: Any, spec: BudgetSpec) -> RequestBudget:
    """The budget of `key` in the running loop (futures and timers belong to one loop)."""
    table = _BUDGETS.setdefault(asyncio.get_running_loop(), {})
    budget = table.get(key)
    if budget is None:
        budget = table[key] = RequestBudget(spec)
    return budget


def _limits_of(exchange: Any) -> VenueLimits | None:
    return VENUE_LIMITS.get(str(exchange.id))


def _spec_of(exchange: Any) -> BudgetSpec:
    limits = _limits_of(exchange)
    if limits is not None:
        return limits.spec()
    # No published figures here: ccxt's own pace (one unit per rateLimit ms, no burst),
    # still with urgent requests ahead of background ones.
    rate = 1000.0 / float(exchange.rateLimit) if exchange.rateLimit else 1000.0
    return BudgetSpec(capacity=1.0, rate=rate, reserve=0.0)


def install(exchange: Any, account: str) -> None:
    """Put the venue's budget in front of `exchange`'s requests (ccxt instance, unopened)."""
    limits = _limits_of(exchange)
    per_ip = limits is not None and limits.per_ip
    key = (str(exchange.id), None if per_ip else account)
    spec = _spec_of(exchange)
    exchange.request_budget_key = (key, spec)
    if limits is not None and limits.weights:
        ccxt_cost = exchange.calculate_rate_limiter_cost
        weights = limits.weights

        def cost(api: Any, method: Any, path: Any, params: Any, config: Any = None) -> Any:
            name = f"{api if isinstance(api, str) else '/'.join(map(str, api))}:{method}:{path}"
            published = weights.get(name)
            return (
                published
                if published is not None
                else ccxt_cost(api, method, path, params, config or {})
            )

        exchange.calculate_rate_limiter_cost = cost

    async def throttle(cost: Any = None) -> None:
        await _shared(key, spec).take(cost)

    exchange.throttle = throttle


def budget_of(exchange: Any) -> RequestBudget:
    """The budget `exchange`'s requests spend in the running loop."""
    key, spec = exchange.request_budget_key
    return _shared(key, spec)
