"""A live exchange account through one `ccxt.pro` instance, as a `Source` of model events.

What is trusted for what (docs/venues.md):
- **mark prices** stream (`watch_mark_price` where `has` says so, else `watch_ticker`) and
  become a `PriceTick` on every frame; a symbol whose stream is quiet for `poll_interval`
  is read over REST instead, so prices keep flowing while the socket is dead;
- **positions and balances** are read only over REST (`fetch_positions`, `fetch_balance`).
  Their websocket streams are *triggers* for a debounced re-read, never the truth: ccxt's
  watch cache wipes mark/margin fields and keeps stale `side='both'` entries (§0.3, §0.4).
  With no stream (MEXC positions) or a failing one, the REST read runs every
  `poll_interval`; with a healthy one, every `reconcile_every` anyway (dead-but-open
  sockets exist, ccxt #25092);
- **leverage tiers** are fetched per symbol, cached, refreshed every `tiers_every`;
- the venue's own account figures are kept beside ours (`venue_check`) to expose drift.

Faults: the NetworkError family retries with jittered exponential backoff; rate limits
also slow every polling loop (`Throttle`); `InvalidNonce` resyncs the clock
(`load_time_difference`); `AuthenticationError`/`PermissionDenied` end the source with one
`SourceDown` and no retries, because retrying bad keys only earns an IP ban. Every data kind
has a freshness clock; `SourceStale` when it passes `stale_after`, `SourceUp` when fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog
from ccxt.base import errors as ccxt_errors

from monitor.backoff import Backoff
from monitor.core import model
from monitor.core.model import AccountUpdate, Event, PriceTick, SourceDown, SourceStale, SourceUp
from monitor.core.stress import with_prices
from monitor.sources.backoff import Freshness, FreshnessChange, Throttle
from monitor.sources.ccxt_client import (
    AUTH_ERRORS,
    AccountConfig,
    KeyRejected,
    build_exchange,
    error_line,
)
from monitor.sources.collateral_rules import CollateralRulesReader, venue_margin
from monitor.sources.exchange_desk import LiveDesk
from monitor.sources.exchange_read import AccountReads, VenueCheck
from monitor.venues.base import MalformedPayload, VenueFigures
from monitor.venues.registry import venue_for

__all__ = ["ExchangeSource"]

log = structlog.get_logger("monitor.sources.exchange")


# --- the source -------------------------------------------------------------------------------


class ExchangeSource(AccountReads, LiveDesk):
    """A live account: `events()` yields model events until `close()` or a `SourceDown`."""

    def __init__(
        self,
        settings: AccountConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        reconcile_every: float | None = None,
        debounce: float = 0.05,
        tiers_every: float = 3600.0,
        backoff_cap: float = 30.0,
        currency: str | None = None,
        state_dir: Path | None = None,
        collateral_rules_every: float = 3600.0,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.venue = settings.exchange
        self.currency = currency or venue_for(self.venue).currency
        self.poll_interval = float(settings.poll_interval)
        self.stale_after = float(settings.stale_after)
        # A healthy stream still gets a REST read at least twice per `stale_after`, so the
        # positions/balance clocks only go stale when reads really fail.
        self.reconcile_every = min(
            reconcile_every or max(self.poll_interval, 60.0), self.stale_after / 2
        )
        self.debounce = debounce
        self.tiers_every = tiers_every
        self.backoff_cap = backoff_cap
        self._clock = clock
        self._monotonic = monotonic
        self.exchange: Any = None
        # Last good state: a rejected update never replaces these (normalize.py policy).
        self.positions: tuple[model.Position, ...] = ()
        self.collateral: tuple[model.Collateral, ...] = ()
        self.marks: dict[str, float] = {}
        self._mark_at: dict[str, float] = {}  # symbol -> time of `marks[symbol]`
        self.tiers: dict[str, tuple[model.Tier, ...]] = {}
        self.figures: VenueFigures | None = None
        self.venue_check: VenueCheck | None = None
        self.down_reason: str | None = None
        self._tiers_at: dict[str, float] = {}
        self._last_tick: dict[str, float] = {}
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._dirty = asyncio.Event()
        self._stream_ok: dict[str, bool] = {}
        self._freshness = Freshness(self.stale_after)
        self._throttle = Throttle()
        self._tasks: set[asyncio.Task[None]] = set()
        self._price_tasks: dict[str, asyncio.Task[None]] = {}
        self._drifting = False
        self._collateral_symbols: set[str] = set()
        self._closed = False
        # Venue haircuts for cross-collateral (docs/collateral.md), cached in the state directory.
        self.collateral_rules = CollateralRulesReader(
            self.name, self.venue, state_dir, every=collateral_rules_every, clock=clock
        )

    # --- public surface (monitor.sources.base.Source) ---------------------------------------

    @property
    def account(self) -> str:
        """The configured account name, as used in every event."""
        return self.name

    async def open(self) -> Any:
        """Create the ccxt instance (no network until the first call)."""
        if self.exchange is None:
            self.exchange = build_exchange(self.settings)
        return self.exchange

    async def events(self) -> AsyncIterator[Event]:
        """Model events of this account, until `close()`; ends after a `SourceDown`."""
        await self.open()
        self._start()
        try:
            while True:
                event = await self._queue.get()
                yield event
                if isinstance(event, SourceDown):
                    return
        finally:
            await self._stop_tasks()

    def venue_drift(self) -> float | None:
        """Our ratio minus the venue's on the last reconciliation (`venue_check.drift`)."""
        return self.venue_check.drift if self.venue_check is not None else None

    async def fetch_snapshot(self) -> model.AccountSnapshot:
        """A fresh REST read of the whole account (for `snapshot`, executors, tests)."""
        exchange = await self.open()
        try:
            await exchange.load_markets()
            positions, collateral, self.figures = await self._read_account()
        except AUTH_ERRORS as exc:
            # the daemon's start-up read: the same one line as a key rejected later
            raise KeyRejected(self._key_rejected("the start-up read", exc)) from exc
        return self._snapshot(positions, collateral)

    def snapshot(self) -> model.AccountSnapshot:
        """The last good state at the latest marks (what the daemon's state holds): marks
        move positions and collateral priced off the same asset (stress.with_prices)."""
        live = self._snapshot(self.positions, self.collateral)
        return replace(with_prices(live, self.marks), venue_margin=live.venue_margin)

    async def close(self) -> None:
        """Stop every loop and release the ccxt sessions (ccxt: close() is required)."""
        self._closed = True
        await self._stop_tasks()
        if self.exchange is not None:
            with contextlib.suppress(Exception):
                await self.exchange.close()

    async def __aenter__(self) -> ExchangeSource:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- tasks ----------------------------------------------------------------------------

    def _spawn(self, coro: Any, label: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro, name=f"source[{self.name}].{label}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self) -> None:
        if self._tasks:
            return
        # A restart after SourceDown (the daemon reads again later) reports anew.
        self.down_reason = None
        now = self._monotonic()
        self._freshness.start("positions", now)
        self._freshness.start("balance", now)
        self._spawn(self._run(), "main")
        self._spawn(self._watchdog(), "watchdog")

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks) + list(self._price_tasks.values())
        self._price_tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _emit(self, event: Event) -> None:
        self._queue.put_nowait(event)

    async def _run(self) -> None:
        """Load markets (retrying), then start the streams and the reconciler."""
        backoff = Backoff(cap=self.backoff_cap)
        while True:
            try:
                await self.exchange.load_markets()
                break
            except Exception as exc:
                if not await self._fault(exc, "load_markets", backoff):
                    return
        has = self.exchange.has
        private = bool(self.exchange.apiKey or getattr(self.exchange, "walletAddress", None))
        if private and has.get("watchPositions") is True:
            self._spawn(
                self._trigger_stream("positions", self.exchange.watch_positions), "positions_stream"
            )
        if private and has.get("watchBalance") is True:
            self._spawn(
                self._trigger_stream("balance", self.exchange.watch_balance), "balance_stream"
            )
        self._spawn(self._price_poll(), "price_poll")
        await self._reconcile_loop()

    # --- reconciliation -------------------------------------------------------------------

    def _streams_healthy(self) -> bool:
        return bool(self._stream_ok) and all(self._stream_ok.values()) and len(self._stream_ok) == 2

    async def _reconcile_loop(self) -> None:
        backoff = Backoff(cap=self.backoff_cap)
        retry_now = True  # the first read, and a retry after a failure (backoff slept)
        while True:
            if not retry_now:
                interval = self.reconcile_every if self._streams_healthy() else self.poll_interval
                if self.collateral_rules.mode == "portfolio":
                    interval = self.poll_interval  # the venue's figure is the live ratio
                # Not asyncio.wait_for: on 3.11 it drops a cancel that lands as the trigger
                # arrives (cpython#86296) and shutdown hung (fault matrix, docs/benchmarks.md).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval * self._throttle.factor):
                        await self._dirty.wait()
                if self._dirty.is_set():
                    await asyncio.sleep(self.debounce)  # coalesce a burst of stream events
            self._dirty.clear()
            try:
                await self._reconcile()
            except Exception as exc:
                retry_now = True
                if not await self._fault(exc, "reconcile", backoff):
                    return
            else:
                retry_now = False
                backoff.reset()
                self._throttle.relax()

    async def _reconcile(self) -> None:
        """One REST read, emitted as ONE `AccountUpdate` stamped with the time it was sent:
        positions, balances and their marks reach the daemon together (docs/account-view.md), and a
        mark streamed while the read was in flight stays newer than the read's."""
        sent = self._clock()
        positions, collateral, figures = await self._read_account()
        now = self._monotonic()
        self.positions, self.collateral = positions, collateral
        for p in positions:
            if self._mark_at.get(p.symbol, -math.inf) <= sent:
                self.marks[p.symbol] = p.mark_price
                self._mark_at[p.symbol] = sent
        # the prices this read valued things at: its own position marks, and the marks
        # its collateral was priced with
        priced = {s: self.marks[s] for s in self._collateral_symbols if s in self.marks}
        priced.update((p.symbol, p.mark_price) for p in positions)
        marks = tuple(sorted(priced.items()))
        used = {p.symbol for p in positions} | self._collateral_symbols
        venue_ratio = figures.margin_ratio if figures is not None else None
        self._emit(
            AccountUpdate(
                self.name,
                positions,
                collateral,
                sent,
                marks,
                venue_ratio,
                venue_margin(self.collateral_rules.rules, figures),
            )
        )
        for kind in ("positions", "balance"):
            self._fresh(kind, now)
        self.figures = figures
        if figures is not None:
            self._record_check(figures, self._snapshot(positions, collateral), sent)
        self._sync_price_streams(used)

    # --- streams --------------------------------------------------------------------------

    async def _trigger_stream(self, kind: str, watch: Callable[[], Any]) -> None:
        """A private stream whose messages only say "something changed: re-read"."""
        backoff = Backoff(cap=self.backoff_cap)
        while True:
            try:
                await watch()
            except Exception as exc:
                if self._stream_ok.get(kind, True):
                    self._dirty.set()  # it may have missed an update (ccxt: re-fetch after drops)
                self._stream_ok[kind] = False
                if not await self._fault(exc, f"{kind}_stream", backoff):
                    return
                continue
            self._stream_ok[kind] = True
            backoff.reset()
            self._dirty.set()

    def _sync_price_streams(self, symbols: set[str]) -> None:
        for symbol in list(self._price_tasks):
            if symbol not in symbols:
                self._price_tasks.pop(symbol).cancel()
                self._last_tick.pop(symbol, None)
        for symbol in symbols - set(self._price_tasks):
            self._last_tick.setdefault(symbol, self._monotonic())
            self._price_tasks[symbol] = asyncio.get_running_loop().create_task(
                self._price_stream(symbol), name=f"source[{self.name}].price[{symbol}]"
            )
        if symbols:
            self._freshness.start("prices", self._monotonic())
        else:
            self._freshness.stop("prices")

    async def _price_stream(self, symbol: str) -> None:
        exchange = self.exchange
        contract = bool((exchange.markets or {}).get(symbol, {}).get("contract", True))
        watch = (
            exchange.watch_mark_price
            if contract and exchange.has.get("watchMarkPrice") is True
            else exchange.watch_ticker
        )
        backoff = Backoff(cap=self.backoff_cap)
        while True:
            if await self._price_read(symbol, watch, f"price_stream[{symbol}]", backoff) is None:
                return
            # the account's loop first: it reports on the tick just queued before this task
            # re-arms the watch, whose synchronous part (ccxt's market lookups and
            # subscription arguments, ~0.1 ms) ran ahead of the report (issue 16)
            await asyncio.sleep(0)

    async def _price_poll(self) -> None:
        """REST takes over for symbols whose stream has been quiet for `poll_interval`."""
        backoff = Backoff(cap=self.backoff_cap)
        while True:
            await asyncio.sleep(self.poll_interval * self._throttle.factor)
            now = self._monotonic()
            quiet = [s for s, t in self._last_tick.items() if now - t >= self.poll_interval]
            for symbol in quiet:
                read = await self._price_read(
                    symbol, self._fetch_price, f"price_poll[{symbol}]", backoff
                )
                if read is None:
                    return
                if not read:
                    break  # a fault: the backoff slept; the next round tries again

    async def _price_read(
        self,
        symbol: str,
        read: Callable[[str], Awaitable[object]],
        where: str,
        backoff: Backoff,
    ) -> bool | None:
        """One price read (stream frame or REST) into `_on_mark`: True when it came, False
        after a fault the source survives (backoff slept), None when the source must stop."""
        try:
            ticker = await read(symbol)
        except Exception as exc:
            return False if await self._fault(exc, where, backoff) else None
        backoff.reset()
        self._on_mark(symbol, ticker)
        return True

    def _on_mark(self, symbol: str, ticker: object) -> None:
        held = self._hold_mark(symbol, ticker)
        if held is None:
            log.warning(
                "bad_mark",
                account=self.name,
                symbol=symbol,
                reason="ticker without a positive markPrice",
            )
            return
        mark, at = held
        now = self._monotonic()
        if symbol in self._last_tick:
            self._last_tick[symbol] = now
        # the daemon applies the ordering rule too (state.apply, Ledger.tick): it holds
        # marks from reads this source's cache never saw (the first snapshot)
        self._emit(PriceTick(self.name, symbol, mark, at))
        # The prices clock is as old as the least recently priced symbol.
        if self._last_tick and "prices" in self._freshness.last:
            self._freshness.last["prices"] = min(self._last_tick.values())
            if now - self._freshness.last["prices"] <= self.stale_after:
                self._fresh("prices", self._freshness.last["prices"])

    # --- freshness ------------------------------------------------------------------------

    def _fresh(self, kind: str, at: float) -> None:
        change = self._freshness.fresh(kind, at)
        if change is not None:
            self._announce(change)

    def _announce(self, change: FreshnessChange) -> None:
        if change.stale:
            log.warning("stale", account=self.name, kind=change.kind, age=round(change.age, 3))
            self._emit(SourceStale(self.name, change.kind, change.age))
        else:
            log.info("fresh", account=self.name, kind=change.kind)
            self._emit(SourceUp(self.name, change.kind))

    async def _watchdog(self) -> None:
        step = max(0.01, min(1.0, self.stale_after / 4))
        while True:
            await asyncio.sleep(step)
            for change in self._freshness.check(self._monotonic()):
                self._announce(change)

    # --- faults ---------------------------------------------------------------------------

    async def _fault(self, exc: Exception, where: str, backoff: Backoff) -> bool:
        """Log one line, wait as the fault deserves; False when the source must stop."""
        reason = error_line(exc)
        if isinstance(exc, AUTH_ERRORS):
            self._go_down(self._key_rejected(where, exc))
            return False
        if isinstance(exc, ccxt_errors.ExchangeClosedByUser) or self._closed:
            return False
        delay = backoff.next_delay()
        if isinstance(exc, ccxt_errors.InvalidNonce):
            log.warning("clock_skew", account=self.name, where=where, reason=reason)
            with contextlib.suppress(Exception):
                await self.exchange.load_time_difference()
        elif isinstance(exc, ccxt_errors.RateLimitExceeded | ccxt_errors.DDoSProtection):
            self._throttle.penalise()
            delay *= self._throttle.factor
            log.warning(
                "rate_limited",
                account=self.name,
                where=where,
                reason=reason,
                slowdown=self._throttle.factor,
            )
        elif isinstance(exc, ccxt_errors.NetworkError | ccxt_errors.BadResponse):
            log.warning(
                "network_error",
                account=self.name,
                where=where,
                reason=reason,
                retry_in=round(delay, 3),
            )
        elif isinstance(exc, MalformedPayload):
            log.warning("rejected_update", account=self.name, where=where, reason=str(exc))
        else:
            # Garbage a parser choked on, or a venue error we do not know: never a crash.
            log.warning("source_error", account=self.name, where=where, reason=reason)
        await asyncio.sleep(min(delay, self.backoff_cap * self._throttle.factor))
        return True

    def _key_rejected(self, where: str, exc: BaseException) -> str:
        """The one line a person reads when the venue refuses the key (alert, /healthz)."""
        return (
            f"{self.venue} rejected the API key during {where} ({error_line(exc)}); "
            f"check accounts.{self.name}.api_key/secret and their permissions"
        )

    def _go_down(self, reason: str) -> None:
        if self.down_reason is not None:
            return
        self.down_reason = reason
        log.error("source_down", account=self.name, reason=reason)
        self._emit(SourceDown(self.name, reason))
        for task in list(self._tasks) + list(self._price_tasks.values()):
            if task is not asyncio.current_task():
                task.cancel()


# --- commands ---------------------------------------------------------------------------------
