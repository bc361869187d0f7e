"""Each venue's collateral rules, read live: what a non-stable balance really counts for.

A cross-collateral account is margined on haircut values, not on market values
(docs/collateral.md, with the venues' pages): valuing BTC collateral at its full price overstates
the margin balance by exactly the haircut, on the accounts this product exists for. The
engine already values haircuts (`Collateral.haircut`, `liability_markup`, banded
`haircut_tiers`); this module reads the venue's published parameters and hands them to it.

Each venue's reader (`collateral_rules`) lives in its module, with the venue's docs: Binance
USDⓈ-M Multi-Assets Mode asset index (venues/binance.py), Bybit UTA tiered collateral ratios
(venues/bybit.py), OKX multi-currency discount-rate tiers (venues/okx.py), Bitget USDT-M
union-mode discount rates (venues/bitget.py).

- **Portfolio margin** (Binance PM through ccxt's `portfolioMargin` option, Bybit
  PORTFOLIO_MARGIN, OKX acctLv 4) is scenario-based: no public formula reproduces it, so
  the live ratio is the venue's own figure (`venue_margin`), read with every balance, on
  our scale (1.0 = the venue's liquidation line): Binance PM 1.05 / uniMMR (it liquidates at
  uniMMR ≤ 1.05), Bybit `accountMMRate` (liquidates at 100 %), OKX 1 / `mgnRatio` (100 %).

Rules change rarely: they are re-read every `every` seconds (default an hour) and kept in
`<state_dir>/collateral/<account>.json`, so a restart values the account at once from the
last read. A failed read keeps the last rules (or the cached ones) and says so in the log;
with no rules at all, balances are valued as before (price, no haircut).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from monitor.core.model import STABLE_ASSETS, Collateral, CollateralTier, VenueMargin
from monitor.errors import one_line
from monitor.venues.base import (
    AssetRule,
    CollateralRules,
    MalformedPayload,
    Mode,
    VenueFigures,
)
from monitor.venues.registry import venue_for

__all__ = [
    "CollateralRulesReader",
    "apply_rules",
    "rules_from_dict",
    "rules_to_dict",
    "venue_margin",
]

log = structlog.get_logger("monitor.sources.collateral_rules")


# --- pure: rules applied to balances ------------------------------------------------------


def apply_rules(
    collateral: tuple[Collateral, ...], rules: CollateralRules | None, currency: str
) -> tuple[Collateral, ...]:
    """Balances valued as the venue values them. Pure.

    A stablecoin's price becomes index / index(currency) where the venue publishes an
    index, so USDC in a USDT report is worth what the venue says. A volatile asset keeps
    its price from its market's mark: the index in the rules is as old as the last rules
    read (an hour), while the mark streams; the venue's index follows the same market.
    """
    if rules is None or rules.mode == "portfolio":
        return collateral
    if rules.mode == "single_asset":
        return tuple(c for c in collateral if c.asset == currency or c.asset in STABLE_ASSETS)
    unit_rule = rules.assets.get(currency)
    unit = unit_rule.index if unit_rule is not None and unit_rule.index else 1.0
    out = []
    for c in collateral:
        rule = rules.assets.get(c.asset)
        if rule is None:
            out.append(c)
            continue
        if not rule.collateral:
            continue  # switched off as collateral: not margin (Bybit collateralSwitch)
        price = rule.index / unit if rule.index and c.asset in STABLE_ASSETS else c.price
        out.append(
            replace(
                c,
                price=price,
                haircut=rule.haircut,
                liability_markup=rule.liability_markup,
                haircut_tiers=rule.haircut_tiers,
                tier_basis=rule.tier_basis,
            )
        )
    return tuple(out)


# --- venue readers (ccxt implicit API only) -----------------------------------------------


def venue_margin(rules: CollateralRules | None, figures: VenueFigures | None) -> VenueMargin | None:
    """The venue's own figures as the live ratio, for a portfolio-margin account only.

    Pure. A portfolio account the venue gave no figure for still gets a `VenueMargin`
    (ratio None), so the report says "estimate" instead of passing a cross-margin ratio
    off as the venue's.
    """
    if rules is None or rules.mode != "portfolio":
        return None
    if figures is None or figures.margin_ratio is None:
        return VenueMargin(None, source="none read")
    return VenueMargin(
        figures.margin_ratio,
        figures.maintenance_margin,
        figures.margin_balance,
        figures.source_fields,
    )


# --- the cache file -----------------------------------------------------------------------


def rules_to_dict(rules: CollateralRules) -> dict[str, Any]:
    """The cache file's JSON (also what `report --json` could show of the rules)."""
    return {
        "version": 1,
        "venue": rules.venue,
        "mode": rules.mode,
        "read_at": rules.read_at,
        "assets": {
            a.asset: {
                "index": a.index,
                "haircut": a.haircut,
                "liability_markup": a.liability_markup,
                "haircut_tiers": [
                    [t.up_to if math.isfinite(t.up_to) else None, t.ratio] for t in a.haircut_tiers
                ],
                "tier_basis": a.tier_basis,
                "collateral": a.collateral,
            }
            for a in rules.assets.values()
        },
    }


def rules_from_dict(data: object) -> CollateralRules:
    """Inverse of `rules_to_dict`; raises ValueError (with the field) on anything else."""
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError("not a version 1 collateral rules file")
    mode = data.get("mode")
    if mode not in ("single_asset", "multi_assets", "portfolio"):
        raise ValueError(f"mode {mode!r} is unknown")
    assets: dict[str, AssetRule] = {}
    raw_assets = data.get("assets")
    if not isinstance(raw_assets, dict):
        raise ValueError("assets is not an object")
    for name, row in raw_assets.items():
        if not isinstance(row, dict):
            raise ValueError(f"assets.{name} is not an object")
        try:
            tiers = tuple(
                CollateralTier(math.inf if up is None else float(up), float(ratio))
                for up, ratio in row.get("haircut_tiers", [])
            )
            basis = row.get("tier_basis", "amount")
            assets[str(name)] = AssetRule(
                str(name),
                index=None if row.get("index") is None else float(row["index"]),
                haircut=float(row.get("haircut", 0.0)),
                liability_markup=float(row.get("liability_markup", 0.0)),
                haircut_tiers=tiers,
                tier_basis="value" if basis == "value" else "amount",
                collateral=bool(row.get("collateral", True)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"assets.{name}: {exc}") from None
    return CollateralRules(str(data.get("venue", "")), mode, assets, float(data["read_at"]))


# --- the reader an exchange source holds --------------------------------------------------


class CollateralRulesReader:
    """The account's current rules: cached at start, re-read every `every` seconds.

    `refresh` never raises for a venue fault: margin keeps being valued on the last rules
    while the venue's rule endpoint is down, and the failure is retried after `retry`
    (5 minutes: a rule endpoint that times out delays one account read per retry by the
    ccxt timeout, never every read).
    """

    def __init__(
        self,
        account: str,
        venue: str,
        cache_dir: Path | None = None,
        *,
        every: float = 3600.0,
        retry: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account = account
        self.venue = venue
        self.every = every
        self.retry = retry
        self._clock = clock
        quirks = venue_for(venue).account
        self._reader = quirks.collateral_rules
        self._portfolio_figures = quirks.portfolio_figures
        self._path = cache_dir / "collateral" / f"{account}.json" if cache_dir else None
        self._next_try = -math.inf
        self.rules: CollateralRules | None = self._load()

    @property
    def supported(self) -> bool:
        """Whether this venue's collateral rules are read at all."""
        return self._reader is not None

    @property
    def mode(self) -> Mode | None:
        return self.rules.mode if self.rules is not None else None

    def due(self) -> bool:
        """A read is due: none yet, the last one is older than `every`, retry time passed."""
        if self._reader is None:
            return False
        now = self._clock()
        if now < self._next_try:
            return False
        return self.rules is None or now - self.rules.read_at >= self.every

    async def refresh(self, exchange: Any) -> CollateralRules | None:
        """Re-read the rules if due; on failure keep the previous ones (logged)."""
        if self._reader is None or not self.due():
            return self.rules
        # here, not at import: the sim venue uses this module and never loads ccxt
        from ccxt.base import errors as ccxt_errors  # noqa: PLC0415

        now = self._clock()
        try:
            rules = await self._reader(exchange, now)
        except (ccxt_errors.BaseError, MalformedPayload) as exc:
            self._next_try = now + self.retry
            kept = "cached rules" if self.rules is not None else "no haircuts"
            log.warning(
                "collateral_rules_unavailable",
                account=self.account,
                reason=one_line(exc, 200),
                using=kept,
            )
            return self.rules
        if self.rules is None or self.rules.mode != rules.mode:
            log.info(
                "collateral_mode", account=self.account, mode=rules.mode, assets=len(rules.assets)
            )
        self.rules = rules
        self._save(rules)
        return rules

    async def portfolio_figures(self, exchange: Any) -> VenueFigures | None:
        """The venue's own figures of a portfolio-margin account where `fetch_balance` has
        none (Binance PM: venues/binance.py `portfolio_figures`). Bybit and OKX report
        theirs in the balance (`normalize.venue_figures`): None."""
        if self.mode != "portfolio" or self._portfolio_figures is None:
            return None
        return await self._portfolio_figures(exchange)

    def apply(self, collateral: tuple[Collateral, ...], currency: str) -> tuple[Collateral, ...]:
        """Balances valued by the current rules (`apply_rules`)."""
        return apply_rules(collateral, self.rules, currency)

    def _load(self) -> CollateralRules | None:
        if self._path is None or self._reader is None:
            return None
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._cache_problem("collateral_cache_unreadable", exc.strerror)
            return None
        try:
            rules = rules_from_dict(json.loads(text))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            self._cache_problem("collateral_cache_ignored", str(exc).splitlines()[0])
            return None
        if rules.venue != self.venue and rules.venue:
            return None
        return rules

    def _save(self, rules: CollateralRules) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(".json.tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(rules_to_dict(rules), indent=1), encoding="utf-8")
            os.replace(tmp, self._path)
        except OSError as exc:
            self._cache_problem("collateral_cache_unwritable", exc.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _cache_problem(self, event: str, reason: str | None) -> None:
        """The cache file could not be used: said once per event, the daemon carries on."""
        log.warning(event, account=self.account, path=str(self._path), reason=reason)
