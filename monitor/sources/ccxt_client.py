"""Building the ccxt.pro instance of a live account, and the shell around every call.

The account's `ccxt` table is passed straight to the ccxt constructor over our defaults and
the venue's own options (venues/<venue>.py `ccxt_options`), so testnets, proxies and local
fakes need no code change (docs/venues.md). Every REST answer passes two guards installed
here: a 2xx body that is not JSON is an error, and an error never quotes a credential.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

import ccxt.pro as ccxtpro
from ccxt.base import errors as ccxt_errors

from monitor.config.settings import ccxt_credentials
from monitor.errors import UserError, one_line
from monitor.ops import logs
from monitor.sources import budget
from monitor.venues.registry import venue_for

__all__ = ["AUTH_ERRORS", "AccountConfig", "KeyRejected", "build_exchange", "error_line"]


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


AUTH_ERRORS = (ccxt_errors.AuthenticationError,)  # includes PermissionDenied, AccountSuspended


class KeyRejected(UserError, ccxt_errors.AuthenticationError):  # type: ignore[misc]
    """The venue refused the account's key: a person must fix it. A `UserError`, so the
    daemon shows its one line as is; still ccxt's AuthenticationError for callers that
    catch that."""


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
    keys = {"api_key": settings.api_key, "secret": settings.secret, "password": settings.password}
    for credential, field_name in ccxt_credentials(venue).items():
        value = _secret(keys[field_name])
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


def error_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as one log-safe line (ccxt bodies can be long and multi-line)."""
    return one_line(exc, limit, _scrub)


def _scrub(text: str) -> str:
    # Signed URLs carry a signature and timestamp: keep logs to the path. Configured secrets
    # go too: a websocket error does not pass exchange.fetch's scrub (_redact_errors).
    return re.sub(r"\?\S*", "?…", logs.redact(text))
