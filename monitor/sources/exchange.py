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
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import ccxt.pro as ccxtpro
import structlog
from ccxt.base import errors as ccxt_errors

from monitor.backoff import Backoff
from monitor.config.settings import ccxt_credentials
from monitor.core.margin import report as margin
from monitor.core.model import (
    AccountSnapshot,
    AccountUpdate,
    Collateral,
    Event,
    Position,
    PriceTick,
    SourceDown,
    SourceStale,
    SourceUp,
    Tier,
)
from monitor.core.stress import with_prices
from monitor.errors import UserError, one_line
from monitor.ops import logs
from monitor.sources import budget
from monitor.sources.backoff import Freshness, FreshnessChange, Throttle
from monitor.sources.collateral_rules import CollateralRulesReader, venue_margin
from monitor.sources.normalize import (
    collateral_from_ccxt,
    mark_from_ticker,
    positions_from_ccxt,
    tiers_from_ccxt,
    torn_read,
    unpriced_assets,
    venue_figures,
)
from monitor.venues.base import MalformedPayload, VenueFigures
from monitor.venues.orders import TRIGGER, client_id_query, query_params
from monitor.venues.registry import venue_for

__all__ = [
    "AccountConfig",
    "ExchangeSource",
    "KeyRejected",
    "VenueCheck",
    "build_exchange",
]

log = structlog.get_logger("monitor.sources.exchange")

#: Re-reads of a read whose positions and balance answers saw different books (a fill
#: between them) before the reconciliation fails and backs off (normalize.torn_read).
_TORN_RETRIES = 2


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class AccountConfig(Protocol):
    """What the source reads from an account's settings (config.settings.AccountSettings)."""

    @property
    def name(self) -> str: ...
    @property
    def exchange(self) -> str: ...
    @property
    def api_key(self) -> _Secret | None: ...
    @property
    def secret(self) -> _Secret | None: ...
    @property
    def password(self) -> _Secret | None: ...
    @property
    def sandbox(self) -> bool: ...
    @property
    def poll_interval(self) -> float: ...
    @property
    def stale_after(self) -> float: ...
    @property
    def ccxt(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class VenueCheck:
    """Our margin ratio and the venue's, read from the same REST reconciliation.

    `drift` = ours − venue's (absolute, in ratio units); `relative_drift` = drift / venue's.
    A drift well above rounding means our model of the venue is wrong (tiers, haircuts,
    mode) and the alerts built on it should not be trusted blindly: metrics export it.
    """

    ts: float
    venue: VenueFigures
    our_ratio: float
    our_maintenance_margin: float
    our_margin_balance: float

    @property
    def drift(self) -> float | None:
        if self.venue.margin_ratio is None:
            return None
        return self.our_ratio - self.venue.margin_ratio

    @property
    def relative_drift(self) -> float | None:
        drift = self.drift
        if drift is None or not self.venue.margin_ratio:
            return None
        return drift / self.venue.margin_ratio


# --- construction -----------------------------------------------------------------------------


def _secret(value: _Secret | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def build_exchange(settings: AccountConfig) -> Any:
    """One ccxt.pro instance for the account; `settings.ccxt` is passed straight through
    (urls, options, timeout, proxies), so testnets and local fakes need no code change."""
    venue = settings.exchange
    if venue not in ccxtpro.exchanges:
        raise UserError(
            f"accounts.{settings.name}.exchange: {venue!r} has no ccxt.pro class "
            f"(ccxt 4.5.90); use one of ccxt.pro.exchanges, e.g. 'binanceusdm'"
        )
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "options": {
            # The position stream is only a trigger for our own REST read, so ccxt's REST
            # snapshot on the first watch is a wasted call, and it delays opening the socket
            # (updates between the first and second call are lost, docs/venues.md).
            "watchPositions": {"fetchPositionsSnapshot": False, "awaitPositionsSnapshot": False},
        },
    }
    for credential, field_name in ccxt_credentials(venue).items():
        value = _secret(getattr(settings, field_name))
        if value:
            config[credential] = value
    # the venue's own options (venues/<venue>.py: Hyperliquid's builder fee and referrer
    # switched off, Binance futures' spot currency list), under the user's
    config["options"].update(venue_for(venue).ccxt_options)
    config = _merged(config, settings.ccxt)
    exchange = getattr(ccxtpro, venue)(config)
    _reject_non_json(exchange)
    _redact_errors(exchange, logs.secrets_of(config))
    # the venue's request budget replaces ccxt's one-at-a-time throttle: a protective step
    # is not queued behind polling (monitor/sources/budget.py, docs/rate-limits.md)
    budget.install(exchange, settings.name)
    if settings.sandbox:
        exchange.set_sandbox_mode(True)
    return exchange


def _redact_errors(exchange: Any, secrets: list[str]) -> None:
    """Venue text enters here: scrub the account's credentials out of every REST error.

    Every ccxt REST call goes through `exchange.fetch`, whose exceptions quote the venue's
    answer; a venue that repeats the API key in an error would otherwise put it in
    `/healthz`, alerts, SQLite, `check` and `snapshot` output (docs/hardening.md). Redacted by value
    (raw, JSON, URL-encoded spellings: logs.Redactor), once, before anyone reads it.
    """
    redactor = logs.Redactor()
    redactor.set(secrets)
    original = exchange.fetch

    async def fetch(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        except Exception as exc:
            logs.scrub_exception(exc, redactor)
            raise

    exchange.fetch = fetch


def _reject_non_json(exchange: Any) -> None:
    """Make a 2xx answer whose body is not JSON an error (BadResponse, retried).

    ccxt passes a non-JSON body (a proxy's HTML page, a truncated document) on as a string,
    and e.g. binance `fetch_positions` then returns `[]`: garbage would read as "no
    positions". `on_rest_response` is ccxt's own per-response hook (async exchange.fetch).
    """
    original = exchange.on_rest_response

    def on_rest_response(  # noqa: PLR0917 - ccxt's hook signature
        code: Any,
        reason: Any,
        url: str,
        method: str,
        headers: Any,
        body: Any,
        request_headers: Any,
        request_body: Any,
    ) -> Any:
        body = original(code, reason, url, method, headers, body, request_headers, request_body)
        if (
            200 <= int(code) < 300
            and isinstance(body, str)
            and body.strip()
            and exchange.parse_json(body) is None
        ):
            snippet = " ".join(body[:60].split())
            raise ccxt_errors.BadResponse(
                f"{exchange.id} {method} {url.split('?', 1)[0]}: HTTP {code} with a body "
                f"that is not JSON ({snippet!r})"
            )
        return body

    exchange.on_rest_response = on_rest_response


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, merging nested tables (a user's `options` keeps our defaults)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as one log-safe line (ccxt bodies can be long and multi-line)."""
    return one_line(exc, limit, _scrub)


def _scrub(text: str) -> str:
    # Signed URLs carry a signature and timestamp: keep logs to the path. Configured secrets
    # go too: a websocket error does not pass exchange.fetch's scrub (_redact_errors).
    return re.sub(r"\?\S*", "?…", logs.redact(text))


def _venue_time(ticker: object, received: float, offset: float = 0.0) -> float:
    """When the venue says the price was true (ccxt `timestamp`, ms), else when it arrived.

    `offset` (seconds, local − venue: ccxt's `options['timeDifference']` once
    `load_time_difference` ran) puts the venue's clock on ours. Never later than its
    arrival: a venue clock running ahead must not make one price outrank every later one
    (docs/account-view.md)."""
    stamp = ticker.get("timestamp") if isinstance(ticker, Mapping) else None
    if isinstance(stamp, int | float) and math.isfinite(stamp) and stamp > 0:
        return min(float(stamp) / 1000.0 + offset, received)
    return received


_AUTH_ERRORS = (ccxt_errors.AuthenticationError,)  # includes PermissionDenied, AccountSuspended


class KeyRejected(UserError, ccxt_errors.AuthenticationError):  # type: ignore[misc]
    """The venue refused the account's key: a person must fix it. A `UserError`, so the
    daemon shows its one line as is; still ccxt's AuthenticationError for callers that
    catch that."""


# --- the source -------------------------------------------------------------------------------


class ExchangeSource:
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
        self.positions: tuple[Position, ...] = ()
        self.collateral: tuple[Collateral, ...] = ()
        self.marks: dict[str, float] = {}
        self._mark_at: dict[str, float] = {}  # symbol -> time of `marks[symbol]`
        self.tiers: dict[str, tuple[Tier, ...]] = {}
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

    async def fetch_snapshot(self) -> AccountSnapshot:
        """A fresh REST read of the whole account (for `snapshot`, executors, tests)."""
        exchange = await self.open()
        try:
            await exchange.load_markets()
            positions, collateral, self.figures = await self._read_account()
        except _AUTH_ERRORS as exc:
            # the daemon's start-up read: the same one line as a key rejected later
            raise KeyRejected(self._key_rejected("the start-up read", exc)) from exc
        return self._snapshot(positions, collateral)

    def snapshot(self) -> AccountSnapshot:
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

    # --- the order desk (protect/desk.py): ccxt's calls, the venue's params from venues/ --------

    async def _ready(self) -> Any:
        exchange = await self.open()
        await exchange.load_markets()
        return exchange

    async def create_order(  # noqa: PLR0917 - ccxt's positional signature, kept for drop-in use
        self,
        symbol: str,
        type: str,  # ccxt's parameter name
        side: str,
        amount: float,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Place an order through ccxt (the executor owns the money-safety checks)."""
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.create_order(
            symbol, type, side, amount, price, params or {}
        )
        return order

    async def fetch_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.fetch_order(id, symbol, query_params(self.venue))
        return order

    async def find_order(self, client_id: str, symbol: str) -> dict[str, Any] | None:
        exchange = await self._ready()
        with contextlib.suppress(ccxt_errors.OrderNotFound):
            found: dict[str, Any] = await exchange.fetch_order(
                "", symbol, client_id_query(self.venue, client_id)
            )
            return found
        return None

    async def open_stops(self, symbol: str) -> list[dict[str, Any]]:
        exchange = await self._ready()
        rows: list[dict[str, Any]] = await exchange.fetch_open_orders(
            symbol, None, None, dict(TRIGGER)
        )
        return rows

    async def cancel_stop(self, id: str, symbol: str) -> dict[str, Any]:
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.cancel_order(id, symbol, dict(TRIGGER))
        return order

    async def fetch_open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        exchange = await self._ready()
        orders: list[dict[str, Any]] = await exchange.fetch_open_orders(symbol)
        return orders

    async def cancel_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        exchange = await self._ready()
        order: dict[str, Any] = await exchange.cancel_order(id, symbol)
        return order

    async def fetch_positions(self, symbols: list[str] | None = None) -> list[dict[str, Any]]:
        exchange = await self._ready()
        rows: list[dict[str, Any]] = await exchange.fetch_positions(symbols)
        return rows

    def amount_to_precision(self, symbol: str, amount: float) -> str:
        return str(self.exchange.amount_to_precision(symbol, amount))

    def market(self, symbol: str) -> dict[str, Any]:
        found: dict[str, Any] = self.exchange.market(symbol)
        return found

    @property
    def precision_mode(self) -> int | None:
        mode: int | None = None if self.exchange is None else self.exchange.precisionMode
        return mode

    def in_flight_window(self) -> float | None:
        exchange = self.exchange
        if exchange is None:
            return None
        window_ms = (exchange.options or {}).get("recvWindow") or exchange.timeout or 0
        return float(window_ms) / 1000.0

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

    async def _read_account(
        self,
    ) -> tuple[tuple[Position, ...], tuple[Collateral, ...], VenueFigures | None]:
        """fetch_positions + fetch_balance, normalised; raises on any bad payload."""
        exchange = self.exchange
        for attempt in range(_TORN_RETRIES + 1):
            # Read together (less skew between the two), but never leave a failed half's
            # sibling un-awaited: its own error would surface later as "never retrieved".
            results: tuple[Any, ...] = await asyncio.gather(
                exchange.fetch_positions(), exchange.fetch_balance(), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            raw_positions, raw_balance = results
            if not torn_read(self.venue, raw_positions, raw_balance):
                break
            # a fill landed between the two answers: that pair is no state the venue had
            log.info("torn_read", account=self.name, attempt=attempt + 1)
        else:
            raise ccxt_errors.BadResponse(
                f"{self.venue}: positions and balance disagreed on {_TORN_RETRIES + 1} reads "
                "in a row (fills between the two requests); reading again later"
            )
        symbols = sorted(
            {
                str(r.get("symbol"))
                for r in raw_positions or []
                if isinstance(r, dict) and r.get("symbol")
            }
        )
        await self._ensure_tiers(symbols)
        await self._fill_marks(raw_positions)
        positions = positions_from_ccxt(
            self.venue, raw_positions, exchange.markets or {}, self.tiers, self.marks
        )
        # collateral at this read's own marks: BTC collateral and a BTC position of one read
        # valued at one price (a REST-only venue otherwise mixed the new mark and the old)
        read_marks = {p.symbol: p.mark_price for p in positions}
        collateral = await self.collateral_of(raw_balance, read_marks)
        # a portfolio-margin account's own figure where the balance has none (docs/collateral.md)
        figures = await self.collateral_rules.portfolio_figures(exchange)
        return positions, collateral, figures or venue_figures(self.venue, raw_balance)

    async def collateral_of(
        self, balance: object, read_marks: Mapping[str, float] | None = None
    ) -> tuple[Collateral, ...]:
        """The wallet of a `fetch_balance()` valued in the report currency: the one
        collateral-pricing rule of `run`, `snapshot` and `check` (docs/margin-edges.md). Volatile
        collateral (Binance multi-assets BTC, say) is priced by its market, the linear
        perpetual else spot (`_price_symbol`), and keeps streaming once priced."""
        await self._price_collateral(balance)
        collateral = collateral_from_ccxt(
            self.venue, balance, self.currency, self._asset_prices(read_marks)
        )
        # The venue's own collateral rules (haircuts, Multi-Assets / UTA; docs/collateral.md).
        await self.collateral_rules.refresh(self.exchange)
        return self.collateral_rules.apply(collateral, self.currency)

    def _asset_prices(self, read_marks: Mapping[str, float] | None = None) -> dict[str, float]:
        """Asset -> price in the report currency, from the marks of `ASSET/<currency>` pairs
        (a read's own position marks over the held ones)."""
        marks = {**self.marks, **(read_marks or {})}
        return {
            k.split("/", 1)[0]: v
            for k, v in marks.items()
            if k.split("/", 1)[-1].startswith(self.currency)
        }

    def _price_symbol(self, asset: str) -> str | None:
        """The market that prices a collateral asset: the linear perpetual, else spot."""
        markets = self.exchange.markets or {}
        for symbol in (f"{asset}/{self.currency}:{self.currency}", f"{asset}/{self.currency}"):
            if symbol in markets:
                return symbol
        return None

    async def _price_collateral(self, balance: object) -> None:
        """Read a price for volatile collateral (Binance multi-assets BTC, say) and keep it
        streaming, so its value moves with the market like a position's mark does."""
        for asset in unpriced_assets(self.venue, balance, self.currency, self._asset_prices()):
            symbol = self._price_symbol(asset)
            if symbol is None:
                continue  # collateral_from_ccxt rejects it with the reason
            ticker = await self._fetch_price(symbol)
            if self._hold_mark(symbol, ticker) is not None:
                self._collateral_symbols.add(symbol)

    async def _fetch_price(self, symbol: str) -> object:
        """One REST price read: the mark price endpoint where the venue has one."""
        exchange = self.exchange
        if exchange.has.get("fetchMarkPrice") is True and exchange.market(symbol).get("contract"):
            return await exchange.fetch_mark_price(symbol)
        return await exchange.fetch_ticker(symbol)

    def _mark_of(self, symbol: str, ticker: object) -> float | None:
        """The mark of a contract; a spot pair (collateral pricing) has none, so its last."""
        mark = mark_from_ticker(self.venue, ticker)
        markets = self.exchange.markets or {}
        if (
            mark is None
            and isinstance(ticker, dict)
            and not markets.get(symbol, {}).get("contract", True)
        ):
            mark = mark_from_ticker(self.venue, {"markPrice": ticker.get("last")})
        return mark

    async def _fill_marks(self, rows: object) -> None:
        """Read the mark of positions whose rows carry none (MEXC, dYdX) and that no
        stream has priced yet: a position without a mark cannot be valued."""
        if not isinstance(rows, list):
            return
        missing = {
            str(r["symbol"])
            for r in rows
            if isinstance(r, dict)
            and r.get("symbol")
            and r.get("markPrice") is None
            and r["symbol"] not in self.marks
        }
        for symbol in sorted(missing):
            self._hold_mark(symbol, await self._fetch_price(symbol))

    def _hold_mark(self, symbol: str, ticker: object) -> tuple[float, float] | None:
        """The price of a ticker and its time (venue timestamp, else now), kept as the
        symbol's mark unless a newer one is held; None when it has no usable price."""
        mark = self._mark_of(symbol, ticker)
        if mark is None:
            return None
        offset = self.exchange.options.get("timeDifference") or 0
        at = _venue_time(
            ticker,
            self._clock(),
            float(offset) / 1000.0 if isinstance(offset, int | float) else 0.0,
        )
        if at >= self._mark_at.get(symbol, -math.inf):
            self.marks[symbol] = mark
            self._mark_at[symbol] = at
        return mark, at

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

    def _record_check(self, figures: VenueFigures, snapshot: AccountSnapshot, ts: float) -> None:
        ours = margin.report(snapshot)
        self.venue_check = VenueCheck(
            ts, figures, ours.margin_ratio, ours.maintenance_margin, ours.margin_balance
        )
        drift = self.venue_check.relative_drift
        drifting = drift is not None and math.isfinite(drift) and abs(drift) > 0.01
        if drifting != self._drifting:  # log the transitions, not every reconciliation
            self._drifting = drifting
            log.warning(
                "venue_drift" if drifting else "venue_drift_gone",
                account=self.name,
                ours=ours.margin_ratio,
                venue=figures.margin_ratio,
                fields=figures.source_fields,
            )

    def _snapshot(
        self, positions: tuple[Position, ...], collateral: tuple[Collateral, ...]
    ) -> AccountSnapshot:
        return AccountSnapshot(
            self.name,
            self.currency,
            collateral,
            positions,
            self.venue,
            venue_margin(self.collateral_rules.rules, self.figures),
        )

    async def _ensure_tiers(self, symbols: list[str]) -> None:
        """Load or refresh leverage tiers; a failure keeps the old ones (tiers only matter
        for what-ifs: the venue's reported MM still drives the live ratio)."""
        now = self._monotonic()
        wanted = [s for s in symbols if now - self._tiers_at.get(s, -math.inf) >= self.tiers_every]
        # tiers in contracts, not notional (OKX, MEXC: venues/okx.py, venues/mexc.py): the
        # reported MM or the base rate is used instead
        if not wanted or venue_for(self.venue).tiers_in_contracts:
            return
        has = self.exchange.has
        try:
            if has.get("fetchLeverageTiers") is True:
                table = await self.exchange.fetch_leverage_tiers(wanted)
            elif has.get("fetchMarketLeverageTiers"):
                table = {s: await self.exchange.fetch_market_leverage_tiers(s) for s in wanted}
            else:
                return
            for symbol in wanted:
                if symbol in table:
                    self.tiers[symbol] = tiers_from_ccxt(self.venue, table[symbol])
                    self._tiers_at[symbol] = now
        except (ccxt_errors.BaseError, MalformedPayload) as exc:
            log.warning("tiers_unavailable", account=self.name, reason=_one_line(exc))
            for symbol in wanted:  # do not retry on every reconciliation
                self._tiers_at[symbol] = now - self.tiers_every + self.reconcile_every

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
            try:
                ticker = await watch(symbol)
            except Exception as exc:
                if not await self._fault(exc, f"price_stream[{symbol}]", backoff):
                    return
                continue
            backoff.reset()
            self._on_mark(symbol, ticker)

    async def _price_poll(self) -> None:
        """REST takes over for symbols whose stream has been quiet for `poll_interval`."""
        backoff = Backoff(cap=self.backoff_cap)
        while True:
            await asyncio.sleep(self.poll_interval * self._throttle.factor)
            now = self._monotonic()
            quiet = [s for s, t in self._last_tick.items() if now - t >= self.poll_interval]
            for symbol in quiet:
                try:
                    ticker = await self._fetch_price(symbol)
                except Exception as exc:
                    if not await self._fault(exc, f"price_poll[{symbol}]", backoff):
                        return
                    break
                backoff.reset()
                self._on_mark(symbol, ticker)

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
        reason = _one_line(exc)
        if isinstance(exc, _AUTH_ERRORS):
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
            f"{self.venue} rejected the API key during {where} ({_one_line(exc)}); "
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
