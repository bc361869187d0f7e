"""The one-shot commands that talk to a live venue: `check`'s live line and `snapshot`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from ccxt.base import errors as ccxt_errors

from monitor.config.settings import load_settings
from monitor.errors import UserError, os_reason
from monitor.report_json import snapshot_to_dict
from monitor.sources.ccxt_client import AccountConfig, KeyRejected, error_line
from monitor.sources.exchange import ExchangeSource
from monitor.venues.base import MalformedPayload
from monitor.venues.registry import trade_permission

__all__ = ["check_account", "snapshot_command"]


@contextlib.contextmanager
def _as_user_error(settings: AccountConfig, failure: str) -> Iterator[None]:
    """Exchange errors of a one-shot CLI command as the one line a person reads."""
    try:
        yield
    except ccxt_errors.AuthenticationError as exc:
        venue_said = exc.__cause__ if isinstance(exc, KeyRejected) and exc.__cause__ else exc
        raise UserError(
            f"accounts.{settings.name}: {settings.exchange} rejected the keys "
            f"({error_line(venue_said)}); check api_key/secret/password"
        ) from None
    except (ccxt_errors.BaseError, MalformedPayload) as exc:
        raise UserError(f"accounts.{settings.name}: {failure} ({error_line(exc)})") from None


async def check_account(settings: AccountConfig) -> str:
    """Connect, load markets, read balances; one line saying what the keys can do."""
    source = ExchangeSource(settings)
    try:
        with _as_user_error(settings, f"{settings.exchange} check failed"):
            exchange = await source.open()
            await exchange.load_markets()
            balance = await exchange.fetch_balance()
            collateral = await source.collateral_of(balance)
            permission = await trade_permission(exchange, source.venue, balance)
    finally:
        await source.close()
    wallet = (
        ", ".join(
            f"{c.asset} {c.amount:g}"
            + ("" if c.price == 1.0 else f" @ {c.price:g} {source.currency}")
            for c in collateral
        )
        or "empty"
    )
    return (
        f"{settings.name}: {settings.exchange} ok, {len(exchange.markets)} markets, "
        f"wallet {wallet}; keys {permission}"
    )


def _load_account(config: str, name: str) -> AccountConfig:
    loaded = load_settings(config)
    for account in loaded.accounts:
        if account.name == name:
            if account.exchange == "sim":
                raise UserError(
                    f"--account {name}: is a 'sim' account; snapshot reads "
                    "live exchange accounts only"
                )
            return account
    names = ", ".join(a.name for a in loaded.accounts) or "none"
    raise UserError(f"--account {name!r} is not in {config} (accounts: {names})")


async def _snapshot_json(settings: AccountConfig) -> dict[str, Any]:
    source = ExchangeSource(settings)
    try:
        with _as_user_error(settings, "could not read the account"):
            snap = await source.fetch_snapshot()
    finally:
        await source.close()
    return snapshot_to_dict(snap)


def snapshot_command(args: argparse.Namespace) -> int:
    """`margin-monitor snapshot --config FILE --account NAME [-o FILE]`."""
    account = _load_account(args.config, args.account)
    data = asyncio.run(_snapshot_json(account))
    text = json.dumps(data, indent=2) + "\n"
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise UserError(f"-o {args.output}: cannot write ({os_reason(exc)})") from None
    else:
        sys.stdout.write(text)
    return 0
