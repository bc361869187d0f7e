"""One REST read of a live account, normalised: positions, wallet, their marks, tiers,
collateral valued by the venue's rules, and the venue's own figures beside ours.

A mixin of `ExchangeSource` (sources/exchange.py), which owns the state it reads into (the
held marks and their times, tiers, the collateral rules) and emits the read as one
`AccountUpdate` (docs/account-view.md). Prices: a mark is kept only when it is not older
than the one held for that symbol, whichever path brought it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from ccxt.base import errors as ccxt_errors

from monitor.core.margin import report as margin
from monitor.core.model import AccountSnapshot, Collateral, Position, Tier
from monitor.sources.ccxt_client import error_line
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
from monitor.venues.registry import venue_for

__all__ = ["AccountReads", "VenueCheck"]

log = structlog.get_logger("monitor.sources.exchange")

#: Re-reads of a read whose positions and balance answers saw different books (a fill
#: between them) before the reconciliation fails and backs off (normalize.torn_read).
_TORN_RETRIES = 2


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


class AccountReads:
    """The read half of `ExchangeSource`: REST reads, marks held, tiers, venue figures."""

    name: str
    venue: str
    currency: str
    exchange: Any
    marks: dict[str, float]
    _mark_at: dict[str, float]
    tiers: dict[str, tuple[Tier, ...]]
    _tiers_at: dict[str, float]
    tiers_every: float
    reconcile_every: float
    figures: VenueFigures | None
    venue_check: VenueCheck | None
    _drifting: bool
    _collateral_symbols: set[str]
    collateral_rules: CollateralRulesReader
    _clock: Callable[[], float]
    _monotonic: Callable[[], float]

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
            log.warning("tiers_unavailable", account=self.name, reason=error_line(exc))
            for symbol in wanted:  # do not retry on every reconciliation
                self._tiers_at[symbol] = now - self.tiers_every + self.reconcile_every
